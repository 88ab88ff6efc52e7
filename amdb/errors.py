"""The AmDb exception hierarchy.

Every exception has ``.code`` (a short stable string) and ``.hint`` (what to do
about it). Native code reports failures as status numbers (``AMDB_STATUS_*`` in
``amdb/shm/layout.h``); :func:`raise_for_status` is the one place that turns a
status into an exception.
"""

__all__ = [
    "Error", "InvalidArgumentError", "InvalidTypeError", "KeyTooLargeError",
    "ValueTooLargeError", "ClosedError", "OwnerGoneError", "ArenaFullError", "WorkerCrashedError",
    "PoisonBatchError", "WorkerStartError", "NodeUnavailableError", "VersionReclaimedError",
    "ConditionFailedError", "StorageError", "LockedError", "CorruptionError", "raise_for_status",
]


class Error(Exception):
    """Base class of every AmDb error."""

    code = "error"
    hint = "see docs/API.md"

    def __init__(self, message, *, hint=None, code=None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self):
        message = super().__str__()
        return f"{message} (hint: {self.hint})" if self.hint else message


class InvalidArgumentError(Error, ValueError):
    """An argument has the right type but an unusable value."""

    code = "invalid_argument"
    hint = "see docs/API.md for the accepted values"


class InvalidTypeError(Error, TypeError):
    """An argument has the wrong type (for example ``str`` where bytes are needed)."""

    code = "invalid_type"
    hint = "keys and values are bytes-like; see docs/API.md"


class KeyTooLargeError(InvalidArgumentError):
    """A key is longer than ``max_key_size``."""

    code = "key_too_large"
    hint = "keep keys short or open the database with a larger max_key_size="


class ValueTooLargeError(InvalidArgumentError):
    """A value is longer than ``max_value_size``."""

    code = "value_too_large"
    hint = "open the database with a larger ring_size= (values may be up to ring_size/8)"


class ClosedError(Error):
    """The database (or an iterator of it) was used after ``close()``."""

    code = "closed"
    hint = "open a new ParallelDB; a closed one cannot be reused"


class OwnerGoneError(ClosedError):
    """A ParallelDB attached from another process (read_only=True while the
    database is open, ``ParallelDB.attach(handle)``, unpickled) lost the
    process that owns the database: it closed it, or exited."""

    code = "owner_gone"
    hint = "reopen the database: a durable one opens in this process once its owner's workers are gone"


class ArenaFullError(Error):
    """A worker's arena (or /dev/shm behind it) has no room for a batch.

    Nothing of the batch was applied.
    """

    code = "arena_full"
    hint = "raise arena_size= or free space in /dev/shm (df -h /dev/shm)"


class VersionReclaimedError(Error):
    """A read asked for a version that compaction reclaimed: ``get(key,
    version=n)`` below the oldest version kept, or a read as of a seq (``at_seq=``,
    a snapshot, a scan opened before the compaction) whose value there was
    older than every version kept. Never answered with other data instead.

    ``.key``, ``.version`` or ``.at_seq`` (what was asked), ``.oldest_version``
    (the oldest version of the key still kept, when known).
    """

    code = "version_reclaimed"
    hint = ("keep_versions=n keeps each key's newest n versions at each compaction; read a newer "
            "version or seq (db.history(key) lists what is kept), or open with a larger keep_versions=")

    def __init__(self, message, *, key=None, version=None, at_seq=None, oldest_version=None, **kwargs):
        super().__init__(message, **kwargs)
        self.key = key
        self.version = version
        self.at_seq = at_seq
        self.oldest_version = oldest_version


class ConditionFailedError(Error):
    """A compare_and_set or put_if_absent inside a write batch found the key
    holding another value: the whole batch was rolled back, nothing of it is
    visible. (Outside a batch they return False instead.)"""

    code = "condition_failed"
    hint = "read the key again and retry the batch, or drop the condition"


class WorkerCrashedError(Error):
    """A worker process died or stopped responding while a call needed it.

    ``.worker`` and ``.signal`` (None for an exit) name it; ``.restarted`` says
    whether a new worker took its place. When it did, the batch in flight was
    rolled back whole (nothing of it is visible, now or after a reopen) and
    the database goes on: retrying the call is safe.
    """

    code = "worker_crashed"
    hint = ("the batch in flight was rolled back and the worker restarted: retry the call; "
            "see the worker's stderr for a backtrace")

    def __init__(self, message, *, worker=None, signal=None, restarted=False, **kwargs):
        super().__init__(message, **kwargs)
        self.worker = worker
        self.signal = signal
        self.restarted = restarted


class PoisonBatchError(WorkerCrashedError):
    """A batch was refused because the same data crashed a worker
    ``poison_after=`` times already. Nothing of it was applied; other
    writes go on."""

    code = "poison_batch"
    hint = ("the batch crashes the worker that applies it: run tools/crashrepro.py on it "
            "(docs/API.md, \"Crash reproduction\") and report the bug; other batches are accepted")


