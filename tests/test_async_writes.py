"""Single writes that return before their worker applies them (issue 14;
layout.h, "Async single writes"): every promise that a synchronous write
kept must still hold.

  - read-your-writes, for every read and every thread of the process;
  - a returned write survives a worker killed at any point (between records,
    inside the very record) and an owner killed at any point;
  - a returned write never fails for lack of arena memory;
  - flush() and batches see every returned write first.
"""
import os
import signal
import threading

import pytest

import amdb
from amdb_testutil import proc_stat, python_child, read_line, reap, wait_until


def _dead(pid):
    return (proc_stat(pid) or ("X",))[0] in ("Z", "X")


def test_every_read_sees_a_returned_put_at_once(make_db):
    db = make_db(workers=2)
    for i in range(300):
        key = b"k%04d" % i
        db.put(key, b"v%d" % i)
        assert db.get(key) == b"v%d" % i
        assert key in db
    assert db.batch_get([b"k%04d" % i for i in range(300)]) == [b"v%d" % i for i in range(300)]
    assert len(db) == 300
    assert dict(db.scan()) == {b"k%04d" % i: b"v%d" % i for i in range(300)}
    db.put(b"k0007", b"again")
    assert db.snapshot().get(b"k0007") == b"again"
    assert [v.value for v in db.history(b"k0007")] == [b"again", b"v7"]
    assert db.get(b"k0007", version=2) == b"again"
    db.delete(b"k0007")
    assert db.get(b"k0007") is None and b"k0007" not in db and len(db) == 299
    assert db.get(b"k0007", at_seq=db.snapshot().seq) is None


def test_read_your_writes_across_threads(make_db):
    # A write returned in one thread is seen by a read another thread makes
    # after it (the handoff orders them), every time.
    db = make_db(workers=2)
    handoff, errors = [], []
    ready = threading.Condition()

    def writer():
        for i in range(3000):
            db.put(b"t%05d" % i, b"x%d" % i)
            with ready:
                handoff.append(i)
                ready.notify()

    def reader():
        seen = 0
        while seen < 3000:
            with ready:
                while len(handoff) <= seen:
                    ready.wait()
                i = handoff[seen]
            if db.get(b"t%05d" % i) != b"x%d" % i:
                errors.append(i)
            seen += 1

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_many_threads_writing_at_once_lose_nothing(make_db):
    db = make_db(workers=2)

    def work(t):
        for i in range(2000):
            db.put(b"%d-%05d" % (t, i), b"%d" % i)
            if i % 97 == 0:
                db.delete(b"%d-%05d" % (t, i))
            if i % 500 == 0:
                db.batch_put([(b"%d-batch-%d" % (t, i), b"b")])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db.flush()
    expected = {b"%d-%05d" % (t, i): b"%d" % i for t in range(4) for i in range(2000) if i % 97}
    expected.update({b"%d-batch-%d" % (t, i): b"b" for t in range(4) for i in range(0, 2000, 500)})
    assert dict(db.scan()) == expected
    assert not db.verify().breaks


def test_a_long_stream_of_puts_outruns_no_credit(make_db):
    # Far more puts than one credit window (4 MiB) or one hash-table size:
    # backpressure, never a lost or failed write.
    db = make_db(workers=2)
    for i in range(200_000):
        db.put(b"s%07d" % i, b"v" * 64)
    db.flush()
    assert len(db) == 200_000
    assert db.batch_get([b"s%07d" % i for i in range(0, 200_000, 997)]) == [b"v" * 64] * 201


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_returned_puts_survive_workers_killed_at_random(make_db, tmp_path, durable):
    db = make_db(workers=2, path=str(tmp_path / "db") if durable else None)
    stop = threading.Event()
    kills = []

    def killer():
        rng = __import__("random").Random(3)
        while not stop.is_set() and len(kills) < 6:
            w = rng.randrange(2)
            pid = db._supervisor.procs[w].pid
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)
            # The writer's next check replaces it (within ~50 ms of puts).
            assert wait_until(lambda: db._supervisor.procs[w].pid != pid, 20)

    thread = threading.Thread(target=killer)
    thread.start()
    returned = {}
    i = 0
    try:
        while thread.is_alive() or i < 20_000:
            key = b"r%06d" % (i % 5000)
            try:
                db.put(key, b"%d" % i)
                returned[key] = b"%d" % i
            except amdb.WorkerCrashedError:
                pass                             # a synchronous write that was in flight: not returned
            i += 1
    finally:
        stop.set()
        thread.join()
    db.flush()
    assert len(kills) == 6 and db.stats()["worker_restarts"] >= 1   # a kill of a starting successor is retried within one restart
    keys = sorted(returned)
    assert db.batch_get(keys) == [returned[k] for k in keys]
    assert not db.verify().breaks
    if durable:
        db.close()
        with amdb.ParallelDB(str(tmp_path / "db")) as again:
            assert again.batch_get(keys) == [returned[k] for k in keys]


