"""Entry point of a worker process: ``python -m amdb._worker NAME SIZE OWNER_PID [DURABLE_JSON]``.

Workers are fresh interpreters started by the owner (spawn semantics: no
fork of a threaded process, and, unlike multiprocessing's spawn, no re-import
of the user's __main__). A worker attaches to its partition segment, applies
what the owner sends, and exits when asked to or when its owner disappears.
"""
import faulthandler
import json
import signal
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    name, segment_size, owner_pid = argv[0], int(argv[1]), int(argv[2])
    # A durable database: where to recover from and log to (amdb.storage.worker_plan).
    durable = json.loads(argv[3]) if len(argv) > 3 else None
    # Ctrl-C in a terminal reaches the whole process group: the owner decides
    # when workers stop, not the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A native crash prints which worker died and a backtrace to stderr.
    faulthandler.enable()

    import posix_ipc

    from amdb.native.apply import run_worker

    try:
        shm = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError:
        return 3            # the owner is gone (or gave up on us) before we attached
    try:
        run_worker(shm.fd, segment_size, owner_pid, durable)
    finally:
        shm.close_fd()
    return 0


if __name__ == "__main__":
    sys.exit(main())
