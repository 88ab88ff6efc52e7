"""Read-modify-write applied by the key's worker: increment, put_if_absent,
compare_and_set (layout.h, "Read-modify-write"), alone and in write batches;
linearizable under threads, replayed exactly from the log, applied once when
a worker dies under them."""
import os
import signal
import threading
import time

import pytest

import amdb
from amdb import supervisor
from amdb_testutil import children_of, is_alive, shm_entries, wait_until
from test_respawn import keys_of, open_with_fault, pids

UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def counter(n):
    return n.to_bytes(8, "big", signed=True)


@pytest.fixture(params=["async", "sync"])
def db(request, tmp_path):
    """Memory-only (records go as async SOLO chunks) and sync="batch" (each
    goes as a batch of one, waited for under the write lock)."""
    if request.param == "async":
        handle = amdb.ParallelDB(workers=2)
    else:
        handle = amdb.ParallelDB(tmp_path / "db", workers=2, sync="batch")
    try:
        yield handle
    finally:
        handle.close()


# ---- increment -------------------------------------------------------------------

def test_increment_counts_from_initial_and_stores_big_endian(db):
    assert db.increment(b"c") == 1
    assert db.increment(b"c", 41) == 42
    assert db.increment(b"c", -50) == -8
    assert db.get(b"c") == counter(-8)
    assert db.increment(b"d", 5, initial=100) == 105
    assert db.increment(b"d", 5, initial=100) == 110        # initial counts only for a missing key
    db.delete(b"d")
    assert db.increment(b"d", initial=7) == 8                # a deleted key is missing
    db.put(b"e", counter(2 ** 40))
    assert db.increment(b"e") == 2 ** 40 + 1
    assert [v.value for v in db.history(b"c")] == [counter(-8), counter(42), counter(1)]


def test_increment_of_a_value_that_is_no_counter_writes_nothing(db):
    db.put(b"s", b"abc")
    with pytest.raises(amdb.InvalidTypeError) as info:
        db.increment(b"s")
    assert info.value.code == "not_counter"
    assert db.get(b"s") == b"abc" and len(db.history(b"s")) == 1


def test_increment_overflow_writes_nothing(db):
    top = 2 ** 63 - 1
    db.put(b"m", counter(top))
    with pytest.raises(amdb.InvalidArgumentError) as info:
        db.increment(b"m")
    assert info.value.code == "counter_overflow"
    with pytest.raises(amdb.InvalidArgumentError):
        db.increment(b"n", -1, initial=-2 ** 63)
    assert db.get(b"m") == counter(top) and db.get(b"n") is None
    assert db.increment(b"m", -top) == 0


@pytest.mark.parametrize("delta, initial, error", [
    (True, 0, amdb.InvalidTypeError), (1.0, 0, amdb.InvalidTypeError), ("1", 0, amdb.InvalidTypeError),
    (2 ** 63, 0, amdb.InvalidArgumentError), (1, -2 ** 63 - 1, amdb.InvalidArgumentError),
])
def test_increment_refuses_bad_arguments_before_writing(db, delta, initial, error):
    with pytest.raises(error):
        db.increment(b"c", delta, initial=initial)
    with pytest.raises(amdb.InvalidTypeError):
        db.increment("c")
    assert db.get(b"c") is None and len(db) == 0


def test_increment_without_waiting_reports_its_error_later(db):
    for _ in range(100):
        db.increment(b"c", 2, wait=False)
    db.put(b"s", b"abc")
    with pytest.raises(amdb.InvalidTypeError, match="8-byte counter"):
        assert db.increment(b"s", wait=False) is None    # sync="batch": raises here
        db.flush()                                       # async: here
    assert db.get(b"c") == counter(200) and db.get(b"s") == b"abc"
    db.put(b"t", b"1")
    assert db.get(b"t") == b"1"


# ---- put_if_absent and compare_and_set ---------------------------------------------

def test_put_if_absent(db):
    assert db.put_if_absent(b"k", b"1") is True
    assert db.put_if_absent(b"k", b"2") is False
    assert db[b"k"] == b"1" and len(db.history(b"k")) == 1
    db.delete(b"k")
    assert db.put_if_absent(b"k", bytearray(b"3")) is True
    assert db[b"k"] == b"3"


