#!/usr/bin/env python3
"""Crash-reproduction harness: run a workload under gdb, valgrind, ASan or as
is, and leave a report directory that says which process died, of what, and
where in our code.

    .venv/bin/python tools/crashrepro.py --scenario prototype-batch --gdb
    AMDB_FAULT="worker=1,point=mid_insert,after=100,action=segv" \\
        .venv/bin/python tools/crashrepro.py --scenario random-mix --seed 3 --gdb
    .venv/bin/python tools/crashrepro.py --workload my_workload.py --valgrind

Workloads: a built-in --scenario (tools/crashrepro_scenarios.py: clean,
prototype-batch, random-mix, concurrent-readers, huge-values) or a Python
--workload file. The workload runs as the owner process; the owner starts
its workers as `python -m amdb._worker` subprocesses, so every mode follows
children:

  --plain     run it; with --core, crashes leave core files and their
              backtraces are taken with gdb afterwards
  --gdb       one gdb session follows the owner and every worker (follow
              forks, detach-on-fork off; tools/crashrepro_gdb.py); on a fatal
              signal it prints `bt` and `py-bt` of the crashing process
  --valgrind  memcheck with --trace-children=yes and tools/valgrind-python.supp;
              errors whose stack runs through our code are the findings
              (use `make debug` first for exact line numbers)
  --asan      the `make asan` build with libasan preloaded, as `make asan-test`
              does; needs `make asan` first (and `make build` to go back)

Environment passes through, AMDB_FAULT included (--fault SPEC sets it), so an
injected crash reproduces exactly. Workers get AMDB_WORKER_BANNER=1 (each one
names its index and pid on stderr).

Report (--out DIR, default crash-reports/<time>-<workload>-<mode>/):
command.txt (how to re-run), stdout.txt, stderr.txt, backtraces.txt (gdb),
valgrind.<pid>.log, asan.<pid>, summary.txt and summary.json.

Exit status: 0 no problem found; 1 a problem (a crash, a hang past --timeout,
a valgrind error in our code, an ASan/UBSan report, a failed workload);
2 the harness could not run (missing tool, wrong build, bad arguments).
"""
import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

HARNESS_STARTED = time.time()      # "backtrace after N s" counts from here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)        # amdb._worker: the AMDB_FAULT parser, core-dump setup
TOOLS = os.path.join(ROOT, "tools")
SCENARIOS_PY = os.path.join(TOOLS, "crashrepro_scenarios.py")
GDB_DRIVER = os.path.join(TOOLS, "crashrepro_gdb.py")
SUPPRESSIONS = os.path.join(TOOLS, "valgrind-python.supp")
SCENARIO_NAMES = ("clean", "prototype-batch", "random-mix", "concurrent-readers", "huge-values")

EXIT_NO_PROBLEM = 0
EXIT_PROBLEM = 1
EXIT_CANNOT_RUN = 2
WORKLOAD_WORKER_CRASHED = 70     # crashrepro_scenarios.EXIT_WORKER_CRASHED

DEFAULT_TIMEOUT = {"plain": 300, "gdb": 300, "asan": 600, "valgrind": 1800}   # seconds
DUMP_GRACE = 60                  # seconds gdb gets to dump the stacks of a hang

FATAL = {int(s): s.name for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                                   signal.SIGABRT, signal.SIGSYS)}
BANNER = re.compile(r"amdb worker (\d+) pid (\d+)")
FAULT_LINE = re.compile(r"amdb fault injection: worker (\d+) \(pid (\d+)\) fires (\w+) at (\w+), pass (\d+)")
OWNER_CAUGHT = re.compile(r"crashrepro: owner caught WorkerCrashedError: (worker (\d+) \(pid (\d+)\) "
                          r"(?:was killed by signal (\d+)[^;]*|exited with status (\d+)[^;]*).*)")
WORKER_SEGMENT = re.compile(r"amdb\._worker \S*_(\d+) ")


class CannotRun(Exception):
    """The harness cannot run this (exit status 2)."""


# ---- helpers ---------------------------------------------------------------------