class NodeUnavailableError(Error):
    """A node of a DistributedCluster cannot serve a call; ``.node_id`` names it.

    ``code`` says why: ``node_unavailable`` (its actor died or is restarting),
    ``node_data_lost`` (it restarted without a path, so the slots it owned lost
    their data; ``cluster.lost_slots()`` lists them), ``node_timeout`` (no answer
    in time).
    """

    code = "node_unavailable"
    hint = ("see cluster.lost_slots() and cluster.stats(); Ray restarts a dead node actor "
            "(max_restarts=), but without path= its data is lost")

    def __init__(self, message, *, node_id=None, **kwargs):
        super().__init__(message, **kwargs)
        self.node_id = node_id


class WorkerStartError(Error):
    """A worker process could not be started or did not attach in time."""

    code = "worker_start"
    hint = "check that 'python -m amdb._worker' runs in this environment and raise start_timeout="


class StorageError(Error):
    """The write-ahead log, a checkpoint or the database directory could not be
    written or read (disk full, read-only, I/O error). Nothing of the failed
    write is kept; what was acknowledged before stays; reads go on."""

    code = "io_error"
    hint = "check free space and permissions of the database directory, then reopen it"


class LockedError(StorageError):
    """Another ParallelDB (in this or another process) has the directory open."""

    code = "locked"
    hint = "close the other ParallelDB first; a lock left by a dead process is taken over"


class CorruptionError(StorageError):
    """A database directory holds data AmDb cannot use (bad manifest or
    checkpoint with nothing to fall back on)."""

    code = "corrupt"
    hint = "run 'python -m amdb verify PATH'; restore from a backup (amdb.backup)"


# Status numbers shared with native code (amdb/shm/layout.h, AMDB_STATUS_*): a copy, so that
# this module imports before the extensions are built; tests/test_constants.py checks it
# against amdb.native.constants.STATUS.
STATUS_OK = 0
STATUS_ARENA_FULL = 1
STATUS_SHM_FULL = 2
STATUS_CORRUPT = 3
STATUS_TIMEOUT = 4
STATUS_NO_MEMORY = 5
STATUS_IO_ERROR = 6
STATUS_POISON = 7
STATUS_CONDITION_FAILED = 8
STATUS_NOT_COUNTER = 9
STATUS_OVERFLOW = 10

def shm_usage(directory="/dev/shm"):
    """How big the shared-memory file system is and how much of it is free,
    for the messages of shm_full errors."""
    import os
    try:
        st = os.statvfs(directory)
    except OSError:
        return f"{directory} cannot be inspected"
    try:
        from amdb.supervisor import shm_held_bytes     # not at import: errors.py imports first
        held = f"; AmDb databases of this process hold {shm_held_bytes() / 2**20:.1f} MiB of it"
    except ImportError:
        held = ""
    return (f"{directory} has {st.f_bavail * st.f_frsize / 2**20:.1f} MiB free of "
            f"{st.f_blocks * st.f_frsize / 2**20:.1f} MiB{held}")


SHM_FULL_HINT = ("free space in /dev/shm (df -h /dev/shm), or give it more: docker run --shm-size=1g, "
                 "or mount -o remount,size=4g /dev/shm; compact() and keep_versions= keep less")

_STATUS_ERRORS = {
    STATUS_ARENA_FULL: (ArenaFullError, "arena_full",
                        "the worker's arena reservation (arena_size=) is used up"),
    STATUS_SHM_FULL: (ArenaFullError, "shm_full",
                      "/dev/shm has no free space to commit arena memory"),
    STATUS_CORRUPT: (Error, "corrupt", "a shared-memory structure failed a consistency check"),
    STATUS_NO_MEMORY: (Error, "no_memory", "a worker could not allocate private memory"),
    STATUS_IO_ERROR: (StorageError, "io_error",
                      "the write-ahead log or a checkpoint could not be written (disk full, read-only "
                      "or I/O error); nothing of this write was kept"),
    STATUS_POISON: (PoisonBatchError, "poison_batch",
                    "the batch holds a chunk that crashed a worker repeatedly (a poison batch); "
                    "it was refused and nothing of it was applied"),
    STATUS_CONDITION_FAILED: (ConditionFailedError, "condition_failed",
                              "a compare_and_set or put_if_absent found the key holding another value"),
    STATUS_NOT_COUNTER: (InvalidTypeError, "not_counter",
                         "increment found a value that is not an 8-byte counter under the key"),
    STATUS_OVERFLOW: (InvalidArgumentError, "counter_overflow",
                      "increment would take the counter out of the signed 64-bit range"),
}

_STATUS_HINTS = {
    STATUS_NOT_COUNTER: "increment works on counters: 8 bytes, n.to_bytes(8, 'big', signed=True); "
                        "nothing was written",
    STATUS_OVERFLOW: "a counter holds a signed 64-bit integer; nothing was written",
}


def raise_for_status(status, context=""):
    """Raise the exception that native status number ``status`` stands for."""
    if status == STATUS_OK:
        return
    cls, code, message = _STATUS_ERRORS.get(
        status, (Error, "status_%d" % status, "native status %d" % status))
    hint = _STATUS_HINTS.get(status)
    if status == STATUS_SHM_FULL:
        hint = SHM_FULL_HINT
        message = f"{message} ({shm_usage()})"
    raise cls(f"{context}: {message}" if context else message, code=code, hint=hint)