def test_compare_and_set(db):
    assert db.compare_and_set(b"k", b"x", b"1") is False        # absent is not b"x"
    assert db.compare_and_set(b"k", b"", b"1") is False         # nor the empty value
    assert db.compare_and_set(b"k", None, b"1") is True
    assert db.compare_and_set(b"k", None, b"2") is False
    assert db.compare_and_set(b"k", b"2", b"3") is False
    assert db.compare_and_set(b"k", b"1", b"") is True
    assert db.compare_and_set(b"k", b"", memoryview(b"4")) is True
    assert db.compare_and_set(b"k", b"44", b"5") is False       # same prefix, other length
    assert db[b"k"] == b"4"
    assert [v.value for v in db.history(b"k")] == [b"4", b"", b"1"]
    assert db.verify().ok


def test_compare_and_set_checks_sizes_first(db):
    half = db.max_value_size // 2 + 1
    with pytest.raises(amdb.ValueTooLargeError, match="expected and new value together"):
        db.compare_and_set(b"k", b"x" * half, b"y" * half)
    with pytest.raises(amdb.KeyTooLargeError):
        db.put_if_absent(b"k" * (db.max_key_size + 1), b"v")
    with pytest.raises(amdb.InvalidTypeError):
        db.compare_and_set(b"k", "str", b"v")
    assert len(db) == 0