def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def our_code(function=None, path=None):
    """Is a frame (function name, source or library path) in AmDb's own code?"""
    if function and (function.startswith("amdb_") or ("__pyx_" in function and "4amdb" in function)):
        return True
    if path:
        path = os.path.realpath(path) if os.path.isabs(path) else path
        return ((path.startswith(os.path.join(ROOT, "amdb") + os.sep)
                 or path.startswith(os.path.join(ROOT, "build") + os.sep)
                 or path.startswith(("amdb/", "build/cython-"))))
    return False


def worker_index_of(cmdline):
    m = WORKER_SEGMENT.search(cmdline + " ")
    return int(m.group(1)) if m else None


def python_gdb_extension(python):
    """CPython's gdb extension (py-bt) for `python`, or None."""
    if os.environ.get("CRASHREPRO_PYTHON_GDB"):
        return os.environ["CRASHREPRO_PYTHON_GDB"]
    real = os.path.realpath(python)
    candidates = [real + "-gdb.py"]
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname:
        lib = os.path.realpath(os.path.join(libdir, soname))
        candidates += [lib + "-gdb.py", "/usr/share/gdb/auto-load" + lib + "-gdb.py"]
    candidates.append("/usr/share/gdb/auto-load" + real + "-gdb.py")
    return next((c for c in candidates if os.path.isfile(c)), None)


