"""Nothing survives a database: no /dev/shm segment, no worker process.

Each case runs the owner in a child Python process (so that killing it cannot
hurt pytest), reads the worker pids it prints, and polls with a deadline until
the segments and workers are gone. Everything a test started is killed and
reaped in ``finally``.
"""
import gc
import json
import os
import signal
import threading

import pytest

from amdb_testutil import (
    children_of, is_alive, kill_quietly, proc_cmdline, proc_stat, python_child, reap,
    read_line, shm_entries, wait_until,
)

GONE_WITHIN_S = 5.0  # API.md: workers exit within ~1 s when the owner dies
N_KEYS = 2000

PREAMBLE = r"""
import gc, json, os, sys
import amdb
db = amdb.ParallelDB(workers=2)
keys = [b"h%05d" % i for i in range(N_KEYS)]
db.batch_put((k, b"v" + k) for k in keys)
print(json.dumps({"pid": os.getpid(),
                  "workers": [w["pid"] for w in db.stats()["workers"]]}), flush=True)
""".replace("N_KEYS", str(N_KEYS))

CASES = {
    # Every case waits for a line first: the test checks the workers'
    # parentage before the owner closes or goes.
    "close": "sys.stdin.readline()\ndb.close()\nprint('done', flush=True)\nsys.stdin.readline()\n",
    "del_gc": "sys.stdin.readline()\ndel db\ngc.collect()\nprint('done', flush=True)\nsys.stdin.readline()\n",
    "exit_without_close": "sys.stdin.readline()\nprint('done', flush=True)\n",
    "sys_exit_with_error": "sys.stdin.readline()\nprint('done', flush=True)\nsys.exit(3)\n",
    "os_exit": "sys.stdin.readline()\nprint('done', flush=True)\nos._exit(0)\n",
    "idle": "print('done', flush=True)\nsys.stdin.readline()\n",
    "in_flight": r"""
def items():
    for i in range(50_000_000):
        if i == 300_000:
            print('done', flush=True)
        yield (b"f%09d" % i, b"x" * 24)
db.batch_put(items())
print('finished?!', flush=True)
""",
}


def _start(case):
    proc = python_child(PREAMBLE + CASES[case])
    info = json.loads(read_line(proc, timeout=60))
    assert info["pid"] == proc.pid
    return proc, info["workers"]


def _cleanup(proc, workers):
    for pid in workers:
        if is_alive(pid) and "python" in proc_cmdline(pid):
            kill_quietly(pid)
    reap(proc)


def _assert_nothing_left(owner_pid, workers):
    assert wait_until(lambda: not any(is_alive(p) for p in workers), GONE_WITHIN_S), \
        f"workers still alive: {[p for p in workers if is_alive(p)]}"
    assert wait_until(lambda: not shm_entries(owner_pid), GONE_WITHIN_S), \
        f"left in /dev/shm: {shm_entries(owner_pid)}"


def _assert_started_cleanly(proc, workers):
    assert len(workers) == 2 and len(set(workers)) == 2
    for pid in workers:
        assert is_alive(pid)
        assert proc_stat(pid)[1] == proc.pid, "a worker is not a child of its owner"
    # Segments are unlinked as soon as every worker attached.
    assert wait_until(lambda: not shm_entries(proc.pid), GONE_WITHIN_S), \
        f"segments still linked while open: {shm_entries(proc.pid)}"


@pytest.mark.parametrize("case", ["close", "del_gc"])
def test_owner_alive_releases_everything(case):
    proc, workers = _start(case)
    try:
        _assert_started_cleanly(proc, workers)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert read_line(proc) == "done"
        _assert_nothing_left(proc.pid, workers)
        # No other child of the owner either (the owner is still running).
        assert wait_until(lambda: not children_of(proc.pid), GONE_WITHIN_S), \
            f"owner still has children {children_of(proc.pid)}"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        _cleanup(proc, workers)


