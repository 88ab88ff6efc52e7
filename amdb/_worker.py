"""Entry point of a worker process:
``python -m amdb._worker SEGMENT SIZE OWNER_PID [DURABLE_PLAN [RESPAWN]]``.

SEGMENT is the partition segment's name, or ``fd:N:INDEX`` for a successor
of crashed worker INDEX, which inherits the owner's descriptor N (the name is
gone by then). DURABLE_PLAN and RESPAWN are Python literals (amdb.storage.worker_plan,
amdb.native.worker.loop.run_worker), ``None`` when absent.

Workers are fresh interpreters started by the owner (spawn semantics: no
fork of a threaded process, and, unlike multiprocessing's spawn, no re-import
of the user's __main__). A worker attaches to its partition segment, applies
what the owner sends, and exits when asked to or when its owner disappears.

Environment read once at start (docs/API.md, "Crash reproduction"):

  AMDB_FAULT          inject a crash or hang for tests, e.g.
                      "worker=1,point=mid_insert,after=100,action=segv"
                      (parse_fault_spec; amdb/native/faults.h does the rest);
                      ",incarnations=N" arms it in the first N workers of that
                      index only (the original is 0, its successors 1, 2...)
  AMDB_WORKER_INCARNATION  set by the owner for a successor: n for the n-th
  AMDB_WORKER_BANNER  "1": write "amdb worker <index> pid <pid> ..." to stderr
                      at start, so that a crash report in a shared stderr can
                      be told apart per worker (also printed when AMDB_FAULT is set)
  AMDB_DEBUG_FULL_TAILS  "1" (tests): write every version's tail whole, as
                      before layout 3 (an older database's arena, made new)
  AMDB_CORE_DUMPS     "1": raise the core-file size limit to its hard limit,
                      so that a crash leaves a core where the system allows it,
                      without the arenas (shared memory); "full": with them
"""
import faulthandler
import ast
import os
import signal
import sys

from amdb.native.constants import FAULT_ACTIONS, FAULT_POINTS   # amdb/native/faults.h

FAULT_ENV = "AMDB_FAULT"
FAULT_KEYS = ("worker", "point", "action", "after", "incarnations")
FAULT_FORMAT = ("worker=<index>|any,point=after_records|mid_insert|mid_publish|mid_link|mid_compact,"
                "action=segv|abort|hang[,after=<passes>][,incarnations=<n>]")
INCARNATION_ENV = "AMDB_WORKER_INCARNATION"


def _is_count(text):
    return text.isascii() and text.isdigit()


def parse_fault_spec(spec):
    """Parse an AMDB_FAULT value into plain ints:
    ``(worker, point, action, after, incarnations)``, worker -1 meaning every
    worker, incarnations -1 every incarnation; None
    for an unset or empty spec. Raises amdb.InvalidArgumentError (a
    ValueError) for anything malformed, saying what and the expected format."""
    from amdb.errors import InvalidArgumentError

    def bad(why):
        return InvalidArgumentError(f"{FAULT_ENV}={spec!r}: {why}", code="bad_fault_spec",
                                    hint=f"use {FAULT_ENV}=\"{FAULT_FORMAT}\", or unset it")

    if spec is None or not spec.strip():
        return None
    fields = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise bad(f"{item.strip()!r} is not key=value")
        if key not in FAULT_KEYS:
            raise bad(f"unknown key {key!r} (keys: {', '.join(FAULT_KEYS)})")
        if key in fields:
            raise bad(f"{key} is given twice")
        fields[key] = value
    if fields.get("point", "mid_insert") not in FAULT_POINTS:
        raise bad(f"unknown point {fields['point']!r} (points: {', '.join(FAULT_POINTS)})")
    if fields.get("action", "segv") not in FAULT_ACTIONS:
        raise bad(f"unknown action {fields['action']!r} (actions: {', '.join(FAULT_ACTIONS)})")
    for required in ("point", "action"):
        if required not in fields:
            raise bad(f"{required}= is missing")
    worker = fields.get("worker", "any")
    if worker in ("any", "*"):
        worker_index = -1
    elif _is_count(worker):
        worker_index = int(worker)
    else:
        raise bad(f"worker={worker!r} is not a worker index (0, 1, ...) or 'any'")
    after = fields.get("after", "0")
    if not _is_count(after) or int(after) >= 1 << 63:
        raise bad(f"after={after!r} is not a count of passes (0, 1, ...)")
    incarnations = fields.get("incarnations")
    if incarnations is not None and (not _is_count(incarnations) or not 0 < int(incarnations) < 1 << 31):
        raise bad(f"incarnations={incarnations!r} is not a count of workers (1, 2, ...)")
    return (worker_index, FAULT_POINTS[fields["point"]], FAULT_ACTIONS[fields["action"]], int(after),
            -1 if incarnations is None else int(incarnations))


