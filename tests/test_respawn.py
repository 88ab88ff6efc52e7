"""Worker fault tolerance: a dead or hung worker is replaced, the batch in
flight fails whole, and the database goes on (DESIGN.md, "Failure behaviour").

* Durable databases: the successor logs the rollback; reopening finds every
  acknowledged batch, none of the failed attempt, and the same digest.
* Hang detection (hang_timeout=): a worker that makes no progress with work
  pending is killed and replaced.
* Poison batches (poison_after=): data that crashed a worker that many times
  is refused with PoisonBatchError, without crashing anything again.
* A successor that cannot start leaves writes refused and reads working.
* Workers killed at random while writes stream: the database always equals
  the model of its acknowledged batches.

Every fault here comes from AMDB_FAULT (amdb/native/faults.h) or SIGKILL; no
test sleeps to synchronise (they wait for a state, with a deadline).
"""
import os
import random
import signal
import threading
import time

import pytest

import amdb
from amdb.native.hashing import slot_of
from amdb_testutil import assert_tables_given_back_after_a_write, children_of, is_alive, shm_entries, wait_until

GONE_WITHIN_S = 5.0
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
CRASH_SIGNAL = None if UNDER_ASAN else signal.SIGSEGV   # ASan turns a SIGSEGV into exit 1


def keys_of(worker, prefix, count, workers=2):
    """`count` keys of `prefix` that worker `worker` owns (slot % workers at creation)."""
    out, i = [], 0
    while len(out) < count:
        key = b"%s%06d" % (prefix, i)
        if slot_of(key) % workers == worker:
            out.append(key)
        i += 1
    return out


def open_with_fault(monkeypatch, spec, path=None, **options):
    monkeypatch.setenv("AMDB_FAULT", spec)
    db = amdb.ParallelDB(path, workers=2, **options)
    monkeypatch.delenv("AMDB_FAULT")        # read by the workers (and kept for their successors)
    return db


def assert_nothing_left(pids):
    owner = os.getpid()
    assert wait_until(lambda: not shm_entries(owner), GONE_WITHIN_S), shm_entries(owner)
    for pid in pids:
        assert wait_until(lambda: not is_alive(pid), GONE_WITHIN_S), f"worker {pid} still alive"


def pids(db):
    return [w["pid"] for w in db.stats()["workers"]]


def kill_worker_and_write_until_replaced(db, probe):
    """SIGKILL worker 0 between calls, then call probe() (a write) until a
    successor runs (a write that met the death raises WorkerCrashedError and
    is retried). True when one does within 10 s."""
    victim = pids(db)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not is_alive(victim), GONE_WITHIN_S)
    deadline = time.monotonic() + 10
    while db.stats()["worker_restarts"] == 0 and time.monotonic() < deadline:
        try:
            probe()
        except amdb.WorkerCrashedError:
            pass
    return db.stats()["worker_restarts"] > 0


# ---- durable ---------------------------------------------------------------------

@pytest.mark.parametrize("point", ["after_records", "mid_link", "mid_publish"])
def test_crash_in_a_durable_database_is_rolled_back_in_the_log(point, tmp_path, monkeypatch):
    path = tmp_path / "db"
    first = keys_of(1, b"a", 100)
    failed = keys_of(1, b"f", 300)
    after = {"after_records": 100, "mid_link": 100, "mid_publish": 1}[point]
    db = open_with_fault(monkeypatch, f"worker=1,point={point},after={after},action=segv,incarnations=1",
                         path, sync="batch")
    seen = pids(db)
    try:
        db.batch_put([(k, b"1") for k in first])
        with pytest.raises(amdb.WorkerCrashedError) as info:
            db.batch_put([(k, b"2") for k in failed + first])
        assert info.value.worker == 1 and info.value.restarted
        db.batch_put([(k, b"3") for k in first[:10]])       # goes on: seq 2 is reused
        db.put(b"x", b"y")
        expected = {k: db.get(k) for k in first + failed + [b"x"]}
        digest = db.digest()
        assert db.batch_get(failed) == [None] * len(failed)
        assert [v.value for v in db.history(first[0])] == [b"3", b"1"]
        seen += pids(db)
    finally:
        db.close()
    with amdb.ParallelDB(path) as db:
        recovery = db.stats()["durability"]["recovery"]
        assert {k: db.get(k) for k in expected} == expected
        assert db.digest() == digest
        assert db.verify().ok
        assert [v.value for v in db.history(first[0])] == [b"3", b"1"]
        # Nothing acknowledged was cut: the failed attempt ends in an ABORT frame.
        assert recovery["recovered_seq"] == digest["seq"] == 3, recovery
        seen += pids(db)
    assert_nothing_left(seen)


