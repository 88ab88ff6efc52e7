"""Memory that stays small: a database opens in a container's default 64 MiB
/dev/shm and holds data until the data itself fills it (issue 16)."""
import pytest

from amdb_testutil import private_shm_available, run_with_private_shm

pytestmark = pytest.mark.skipif(not private_shm_available(),
                                reason="needs root and unshare to mount a private /dev/shm")

DOCKER_SHM = r"""
import os, sys
import amdb
workers = int(sys.argv[1])
opened_used = None
written = []
rounds = 0
db = amdb.ParallelDB(workers=workers)                 # every default: ring_size 32 MiB per worker
st = os.statvfs("/dev/shm")
opened_used = (st.f_blocks - st.f_bfree) * st.f_frsize
try:
    for r in range(10**6):
        batch = [(b"k%03d-%05d" % (r, i), b"v" * 1000) for i in range(2000)]   # ~2 MiB through the rings
        db.batch_put(batch)
        written += [k for k, _ in batch[::97]]
        db.put(b"single%05d" % r, b"s" * 100)
        written.append(b"single%05d" % r)
        rounds += 1
except amdb.ArenaFullError as exc:
    assert exc.code == "shm_full", exc
    assert "/dev/shm has" in str(exc) and "--shm-size" in str(exc), str(exc)
db.flush()
assert None not in db.batch_get(written), "an acknowledged write is missing"
assert db.verify().ok
db.close()
print(opened_used, rounds)
"""


@pytest.mark.parametrize("workers", [2, 8])
def test_a_database_opens_in_64_mib_of_dev_shm_and_fills_it_with_data(workers):
    # ArenaFullError at open: each worker's ring (32 MiB by default) was
    # committed whole when its segment was created. A ring is now committed
    # by its producer as the bytes in flight need it, and wraps early below
    # what is committed (ring.pyx, ring_commit_ahead).
    rc, out, err = run_with_private_shm(DOCKER_SHM, 64, workers, timeout=240)
    assert rc == 0, f"rc={rc}\n{err[-3000:]}"
    opened_used, rounds = map(int, out.split())
    assert opened_used <= workers * (2 << 20) + (1 << 20), f"{opened_used} bytes of /dev/shm just to open"
    # Data fills it: at least 40 of the 64 MiB hold values (2,000 x 1,000 B a
    # round); rings sized by need, not 32 MiB each.
    assert rounds >= 20, f"only {rounds * 2} MB of values fit in 64 MiB"