@pytest.mark.parametrize("case", ["exit_without_close", "sys_exit_with_error", "os_exit"])
def test_owner_exit_without_close(case):
    proc, workers = _start(case)
    try:
        _assert_started_cleanly(proc, workers)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert read_line(proc) == "done"
        rc = proc.wait(timeout=30)
        assert rc == {"exit_without_close": 0, "sys_exit_with_error": 3, "os_exit": 0}[case], \
            proc.stderr.read()
        _assert_nothing_left(proc.pid, workers)
    finally:
        _cleanup(proc, workers)


def test_interpreter_exit_is_quick_and_quiet():
    proc, workers = _start("exit_without_close")
    try:
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert read_line(proc) == "done"
        proc.wait(timeout=15)
        err = proc.stderr.read()
        assert proc.returncode == 0
        assert "Traceback" not in err, err
        assert "leaked" not in err, err  # e.g. multiprocessing resource_tracker warnings
        _assert_nothing_left(proc.pid, workers)
    finally:
        _cleanup(proc, workers)


@pytest.mark.parametrize("case", ["idle", "in_flight"])
def test_kill_9_owner(case):
    proc, workers = _start(case)
    try:
        _assert_started_cleanly(proc, workers)
        assert read_line(proc, timeout=120) == "done"
        if case == "in_flight":
            assert proc.poll() is None, "the big batch finished before the kill"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        _assert_nothing_left(proc.pid, workers)
    finally:
        _cleanup(proc, workers)


WORKER_CRASH = PREAMBLE + r"""
victim_index = 0
victim = int(sys.stdin.readline())   # the parent killed worker 0 already
result = {}
try:
    db.batch_put((b"n%05d" % i, b"x") for i in range(5000))  # touches every worker
    result["write"] = "no error"
except amdb.WorkerCrashedError as exc:
    result.update(write="WorkerCrashedError", worker=exc.worker, signal=exc.signal,
                  code=exc.code, hint=exc.hint, message=str(exc), restarted=exc.restarted,
                  is_amdb_error=isinstance(exc, amdb.Error))
except BaseException as exc:
    result["write"] = repr(exc)
try:
    db.put(b"again", b"x")
    db.batch_put((b"again%05d" % i, b"x") for i in range(5000))
    result["second_write"] = "no error"
except amdb.WorkerCrashedError as exc:
    result["second_write"] = "WorkerCrashedError"
except BaseException as exc:
    result["second_write"] = repr(exc)
stats = db.stats()
result["restarts"] = stats["worker_restarts"]
result["last_crash"] = stats["workers"][victim_index]["last_crash"]
result["pids"] = [w["pid"] for w in stats["workers"]]
result["second_ok"] = db.batch_get([b"again%05d" % i for i in range(5000)]) == [b"x"] * 5000
try:
    result["batch_get_ok"] = db.batch_get(keys) == [b"v" + k for k in keys]
    result["get_ok"] = all(db.get(k) == b"v" + k for k in keys)
    result["scan_ok"] = [k for k in db.scan(prefix=b"h", keys_only=True)] == keys
    result["partial_batch_invisible"] = db.batch_get([b"n%05d" % i for i in range(5000)])
    result["partial_batch_invisible"] = (
        result["write"] != "WorkerCrashedError"
        or result["partial_batch_invisible"].count(None) == 5000)
    result["len"] = len(db)
except BaseException as exc:
    result["reads"] = repr(exc)
try:
    db.close()
    result["closed"] = db.closed
except BaseException as exc:
    result["closed"] = repr(exc)
print(json.dumps(result), flush=True)
sys.stdin.readline()
"""


