"""db.write_batch() (issue 14): mixed puts and deletes streamed into the
rings, visible whole at the end of the block or not at all."""
import os
import signal
import threading
import tracemalloc

import pytest

import amdb


def test_puts_and_deletes_become_visible_together(make_db):
    db = make_db(workers=2)
    db.batch_put([(b"old%03d" % i, b"x") for i in range(100)])
    with db.write_batch() as wb:
        for i in range(100):
            wb.put(b"new%03d" % i, b"y")
            wb.delete(b"old%03d" % i)
        assert db.get(b"new000") is None and db.get(b"old000") == b"x"    # nothing visible yet...
    assert wb.result.count == 200 and wb.count == 200
    assert db.batch_get([b"new%03d" % i for i in range(100)]) == [b"y"] * 100   # ...then all of it
    assert db.batch_get([b"old%03d" % i for i in range(100)]) == [None] * 100
    assert len(db) == 100


def test_readers_never_see_part_of_a_write_batch(make_db):
    db = make_db(workers=3)
    keys = [b"w%04d" % i for i in range(2000)]
    db.batch_put([(k, b"0") for k in keys])
    stop = threading.Event()
    torn = []

    def reader():
        while not stop.is_set():
            values = set(db.batch_get(keys))
            if len(values) != 1:
                torn.append(values)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(1, 30):
            with db.write_batch() as wb:
                for k in keys:
                    wb.put(k, b"%d" % round_)
    finally:
        stop.set()
        thread.join()
    assert torn == []


def test_an_exception_in_the_block_keeps_nothing(make_db):
    db = make_db(workers=2)
    db.put(b"keep", b"1")
    with pytest.raises(KeyError):
        with db.write_batch() as wb:
            for i in range(50_000):
                wb.put(b"gone%05d" % i, b"x")
            wb.delete(b"keep")
            raise KeyError("the caller's own error")
    assert db.get(b"keep") == b"1" and db.get(b"gone00000") is None and len(db) == 1
    db.put(b"after", b"2")                   # the lock was let go
    assert db.get(b"after") == b"2"
    assert not db.verify().breaks


def test_a_batch_larger_than_the_ring_streams_in_bounded_memory(make_db):
    db = make_db(workers=2, ring_size=1 << 16)
    tracemalloc.start()
    with db.write_batch() as wb:
        for i in range(300_000):
            wb.put(b"big%07d" % i, b"v" * 64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20, peak             # no Python object kept per record
    assert len(db) == 300_000 and db.get(b"big0299999") == b"v" * 64


def test_writes_through_the_database_inside_the_block_are_refused(make_db):
    db = make_db(workers=2)
    with pytest.raises(amdb.Error) as info:
        with db.write_batch() as wb:
            wb.put(b"a", b"1")
            try:
                db.put(b"b", b"2")           # the same thread: a re-entrant write
            except amdb.Error:
                pass                          # swallowed: the batch fails anyway
    assert info.value.code == "reentrant_write"
    assert db.get(b"a") is None and db.get(b"b") is None


def test_other_threads_wait_and_a_batch_is_its_own_threads(make_db):
    db = make_db(workers=2)
    with db.write_batch() as wb:
        wb.put(b"x", b"1")
        failed = []
        t = threading.Thread(target=lambda: failed.append(pytest.raises(amdb.InvalidArgumentError, wb.put,
                                                                          b"y", b"2")))
        t.start()
        t.join()
        assert failed
    assert db.get(b"x") == b"1" and db.get(b"y") is None
    with pytest.raises(amdb.InvalidArgumentError):
        wb.put(b"z", b"3")                    # written already


def test_a_dropped_batch_lets_the_lock_go(make_db):
    db = make_db(workers=2)
    wb = db.write_batch()
    wb.put(b"never", b"1")
    del wb                                    # no write(): rolled back
    db.put(b"after", b"1")
    assert db.get(b"never") is None and db.get(b"after") == b"1"


def test_a_worker_killed_during_the_batch_fails_or_lands_it_whole(make_db):
    # As for db.write(): a successor either picks the batch up where its
    # predecessor died (the batch lands whole) or cannot (it fails whole).
    db = make_db(workers=2)
    victim = db._supervisor.procs[1].pid
    n = 200_000
    try:
        with db.write_batch() as wb:
            for i in range(n):
                wb.put(b"k%07d" % i, b"v")
                if i == n // 2:
                    os.kill(victim, signal.SIGKILL)
        landed = True
    except amdb.WorkerCrashedError:
        landed = False
    assert db._supervisor.procs[1].pid != victim
    if landed:
        assert len(db) == n and db.get(b"k%07d" % (n - 1)) == b"v"
    else:
        assert db.get(b"k0000000") is None and len(db) == 0
    with db.write_batch() as wb:
        wb.put(b"again", b"1")
    assert db.get(b"again") == b"1"
    assert not db.verify().breaks


def test_bad_input_raises_and_the_block_keeps_nothing(make_db):
    db = make_db(workers=2, max_key_size=64)
    with pytest.raises(amdb.InvalidTypeError):
        with db.write_batch() as wb:
            wb.put(b"a", b"1")
            wb.put("not bytes", b"2")
    with pytest.raises(amdb.KeyTooLargeError):
        with db.write_batch() as wb:
            wb.put(b"a", b"1")
            wb.put(b"k" * 65, b"2")
    assert db.get(b"a") is None and len(db) == 0
    wb = db.write_batch()
    wb.write()
    with pytest.raises(amdb.InvalidArgumentError):
        wb.put(b"late", b"1")


def test_a_durable_batch_survives_reopen(tmp_path):
    with amdb.ParallelDB(str(tmp_path / "db"), workers=2) as db:
        with db.write_batch() as wb:
            for i in range(10_000):
                wb.put(b"d%05d" % i, b"v%05d" % i)
            wb.delete(b"d00000")
    with amdb.ParallelDB(str(tmp_path / "db"), workers=2) as db:
        assert len(db) == 9_999 and db.get(b"d09999") == b"v09999" and db.get(b"d00000") is None
        assert not db.verify().breaks
