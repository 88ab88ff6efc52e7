"""amdb.audit: the asynchronous audit log (issue 3).

Everything synchronises with ``flush()`` or by polling with a deadline
(``wait_until``); nothing sleeps to wait for the writer thread. Failures of the
disk are simulated for real where Linux allows it as root (/dev/full gives
ENOSPC, a directory replaced by a file gives ENOTDIR) and with the module's
``_os_write`` indirection otherwise.
"""
import errno
import gc
import json
import os
import shutil
import threading
import time
import zlib

import pytest

from amdb import audit
from amdb_testutil import wait_until

WRITER = "amdb-audit-writer"
DEADLINE_S = 5.0


def writer_threads():
    return [t for t in threading.enumerate() if t.name == WRITER and t.is_alive()]


@pytest.fixture(autouse=True)
def _no_writer_left_behind(monkeypatch):
    # Retry a failing file quickly so the failure tests stay fast.
    monkeypatch.setattr(audit._Writer, "retry_interval", 0.02)
    yield
    assert wait_until(lambda: not writer_threads(), DEADLINE_S), \
        f"audit writer threads left behind: {writer_threads()}"


@pytest.fixture
def logpath(tmp_path):
    return str(tmp_path / "logs" / "audit.log")  # the directory does not exist yet


def ops(records):
    return [r for r in records if "op" in r]


def events(records, name):
    return [r for r in records if r.get("event") == name]


def assert_numbers_increase(records):
    ns = [r["n"] for r in records]
    assert all(b == a + 1 for a, b in zip(ns, ns[1:])), ns


# ---- contents ----------------------------------------------------------------

def test_contents_after_a_run(logpath):
    with audit.AuditLog(logpath) as log:
        log.event("open", workers=4, path=None)
        log.write_op("put", 1, 1, 1, 0x1234)
        log.write_op("batch_put", 5000, 2, 5001, (1 << 64) - 1)
        log.write_op("delete", 1, 5002, 5002, 0)

        def other():
            log.write_op("batch_delete", 3, 5003, 5005, 42)
        t = threading.Thread(target=other, name="deleter")
        t.start()
        t.join()
        log.event("compact", worker=1, freed=123)
        log.event("close")
        assert log.flush()
        st = log.stats()
        assert st["written"] == 7 and st["dropped"] == 0 and st["errors"] == 0
        assert st["queue_len"] == 0 and st["path"] == os.path.abspath(logpath)
        assert st["current_bytes"] == os.path.getsize(logpath)
        tid = t.ident

    recs, bad = audit.read_report(logpath)
    assert bad == 0
    assert [r.get("op") or r.get("event") for r in recs] == [
        "open", "put", "batch_put", "delete", "batch_delete", "compact", "close"]
    assert [r["n"] for r in recs] == list(range(1, 8))
    now = time.time()
    assert all(now - 60 < r["t"] <= now for r in recs)
    open_, put, bput, _, bdel, compact, _ = recs
    assert open_["workers"] == 4 and open_["path"] is None
    assert put == {**put, "keys": 1, "first_seq": 1, "last_seq": 1,
                   "key_digest": "0000000000001234", "pid": os.getpid(),
                   "tid": threading.get_ident(), "thread": "MainThread"}
    assert bput["key_digest"] == "ffffffffffffffff" and bput["keys"] == 5000
    assert (bput["first_seq"], bput["last_seq"]) == (2, 5001)
    assert bdel["thread"] == "deleter" and bdel["tid"] == tid
    assert compact["worker"] == 1 and compact["freed"] == 123
    assert list(audit.read(logpath)) == recs
    # Every line is one JSON object whose crc covers the rest of it.
    with open(logpath, "rb") as f:
        for line in f:
            rec = json.loads(line)
            crc = rec.pop("crc")
            assert zlib.crc32(json.dumps(rec, separators=(",", ":")).encode()) == crc


