"""gdb driver of tools/crashrepro.py --gdb (runs inside gdb: `gdb -x crashrepro_gdb.py`).

One gdb session follows the owner and every process it starts (workers are
`python -m amdb._worker` subprocesses): detach-on-fork off keeps each child
under gdb as an inferior of its own, schedule-multiple on runs them all.
ptrace follows children from the start, so no fault can fire before gdb is
there, and no attach permission (Yama ptrace_scope) is needed.

On a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGSYS) in any
process it logs `bt`, the faulting instruction and address, and `py-bt` when
CPython's gdb extension is loaded, then lets the signal through (so that
faulthandler prints its Python traceback and the owner sees the death): a
crashed worker is detached with it (let_die), the owner goes on with it. It
goes on until every process has exited. On SIGINT (crashrepro's timeout: a
hang) it logs every thread of every process, then kills them all.

Environment (set by crashrepro.py):
  CRASHREPRO_GDB_LOG     file for the backtraces (appended to as it goes)
  CRASHREPRO_GDB_RESULT  JSON written at the end: crashes, exits, hang
"""
import json
import os
import time

import gdb  # noqa: F401  (provided by gdb)

FATAL_SIGNALS = {"SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGSYS"}
MAX_FRAMES = 60
MAX_FAILED_CONTINUES = 20   # in a row, with no dead process to let go: give up

log = open(os.environ.get("CRASHREPRO_GDB_LOG", "gdb-backtraces.txt"), "a")
result = {"crashes": [], "exits": {}, "hang": False, "py_bt": None, "owner_exit": None,
          "started": time.time()}
pending_signals = []
pids = {}          # inferior number -> pid, while it lives


def note(text):
    # gdb reads symbols lazily and says so in the middle of a backtrace.
    text = "\n".join(line for line in text.splitlines() if not line.startswith("Reading symbols from "))
    log.write(text + "\n")
    log.flush()


def on_stop(event):
    if isinstance(event, gdb.SignalEvent):
        pending_signals.append(event.stop_signal)


def on_exit(event):
    inferior = getattr(event, "inferior", None)
    num = inferior.num if inferior is not None else None
    pid = pids.pop(num, None)
    code = event.exit_code if hasattr(event, "exit_code") else None
    if pid is not None:
        result["exits"][str(pid)] = code
    if num == 1:                     # the program gdb started: the owner
        result["owner_exit"] = code


gdb.events.stop.connect(on_stop)
gdb.events.exited.connect(on_exit)


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def run(command):
    try:
        return gdb.execute(command, to_string=True)
    except gdb.error as exc:
        return f"({command}: {exc})\n"


def frames():
    """The selected thread's frames, newest first: function, file, line, library."""
    out = []
    frame = gdb.newest_frame()
    while frame is not None and len(out) < MAX_FRAMES:
        sal = frame.find_sal()
        name = frame.name()
        pc = frame.pc()
        out.append({
            "function": name,
            "file": sal.symtab.filename if sal is not None and sal.symtab is not None else None,
            "line": sal.line if sal is not None else None,
            "library": gdb.solib_name(pc),
            "inlined": frame.type() == gdb.INLINE_FRAME,
        })
        try:
            frame = frame.older()
        except gdb.error:
            break
    return out


def python_backtrace():
    """py-bt's output, or None when CPython's gdb extension is not loaded or fails."""
    text = run("py-bt")
    ok = "Traceback (most recent call first)" in text and 'File "' in text
    if result["py_bt"] is None or ok:
        result["py_bt"] = "available" if ok else ("unavailable: " + text.strip().splitlines()[-1]
                                                  if text.strip() else "unavailable: no output")
    return text if ok else None


def record_crash(signal_name):
    inferior = gdb.selected_inferior()
    pid = inferior.pid
    if any(c["pid"] == pid for c in result["crashes"]):
        # faulthandler printed the Python traceback and re-raised the signal.
        note(f"--- pid {pid}: {signal_name} again (re-raised by faulthandler after its traceback)")
        return
    when = time.time()
    note(f"=== {signal_name} in pid {pid} (gdb inferior {inferior.num}): {cmdline(pid)}")
    note(run("bt -frame-arguments presence"))
    note(run("x/i $pc"))
    if signal_name in ("SIGSEGV", "SIGBUS"):
        note("fault address: " + run("p $_siginfo._sifields._sigfault.si_addr").strip())
    py = python_backtrace()
    note(py if py is not None else f"(py-bt {result['py_bt']}; see faulthandler's traceback in stderr)")
    result["crashes"].append({"pid": pid, "signal": signal_name, "cmdline": cmdline(pid),
                              "frames": frames(), "time": when, "python": py})