def test_a_worker_crashing_inside_a_put_applies_it_again(make_db, monkeypatch):
    # The worker dies inside the record (after N records, with the node built
    # but not linked): its successor undoes it and applies it again. No
    # version is lost or doubled.
    monkeypatch.setenv("AMDB_FAULT", "worker=0,point=mid_insert,after=50,action=segv,incarnations=1")
    db = make_db(workers=1)
    for i in range(200):
        db.put(b"f%04d" % i, b"v%d" % i)
    db.flush()
    assert db.stats()["worker_restarts"] == 1
    assert "applies it again" in db.stats()["workers"][0]["last_crash"]
    assert db.batch_get([b"f%04d" % i for i in range(200)]) == [b"v%d" % i for i in range(200)]
    assert all(len(db.history(b"f%04d" % i)) == 1 for i in range(200))
    assert not db.verify().breaks


OWNER_PUTS = r"""
import sys
import amdb
db = amdb.ParallelDB(sys.argv[1], workers=2)
i = 0
while True:
    db.put(b"o%07d" % i, b"%d" % i)
    if i % 100 == 0:
        print(i, flush=True)                   # every put up to i has returned
    i += 1
"""


def test_returned_puts_survive_the_owner_killed(tmp_path):
    # Workers drain their rings before they leave a dead owner, and log what
    # they apply: every put that returned is there when the database reopens.
    path = str(tmp_path / "db")
    owner = python_child(OWNER_PUTS, path, stdin=False)
    try:
        last = 0
        for _ in range(60):
            last = int(read_line(owner))
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
    finally:
        reap(owner)
    with amdb.ParallelDB(path) as db:
        got = db.batch_get([b"o%07d" % i for i in range(last + 1)])
        assert got == [b"%d" % i for i in range(last + 1)]
        assert not db.verify().breaks


SMALL_SHM_PUTS = r"""
import amdb
db = amdb.ParallelDB(workers=2, ring_size=1 << 16)
returned = []
try:
    for i in range(10**6):
        db.put(b"m%07d" % i, b"x" * 400)
        returned.append(b"m%07d" % i)
except amdb.ArenaFullError as exc:
    assert exc.code == "shm_full", exc
db.flush()
got = db.batch_get(returned)
assert got == [b"x" * 400] * len(returned), "a returned put is missing"
print(len(returned))
"""


def test_returned_puts_never_fail_for_lack_of_memory():
    # Fill a 48 MiB /dev/shm with single puts: the one that cannot be stored
    # raises ArenaFullError before it returns; every one that returned is there.
    from amdb_testutil import private_shm_available, run_with_private_shm
    if not private_shm_available():
        pytest.skip("needs root and unshare to mount a private /dev/shm")
    rc, out, err = run_with_private_shm(SMALL_SHM_PUTS, 48, timeout=240)
    assert rc == 0, f"rc={rc}\n{err[-3000:]}"
    assert int(out) > 10_000


def test_flush_and_batches_come_after_every_returned_put(make_db, tmp_path):
    db = make_db(workers=2, path=str(tmp_path / "db"))
    for i in range(5000):
        db.put(b"b%05d" % i, b"1")
    seq = db.batch_put([(b"last", b"1")]).results.seq
    assert db.snapshot().seq >= seq
    assert len(db) == 5001
    db.checkpoint()
    db.close()
    with amdb.ParallelDB(str(tmp_path / "db")) as again:
        assert len(again) == 5001