def test_a_torn_log_frame_of_a_dead_worker_is_cut(tmp_path):
    # kill -9 while it appends: simulated by appending half a frame to the
    # segment of a worker that is then killed. Its successor starts a new
    # segment; recovery must read past the cut into it.
    path = tmp_path / "db"
    db = amdb.ParallelDB(path, workers=2)
    try:
        db.batch_put([(b"k%04d" % i, b"v") for i in range(200)])
        segment = db.stats()["workers"][0]["log_segment"]
        name = path / ("wal-0000-%08d.log" % segment)
        with open(name, "ab") as f:
            f.write(b"AMLG" + b"\0" * 20)        # a torn frame header
        kill_worker_and_write_until_replaced(db, lambda: db.put(b"probe", b"p"))
        db.batch_put([(b"k%04d" % i, b"w") for i in range(200)])
        assert os.path.getsize(name) % 8 == 0
        digest = db.digest()
    finally:
        db.close()
    with amdb.ParallelDB(path, workers=2) as db:
        assert db.batch_get([b"k%04d" % i for i in range(200)]) == [b"w"] * 200
        assert db.digest() == digest
        assert not db.stats()["durability"]["recovery"]["logs_cut"]


# ---- hangs -----------------------------------------------------------------------

def test_a_hung_worker_is_killed_and_replaced(monkeypatch):
    db = open_with_fault(monkeypatch, "worker=0,point=after_records,after=5,action=hang,incarnations=1",
                         hang_timeout=1.0)
    first = pids(db)
    try:
        started = time.monotonic()
        with pytest.raises(amdb.WorkerCrashedError) as info:
            db.batch_put([(b"h%04d" % i, b"v") for i in range(100)])
        waited = time.monotonic() - started
        message = str(info.value)
        assert info.value.worker == 0 and info.value.signal == signal.SIGKILL and info.value.restarted
        assert "made no progress for" in message and "hang_timeout=1.0" in message, message
        assert 1.0 <= waited < 30, waited
        assert not is_alive(first[0])
        db.batch_put([(b"h%04d" % i, b"v") for i in range(100)])
        assert len(db) == 100 and db.verify().ok
        first += pids(db)
    finally:
        db.close()
    assert_nothing_left(first)


def test_an_idle_worker_is_not_mistaken_for_a_hung_one():
    # Progress is only asked for while work is pending: a database left
    # alone far longer than hang_timeout keeps its workers.
    with amdb.ParallelDB(workers=2, hang_timeout=0.2) as db:
        db.put(b"a", b"1")
        workers = pids(db)
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:       # idle, but for cheap reads
            assert db.get(b"a") == b"1"
        for i in range(50):
            db.batch_put([(b"b%03d:%d" % (i, j), b"x" * 100) for j in range(200)])
        assert pids(db) == workers and db.stats()["worker_restarts"] == 0


@pytest.mark.parametrize("value, error", [(0, amdb.InvalidArgumentError), (-1, amdb.InvalidArgumentError),
                                          ("5", amdb.InvalidTypeError), (True, amdb.InvalidTypeError)])
def test_bad_supervision_options(value, error):
    with pytest.raises(error, match="hang_timeout"):
        amdb.ParallelDB(workers=1, hang_timeout=value)
    with pytest.raises(error, match="poison_after"):
        amdb.ParallelDB(workers=1, poison_after=value)


# ---- poison batches ------------------------------------------------------------------

def test_a_poison_batch_is_refused_after_poison_after_crashes(monkeypatch, capfd):
    # Every incarnation of worker 0 crashes at its 300th record: the same
    # 1000-record batch, retried right after each crash, dies in the same
    # chunk each time. After poison_after=2 crashes it is refused whole,
    # with no third crash, and small batches go on.
    db = open_with_fault(monkeypatch, "worker=0,point=after_records,after=300,action=segv", poison_after=2)
    seen = pids(db)
    poison = [(b"p%05d" % i, b"v") for i in range(2000)]
    try:
        for attempt in (1, 2):
            with pytest.raises(amdb.WorkerCrashedError) as info:
                db.batch_put(poison)
            assert type(info.value) is amdb.WorkerCrashedError and info.value.signal == CRASH_SIGNAL
            seen += pids(db)
        assert "it will be refused (PoisonBatchError)" in str(info.value)
        with pytest.raises(amdb.PoisonBatchError) as refused:
            db.batch_put(poison)
        assert refused.value.code == "poison_batch" and "crashrepro" in refused.value.hint
        assert isinstance(refused.value, amdb.WorkerCrashedError)
        assert db.stats()["worker_restarts"] == 2
        assert db.stats()["workers"][0]["poisoned_chunks"] == 1
        assert db.batch_get([k for k, _ in poison]) == [None] * len(poison)
        db.batch_put([(b"ok%03d" % i, b"v") for i in range(100)])    # under 300 records: no crash
        assert len(db) == 100 and db.verify().ok
        assert capfd.readouterr().err.count("fires segv at after_records") == 2
    finally:
        db.close()
    assert_nothing_left(seen)