def let_die(inferior):
    """Detach from a crashed process other than the owner: gdb delivers the
    signal it stopped with as it lets go, so the process dies of it outside
    gdb (faulthandler prints its traceback first) and the owner sees the death
    as it would without gdb. Under gdb, the death of a process with several
    threads (each worker has a committer thread) can leave gdb 13 unable to
    resume the others ("Couldn't get registers: No such process")."""
    pid = inferior.pid
    out = run(f"detach inferiors {inferior.num}")
    if out.startswith("(detach"):
        note(out.strip())
    else:
        note(f"--- pid {pid}: detached, to die of its signal outside gdb")
        pids.pop(inferior.num, None)


def dump_everything(reason):
    note(f"=== {reason}: every thread of every process")
    for inferior in gdb.inferiors():
        if not inferior.pid:
            continue
        for thread in sorted(inferior.threads(), key=lambda t: t.num):
            thread.switch()
            note(f"--- pid {inferior.pid} thread {thread.num} (gdb {inferior.num}.{thread.num}): "
                 f"{cmdline(inferior.pid)}")
            note(run("bt -frame-arguments presence"))
            py = python_backtrace()
            if py is not None:
                note(py)


def live_inferiors():
    live = [i for i in gdb.inferiors() if i.pid]
    for i in live:
        pids[i.num] = i.pid
    return live


def process_gone(pid):
    """The process has exited (a zombie its parent has not reaped yet, or reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def forget_dead_inferiors():
    """gdb 13 can keep a process whose threads died at once (a fatal signal in a
    process with several threads) as live, with the selected thread's
    registers unreadable, so every `continue` fails ("Couldn't get registers:
    No such process"). Tell gdb to let such processes go; True if any."""
    dead = [i for i in gdb.inferiors() if i.pid and process_gone(i.pid)]
    for inferior in dead:
        note(f"--- pid {inferior.pid}: exited, but gdb still listed it; let go")
        if run(f"kill inferiors {inferior.num}").startswith("(kill"):
            run(f"detach inferiors {inferior.num}")
    return bool(dead)


def main():
    try:
        gdb.execute("run")
    except gdb.error as exc:
        note(f"gdb could not start the program: {exc}")
        result["error"] = str(exc)
        return
    failed_continues = 0
    while True:
        live_inferiors()
        while pending_signals:
            name = pending_signals.pop(0)
            if name in FATAL_SIGNALS:
                record_crash(name)
                if gdb.selected_inferior().num != 1:
                    let_die(gdb.selected_inferior())
            elif name == "SIGINT":
                result["hang"] = True
                dump_everything("interrupted (crashrepro timeout: hang?)")
                run("kill inferiors " + " ".join(str(i.num) for i in gdb.inferiors() if i.pid))
        live = live_inferiors()
        if not live:
            return
        if gdb.selected_inferior().pid == 0:
            run(f"inferior {live[0].num}")
        try:
            gdb.execute("continue")
            failed_continues = 0
        except gdb.error as exc:
            note(f"continue: {exc}")
            if not live_inferiors():
                return
            failed_continues += 1
            if not forget_dead_inferiors() and failed_continues >= MAX_FAILED_CONTINUES:
                note(f"=== gdb could not resume the processes {failed_continues} times: killing them")
                result["error"] = f"continue failed {failed_continues} times: {exc}"
                run("kill inferiors " + " ".join(str(i.num) for i in gdb.inferiors() if i.pid))
                return


try:
    main()
finally:
    result["finished"] = time.time()
    with open(os.environ.get("CRASHREPRO_GDB_RESULT", "gdb-result.json"), "w") as f:
        json.dump(result, f, indent=1)
    log.close()
