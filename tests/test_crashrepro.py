"""Fault injection (AMDB_FAULT), the owner's crash report, and the
crash-reproduction harness tools/crashrepro.py.

* Every injection point x action: the owner's write raises WorkerCrashedError
  naming the worker, its pid, the signal and the batch; what was acknowledged
  before is still readable; a new worker takes over and the database goes on,
  with the digest of a database that never saw the failed attempt; nothing
  is left in /dev/shm or as a process. (More in tests/test_respawn.py.)
* A hang: the worker sleeps at the point (state S, no CPU) and the owner's
  write waits until the worker is killed (here by the test; the owner's own
  hang detection, hang_timeout=, is tested in tests/test_respawn.py).
* The harness: exit status 0 for a clean run, 1 for an injected crash or hang
  (with the crashing worker, signal and our top frame in its summary), 2 for
  a harness that cannot run; under --gdb the backtrace names the injected
  function.

Under `make asan-test` (libasan preloaded) ASan takes an injected SIGSEGV
over: it reports it and the worker exits with status 1, which is what these
tests then expect.

No test sleeps to synchronise: workers announce a fault on stderr before it
fires, and the tests wait for that line (or poll with a deadline).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import amdb
from amdb._worker import FAULT_ACTIONS, FAULT_POINTS, parse_fault_spec
from amdb.native.hashing import slot_of
from amdb_testutil import (children_of, is_alive, kill_quietly, proc_stat, python_child, reap, read_line,
                           shm_entries, wait_until)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRASHREPRO = os.path.join(ROOT, "tools", "crashrepro.py")
POINTS = sorted(set(FAULT_POINTS) - {"mid_compact"})  # points of the apply path; mid_compact: test_compaction.py
SIGNALS = {"segv": signal.SIGSEGV, "abort": signal.SIGABRT}
GONE_WITHIN_S = 5.0
FIRST = [b"a%05d" % i for i in range(200)]       # acknowledged before the fault
SECOND = [b"b%05d" % i for i in range(2000)]     # the batch the fault hits
VICTIM = 1                                       # the worker (of 2) that faults
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def how_it_died(action):
    """(WorkerCrashedError.signal, words of its message) for an injected action."""
    if action == "segv" and UNDER_ASAN:
        return None, "exited with status 1"
    sig = SIGNALS[action]
    return sig, f"was killed by signal {int(sig)} ({sig.name})"


def passes_before_second_batch(point, workers=2, victim=VICTIM):
    """`after=` that lets FIRST through and fires in SECOND, on worker `victim`
    (slot s belongs to worker s % workers when a database opens)."""
    mine = sum(1 for k in FIRST if slot_of(k) % workers == victim)
    assert 0 < mine < 512      # one chunk: a batch's first chunk per worker holds up to 512 records
    return {"after_records": mine,      # records applied before the fault
            "mid_insert": mine,         # new keys linked before the fault (all of FIRST is new)
            "mid_link": mine,
            "mid_publish": 1}[point]    # chunks published before the fault


def fault_spec(point, action, incarnations=None):
    return (f"worker={VICTIM},point={point},after={passes_before_second_batch(point)},action={action}"
            + (f",incarnations={incarnations}" if incarnations else ""))


def assert_nothing_left(owner_pid, worker_pids=()):
    assert wait_until(lambda: not shm_entries(owner_pid), GONE_WITHIN_S), shm_entries(owner_pid)
    assert wait_until(lambda: not children_of(owner_pid), GONE_WITHIN_S), children_of(owner_pid)
    for pid in worker_pids:
        assert wait_until(lambda: not is_alive(pid), GONE_WITHIN_S), f"worker {pid} still alive"


# ---- the spec --------------------------------------------------------------------

def test_parse_fault_spec():
    assert parse_fault_spec(None) is None and parse_fault_spec("  ") is None
    assert parse_fault_spec("worker=1,point=mid_insert,after=5,action=segv") == \
        (1, FAULT_POINTS["mid_insert"], FAULT_ACTIONS["segv"], 5, -1)
    assert parse_fault_spec(" point = after_records , action = hang ") == \
        (-1, FAULT_POINTS["after_records"], FAULT_ACTIONS["hang"], 0, -1)
    assert parse_fault_spec("worker=any,point=mid_publish,action=abort")[0] == -1
    assert parse_fault_spec("worker=0,point=mid_publish,action=abort,incarnations=2")[4] == 2


@pytest.mark.parametrize("spec, says", [
    ("worker=1,point=mid_insert", "action= is missing"),
    ("worker=1,action=segv", "point= is missing"),
    ("point=nowhere,action=segv", "unknown point 'nowhere'"),
    ("point=mid_insert,action=explode", "unknown action 'explode'"),
    ("point=mid_insert,action=segv,after=-1", "after='-1'"),
    ("point=mid_insert,action=segv,after=1e3", "after='1e3'"),
    ("worker=one,point=mid_insert,action=segv", "worker='one'"),
    ("point=mid_insert,action=segv,when=now", "unknown key 'when'"),
    ("point=mid_insert,point=mid_publish,action=segv", "point is given twice"),
    ("point=mid_insert;action=segv", "unknown point 'mid_insert;action=segv'"),
    ("point=mid_insert,,action=segv", "is not key=value"),
    ("point=mid_insert,action=segv,incarnations=0", "incarnations='0'"),
    ("point=mid_insert,action=segv,incarnations=x", "incarnations='x'"),
])
def test_malformed_fault_spec_is_refused_clearly(spec, says, monkeypatch):
    with pytest.raises(amdb.InvalidArgumentError) as info:
        parse_fault_spec(spec)
    assert says in str(info.value) and "AMDB_FAULT" in str(info.value)
    assert info.value.code == "bad_fault_spec" and "point=" in info.value.hint
    # ParallelDB refuses it before it starts a worker.
    monkeypatch.setenv("AMDB_FAULT", spec)
    with pytest.raises(amdb.InvalidArgumentError, match="AMDB_FAULT"):
        amdb.ParallelDB(workers=1)
    assert not children_of(os.getpid())


def test_fault_for_a_worker_that_does_not_exist_is_refused(monkeypatch):
    monkeypatch.setenv("AMDB_FAULT", "worker=2,point=mid_insert,action=segv")
    with pytest.raises(amdb.InvalidArgumentError, match="names worker 2 but the database has 2 workers"):
        amdb.ParallelDB(workers=2)


def test_a_worker_refuses_a_malformed_spec_on_its_own():
    # A worker started with a bad spec (bypassing ParallelDB's check) says why
    # and exits 2 instead of running without its fault.
    env = dict(os.environ, AMDB_FAULT="point=mid_insert", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "amdb._worker", "/amdb_nonexistent_0", "4096", str(os.getpid())],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "AMDB_FAULT='point=mid_insert': action= is missing" in proc.stderr


# ---- crashes -----------------------------------------------------------------------

@pytest.mark.parametrize("action", sorted(SIGNALS))
@pytest.mark.parametrize("point", POINTS)
def test_injected_crash_raises_worker_crashed_error(point, action, monkeypatch, capfd):
    monkeypatch.setenv("AMDB_FAULT", fault_spec(point, action, incarnations=1))
    db = amdb.ParallelDB(workers=2)
    monkeypatch.delenv("AMDB_FAULT")       # the workers have read it
    try:
        workers = [w["pid"] for w in db.stats()["workers"]]
        success, acknowledged = db.batch_put([(k, b"v" + k) for k in FIRST])
        assert success and acknowledged.seq == 1
        with pytest.raises(amdb.WorkerCrashedError) as info:
            db.batch_put([(k, b"w") for k in SECOND])
        exc = info.value
        sig, words = how_it_died(action)
        assert exc.worker == VICTIM and exc.signal == sig
        message = str(exc)
        assert f"worker {VICTIM} (pid {workers[VICTIM]}) {words} " in message, message
        # It was applying the second batch, and had applied the first.
        assert "while applying batch seq 2 (chunk 2," in message, message
        assert "last applied: batch seq 1 (chunk 1)" in message, message
        # The fault that fired is the one asked for (Python and faults.h agree on the numbers).
        err = capfd.readouterr().err
        assert f"amdb fault injection: worker {VICTIM} (pid {workers[VICTIM]}) fires {action} at {point}" in err
        # Acknowledged data stays readable, from both arenas; the failed batch is invisible.
        assert db.batch_get(FIRST) == [b"v" + k for k in FIRST]
        assert all(db.get(k) == b"v" + k for k in FIRST[::17])
        assert list(db.scan(prefix=b"a", keys_only=True)) == FIRST
        assert db.batch_get(SECOND) == [None] * len(SECOND)
        assert len(db) == len(FIRST)
        # A new worker took over; the same batch now goes through, and the
        # failed attempt left no trace: not in the chains, not in the ledger.
        assert exc.restarted and "a new worker took over (restart 1)" in message, message
        successor = db.stats()["workers"][VICTIM]["pid"]
        assert successor != workers[VICTIM] and is_alive(workers[1 - VICTIM])
        db.batch_put([(k, b"w") for k in SECOND])
        assert db.batch_get(SECOND) == [b"w"] * len(SECOND) and len(db) == len(FIRST) + len(SECOND)
        assert db.verify().ok
        with amdb.ParallelDB(workers=2) as reference:
            reference.batch_put([(k, b"v" + k) for k in FIRST])
            reference.batch_put([(k, b"w") for k in SECOND])
            assert db.digest() == reference.digest()
        workers.append(successor)
    finally:
        db.close()
    assert_nothing_left(os.getpid(), workers)


def test_a_fault_for_every_worker_fires_in_each(monkeypatch, capfd):
    monkeypatch.setenv("AMDB_FAULT", "worker=any,point=after_records,after=0,action=segv")
    db = amdb.ParallelDB(workers=2)
    try:
        workers = [w["pid"] for w in db.stats()["workers"]]
        with pytest.raises(amdb.WorkerCrashedError) as info:
            db.batch_put([(k, b"v") for k in FIRST])
        assert info.value.signal == how_it_died("segv")[0]
        assert wait_until(lambda: not any(is_alive(p) for p in workers), GONE_WITHIN_S)
        err = capfd.readouterr().err
        for index, pid in enumerate(workers):
            assert f"worker {index} (pid {pid}) fires segv at after_records, pass 1" in err
        assert db.batch_get(FIRST) == [None] * len(FIRST) and len(db) == 0
    finally:
        db.close()
    assert_nothing_left(os.getpid(), workers)


def test_sigkill_report_names_what_the_worker_was_doing():
    # The owner's report comes from shared memory, so it works for a worker
    # that had no chance to say anything: killed while idle.
    db = amdb.ParallelDB(workers=2)
    try:
        db.batch_put([(k, b"v") for k in FIRST])
        victim = db.stats()["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: not is_alive(victim), GONE_WITHIN_S)
        # The next writes find it dead (the liveness poll, or a wait on it)
        # and replace it; a write in flight on it fails, the others go on.
        deadline = time.monotonic() + 10
        while db.stats()["worker_restarts"] == 0 and time.monotonic() < deadline:
            try:
                db.put(b"k", b"v")
            except amdb.WorkerCrashedError as exc:
                assert exc.restarted and exc.worker == 0
        message = db.stats()["workers"][0]["last_crash"]
        assert f"worker 0 (pid {victim}) was killed by signal 9 (SIGKILL)" in message, message
        assert "last applied: batch seq 1 (chunk 1)" in message, message
    finally:
        db.close()


def core_settings(pid):
    """(coredump_filter bits, (soft, hard) core size limit as text) of a process."""
    with open(f"/proc/{pid}/coredump_filter") as f:
        bits = int(f.read(), 16)
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max core file size"))
    return bits, tuple(line.split()[4:6])


@pytest.mark.parametrize("setting", ["1", "full"])
def test_core_dumps_setting(setting, monkeypatch):
    # AMDB_CORE_DUMPS=1 once let one injected abort write a 17 GB core: the
    # kernel dumps a worker's unlinked arena segment as anonymous shared
    # memory, its whole reserved size. "1" leaves shared mappings out.
    monkeypatch.setenv("AMDB_CORE_DUMPS", setting)
    mine, _ = core_settings(os.getpid())
    with open("/proc/self/limits") as f:
        hard = next(line for line in f if line.startswith("Max core file size")).split()[5]
    db = amdb.ParallelDB(workers=1)
    try:
        bits, (soft_limit, hard_limit) = core_settings(db.stats()["workers"][0]["pid"])
    finally:
        db.close()
    assert soft_limit == hard_limit == hard
    if setting == "1":
        assert bits == mine & ~0x0a     # no anonymous or file-backed shared memory
    else:
        assert bits == mine


# ---- hangs -------------------------------------------------------------------------

HANG_OWNER = r"""
import json, sys
import amdb
FIRST = [b"a%05d" % i for i in range(200)]
SECOND = [b"b%05d" % i for i in range(2000)]
db = amdb.ParallelDB(workers=2)
db.batch_put([(k, b"v" + k) for k in FIRST])
print(json.dumps([w["pid"] for w in db.stats()["workers"]]), flush=True)
result = {}
try:
    db.batch_put([(k, b"w") for k in SECOND])
    result["write"] = "returned"