def test_setdefault_is_atomic(db):
    results = []

    def race(value):
        results.append(db.setdefault(b"k", value))

    threads = [threading.Thread(target=race, args=(b"%d" % i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and results[0] == db[b"k"]
    assert len(db.history(b"k")) == 1


# ---- threads -------------------------------------------------------------------------

def test_threads_lose_no_increment(db):
    threads, per, keys = 8, 400, [b"k%d" % i for i in range(16)]
    seen = [[] for _ in range(threads)]

    def work(t):
        for i in range(per):
            key = keys[(i + t) % 16]
            seen[t].append((key, db.increment(key)))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(int.from_bytes(db[k], "big", signed=True) for k in keys) == threads * per
    # Linearizable: each key's results are 1..n, each handed out once.
    for key in keys:
        got = sorted(value for results in seen for k, value in results if k == key)
        assert got == list(range(1, len(got) + 1))


def test_threads_waiting_for_ring_room_keep_their_own_tickets(monkeypatch):
    """Regression: the result ticket once went through a Writer field, and a
    thread that let others run inside its send (to run the supervisor's
    checks, or to wait for ring room) sent another thread's ticket, or none
    ("left no result"). Checks due at every write, frequent thread switches
    and a tiny ring make every thread do so."""
    threads, per = 8, 2000
    with amdb.ParallelDB(workers=2, ring_size=1 << 16) as db:
        seen = [[] for _ in range(threads)]
        errors = []
        filler = b"f" * 4000

        def work(t):
            try:
                for i in range(per):
                    key = b"k%d" % ((i + t) % 8)
                    if i % 3 == 0:
                        db.increment(key, wait=False)
                        db.put(b"other%d" % t, filler)
                    else:
                        seen[t].append((key, db.increment(key)))
            except Exception as exc:       # reported below, with the thread's count
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        checks = supervisor.Supervisor.before_write

        def checks_that_let_others_run(self):
            time.sleep(0)                  # as any Python code may: other threads run here
            return checks(self)

        monkeypatch.setattr(supervisor.Supervisor, "before_write", checks_that_let_others_run)
        monkeypatch.setattr(supervisor, "LIVENESS_INTERVAL", 2e-5)   # checks due every 20 us
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not errors, errors[:3]
        db.flush()
        assert sum(int.from_bytes(db[b"k%d" % i], "big", signed=True) for i in range(8)) == threads * per
        for key in (b"k%d" % i for i in range(8)):
            got = [value for results in seen for k, value in results if k == key]
            assert len(got) == len(set(got))          # no result handed out twice


def test_threads_compare_and_set_loops_lose_nothing(db):
    threads, per = 6, 150

    def work():
        for _ in range(per):
            while True:
                old = db.get(b"n")
                new = counter((0 if old is None else int.from_bytes(old, "big", signed=True)) + 1)
                if db.compare_and_set(b"n", old, new):
                    break

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert db[b"n"] == counter(threads * per)
    assert len(db.history(b"n")) == threads * per


# ---- in write batches ------------------------------------------------------------------

def test_batch_read_modify_write_sees_the_batch_own_writes(db):
    db.put(b"a", b"0")
    with db.write_batch() as batch:
        batch.put(b"a", b"1")
        assert batch.compare_and_set(b"a", b"1", b"2") is None
        batch.increment(b"c", 3)
        batch.increment(b"c", 4)
        batch.put_if_absent(b"p", b"x")
        batch.delete(b"q")
    assert batch.result.count == 6
    assert db[b"a"] == b"2" and db[b"c"] == counter(7) and db[b"p"] == b"x"
    assert len({v.seq for v in db.history(b"c")}) == 1 and len(db.history(b"c")) == 2


@pytest.mark.parametrize("failing", ["compare_and_set", "put_if_absent", "increment"])
def test_a_failed_condition_rolls_the_whole_batch_back(db, failing):
    first, second = keys_of(0, b"w0-", 20), keys_of(1, b"w1-", 20)
    db.batch_put([(k, b"old") for k in first + second])
    before = db.digest()
    error = amdb.InvalidTypeError if failing == "increment" else amdb.ConditionFailedError
    with pytest.raises(error) as info:
        with db.write_batch() as batch:
            for k in first + second:
                batch.put(k, b"new")
            batch.increment(b"counter")
            getattr(batch, failing)(*{"compare_and_set": (second[3], b"old", b"x"),
                                      "put_if_absent": (second[3], b"x"),
                                      "increment": (second[3],)}[failing])
    assert "nothing of it was applied" in str(info.value)
    assert db.digest() == before
    assert db.batch_get(first + second) == [b"old"] * 40 and db.get(b"counter") is None
    # The database goes on, and the seq was not used up.
    with db.write_batch() as batch:
        batch.compare_and_set(second[3], b"old", b"x")
    assert db[second[3]] == b"x" and db.verify().ok


def test_prefixed_read_modify_write():
    with amdb.ParallelDB(workers=2) as db:
        users = db.prefixed(b"users/")
        assert users.increment(b"n") == 1
        assert users.put_if_absent(b"a", b"1") and not users.put_if_absent(b"a", b"2")
        assert users.compare_and_set(b"a", b"1", b"3")
        with users.write_batch() as batch:
            batch.increment(b"n", 2)
            batch.compare_and_set(b"a", b"3", b"4")
            batch.put_if_absent(b"b", b"5")
        assert dict(db.items()) == {b"users/n": counter(3), b"users/a": b"4", b"users/b": b"5"}


# ---- durability and crashes --------------------------------------------------------------

def test_log_replay_resolves_every_record_again_to_the_same_versions(tmp_path):
    path = tmp_path / "db"
    with amdb.ParallelDB(path, workers=2) as db:
        for i in range(300):
            db.increment(b"c%d" % (i % 7), i)
            db.compare_and_set(b"x%d" % (i % 5), None if i < 5 else b"%d" % (i - 5), b"%d" % i)
            db.put_if_absent(b"p%d" % (i % 11), b"%d" % i)
            if i % 50 == 0:
                db.put(b"c0", b"not a counter")
                with pytest.raises(amdb.InvalidTypeError):
                    db.increment(b"c0")
                db.delete(b"c0")
        try:
            with db.write_batch() as batch:
                batch.increment(b"c1", 1000)
                batch.put_if_absent(b"p0", b"never")
        except amdb.ConditionFailedError:
            pass
        contents, digest = dict(db.items()), db.digest()
        histories = {k: [(v.seq, v.value) for v in db.history(k)] for k in contents}
    with amdb.ParallelDB(path) as db:
        assert dict(db.items()) == contents and db.digest() == digest
        assert {k: [(v.seq, v.value) for v in db.history(k)] for k in contents} == histories
        assert db.verify().ok
        assert db.increment(b"c1") == int.from_bytes(contents[b"c1"], "big", signed=True) + 1


@pytest.mark.parametrize("point", ["after_records", "mid_publish"])
def test_a_worker_dying_under_an_increment_applies_it_once(point, monkeypatch):
    """A worker killed inside the SOLO chunk of an increment: its successor
    undoes what it left and applies the record again, so the caller gets its
    value and the counter counts the increment once."""
    keys = keys_of(1, b"c", 4)
    db = open_with_fault(monkeypatch, f"worker=1,point={point},after=30,action=segv,incarnations=1")
    seen = pids(db)
    try:
        results = []
        for i in range(120):
            try:
                results.append(db.increment(keys[i % 4]))
            except amdb.WorkerCrashedError as exc:      # allowed: then it was not applied
                assert exc.restarted
                results.append(None)
        assert db.stats()["worker_restarts"] == 1
        values = {k: int.from_bytes(db[k], "big", signed=True) for k in keys}
        done = [r for r in results if r is not None]
        assert sum(values.values()) == len(done)
        for k in keys:
            mine = [r for i, r in enumerate(results) if keys[i % 4] == k and r is not None]
            assert mine == list(range(1, values[k] + 1))
            assert len(db.history(k)) == values[k]
        assert db.verify().ok
        seen += pids(db)
    finally:
        db.close()
    assert wait_until(lambda: not shm_entries(os.getpid()))
    assert wait_until(lambda: not any(is_alive(pid) for pid in seen))
    assert not children_of(os.getpid())