def test_kill_9_one_worker():
    proc = python_child(WORKER_CRASH)
    workers = []
    try:
        info = json.loads(read_line(proc, timeout=60))
        workers = info["workers"]
        _assert_started_cleanly(proc, workers)
        victim_index = 0
        victim = workers[victim_index]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: not is_alive(victim), GONE_WITHIN_S)
        proc.stdin.write(f"{victim}\n")
        proc.stdin.flush()
        result = json.loads(read_line(proc, timeout=60))
        # A worker that died between calls is replaced before the next write
        # (the liveness poll) or by it (its wait finds the worker gone): that
        # write then fails whole, or goes through.
        assert result["write"] in ("WorkerCrashedError", "no error"), result
        if result["write"] == "WorkerCrashedError":
            assert result["is_amdb_error"] and result["code"] and result["hint"]
            # The error names the dead worker (by index; its pid is accepted too).
            assert result["worker"] in (victim_index, victim), result
            assert result["signal"] == signal.SIGKILL and result["restarted"] is True, result
        assert result["restarts"] == 1, result
        assert f"worker 0 (pid {victim}) was killed by signal 9 (SIGKILL)" in result["last_crash"], result
        # The database goes on: later writes work, on the new worker too.
        assert result["second_write"] == "no error" and result["second_ok"] is True, result
        assert result["pids"][0] != victim and result["pids"][1] == workers[1], result
        # Data written before the crash is still readable, a failed batch is not.
        assert result.get("batch_get_ok") is True, result
        assert result.get("get_ok") is True, result
        assert result.get("scan_ok") is True, result
        assert result.get("partial_batch_invisible") is True, result
        first = 0 if result["write"] == "WorkerCrashedError" else 5000
        assert result.get("len") == N_KEYS + first + 1 + 5000, result
        assert result["closed"] is True, result
        workers = workers + result["pids"]
        # close() ended the surviving worker while the owner still runs.
        _assert_nothing_left(proc.pid, workers)
        assert wait_until(lambda: not children_of(proc.pid), GONE_WITHIN_S), \
            f"owner still has children {children_of(proc.pid)}"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        _cleanup(proc, workers)


WORKER_CRASH_IN_FLIGHT = PREAMBLE + r"""
def items():
    for i in range(2_000_000):
        if i == 200_000:
            print('in flight', flush=True)
            sys.stdin.readline()      # the parent kills a worker now
        yield (b"f%08d" % i, b"y" * 16)
result = {}
try:
    db.batch_put(items())
    result["write"] = "no error"
except amdb.WorkerCrashedError as exc:
    result.update(write="WorkerCrashedError", worker=exc.worker)
except BaseException as exc:
    result["write"] = repr(exc)
result["old_data_ok"] = db.batch_get(keys) == [b"v" + k for k in keys]
result["keys_iterated"] = sum(1 for _ in db.keys())
probe = [b"f%08d" % i for i in range(0, 2_000_000, 997)]
result["batch_invisible"] = db.batch_get(probe) == [None] * len(probe)
result["batch_whole"] = db.batch_get(probe) == [b"y" * 16] * len(probe)
result["len"] = len(db)
db.close()
result["closed"] = db.closed
print(json.dumps(result), flush=True)
sys.stdin.readline()
"""


def test_kill_9_worker_during_big_batch():
    proc = python_child(WORKER_CRASH_IN_FLIGHT)
    workers = []
    try:
        info = json.loads(read_line(proc, timeout=60))
        workers = info["workers"]
        _assert_started_cleanly(proc, workers)
        assert read_line(proc, timeout=60) == "in flight"
        os.kill(workers[1], signal.SIGKILL)
        assert wait_until(lambda: not is_alive(workers[1]), GONE_WITHIN_S)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = json.loads(read_line(proc, timeout=60))  # no hang on the dead worker
        assert result["old_data_ok"] is True, result
        if result["write"] == "WorkerCrashedError":
            # It died applying a chunk: the batch fails whole.
            assert result["worker"] in (1, workers[1]), result
            assert result["batch_invisible"] is True, result
            assert result["keys_iterated"] == N_KEYS, result
            assert result["len"] == N_KEYS, result  # len() must not count the failed batch
        else:
            # It died between chunks (the generator paused): its successor
            # carried the batch on from the ring, and the batch is whole.
            assert result["write"] == "no error", result
            assert result["batch_whole"] is True, result
            assert result["keys_iterated"] == result["len"] == N_KEYS + 2_000_000, result
        assert result["closed"] is True, result
        _assert_nothing_left(proc.pid, workers)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        _cleanup(proc, workers)