except amdb.WorkerCrashedError as exc:
    result.update(write="WorkerCrashedError", worker=exc.worker, signal=exc.signal, message=str(exc))
result["first_ok"] = db.batch_get(FIRST) == [b"v" + k for k in FIRST]
result["second_invisible"] = db.batch_get(SECOND) == [None] * len(SECOND)
db.close()
print(json.dumps(result), flush=True)
"""


def read_stderr_until(proc, needle, timeout=60.0):
    """Read the child's stderr line by line until a line contains `needle`."""
    seen = []
    box = []

    def reader():
        for line in proc.stderr:
            seen.append(line)
            if needle in line:
                box.append(line)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    assert box, f"no {needle!r} on stderr within {timeout}s; got:\n{''.join(seen)}"
    return box[0]


@pytest.mark.parametrize("point", POINTS)
def test_injected_hang_blocks_the_write_until_the_worker_is_killed(point, monkeypatch):
    monkeypatch.setenv("AMDB_FAULT", fault_spec(point, "hang"))
    proc = python_child(HANG_OWNER, stdin=False)
    workers = []
    try:
        workers = json.loads(read_line(proc))
        hung = workers[VICTIM]
        read_stderr_until(proc, f"worker {VICTIM} (pid {hung}) fires hang at {point}")
        # It sleeps (no spinning), and the owner's write is still waiting.
        assert wait_until(lambda: (proc_stat(hung) or ("?",))[0] == "S", GONE_WITHIN_S), proc_stat(hung)
        assert proc.poll() is None
        os.kill(hung, signal.SIGKILL)
        result = json.loads(read_line(proc))
        assert result["write"] == "WorkerCrashedError", result
        assert result["worker"] == VICTIM and result["signal"] == signal.SIGKILL, result
        assert "while applying batch seq 2" in result["message"], result
        assert result["first_ok"] and result["second_invisible"], result
        assert proc.wait(timeout=30) == 0
        assert_nothing_left(proc.pid, workers)
    finally:
        reap(proc)
        for pid in workers:
            kill_quietly(pid)