# ---- a successor that cannot start ------------------------------------------------------

def test_a_successor_that_cannot_start_leaves_reads_working(monkeypatch):
    db = amdb.ParallelDB(workers=2, start_timeout=20)
    try:
        db.batch_put([(b"k%03d" % i, b"v") for i in range(100)])
        db._supervisor.worker_env["AMDB_FAULT"] = "not a spec"       # the successor exits at once
        victim = pids(db)[1]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: not is_alive(victim), GONE_WITHIN_S)
        with pytest.raises(amdb.WorkerCrashedError, match="successor could not start"):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                db.put(b"k000", b"w")
        with pytest.raises(amdb.WorkerCrashedError, match="writes are refused, reads still work"):
            db.put(b"k000", b"w")
        assert db.batch_get([b"k%03d" % i for i in range(100)]) == [b"v"] * 100
        assert list(db.keys()) == [b"k%03d" % i for i in range(100)]
        # An async put that reached the dead worker's ring before the
        # liveness check can never be applied: flush() says so, every time.
        for _ in range(2):
            with pytest.raises(amdb.WorkerCrashedError, match="writes are refused"):
                db.put(b"k000", b"w")
                db.flush()
        assert db.verify().ok                      # the arenas are whole: reading them works
    finally:
        db.close()
    assert not children_of(os.getpid())


# ---- random kills --------------------------------------------------------------------

def kill_workers_while_writing(seed, kills, tmp_path=None):
    """Stream batches (puts and deletes) while a thread SIGKILLs a random
    worker `kills` times; retry each failed batch. Returns (db contents,
    model, restarts, kills done)."""
    rng = random.Random(seed)
    path = None if tmp_path is None else tmp_path / "db"
    db = amdb.ParallelDB(path, workers=3, max_batch=64, ring_size=1 << 16)
    model = {}
    done = threading.Event()
    killed = []

    def killer():
        while len(killed) < kills and not done.is_set():
            restarts = db.stats()["worker_restarts"]
            pid = rng.choice(pids(db))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            # Next kill once this one was noticed (wait, not sleep).
            wait_until(lambda: done.is_set() or db.stats()["worker_restarts"] > restarts, 30)

    thread = threading.Thread(target=killer)
    thread.start()
    batch = 0
    try:
        while len(killed) < kills or thread.is_alive():
            size = rng.randrange(1, 400)
            items = [(b"k%05d" % rng.randrange(3000), b"%d:%d" % (batch, j)) for j in range(size)]
            deletes = [b"k%05d" % rng.randrange(3000) for _ in range(rng.randrange(0, 20))]
            while True:
                try:
                    db.batch_put(items)
                    break
                except amdb.WorkerCrashedError as exc:
                    assert exc.restarted, exc
            model.update(items)
            while True:
                try:
                    db.batch_delete(deletes)
                    break
                except amdb.WorkerCrashedError as exc:
                    assert exc.restarted, exc
            for key in deletes:
                model.pop(key, None)
            batch += 1
            assert batch < 100_000
        done.set()
        thread.join()
        contents = dict(db.items())
        assert db.verify().ok
        restarts = db.stats()["worker_restarts"]
        if path is not None:
            digest = db.digest()
            db.close()
            with amdb.ParallelDB(path) as reopened:
                assert dict(reopened.items()) == contents and reopened.digest() == digest
        return contents, model, restarts, len(killed)
    finally:
        done.set()
        thread.join()
        db.close()


@pytest.mark.parametrize("durable", [False, True])
def test_random_worker_kills_lose_nothing_acknowledged(durable, tmp_path):
    contents, model, restarts, kills = kill_workers_while_writing(11, 6, tmp_path if durable else None)
    assert kills == 6 and restarts == 6
    assert contents == model


@pytest.mark.slow
def test_random_worker_kills_soak(tmp_path):
    contents, model, restarts, kills = kill_workers_while_writing(12, 100, tmp_path)
    assert restarts == kills == 100 and contents == model


def test_a_successor_gives_back_the_hash_tables_its_predecessor_outgrew():
    # layout.h, "Outgrown hash tables", 4: a successor finds the tables its
    # predecessor never gave back, and waits for the owner as after a growth.
    db = amdb.ParallelDB(workers=1)
    try:
        slot = db._debug_enter_read()     # a reader may be in the tables: nothing is given back
        try:
            db.batch_put([(b"k%06d" % i, b"v") for i in range(20_000)])     # outgrows 4,096 slots 3 times
            assert kill_worker_and_write_until_replaced(db, lambda: db.batch_put([(b"probe", b"p")]))
            assert db.stats()["memory"]["total"]["released"] == 0
        finally:
            db._debug_leave_read(slot)
        assert_tables_given_back_after_a_write(db, [b"k%06d" % i for i in range(20_000)], b"v")
    finally:
        db.close()