def tool_env():
    """The environment for gdb itself: never with a preloaded sanitizer runtime
    (under `make asan-test` LD_PRELOAD holds libasan, and gdb hangs with it)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def gdb_base(python):
    """gdb options shared by every use: quiet, batch, no debuginfod, py-bt when we have it."""
    cmd = ["gdb", "-q", "-batch", "-nx", "-iex", "set debuginfod enabled off",
           "-iex", "set auto-load python-scripts off"]
    ext = python_gdb_extension(python)
    if ext:
        cmd += ["-iex", f"source {ext}"]
    return cmd, ext


def build_mode():
    """The mode of the extensions now in place (the Makefile's stamp), or None."""
    stamps = glob.glob(os.path.join(ROOT, "build", ".ext-*.stamp"))
    return os.path.basename(stamps[0])[5:-6] if len(stamps) == 1 else None


def descendants(pid):
    """Pids below `pid` (from /proc), children first."""
    parent_of = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    parent_of[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parent_of.items():
            if ppid == parent:
                found.append(child)
                todo.append(child)
    return found


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# ---- the run --------------------------------------------------------------------

def workload_command(args, python):
    cmd = [python, SCENARIOS_PY]
    cmd += ["--file", os.path.abspath(args.workload)] if args.workload else [args.scenario]
    cmd += ["--seed", str(args.seed), "--workers", str(args.workers)]
    if args.items is not None:
        cmd += ["--items", str(args.items)]
    return cmd


def wrap(mode, inner, report, python, env):
    """The command to run for `mode`, and the environment changes it needs."""
    if mode == "plain":
        return inner, {}
    if mode == "gdb":
        if not shutil.which("gdb"):
            raise CannotRun("--gdb needs gdb (apt-get install gdb)")
        cmd, _ = gdb_base(python)
        preload = env.pop("LD_PRELOAD", None)      # for the program, not for gdb
        if preload:
            cmd += ["-iex", f"set environment LD_PRELOAD={preload}"]
        cmd += ["-ex", "set pagination off", "-ex", "set confirm off", "-ex", "set startup-with-shell off",
                "-ex", "set detach-on-fork off", "-ex", "set follow-fork-mode parent",
                "-ex", "set follow-exec-mode same", "-ex", "set schedule-multiple on",
                "-ex", "set print thread-events off",
                "-ex", "handle SIGPIPE nostop noprint pass",
                "-x", GDB_DRIVER, "--args"] + inner
        return cmd, {"CRASHREPRO_GDB_LOG": os.path.join(report, "backtraces.txt"),
                     "CRASHREPRO_GDB_RESULT": os.path.join(report, "gdb-result.json")}
    if mode == "valgrind":
        if not shutil.which("valgrind"):
            raise CannotRun("--valgrind needs valgrind (apt-get install valgrind)")
        cmd = ["valgrind", "--trace-children=yes", f"--suppressions={SUPPRESSIONS}",
               f"--log-file={os.path.join(report, 'valgrind.%p.log')}", "--num-callers=40",
               "--fullpath-after=", "--read-inline-info=yes", "--leak-check=no"]
        return cmd + inner, {"PYTHONMALLOC": "malloc"}
    if mode == "asan":
        if build_mode() != "asan":
            raise CannotRun(f"--asan needs the ASan build in place (now: {build_mode() or 'unknown'}): "
                            "run `make asan` first, and `make build` afterwards to go back to release")
        cc = env.get("ASAN_CC", "gcc")
        try:
            libasan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                                     check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as exc:
            raise CannotRun(f"cannot find libasan.so with {cc}: {exc}")
        if not os.path.isabs(libasan):
            raise CannotRun(f"{cc} does not know libasan.so (install the compiler's ASan runtime)")
        # allow_user_segv_handler=0: ASan keeps SIGSEGV to itself (faulthandler
        # would take it over and ASan would then report the stack of the re-raise).
        return inner, {"LD_PRELOAD": libasan, "PYTHONMALLOC": "malloc",
                       "ASAN_OPTIONS": f"detect_leaks=0:allow_user_segv_handler=0:log_path={report}/asan",
                       "UBSAN_OPTIONS": f"print_stacktrace=1:log_path={report}/ubsan"}
    raise CannotRun(f"unknown mode {mode}")


def run_with_timeout(cmd, env, report, timeout, mode, python, core):
    """Run `cmd`; on timeout collect stacks (hang) and kill everything."""
    out = open(os.path.join(report, "stdout.txt"), "w")
    err = open(os.path.join(report, "stderr.txt"), "w")

    from amdb._worker import enable_core_dumps   # imported here, not in the forked child

    def raise_core_limit():
        enable_core_dumps(include_shared=os.environ.get("AMDB_CORE_DUMPS") == "full")

    started = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=report, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                            start_new_session=True, preexec_fn=raise_core_limit if core else None)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        if mode == "gdb":
            os.kill(proc.pid, signal.SIGINT)        # the driver dumps every stack, then kills
            try:
                proc.wait(timeout=DUMP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        elif mode in ("plain", "asan") and shutil.which("gdb"):
            dump_stacks(descendants(proc.pid) + [proc.pid], report, python)
        for pid in descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    finally:
        out.close()
        err.close()
    return proc.returncode, timed_out, started, time.time()


def dump_stacks(pids, report, python):
    """Attach gdb to each live process of a hung run: every thread's bt and py-bt."""
    base, _ = gdb_base(python)
    with open(os.path.join(report, "backtraces.txt"), "a") as log:
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            log.write(f"=== hang: pid {pid}: {cmdline}\n")
            log.flush()
            try:
                subprocess.run(base + ["-p", str(pid), "-ex", "thread apply all bt",
                                       "-ex", "thread apply all py-bt"], env=tool_env(),
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=DUMP_GRACE)
            except subprocess.TimeoutExpired:
                log.write(f"(gdb -p {pid} gave no answer within {DUMP_GRACE} s)\n")


# ---- analysis -------------------------------------------------------------------

def parse_stderr(text):
    """What the owner, the workers and faulthandler said on stderr."""
    found = {"workers": {}, "faults": [], "owner_caught": None, "fatal_python": []}
    for m in BANNER.finditer(text):
        found["workers"][int(m.group(2))] = int(m.group(1))
    for m in FAULT_LINE.finditer(text):
        found["faults"].append({"worker": int(m.group(1)), "pid": int(m.group(2)), "action": m.group(3),
                                "point": m.group(4), "pass": int(m.group(5))})
    m = OWNER_CAUGHT.search(text)
    if m:
        found["owner_caught"] = {"message": m.group(1), "worker": int(m.group(2)), "pid": int(m.group(3)),
                                 "signal": int(m.group(4)) if m.group(4) else None,
                                 "status": int(m.group(5)) if m.group(5) else None}
    found["fatal_python"] = re.findall(r"Fatal Python error: (.+)", text)
    return found


def top_frame_of_gdb(frames):
    for f in frames:
        if our_code(f.get("function"), f.get("file")) or our_code(None, f.get("library")):
            where = f"{f['file']}:{f['line']}" if f.get("file") else "?"
            lib = os.path.basename(f["library"]) if f.get("library") else "?"
            return f"{f.get('function')} ({where}, in {lib})"
    return None


GDB_BT_LINE = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(.*?\)(?: at (\S+):(\d+)| from (\S+))?", re.M)


def top_frame_of_bt_text(text):
    for m in GDB_BT_LINE.finditer(text):
        function, path, line, lib = m.groups()
        if our_code(function, path or lib):
            return f"{function} ({path}:{line})" if path else f"{function} ({lib or '?'})"
    return None


VALGRIND_ERROR = re.compile(
    r"^(Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|Mismatched free|"
    r"Source and destination overlap|Process terminating|Jump to the invalid address|Argument '|Invalid free)")
VALGRIND_FRAME = re.compile(r"^\s+(?:at|by) 0x[0-9A-F]+: (\S+) \((?:in )?([^)]*)\)")


def parse_valgrind_log(text):
    """(pid, command, [error blocks]) of one --log-file; a block is a list of lines."""
    pid, command, blocks, current = None, "", [], None
    for line in text.splitlines():
        m = re.match(r"==(\d+)== ?(.*)$", line)
        if not m:
            continue
        pid, body = int(m.group(1)), m.group(2)
        if body.startswith("Command: "):
            command = body[len("Command: "):]
        if not body.strip():
            if current:
                blocks.append(current)
            current = None
        elif current is not None:
            current.append(body)
        elif VALGRIND_ERROR.match(body):
            current = [body]
    if current:
        blocks.append(current)
    return pid, command, blocks


def valgrind_top_frame(block):
    for line in block:
        m = VALGRIND_FRAME.match(line)
        if m and our_code(m.group(1), m.group(2).rsplit(":", 1)[0]):
            return f"{m.group(1)} ({m.group(2)})"
    return None


ASAN_HEAD = re.compile(r"==(\d+)==ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer): (.*)")
ASAN_FRAME = re.compile(r"#\d+ 0x[0-9a-f]+ in (\S+) (\S+)")
UBSAN_LINE = re.compile(r"(\S+:\d+:\d+): runtime error: (.*)")


def analyse(args, mode, report, returncode, timed_out, started, finished, python):
    err = read(os.path.join(report, "stderr.txt"))
    said = parse_stderr(err)
    role_of = dict(said["workers"])           # pid -> worker index

    def role(pid, cmdline=""):
        index = role_of.get(pid, worker_index_of(cmdline) if cmdline else None)
        if index is not None:
            return f"worker {index} (pid {pid})"
        if "crashrepro_scenarios.py" in cmdline or pid == owner_pid:
            return f"owner (pid {pid})"
        return f"process {pid}" + (f" ({cmdline})" if cmdline else "")

    owner_pid = None
    s = {"verdict": "ok", "mode": mode, "problems": [], "crashing_process": None, "signal": None,
         "top_frame": None, "python_stack": None, "owner_saw": None, "fault": os.environ.get("AMDB_FAULT"),
         "workload": args.workload or f"scenario {args.scenario}", "seed": args.seed, "workers": args.workers,
         "returncode": returncode, "timed_out": timed_out, "wall_s": round(finished - started, 3),
         "backtrace_after_s": None, "notes": []}
    if said["owner_caught"]:
        s["owner_saw"] = "WorkerCrashedError: " + said["owner_caught"]["message"]

    def crash(pid, sig, cmdline="", top=None):
        """`sig`: a signal number, or a text (a sanitizer's report, "exit status 1")."""
        if s["crashing_process"] is None:
            s["crashing_process"] = role(pid, cmdline)
            s["signal"] = f"{signal_name(sig)} ({sig})" if isinstance(sig, int) else sig
            s["top_frame"] = top or s["top_frame"]
        s["problems"].append(f"{role(pid, cmdline)} died of {signal_name(sig)}" if isinstance(sig, int)
                             else f"{role(pid, cmdline)} died: {sig}")

    if mode == "gdb":
        result_path = os.path.join(report, "gdb-result.json")
        if os.path.exists(result_path):
            with open(result_path) as f:
                g = json.load(f)
            for c in g.get("crashes", []):
                if "crashrepro_scenarios.py" in c["cmdline"]:
                    owner_pid = c["pid"]
                sig = getattr(signal, c["signal"], None)
                crash(c["pid"], int(sig) if sig is not None else c["signal"], c["cmdline"],
                      top_frame_of_gdb(c["frames"]))
                if s["backtrace_after_s"] is None:
                    s["backtrace_after_s"] = round(c["time"] - HARNESS_STARTED, 3)
            if g.get("py_bt") and g["py_bt"] != "available":
                s["notes"].append(f"py-bt {g['py_bt']}: the Python stack is faulthandler's traceback in stderr.txt")
            if g.get("crashes"):
                s["python_stack"] = ("py-bt in backtraces.txt" if any(c.get("python") for c in g["crashes"])
                                     else "faulthandler's traceback in stderr.txt (py-bt unavailable)")
            if g.get("error"):
                s["problems"].append(f"gdb: {g['error']}")
            # gdb's own exit status says nothing: the owner's is what counts.
            returncode = g.get("owner_exit")
            s["returncode"] = returncode
        else:
            s["notes"].append("gdb left no result (it was killed?)")
        if not python_gdb_extension(python):
            s["notes"].append("CPython's gdb extension (python3.X-gdb.py / libpython.py) was not found: "
                              "no py-bt; set CRASHREPRO_PYTHON_GDB=/path/to/libpython.py")

    if mode == "valgrind":
        errors_ours = errors_elsewhere = 0
        for path in sorted(glob.glob(os.path.join(report, "valgrind.*.log"))):
            pid, command, blocks = parse_valgrind_log(read(path))
            for block in blocks:
                top = valgrind_top_frame(block)
                m = re.match(r"Process terminating with default action of signal (\d+)", block[0])
                if m:
                    crash(pid, int(m.group(1)), command, top)
                elif top is None:
                    errors_elsewhere += 1
                else:
                    errors_ours += 1
                    if errors_ours == 1:
                        s["first_valgrind_error"] = {"process": role(pid, command), "error": block[0],
                                                     "top_frame": top, "log": os.path.basename(path)}
                        if s["top_frame"] is None:
                            s["top_frame"] = top
        if errors_ours:
            s["problems"].append(f"valgrind: {errors_ours} error(s) with our code on the stack")
        if errors_elsewhere:
            s["notes"].append(f"valgrind: {errors_elsewhere} error(s) without our code on the stack "
                              "(not counted; see valgrind.*.log)")
        s["valgrind_errors_in_our_code"] = errors_ours
        if build_mode() != "debug":
            s["notes"].append(f"the {build_mode()} build is in place: `make debug` first for exact stacks")

    if mode == "asan":
        for path in sorted(glob.glob(os.path.join(report, "asan.*")) + glob.glob(os.path.join(report, "ubsan.*"))):
            text = read(path)
            m = ASAN_HEAD.search(text)
            u = UBSAN_LINE.search(text)
            pid = int(path.rsplit(".", 1)[1]) if path.rsplit(".", 1)[1].isdigit() else None
            top = next((f"{fn} ({where})" for fn, where in ASAN_FRAME.findall(text) if our_code(fn, where.rsplit(":", 2)[0])),
                       None)
            if m:
                what = f"{m.group(2)}: {m.group(3).split(' (pc ')[0]}"
            elif u:
                what = f"UBSan: {u.group(2)} at {u.group(1)}"
            else:
                continue
            s["problems"].append(f"{role(pid)}: {what} ({os.path.basename(path)})")
            s["sanitizer_reports"] = s.get("sanitizer_reports", 0) + 1
            if s["crashing_process"] is None:
                s["crashing_process"], s["signal"], s["top_frame"] = role(pid), what, top

    if args.core:
        cores = sorted(glob.glob(os.path.join(report, "core*")))
        pattern = read("/proc/sys/kernel/core_pattern").strip()
        if cores and shutil.which("gdb"):
            base, _ = gdb_base(python)
            with open(os.path.join(report, "backtraces.txt"), "a") as log:
                for core in cores:
                    try:
                        text = subprocess.run(base + ["-ex", "bt", "-ex", "py-bt", os.path.realpath(python), core],
                                              capture_output=True, text=True, timeout=DUMP_GRACE,
                                              env=tool_env()).stdout
                    except subprocess.TimeoutExpired:
                        text = f"(gdb gave no answer within {DUMP_GRACE} s)"
                    log.write(f"=== core file {os.path.basename(core)}\n{text}\n")
                    if s["top_frame"] is None:
                        s["top_frame"] = top_frame_of_bt_text(text)
        elif not cores:
            s["notes"].append(f"no core file in the report directory (core_pattern: {pattern!r})")

    # Deaths the mode itself did not see (plain runs; workers the owner reported).
    caught = said["owner_caught"]
    if caught and not any(f"(pid {caught['pid']})" in p for p in s["problems"]):
        # A worker that exits with a status is as dead as one killed by a signal
        # (under ASan, a SEGV ends in exit status 1).
        crash(caught["pid"], caught["signal"] or f"exit status {caught['status']}")
    if returncode is not None and returncode < 0 and not timed_out:
        owner_pid = owner_pid or 0
        s["problems"].append(f"the owner process died of {signal_name(-returncode)}")
        if s["crashing_process"] is None:
            s["crashing_process"], s["signal"] = "owner", f"{signal_name(-returncode)} ({-returncode})"
    if s["top_frame"] is None and said["faults"]:
        f = said["faults"][0]
        s["top_frame"] = f"amdb_fault_point_{f['point']} (injected {f['action']}; from its stderr line)"
    if s["python_stack"] is None and said["fatal_python"]:
        s["python_stack"] = "faulthandler's traceback in stderr.txt"
    if said["faults"]:
        s["injected"] = said["faults"]

    if timed_out:
        s["problems"].append(f"no finish within {args.timeout} s (hang?): stacks in backtraces.txt")
        s["python_stack"] = s["python_stack"] or "every process's stacks in backtraces.txt"
        hung = [f for f in said["faults"] if f["action"] == "hang"]
        if hung:
            s["hung_process"] = role(hung[0]["pid"])
    elif returncode == 1:
        s["problems"].append("the workload failed (traceback in stderr.txt)")
    elif returncode is not None and returncode > 0 and returncode != WORKLOAD_WORKER_CRASHED:
        s["problems"].append(f"exit status {returncode}")

    if s.get("sanitizer_reports"):
        s["verdict"] = "asan-report"
    elif s["crashing_process"]:
        s["verdict"] = "crash"
    elif timed_out:
        s["verdict"] = "hang"
    elif s.get("valgrind_errors_in_our_code"):
        s["verdict"] = "valgrind-errors"
    elif s["problems"]:
        s["verdict"] = "failed"
    return s


def write_summary(report, s):
    lines = [f"verdict: {s['verdict']}",
             f"mode: {s['mode']}",
             f"workload: {s['workload']}, seed {s['seed']}, workers {s['workers']}",
             f"fault injection: AMDB_FAULT={s['fault']}" if s["fault"] else "fault injection: none",
             f"crashing process: {s['crashing_process'] or '-'}",
             f"signal: {s['signal'] or '-'}",
             *([f"hung process: {s['hung_process']} (an injected hang)"] if s.get("hung_process") else []),
             f"top native frame in our code: {s['top_frame'] or '-'}",
             f"python stack: {s['python_stack'] or '-'}",
             f"owner saw: {s['owner_saw'] or '-'}",
             f"exit status of the run: {s['returncode']}" + (" (timed out)" if s["timed_out"] else ""),
             f"wall time: {s['wall_s']} s" + (f"; first backtrace after {s['backtrace_after_s']} s"
                                               if s["backtrace_after_s"] is not None else "")]
    if s.get("first_valgrind_error"):
        e = s["first_valgrind_error"]
        lines.append(f"first valgrind error in our code: {e['error']} in {e['process']} at {e['top_frame']} "
                     f"({e['log']})")
    lines += [f"problem: {p}" for p in s["problems"]]
    lines += [f"note: {n}" for n in s["notes"]]
    lines.append("files: " + ", ".join(sorted(os.listdir(report)) + ["summary.txt", "summary.json"]))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(report, "summary.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(report, "summary.json"), "w") as f:
        json.dump(s, f, indent=1, default=str)
    return text


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--scenario", choices=SCENARIO_NAMES)
    what.add_argument("--workload", metavar="FILE.py", help="a Python file (SEED, WORKERS, ITEMS are set)")
    how = parser.add_mutually_exclusive_group()
    for mode in ("plain", "gdb", "valgrind", "asan"):
        how.add_argument(f"--{mode}", dest="mode", action="store_const", const=mode)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=None, help="workload scale (see crashrepro_scenarios.py)")
    parser.add_argument("--fault", metavar="SPEC", help="set AMDB_FAULT=SPEC for the run (see amdb/_worker.py)")
    parser.add_argument("--core", action="store_true",
                        help="allow core files (AMDB_CORE_DUMPS=1; RLIMIT_CORE raised) and take their backtraces")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before the run counts as hung (default: plain/gdb 300, asan 600, valgrind 1800)")
    parser.add_argument("--out", metavar="DIR", help="report directory (default crash-reports/<time>-...)")
    args = parser.parse_args(argv)
    args.mode = args.mode or "plain"
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT[args.mode]
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    python = sys.executable
    env = dict(os.environ)
    if args.fault is not None:
        env["AMDB_FAULT"] = args.fault
        os.environ["AMDB_FAULT"] = args.fault     # for the summary
    env["AMDB_WORKER_BANNER"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if args.core:
        env.setdefault("AMDB_CORE_DUMPS", "1")
    name = os.path.splitext(os.path.basename(args.workload))[0] if args.workload else args.scenario
    report = os.path.abspath(args.out or os.path.join(
        ROOT, "crash-reports", time.strftime("%Y%m%d-%H%M%S") + f"-{name}-{args.mode}"))
    os.makedirs(report, exist_ok=True)
    inner = workload_command(args, python)
    try:
        cmd, extra = wrap(args.mode, inner, report, python, env)
        if args.fault is not None:
            from amdb._worker import parse_fault_spec
            parse_fault_spec(args.fault)
    except (CannotRun, ValueError) as exc:
        sys.stderr.write(f"crashrepro: {exc}\n")
        return EXIT_CANNOT_RUN
    env.update(extra)
    shown_env = {k: env[k] for k in ("AMDB_FAULT", "AMDB_CORE_DUMPS", "LD_PRELOAD", "ASAN_OPTIONS",
                                     "UBSAN_OPTIONS", "PYTHONMALLOC") if k in env}
    with open(os.path.join(report, "command.txt"), "w") as f:
        harness = [python, os.path.join(TOOLS, "crashrepro.py")] + argv
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (("AMDB_FAULT", env.get("AMDB_FAULT")),)
                          if v and args.fault is None)
        f.write("# re-run the harness:\n" + (prefix + " " if prefix else "") + shlex.join(harness) + "\n")
        f.write("# the run itself (cwd: this directory):\n"
                + " ".join(f"{k}={shlex.quote(v)}" for k, v in shown_env.items())
                + (" " if shown_env else "") + "AMDB_WORKER_BANNER=1 " + shlex.join(cmd) + "\n")
        f.write("# the workload alone:\n" + " ".join(f"{k}={shlex.quote(env[k])}" for k in ("AMDB_FAULT",) if k in env)
                + (" " if "AMDB_FAULT" in env else "") + shlex.join(inner) + "\n")
    returncode, timed_out, started, finished = run_with_timeout(cmd, env, report, args.timeout, args.mode,
                                                                python, args.core)
    summary = analyse(args, args.mode, report, returncode, timed_out, started, finished, python)
    text = write_summary(report, summary)
    sys.stdout.write(text + f"report: {report}\n")
    return EXIT_NO_PROBLEM if summary["verdict"] == "ok" else EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
