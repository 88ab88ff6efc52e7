"""Process and shared-memory helpers for the AmDb tests (no psutil: /proc only).

Used by conftest.py (leak checks) and by the process tests (test_hygiene,
test_concurrency). Everything here polls with a deadline; nothing sleeps to
synchronise.
"""
import os
import signal
import subprocess
import sys
import time

SHM_DIR = "/dev/shm"
POLL_INTERVAL = 0.01  # seconds between two looks at a condition


def wait_until(predicate, timeout=5.0, interval=POLL_INTERVAL):
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds pass.

    Returns the last value of ``predicate()`` (truthy on success), so tests
    write ``assert wait_until(lambda: ...), "what did not happen"``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def proc_stat(pid):
    """(state, ppid) of ``pid`` from /proc/<pid>/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself contain spaces or ')': split at the last ')'.
    rest = data.rsplit(b")", 1)[1].split()
    return rest[0].decode(), int(rest[1])


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def is_alive(pid):
    """True while ``pid`` exists and is not a zombie (a zombie has exited)."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X", "x")


def is_resource_tracker(pid):
    # multiprocessing's resource tracker lives as long as the process that
    # started it; it is not an AmDb worker.
    return "resource_tracker" in proc_cmdline(pid)


def children_of(pid, *, include_zombies=False, include_tracker=False):
    """Pids whose parent is ``pid`` (alive ones unless include_zombies)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is None or st[1] != pid:
            continue
        if not include_zombies and st[0] in ("Z", "X", "x"):
            continue
        if not include_tracker and is_resource_tracker(int(name)):
            continue
        found.append(int(name))
    return sorted(found)


def descendants_of(pid, **kwargs):
    result, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop(), **kwargs):
            result.append(child)
            todo.append(child)
    return sorted(result)


def shm_entries(owner_pid):
    """/dev/shm entries that belong to AmDb databases opened by ``owner_pid``."""
    prefix = f"amdb_{owner_pid}_"
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def kill_quietly(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def python_child(script, *args, stdin=True):
    """Start ``sys.executable -c script`` with line-buffered text pipes.

    The child runs in the repository root so that ``import amdb`` finds the
    same package as the tests do.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    # Python leaves SIGINT ignored in a child whose parent ignored it (some
    # library in the test process may have): the Ctrl-C tests need it handled.
    script = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" + script
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=root, env=env, text=True,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def read_line(proc, timeout=60.0):
    """Read one stdout line of ``proc`` within ``timeout`` seconds, or fail.

    A helper thread does the blocking read so that a hung child cannot hang
    the test run.
    """
    import threading
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        raise AssertionError(f"child {proc.pid} printed nothing within {timeout}s")
    line = box[0]
    if not line:
        err = ""
        try:
            proc.wait(timeout=5)
            err = proc.stderr.read()
        except subprocess.TimeoutExpired:
            pass
        raise AssertionError(
            f"child {proc.pid} closed stdout (rc={proc.returncode}); stderr:\n{err}")
    return line.rstrip("\n")


def reap(proc, timeout=10.0):
    """Make sure ``proc`` and every descendant it still has are gone."""
    if proc.poll() is None:
        for pid in descendants_of(proc.pid, include_tracker=True):
            kill_quietly(pid)
        kill_quietly(proc.pid)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_quietly(proc.pid)
        proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def assert_tables_given_back_after_a_write(db, keys, value):
    """Once no reader can be in the hash tables a database outgrew: its next
    write finishes the owner's drain, and the worker gives the tables back
    before it applies that write (it looks each time it wakes; layout.h,
    "Outgrown hash tables"). Every key still reads `value`."""
    db.batch_put([(b"after", b"x")])
    assert db.stats()["memory"]["total"]["released"] > 0
    assert db.batch_get(keys) == [value] * len(keys)
    assert db.verify().ok


def private_shm_available():
    """True when this process may run a child with its own small /dev/shm
    (root, util-linux unshare, tmpfs mounts allowed), as a container has."""
    import shutil
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


def run_with_private_shm(script, shm_mib, *args, timeout=120):
    """Run ``script`` (Python source) with a fresh tmpfs of ``shm_mib`` MiB as
    its /dev/shm, in a private mount namespace: (returncode, stdout, stderr).
    The tmpfs, and whatever the script leaves in it, goes with the namespace."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONFAULTHANDLER"] = "1"
    command = (f"mount -t tmpfs -o size={int(shm_mib)}m tmpfs /dev/shm && "
               'exec "$0" -c "$1" "${@:2}"')
    proc = subprocess.Popen(["unshare", "-m", "bash", "-c", command, sys.executable, script, *map(str, args)],
                            cwd=root, env=env, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        reap(proc)
    return proc.returncode, out, err