def test_a_hung_worker_leaves_when_its_owner_dies(monkeypatch):
    monkeypatch.setenv("AMDB_FAULT", fault_spec("mid_insert", "hang"))
    proc = python_child(HANG_OWNER, stdin=False)
    workers = []
    try:
        workers = json.loads(read_line(proc))
        read_stderr_until(proc, f"fires hang at mid_insert")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in workers:   # no orphan: the hung one polls its parent while it sleeps
            assert wait_until(lambda: not is_alive(pid), GONE_WITHIN_S), f"worker {pid} outlived its owner"
        assert wait_until(lambda: not shm_entries(proc.pid), GONE_WITHIN_S)
    finally:
        reap(proc)
        for pid in workers:
            kill_quietly(pid)


# ---- the harness ---------------------------------------------------------------------

def crashrepro(tmp_path, *args, timeout=120):
    """Run tools/crashrepro.py; (exit status, summary.json, report dir)."""
    out = tmp_path / "report"
    env = dict(os.environ)
    env.pop("AMDB_FAULT", None)
    proc = subprocess.run([sys.executable, CRASHREPRO, *args, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    summary = {}
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
    return proc.returncode, summary, out, proc


def test_crashrepro_clean_run_exits_zero(tmp_path):
    code, summary, out, proc = crashrepro(tmp_path, "--scenario", "clean", "--plain")
    assert code == 0, proc.stdout + proc.stderr
    assert summary["verdict"] == "ok" and summary["problems"] == []
    assert "verdict: ok" in (out / "summary.txt").read_text()
    command = (out / "command.txt").read_text()
    assert "crashrepro_scenarios.py clean" in command
    assert "clean: 1000 items ok" in (out / "stdout.txt").read_text()


@pytest.mark.parametrize("point", ["after_records", "mid_publish"])
def test_crashrepro_plain_reports_an_injected_crash(tmp_path, point):
    code, summary, out, proc = crashrepro(
        tmp_path, "--scenario", "random-mix", "--seed", "3", "--plain",
        "--fault", f"worker=1,point={point},after=3,action=segv")
    assert code == 1, proc.stdout + proc.stderr
    assert summary["verdict"] == "crash", summary
    assert summary["crashing_process"].startswith("worker 1 (pid "), summary
    assert summary["signal"] == ("exit status 1" if UNDER_ASAN else "SIGSEGV (11)"), summary
    assert summary["top_frame"].startswith(f"amdb_fault_point_{point}"), summary
    assert "WorkerCrashedError: worker 1" in summary["owner_saw"], summary
    # The fault is part of the command to re-run.
    assert f"AMDB_FAULT=worker=1,point={point},after=3,action=segv" in (out / "command.txt").read_text()
    assert "Fatal Python error: Segmentation fault" in (out / "stderr.txt").read_text()
    if UNDER_ASAN:
        assert "AddressSanitizer: SEGV" in (out / "stderr.txt").read_text()


def test_crashrepro_workload_file_and_its_failure(tmp_path):
    workload = tmp_path / "workload.py"
    workload.write_text("import amdb\n"
                        "with amdb.ParallelDB(workers=WORKERS) as db:\n"
                        "    db.put(b'k', b'v')\n"
                        "    assert db.get(b'k') == b'wrong', 'a wrong answer'\n")
    code, summary, out, proc = crashrepro(tmp_path, "--workload", str(workload), "--plain", "--workers", "1")
    assert code == 1 and summary["verdict"] == "failed", summary
    assert "AssertionError: a wrong answer" in (out / "stderr.txt").read_text()


def test_crashrepro_cannot_run_exits_two(tmp_path):
    code, summary, out, proc = crashrepro(tmp_path, "--scenario", "clean", "--fault", "point=nowhere")
    assert code == 2 and "unknown point 'nowhere'" in proc.stderr
    if len(__import__("glob").glob(os.path.join(ROOT, "build", ".ext-asan.stamp"))) == 0:
        code, summary, out, proc = crashrepro(tmp_path, "--scenario", "clean", "--asan")
        assert code == 2 and "make asan" in proc.stderr


@pytest.mark.skipif(not shutil.which("gdb"), reason="gdb is not installed")
def test_crashrepro_gdb_backtrace_names_the_injected_function(tmp_path):
    started = time.monotonic()
    code, summary, out, proc = crashrepro(
        tmp_path, "--scenario", "random-mix", "--seed", "3", "--gdb", "--timeout", "50",
        "--fault", "worker=1,point=mid_insert,after=10,action=segv", timeout=60)
    elapsed = time.monotonic() - started
    assert code == 1, proc.stdout + proc.stderr
    assert summary["verdict"] == "crash", summary
    assert summary["crashing_process"].startswith("worker 1 (pid "), summary
    assert summary["signal"] == "SIGSEGV (11)", summary
    assert summary["top_frame"].startswith("amdb_fault_point_mid_insert ("), summary
    backtraces = (out / "backtraces.txt").read_text()
    assert "=== SIGSEGV in pid" in backtraces
    assert " in amdb_fault_point_mid_insert () " in backtraces, backtraces[:3000]
    # The Python stack: py-bt where CPython's gdb extension works, else faulthandler's.
    assert 'File "' in backtraces or "faulthandler" in summary["python_stack"], summary
    assert summary["backtrace_after_s"] is not None and summary["backtrace_after_s"] < elapsed
    assert elapsed < 60


@pytest.mark.skipif(not shutil.which("gdb"), reason="gdb is not installed")
def test_crashrepro_reports_a_hang_with_every_stack(tmp_path):
    code, summary, out, proc = crashrepro(
        tmp_path, "--scenario", "random-mix", "--seed", "3", "--plain", "--timeout", "2",
        "--fault", "worker=0,point=mid_publish,after=0,action=hang")
    assert code == 1, proc.stdout + proc.stderr
    assert summary["verdict"] == "hang" and summary["timed_out"], summary
    assert summary["hung_process"].startswith("worker 0 (pid "), summary
    backtraces = (out / "backtraces.txt").read_text()
    assert "amdb_fault_point_mid_publish" in backtraces and "nanosleep" in backtraces


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_crashrepro_valgrind_sees_the_invalid_write(tmp_path):
    code, summary, out, proc = crashrepro(
        tmp_path, "--scenario", "random-mix", "--items", "100", "--valgrind",
        "--fault", "worker=1,point=mid_insert,after=3,action=segv", timeout=600)
    assert code == 1, proc.stdout + proc.stderr
    assert summary["crashing_process"].startswith("worker 1"), summary
    first = summary["first_valgrind_error"]
    assert first["error"].startswith("Invalid write of size") and "amdb_fault_point_mid_insert" in first["top_frame"]


@pytest.mark.skipif(len(__import__("glob").glob(os.path.join(ROOT, "build", ".ext-asan.stamp"))) == 0,
                    reason="needs the ASan build in place (make asan)")
def test_crashrepro_asan_reports_the_injected_segv(tmp_path):
    code, summary, out, proc = crashrepro(
        tmp_path, "--scenario", "random-mix", "--seed", "3", "--asan",
        "--fault", "worker=1,point=mid_insert,after=10,action=segv", timeout=300)
    assert code == 1, proc.stdout + proc.stderr
    assert summary["verdict"] == "asan-report", summary
    assert "SEGV" in summary["signal"] and summary["crashing_process"].startswith("worker 1"), summary
    assert summary["top_frame"].startswith("amdb_fault_point_mid_insert"), summary