def enable_core_dumps(include_shared=False):
    """Let a crash of this process (and of what it starts) leave a core file:
    raise the soft RLIMIT_CORE to the hard limit. Unless include_shared, also
    leave shared mappings out of the core (/proc/self/coredump_filter): they
    are the arenas, whose whole reserved size (arena_size=, 16 GiB by default)
    the kernel would otherwise write. Where the core goes is the system's
    choice (/proc/sys/kernel/core_pattern)."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    if not include_shared:
        try:
            with open("/proc/self/coredump_filter", "r+") as f:
                bits = int(f.read(), 16)
                f.seek(0)
                f.write("0x%x" % (bits & ~0x0a))   # bit 1: anonymous shared, bit 3: file-backed shared
        except OSError:
            pass


def _worker_index(segment_name):
    """The worker's index: the segment is named /amdb_<owner>_<random>_<index>
    (or fd:<fd>:<index>)."""
    suffix = segment_name.rsplit(":" if segment_name.startswith("fd:") else "_", 1)[-1]
    return int(suffix) if _is_count(suffix) else None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    name, segment_size, owner_pid = argv[0], int(argv[1]), int(argv[2])
    # A durable database: where to recover from and log to (amdb.storage.worker_plan).
    durable = ast.literal_eval(argv[3]) if len(argv) > 3 else None
    # A successor of a crashed worker (run_worker's `respawn`).
    respawn = ast.literal_eval(argv[4]) if len(argv) > 4 else None
    incarnation = int(os.environ.get(INCARNATION_ENV, "0"))
    # Ctrl-C in a terminal reaches the whole process group: the owner decides
    # when workers stop, not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A native crash prints a Python traceback to stderr; the owner's
    # WorkerCrashedError names the worker, its pid and the batch it was applying.
    faulthandler.enable()
    fault_spec = os.environ.get(FAULT_ENV)
    try:
        fault = parse_fault_spec(fault_spec)
    except ValueError as exc:
        sys.stderr.write(f"amdb worker: {exc}\n")
        return 2
    if fault is not None and 0 <= fault[4] <= incarnation:
        fault = None                    # only the first `incarnations` workers of the index
    fault = fault[:4] if fault is not None else None
    if os.environ.get("AMDB_DEBUG_FULL_TAILS") == "1":
        from amdb.native.versions import debug_full_tails
        debug_full_tails(True)
    if os.environ.get("AMDB_CORE_DUMPS") in ("1", "full"):
        enable_core_dumps(include_shared=os.environ["AMDB_CORE_DUMPS"] == "full")
    if os.environ.get("AMDB_WORKER_BANNER") == "1" or fault is not None:
        sys.stderr.write(f"amdb worker {_worker_index(name)} pid {os.getpid()} owner {owner_pid} "
                         f"segment {name}" + (f" incarnation {incarnation}" if incarnation else "")
                         + (f" {FAULT_ENV}={fault_spec}" if fault else "") + "\n")
        sys.stderr.flush()

    import posix_ipc

    from amdb.native.worker.loop import run_worker

    if name.startswith("fd:"):
        fd = int(name.split(":")[1])    # inherited from the owner (a successor)
        try:
            run_worker(fd, segment_size, owner_pid, durable, fault=fault, respawn=respawn)
        finally:
            os.close(fd)
        return 0
    try:
        shm = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError:
        return 3            # the owner is gone (or gave up on us) before we attached
    try:
        run_worker(shm.fd, segment_size, owner_pid, durable, fault=fault, respawn=respawn)
    finally:
        shm.close_fd()
    return 0


if __name__ == "__main__":
    sys.exit(main())