def test_clock_and_reopen_continue_numbering(logpath):
    with audit.AuditLog(logpath, clock=lambda: 1234.5) as log:
        for i in range(5):
            log.write_op("put", 1, i + 1, i + 1, i)
    with audit.AuditLog(logpath) as log:
        log.event("open")
    recs = list(audit.read(logpath))
    assert [r["n"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all(r["t"] == 1234.5 for r in recs[:5])


def test_order_and_numbers_with_many_threads(logpath):
    n_threads, per_thread = 4, 2000
    with audit.AuditLog(logpath) as log:
        def work(k):
            for i in range(per_thread):
                log.write_op("put", 1, i, i, k)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.flush()
        assert log.stats()["dropped"] == 0
    recs = ops(audit.read(logpath))
    assert len(recs) == n_threads * per_thread
    assert_numbers_increase(recs)
    for k in range(n_threads):  # each thread's records in the order of its calls
        mine = [r["first_seq"] for r in recs if r["key_digest"] == "%016x" % k]
        assert mine == list(range(per_thread))


def test_bad_arguments(logpath):
    for kwargs in ({"max_bytes": 0}, {"backups": -1}, {"queue_size": 0},
                   {"queue_size": True}, {"max_bytes": 1.5}):
        with pytest.raises(ValueError):
            audit.AuditLog(logpath, **kwargs)
    with pytest.raises(TypeError):
        audit.AuditLog(logpath, clock=3)
    with pytest.raises(ValueError):
        audit.AuditLog("")
    with audit.AuditLog(logpath) as log:
        for name in ("n", "crc", "pid", "thread"):
            with pytest.raises(ValueError, match="reserved"):
                log.event("open", **{name: 1})
        log.event("odd", value=object(), data=b"\x00")  # written as repr, not an error
        assert log.flush()
    (rec,) = audit.read(logpath)
    assert rec["value"].startswith("<object") and rec["data"] == repr(b"\x00")


def test_read_missing_log_yields_nothing(tmp_path):
    assert list(audit.read(str(tmp_path / "nope.log"))) == []
    assert audit.read_report(str(tmp_path / "nope.log")) == ([], 0)


# ---- crc ---------------------------------------------------------------------

def test_crc_detects_corrupted_and_truncated_lines(logpath):
    with audit.AuditLog(logpath) as log:
        for i in range(20):
            log.write_op("put", 1, i + 1, i + 1, i)
    with open(logpath, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    assert len(lines) == 20
    # Line 5: one digit changed, still valid JSON; line 9: a byte of the crc itself.
    lines[4] = lines[4].replace(b'"first_seq":5', b'"first_seq":6')
    i = lines[8].rindex(b'"crc":') + 7
    lines[8] = lines[8][:i] + bytes([(lines[8][i] - 48 + 1) % 10 + 48]) + lines[8][i + 1:]
    # Last line cut short, as by a crash in the middle of a write.
    lines[19] = lines[19][:len(lines[19]) // 2]
    with open(logpath, "wb") as f:
        f.write(b"".join(lines))

    recs, bad = audit.read_report(logpath)
    assert bad == 3
    assert [r["first_seq"] for r in recs] == [i for i in range(1, 20) if i not in (5, 9)]
    assert list(audit.read(logpath)) == recs

    # Re-opened: the cut line is ended first, so only it stays lost.
    with audit.AuditLog(logpath) as log:
        log.event("recovered")
    recs2, bad2 = audit.read_report(logpath)
    assert bad2 == 3 and recs2[:-1] == recs
    assert recs2[-1]["event"] == "recovered" and recs2[-1]["n"] == 20  # after n=19


# ---- rotation ----------------------------------------------------------------

def test_rotation_keeps_backups_and_reads_in_order(logpath):
    max_bytes, backups = 2000, 3
    with audit.AuditLog(logpath, max_bytes=max_bytes, backups=backups) as log:
        for i in range(300):
            log.write_op("batch_put", 10, 10 * i + 1, 10 * i + 10, i)
            if i % 50 == 0:
                assert log.flush()  # rotate inside several write batches
        assert log.flush()
        st = log.stats()
        assert st["rotations"] > backups + 2
    names = sorted(os.listdir(os.path.dirname(logpath)))
    assert names == ["audit.log"] + ["audit.log.%d" % k for k in range(1, backups + 1)]
    for name in names:
        p = os.path.join(os.path.dirname(logpath), name)
        assert os.path.getsize(p) <= max_bytes
        first = next(audit.read(p, include_rotated=False))
        assert first["event"] == "rotated"
        assert first["previous"] == "audit.log.1"

    recs, bad = audit.read_report(logpath)
    assert bad == 0
    assert_numbers_increase(recs)
    seqs = [r["first_seq"] for r in ops(recs)]
    assert seqs == sorted(seqs) and seqs[-1] == 2991
    # The newest records survive; the oldest were rotated away.
    assert len(ops(recs)) < 300
    assert seqs == list(range(seqs[0], 2992, 10))
    # include_rotated=False: the current file only, the tail of the same sequence.
    current = list(audit.read(logpath, include_rotated=False))
    assert current == recs[-len(current):]


def test_rotation_with_no_backups(logpath):
    with audit.AuditLog(logpath, max_bytes=600, backups=0) as log:
        for i in range(50):
            log.write_op("put", 1, i + 1, i + 1, i)
    assert os.listdir(os.path.dirname(logpath)) == ["audit.log"]
    recs = list(audit.read(logpath))
    assert recs[0]["event"] == "rotated" and recs[0]["previous"] is None
    assert ops(recs)[-1]["first_seq"] == 50
    assert_numbers_increase(recs)


def test_record_bigger_than_max_bytes_is_written_whole(logpath):
    with audit.AuditLog(logpath, max_bytes=100, backups=2) as log:
        for i in range(5):
            log.event("big", blob="x" * 300, i=i)
    recs, bad = audit.read_report(logpath)
    assert bad == 0 and [r["i"] for r in events(recs, "big")][-1] == 4
    assert_numbers_increase(recs)


# ---- overflow: the writer is stuck, callers are not ------------------------------

class StuckWrites:
    """Make the writer thread block inside os.write until released."""

    def __init__(self, monkeypatch):
        self.entered = threading.Event()
        self.release = threading.Event()
        real = audit._os_write

        def write(fd, data):
            self.entered.set()
            self.release.wait(DEADLINE_S * 4)
            return real(fd, data)
        monkeypatch.setattr(audit, "_os_write", write)


def test_queue_overflow_drops_without_blocking(logpath, monkeypatch):
    stuck = StuckWrites(monkeypatch)
    log = audit.AuditLog(logpath, queue_size=100)
    try:
        log.write_op("put", 1, 0, 0, 0)
        assert stuck.entered.wait(DEADLINE_S), "the writer never tried to write"
        calls = 10_000
        t0 = time.perf_counter()
        for i in range(calls):
            log.write_op("put", 1, i + 1, i + 1, i)
        elapsed = time.perf_counter() - t0
        assert elapsed < 1.0, f"{calls} write_op calls took {elapsed:.3f}s with the writer stuck"
        st = log.stats()
        assert st["queue_len"] == 100
        assert st["dropped"] == calls - 100
        assert not log.flush(timeout=0.05)  # the writer is still stuck
    finally:
        stuck.release.set()
    assert log.flush()
    log.event("after")
    log.close()
    recs, bad = audit.read_report(logpath)
    assert bad == 0
    assert_numbers_increase(recs)
    (note,) = events(recs, "dropped")
    assert note["count"] == calls - 100 and note["total"] == calls - 100
    assert len(ops(recs)) == 101
    assert recs[-1]["event"] == "after"
    assert log.stats()["written"] == len(recs)


def test_dropped_note_is_written_even_if_nothing_else_comes(logpath, monkeypatch):
    stuck = StuckWrites(monkeypatch)
    log = audit.AuditLog(logpath, queue_size=1)
    try:
        log.write_op("put", 1, 1, 1, 1)
        assert stuck.entered.wait(DEADLINE_S)
        log.write_op("put", 1, 2, 2, 2)  # queued
        log.write_op("put", 1, 3, 3, 3)  # dropped
        log.write_op("put", 1, 4, 4, 4)  # dropped
    finally:
        stuck.release.set()
    # No flush, no new record: the writer notes the drop on its own.
    assert wait_until(lambda: events(audit.read(logpath), "dropped"), DEADLINE_S)
    log.close()
    recs = list(audit.read(logpath))
    assert [r["first_seq"] for r in ops(recs)] == [1, 2]
    assert events(recs, "dropped")[0]["count"] == 2


# ---- the disk fails ------------------------------------------------------------

def check_outage_noted(recs, lost, error_text):
    (note,) = events(recs, "write_error")
    assert error_text in note["error"]
    assert note["dropped"] == lost and note["errors"] >= 1 and note["down_s"] >= 0
    assert_numbers_increase(recs)


def test_disk_full_simulated(logpath, monkeypatch):
    full = threading.Event()
    real = audit._os_write

    def write(fd, data):
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)
    monkeypatch.setattr(audit, "_os_write", write)

    with audit.AuditLog(logpath) as log:
        log.write_op("put", 1, 1, 1, 1)
        assert log.flush()
        full.set()
        t0 = time.perf_counter()
        for i in range(2000):
            log.write_op("put", 1, i + 2, i + 2, i)
        elapsed = time.perf_counter() - t0
        assert elapsed < 1.0, elapsed
        assert not log.flush()  # those records could not be written
        st = log.stats()
        assert st["failing"] and st["errors"] >= 1 and st["dropped"] == 2000
        log.write_op("put", 1, 9999, 9999, 0)  # lost too: still full
        assert wait_until(lambda: log.stats()["errors"] >= 3, DEADLINE_S), \
            "the writer does not retry"
        full.clear()
        assert wait_until(lambda: not log.stats()["failing"], DEADLINE_S)
        log.write_op("put", 1, 10_000, 10_000, 0)
        assert log.flush()
        assert log.stats()["dropped"] == 2001
    recs, bad = audit.read_report(logpath)
    assert bad == 0
    check_outage_noted(recs, 2001, "No space left")
    assert [r["first_seq"] for r in ops(recs)] == [1, 10_000]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_for_real_with_dev_full(logpath):
    os.makedirs(os.path.dirname(logpath))
    os.symlink("/dev/full", logpath)  # every write gives ENOSPC, even as root
    with audit.AuditLog(logpath) as log:
        for i in range(500):
            log.write_op("put", 1, i + 1, i + 1, i)
        assert not log.flush()
        assert wait_until(lambda: log.stats()["errors"] >= 2, DEADLINE_S)
        st = log.stats()
        assert st["failing"] and st["dropped"] == 500
        os.unlink(logpath)  # space again: the next retry creates a regular file
        assert wait_until(lambda: not log.stats()["failing"], DEADLINE_S)
        log.write_op("put", 1, 501, 501, 0)
        assert log.flush()
    assert not os.path.islink(logpath)
    recs, bad = audit.read_report(logpath)
    assert bad == 0
    check_outage_noted(recs, 500, "No space left")
    assert [r["first_seq"] for r in ops(recs)] == [501]


def test_directory_replaced_by_a_file(logpath):
    logdir = os.path.dirname(logpath)
    with audit.AuditLog(logpath, max_bytes=1500, backups=2) as log:
        log.write_op("put", 1, 1, 1, 1)
        assert log.flush()
        # The directory disappears and a file takes its name: the next rotation
        # fails, and so does every open until the directory comes back.
        shutil.rmtree(logdir)
        with open(logdir, "w") as f:
            f.write("not a directory")
        t0 = time.perf_counter()
        for i in range(200):
            log.write_op("put", 1, i + 2, i + 2, i)
        assert time.perf_counter() - t0 < 1.0
        assert not log.flush()
        assert wait_until(lambda: log.stats()["errors"] >= 3, DEADLINE_S)
        lost = log.stats()["dropped"]
        assert log.stats()["failing"] and lost > 0
        os.unlink(logdir)  # the writer recreates the directory on its next try
        assert wait_until(lambda: not log.stats()["failing"], DEADLINE_S)
        log.write_op("put", 1, 1000, 1000, 0)
        assert log.flush()
        assert log.stats()["dropped"] == lost
    recs, bad = audit.read_report(logpath)
    assert bad == 0
    (note,) = events(recs, "write_error")
    assert note["dropped"] == lost and note["errors"] >= 3
    assert ops(recs)[-1]["first_seq"] == 1000
    assert_numbers_increase(recs)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o500")
def test_unwritable_directory_for_real(logpath):
    logdir = os.path.dirname(logpath)
    os.makedirs(logdir)
    os.chmod(logdir, 0o500)
    try:
        with audit.AuditLog(logpath) as log:
            log.write_op("put", 1, 1, 1, 1)
            assert not log.flush()
            assert log.stats()["failing"]
            os.chmod(logdir, 0o700)
            assert wait_until(lambda: not log.stats()["failing"], DEADLINE_S)
            log.write_op("put", 1, 2, 2, 2)
            assert log.flush()
    finally:
        os.chmod(logdir, 0o700)
    recs = list(audit.read(logpath))
    assert "Permission denied" in events(recs, "write_error")[0]["error"]


def test_exception_in_writer_does_not_kill_it(logpath, monkeypatch):
    boom = threading.Event()
    real = audit._os_write

    def write(fd, data):
        if boom.is_set():
            boom.clear()
            raise RuntimeError("not an OSError")
        return real(fd, data)
    monkeypatch.setattr(audit, "_os_write", write)
    with audit.AuditLog(logpath) as log:
        boom.set()
        log.write_op("put", 1, 1, 1, 1)
        assert wait_until(lambda: log.stats()["errors"] == 1, DEADLINE_S)
        assert log._w.thread.is_alive()
        log.write_op("put", 1, 2, 2, 2)
        assert log.flush()
    assert [r["first_seq"] for r in ops(audit.read(logpath))] == [2]


# ---- lifecycle ---------------------------------------------------------------

def test_close_is_idempotent_and_joins_the_thread(logpath):
    log = audit.AuditLog(logpath)
    thread = log._w.thread
    assert thread.is_alive() and thread.daemon
    for i in range(1000):
        log.write_op("put", 1, i, i, i)
    log.close()
    assert not thread.is_alive()
    assert log.closed
    log.close()
    log.close(timeout=0)
    assert len(ops(audit.read(logpath))) == 1000  # close wrote what was queued
    log.write_op("put", 1, 1, 1, 1)  # after close: no error, counted as dropped
    log.event("late")
    assert log.stats()["dropped"] == 2
    assert not log.flush()
    assert not writer_threads()


def test_garbage_collected_log_stops_its_thread(logpath):
    log = audit.AuditLog(logpath)
    log.write_op("put", 1, 1, 1, 1)
    thread = log._w.thread
    del log
    gc.collect()
    assert wait_until(lambda: not thread.is_alive(), DEADLINE_S)
    assert len(ops(audit.read(logpath))) == 1


def test_inert_in_a_forked_child(logpath):
    with audit.AuditLog(logpath) as log:
        log.write_op("put", 1, 1, 1, 1)
        assert log.flush()
        pid = os.fork()
        if pid == 0:  # child: no writer thread here; calls must return at once
            code = 1
            try:
                for i in range(100_000):
                    log.write_op("put", 1, i, i, i)
                log.event("child")
                code = 0 if (not log.flush(0.1) and log.stats()["dropped"] == 100_001) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        log.write_op("put", 1, 2, 2, 2)
    assert [r["first_seq"] for r in ops(audit.read(logpath))] == [1, 2]
