"""Smoke test of an installed AmDb (make wheel runs it on the built wheel).

Run it with the interpreter of a venv that has the wheel installed, from a
directory outside the source tree, so that ``import amdb`` finds the installed
package and not the sources:

    cd /tmp && /path/to/venv/bin/python /path/to/tools/wheel_smoke.py

It opens ParallelDB(workers=2) memory-only and with a path in a temporary
directory, puts, gets, iterates, reopens the durable one, closes, and checks
that no /dev/shm/amdb_<pid>_* segment of this process is left. Exit status 0
when all is well.
"""
import os
import sys
import tempfile
import time

import amdb

SHM_DIR = "/dev/shm"


def our_segments():
    prefix = f"amdb_{os.getpid()}_"
    try:
        return sorted(e for e in os.listdir(SHM_DIR) if e.startswith(prefix))
    except OSError:
        return []


def exercise(db, n=1000):
    items = {b"key_%05d" % i: b"value_%d" % i for i in range(n)}
    for k, v in list(items.items())[:10]:
        db.put(k, v)
    ok, _ = db.batch_put(list(items.items())[10:])
    assert ok
    assert db.get(b"key_00003") == b"value_3"
    assert db.get(b"missing", b"?") == b"?"
    assert len(db) == n
    assert list(db.scan()) == sorted(items.items())
    assert list(db.scan(prefix=b"key_0001", keys_only=True)) == [b"key_%05d" % i for i in range(10, 20)]
    it = db.iterator(reverse=True)
    assert next(it) == (b"key_%05d" % (n - 1), b"value_%d" % (n - 1))
    db.delete(b"key_00000")
    assert b"key_00000" not in db and len(db) == n - 1
    return n - 1


def main():
    here = os.path.dirname(os.path.abspath(amdb.__file__))
    source_tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not here.startswith(source_tree + os.sep), \
        f"amdb imported from the source tree ({here}), not from an installed package"
    print(f"amdb {amdb.__version__} from {here} (Python {sys.version.split()[0]})")

    with amdb.ParallelDB(workers=2) as db:
        exercise(db)
    assert db.closed

    with tempfile.TemporaryDirectory(prefix="amdb-wheel-smoke-") as tmp:
        path = os.path.join(tmp, "db")
        db = amdb.ParallelDB(path, workers=2)
        count = exercise(db)
        db.close()
        with amdb.ParallelDB(path, workers=2) as db:   # what was written is read back
            assert len(db) == count and db.get(b"key_00999") == b"value_999"

    deadline = time.monotonic() + 5.0
    while our_segments() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = our_segments()
    assert not left, f"segments left in {SHM_DIR}: {left}"
    print("wheel smoke: ok")


if __name__ == "__main__":
    main()