USE_AFTER_CLOSE = r"""
import gc, sys
import numpy as np
import amdb

# Arrays and bytes handed out stay valid after close (they are copies).
db = amdb.ParallelDB(workers=2)
db.put_array(np.arange(1000, dtype=np.uint32), np.arange(1000, dtype=np.uint64))
values, found = db.get_array(np.arange(1000, dtype=np.uint32), dtype=np.uint64)
svalues, _ = db.get_array(np.arange(1000, dtype=np.uint32))
got = db.get(b"\x00\x00\x00\x07")
many = db.batch_get([i.to_bytes(4, "big") for i in range(1000)])
db.close()
gc.collect()
assert found.all() and values.tolist() == list(range(1000))
assert svalues.tolist() == [i.to_bytes(8, "big").rstrip(b"\x00") for i in range(1000)]
assert got == (7).to_bytes(8, "big") and many[999] == (999).to_bytes(8, "big")

# A scan iterator whose database has no other reference left.
def orphan_iterator():
    db = amdb.ParallelDB(workers=2)
    db.batch_put((b"o%04d" % i, b"v") for i in range(500))
    it = db.scan()
    next(it)
    return it

it = orphan_iterator()
gc.collect()
try:
    rest = list(it)
    assert len(rest) == 499, len(rest)
except amdb.ClosedError:
    pass
del it
gc.collect()

# Many databases opened and dropped without close().
for _ in range(5):
    d = amdb.ParallelDB(workers=1)
    d.put(b"a", b"b")
    it = d.keys()
    del d
    gc.collect()
    try:
        list(it)
    except amdb.ClosedError:
        pass
print("OK", flush=True)
"""


def test_no_crash_using_results_and_iterators_after_close_or_gc():
    proc = python_child(USE_AFTER_CLOSE, stdin=False)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        reap(proc)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{out}\n{err[-4000:]}"
    assert out.strip() == "OK"
    assert not shm_entries(proc.pid)


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


def _amdb_mappings():
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "amdb_" in line)


def test_open_close_cycles_leak_nothing():
    import amdb
    # Warm up (imports, lazily created helpers) before taking the baseline.
    amdb.ParallelDB(workers=1).close()
    fds, threads, maps = _fd_count(), threading.active_count(), _amdb_mappings()
    children = set(children_of(os.getpid()))
    for i in range(15):
        db = amdb.ParallelDB(workers=2)
        db.batch_put((b"c%d" % j, b"v") for j in range(100))
        assert len(db) == 100
        if i % 3 == 0:
            with db:
                pass
        elif i % 3 == 1:
            db.close()
        else:
            del db  # garbage collection shuts it down
            gc.collect()
    assert wait_until(lambda: set(children_of(os.getpid())) <= children, GONE_WITHIN_S)
    assert wait_until(lambda: _fd_count() <= fds, GONE_WITHIN_S), (fds, _fd_count())
    assert threading.active_count() <= threads
    assert _amdb_mappings() <= maps


FORKED_CHILD_EXITS = r"""
import gc, os, sys
import amdb
db = amdb.ParallelDB(workers=2)
db.put(b"a", b"1")
pid = os.fork()
if pid == 0:
    # The child may read the inherited database; it leaves through normal
    # interpreter shutdown (atexit, garbage collection), as a script would.
    ok = db.get(b"a") == b"1"
    if MODE == "gc":
        del db
        gc.collect()
    sys.exit(0 if ok else 5)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
db.put(b"b", b"2")            # the parent's workers must still be there
db.batch_put([(b"c", b"3")])
assert db.batch_get([b"a", b"b", b"c"]) == [b"1", b"2", b"3"]
db.close()
print("OK", flush=True)
"""


@pytest.mark.parametrize("mode", ["exit", "gc"])
def test_forked_child_exit_does_not_stop_the_parents_workers(mode):
    proc = python_child(FORKED_CHILD_EXITS.replace("MODE", repr(mode)), stdin=False)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{out}\n{err[-3000:]}"
    assert out.strip() == "OK"
