"""ParallelDB: the public database object.

The hot paths (reads, packing writes into the rings) live in the Cython base
class amdb.native.engine.Engine; this module owns the lifecycle: validating
options, creating segments, starting and supervising workers, closing.
"""
import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import weakref
from typing import NamedTuple

from amdb import SLOT_COUNT
from amdb.history import Break, Snapshot, VerifyReport, Version
from amdb.errors import (ClosedError, Error, InvalidArgumentError, InvalidTypeError, StorageError,
                         WorkerCrashedError, WorkerStartError, raise_for_status)
from amdb.native import engine as _engine
from amdb.native.engine import BatchResult, Engine
from amdb import storage
from amdb.shm import segment
from amdb.shm.arena import Mapping, punch_hole

__all__ = ["ParallelDB", "BatchOutcome", "BatchResult"]

MAX_WORKERS = 256
MIN_RING_SIZE = 64 << 10            # bytes
DEFAULT_RING_SIZE = 32 << 20        # bytes per worker, committed at open
DEFAULT_ARENA_SIZE = 16 << 30       # bytes per worker, reserved (sparse) not committed
DEFAULT_MAX_KEY_SIZE = 4096        # bytes (smaller when ring_size/16 is smaller)
SHUTDOWN_TIMEOUT = 10.0             # seconds a worker gets to leave before it is killed
DEFAULT_HANG_TIMEOUT = 60.0         # seconds without progress, work pending, before a worker is replaced
DEFAULT_POISON_AFTER = 3            # crashes on the same data before that data is refused
BROKEN_HINT = "reopen the database to write again; see the worker's stderr for why it failed"
LIVENESS_INTERVAL = 0.05            # seconds between worker-liveness polls before writes
DEFAULT_LOG_SEGMENT_BYTES = 64 << 20
DEFAULT_CHECKPOINT_BYTES = 512 << 20  # log bytes (any worker) past which a checkpoint is written
DEFAULT_COMPACT_MIN_VERSIONS = 100_000  # reclaimable versions below which no automatic compaction runs
COMPACT_DRAIN_TIMEOUT = 1.0         # seconds a compaction waits for readers of the old generation
                                    # before it leaves the old region's memory to the next one
COMPACT_READERS_TIMEOUT = 30.0      # seconds a compaction waits for a forked child's read of the
                                    # region it must write before it gives up (Error readers_busy)
EXIT_LOCK_TIMEOUT = 2.0             # seconds the exit handler waits for a write in another thread
_DEFAULT = object()                 # compact(keep_versions=...) not given: the database's setting


class BatchOutcome(NamedTuple):
    """``success, results = db.batch_put(items)``; errors raise, so success is True."""
    success: bool
    results: BatchResult


def _int_option(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{name}= must be an int, not {type(value).__name__}",
                               hint=f"pass an int between {low} and {high}")
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name}={value} is out of range [{low}, {high}]",
                                   hint=f"pass an int between {low} and {high}")
    return value


def _keep_versions_option(value, name="keep_versions"):
    """None (keep every version) or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{name}= must be None or an int >= 1, not {type(value).__name__}",
                               hint="pass e.g. keep_versions=3 to keep each key's 3 newest versions")
    if not 1 <= value <= 1 << 62:
        raise InvalidArgumentError(f"{name}={value}: a key keeps at least its newest version",
                                   hint="pass None to keep every version, or an int >= 1")
    return value


def _next_power_of_two(n):
    return 1 << (n - 1).bit_length()


def _close_all(fds):
    while fds:
        os.close(fds.pop())


def _reap(owner_pid, controls, procs, timeout, fds):
    """Ask every worker to stop, wait for them, kill the ones that do not go.
    Shared by close(), the exit handler and the garbage-collection finalizer.
    Does nothing in a forked child: the workers belong to the owner. Unmaps
    nothing: a mapping goes when its last holder drops it (Engine._detach),
    never under a call that may still use it."""
    if os.getpid() != owner_pid:
        return
    _close_all(fds)
    for mapping in controls:
        _engine.request_shutdown(mapping)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Open databases of this process, closed by one exit handler (_close_at_exit)
# rather than by their garbage-collection finalizers, which would stop the
# workers under a write another (daemon) thread is still making.
_open_databases = weakref.WeakSet()


@atexit.register
def _close_all_at_exit():
    for db in list(_open_databases):
        try:
            db._close_at_exit()
        except Exception:           # one database's trouble must not keep the others open
            pass


class ParallelDB(Engine):
    """An embedded key-value database that spreads its keys over worker processes.

    See docs/API.md for the full contract. With ``path``, a directory that
    keeps every acknowledged write (write-ahead logs and checkpoints,
    amdb/storage.py); without, memory only.
    """

    def __init__(self, path=None, *, workers=None, max_batch=100_000, ring_size=DEFAULT_RING_SIZE,
                 arena_size=DEFAULT_ARENA_SIZE, max_key_size=None, max_value_size=None,
                 start_timeout=30.0, audit=None, audit_max_bytes=64 << 20, sync="none",
                 sync_interval_ms=100, log_segment_bytes=DEFAULT_LOG_SEGMENT_BYTES,
                 checkpoint_bytes=DEFAULT_CHECKPOINT_BYTES, read_only=False, keep_versions=None,
                 compact_min_versions=DEFAULT_COMPACT_MIN_VERSIONS, hang_timeout=DEFAULT_HANG_TIMEOUT,
                 poison_after=DEFAULT_POISON_AFTER):
        self._path = None
        self._read_only = bool(read_only)
        self._lock_fd = None
        self._recovery = None
        self._backups_running = 0
        if path is not None:
            if not isinstance(path, (str, bytes, os.PathLike)):
                raise InvalidTypeError(f"path= must be a directory path or None, not {type(path).__name__}",
                                       hint="pass e.g. path='data/mydb'")
            if sync not in storage.SYNC_MODES:
                raise InvalidArgumentError(f"sync={sync!r} is not one of 'none', 'batch', 'interval'",
                                           hint="'none' survives process crashes, 'batch' power loss")
            self._sync = sync
            self._sync_interval_ms = _int_option("sync_interval_ms", sync_interval_ms, 1, 3_600_000)
            self._log_segment_bytes = _int_option("log_segment_bytes", log_segment_bytes, 1 << 16, 1 << 40)
            if checkpoint_bytes is not None:
                checkpoint_bytes = _int_option("checkpoint_bytes", checkpoint_bytes, 1 << 16, 1 << 50)
            self._checkpoint_bytes = checkpoint_bytes
            path = os.fsdecode(os.path.abspath(path))
            if os.path.exists(path) and not os.path.isdir(path):
                raise InvalidArgumentError(f"path={path!r} exists and is not a directory")
            manifest = storage.read_manifest(path) if os.path.isdir(path) else None
            if manifest is not None and workers is None:
                workers = manifest["workers"]
            if read_only and manifest is None:
                raise InvalidArgumentError(f"read_only=True needs an existing database; {path} has none")
        elif read_only:
            raise InvalidArgumentError("read_only=True needs a path")
        workers = os.cpu_count() or 1 if workers is None else workers
        self._workers = _int_option("workers", workers, 1, MAX_WORKERS)
        max_batch = _int_option("max_batch", max_batch, 1, 1 << 31)
        ring_size = _next_power_of_two(_int_option("ring_size", ring_size, MIN_RING_SIZE, 1 << 34))
        arena_size = _int_option("arena_size", arena_size, 1 << 20, 1 << 46)
        arena_size = (arena_size + 4095) // 4096 * 4096
        record_limit = ring_size // 8 - _engine.RECORD_HEADER_BYTES
        key_limit = min(65536, record_limit // 2)
        if max_key_size is None:
            max_key_size = min(DEFAULT_MAX_KEY_SIZE, key_limit)
        max_key_size = _int_option("max_key_size", max_key_size, 1, key_limit)
        value_limit = record_limit - max_key_size
        if max_value_size is None:
            max_value_size = value_limit
        max_value_size = _int_option("max_value_size", max_value_size, 0, value_limit)
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float)):
            raise InvalidTypeError(f"start_timeout= must be a number of seconds, not {type(start_timeout).__name__}",
                                   hint="pass e.g. start_timeout=30.0")
        if not 0 < start_timeout <= 3600:
            raise InvalidArgumentError(f"start_timeout={start_timeout} must be in (0, 3600] seconds",
                                       hint="pass e.g. start_timeout=30.0")
        if hang_timeout is not None:
            if isinstance(hang_timeout, bool) or not isinstance(hang_timeout, (int, float)):
                raise InvalidTypeError(f"hang_timeout= must be a number of seconds or None, not "
                                       f"{type(hang_timeout).__name__}", hint="pass e.g. hang_timeout=60.0")
            if not 0.1 <= hang_timeout <= 86400:
                raise InvalidArgumentError(f"hang_timeout={hang_timeout} must be in [0.1, 86400] seconds",
                                           hint="pass e.g. hang_timeout=60.0, or None to never replace "
                                                "a worker that stops making progress")
        self._hang_timeout = hang_timeout
        self._poison_after = _int_option("poison_after", poison_after, 1, 1000)
        self._start_timeout = start_timeout
        self._keep_versions = _keep_versions_option(keep_versions)
        self._compact_min_versions = _int_option("compact_min_versions", compact_min_versions, 1, 1 << 62)
        self._compact_lock = threading.Lock()   # held by a compaction; verify(key) waits for it
        self._pending_reclaim = []          # [(worker, region)] retired, memory not given back yet
        self._pending_slot = -1             # reader slot that must drain first
        self._pending_epoch = 0             # and forked children's reads below this shared read epoch
        self._compact_retry_at = 0          # automatic compaction: versions before trying again
        self._compact_drain_timeout = COMPACT_DRAIN_TIMEOUT
        self._compaction = {"compactions": 0, "versions_reclaimed": 0, "bytes_reclaimed": 0,
                            "failures": 0, "last": None}
        self._owner_pid = os.getpid()
        self._liveness_checked = 0.0
        self._segment_fds = []
        self._arena_offset = 0
        self._procs = []
        self._controls = []
        self._broken = None
        self._finalizer = None
        # Worker supervision (_check_worker): successors started per worker,
        # crashes per chunk fingerprint, fingerprints refused (poison), and
        # the last progress reading (hang detection).
        self._restarts = [0] * self._workers
        self._crashes_on = [{} for _ in range(self._workers)]
        self._poison = [set() for _ in range(self._workers)]
        self._last_crash = [None] * self._workers
        self._stall = [None] * self._workers
        self._shared_lock_fd = None
        # An RLock only so that a write can tell that its own thread holds it
        # (Engine._check_writable, _refuse_reentry below): never entered twice.
        self._write_lock_obj = threading.RLock()
        self.ring_size = ring_size
        self.arena_size = arena_size
        if audit is not None and not isinstance(audit, (str, os.PathLike)):
            raise InvalidTypeError(f"audit= must be a file path or None, not {type(audit).__name__}",
                                   hint="pass e.g. audit='amdb-audit.jsonl'")
        plan = None
        slot_owner = [slot % self._workers for slot in range(SLOT_COUNT)]
        self._sweep_pending = False
        if path is not None:
            if manifest is not None and manifest["workers"] != self._workers and not self._read_only:
                _reshard(path, manifest, self._workers, dict(
                    max_batch=max_batch, ring_size=ring_size, arena_size=arena_size, start_timeout=start_timeout,
                    sync=sync, sync_interval_ms=sync_interval_ms, log_segment_bytes=log_segment_bytes,
                    checkpoint_bytes=checkpoint_bytes))
            plan, slot_owner = self._open_directory(path, manifest, max_key_size, max_value_size)
        try:
            self._start(max_batch, ring_size, arena_size, max_key_size, max_value_size, start_timeout,
                        slot_owner, plan)
        except BaseException:
            self._release_lock()
            raise
        if self._sweep_pending:
            try:
                with self._write_lock_obj:
                    self._sweep_locked()
                    manifest = storage.read_manifest(self._path)
                    storage.write_manifest(self._path, manifest["workers"], manifest["slot_owner"],
                                           manifest["options"])
            except BaseException:
                self.close()
                raise
        if audit is not None:
            from amdb.audit import AuditLog
            self._audit = AuditLog(os.fspath(audit), max_bytes=audit_max_bytes)
            self._audit.event("open", workers=self._workers, max_batch=max_batch, ring_size=ring_size,
                              arena_size=arena_size, path=self._path,
                              recovered_seq=self._recovery["recovered_seq"] if self._recovery else None)
            if self._recovery and (self._recovery["logs_cut"] or self._recovery["checkpoints_rejected"]):
                self._audit.event("recovery", **self._recovery)

    def _open_directory(self, path, manifest, max_key_size, max_value_size):
        """Create or lock the directory and plan recovery. Returns (plan, slot table).
        Read-only: a shared lock, and nothing in the directory changes."""
        if not self._read_only:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create {path}: {exc.strerror}") from None
            storage.check_directory_writable(path)
        self._lock_fd = storage.lock_directory(path, shared=self._read_only)
        try:
            manifest = storage.read_manifest(path)        # again, now that we hold the lock
            if manifest is None:
                slot_owner = [slot % self._workers for slot in range(SLOT_COUNT)]
                storage.write_manifest(path, self._workers, slot_owner,
                                       {"max_key_size": max_key_size, "max_value_size": max_value_size})
            else:
                if manifest["workers"] != self._workers:
                    raise InvalidArgumentError(
                        f"{path} was written with workers={manifest['workers']}; a read-only opening "
                        f"cannot move slots to workers={self._workers}",
                        code="workers_changed", hint=f"open it with workers={manifest['workers']} (or None)")
                slot_owner = manifest["slot_owner"]
                self._sweep_pending = bool(manifest.get("sweep")) and not self._read_only
            plan = storage.plan_recovery(path, self._workers, repair=not self._read_only)
        except BaseException:
            self._release_lock()
            raise
        self._path = path
        self._recovery = plan.report
        return plan, slot_owner

    def _release_lock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- lifecycle -----------------------------------------------------------

    def _start(self, max_batch, ring_size, arena_size, max_key_size, max_value_size, start_timeout,
               slot_owner, plan):
        _check_fault_spec(self._workers)
        segment.sweep_stale()
        prefix = segment.new_prefix()
        names = []
        arenas = []
        try:
            db_name = prefix + "_db"
            db_shm = segment.create(db_name, _engine.DB_CONTROL_BYTES, _engine.DB_CONTROL_BYTES)
            names.append(db_name)
            db_mapping = Mapping(db_shm.fd, 0, _engine.DB_CONTROL_BYTES, True)
            db_shm.close_fd()
            _engine.init_db_control(db_mapping, self._workers, slot_owner,
                                    plan.recovered_seq if plan is not None else 0)
            ring_offset = _engine.CONTROL_BYTES
            arena_offset = ring_offset + ring_size
            self._arena_offset = arena_offset
            # Two regions of arena_size: the live generation and the one a
            # compaction writes (layout.h). Sparse until committed.
            segment_size = arena_offset + _engine.ARENA_REGIONS * arena_size
            for index in range(self._workers):
                name = f"{prefix}_{index}"
                shm = segment.create(name, segment_size, arena_offset)
                names.append(name)
                try:
                    control = Mapping(shm.fd, 0, arena_offset, True)
                    arenas.append(Mapping(shm.fd, arena_offset, _engine.ARENA_REGIONS * arena_size, False))
                    self._segment_fds.append(os.dup(shm.fd))    # for _debug_flip_bit only
                finally:
                    shm.close_fd()
                self._controls.append(control)
                _engine.init_partition_control(control, index, segment_size, ring_offset, ring_size,
                                               arena_offset, arena_size)
            env = dict(os.environ)
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
            self._worker_env = env
            self._segment_size = segment_size
            self._shared_lock_fd = self._lock_fd
            for index in range(self._workers):
                argv = [sys.executable, "-m", "amdb._worker", names[index + 1], str(segment_size),
                        str(os.getpid())]
                if plan is not None:
                    # repr/literal_eval rather than JSON: CPython's _json scanner trips
                    # valgrind (make memcheck) in every worker.
                    argv.append(repr(storage.worker_plan(
                        self._path, plan.workers[index], self._sync, self._sync_interval_ms,
                        self._log_segment_bytes, self._read_only)))
                # Workers inherit the directory lock: it is held until the
                # last of them is gone, not only the owner (storage.lock_directory).
                self._procs.append(subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, close_fds=True, env=env,
                    pass_fds=() if self._lock_fd is None else (self._lock_fd,)))
            self._wait_ready(start_timeout)
        except BaseException:
            _reap(self._owner_pid, self._controls, self._procs, 2.0, self._segment_fds)
            for name in names:
                segment.unlink_quietly(name)
            raise
        # Every worker has its segment open: the names can go (see segment.py).
        for name in names:
            segment.unlink_quietly(name)
        self._attach(db_mapping, list(self._controls), arenas, max_batch, max_key_size,
                     max_value_size, self._write_lock_obj, plan is not None)
        if self._lock_fd is not None:
            # Closed by _reap with the segment fds (after close() stops writes).
            self._segment_fds.append(self._lock_fd)
            self._lock_fd = None
        # self._procs itself, not a copy: successors of crashed workers join it.
        self._finalizer = weakref.finalize(self, _reap, self._owner_pid, list(self._controls),
                                           self._procs, SHUTDOWN_TIMEOUT, self._segment_fds)
        self._finalizer.atexit = False      # _close_all_at_exit closes it instead
        _open_databases.add(self)

    def _wait_ready(self, timeout, indexes=None):
        deadline = time.monotonic() + timeout
        for index in range(self._workers) if indexes is None else indexes:
            control, proc = self._controls[index], self._procs[index]
            seen = 0
            while True:
                state, status = _engine.worker_start_status(control)
                if state == 1:                                    # AMDB_WORKER_READY
                    break
                if status:                                        # AMDB_WORKER_FAILED: it says why
                    proc.wait()
                    raise_for_status(status, f"worker {index} could not start")
                if proc.poll() is not None:
                    raise WorkerStartError(f"worker {index} exited with status {proc.returncode} "
                                           "before it was ready" + (" (recovery failed: its error is on stderr)"
                                                                    if self._path else ""))
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"worker {index} was not ready after {timeout} s")
                seen = _engine.wait_worker_progress(control, seen, 0.05)

    @contextlib.contextmanager
    def _exclusive(self, what):
        """Hold the write lock for `what`, after the one guard every such
        method passes first (Engine._enter_exclusive: not a forked child,
        open, not re-entered from the code of a call of this thread)."""
        self._enter_exclusive(what)
        with self._write_lock_obj:
            if self.closed:
                raise ClosedError("the database is closed")
            yield

    def _refuse_reentry(self, what="this call"):
        """Refuse to take the write lock from code that a write of this thread runs."""
        if self._write_lock_obj._is_owned():
            self._enter_exclusive(what)

    def close(self):
        """Stop the workers and release all shared memory. Idempotent.

        In a forked child it closes this process's handle only (see
        "Forking and multiprocessing" in docs/API.md)."""
        if self._foreign:
            self._close_foreign()
            return
        self._refuse_reentry("close()")
        with self._write_lock_obj:
            self._close_locked()

    def _close_locked(self):
        """REQUIRES the write lock, or the process exiting (_close_at_exit)."""
        audit, self._audit = self._audit, None
        if audit is not None and not self.closed:
            audit.event("close", keys=len(self), seq=self._visible_seq())
        if audit is not None:
            audit.close()
        self._mark_closed()
        if self._finalizer is not None and self._finalizer.alive:
            self._finalizer()            # runs _reap once: workers stop after draining their rings
        self._controls = []
        self._release_memory()           # now, or when the last reader inside leaves
        _open_databases.discard(self)

    def _close_at_exit(self):
        """The interpreter is exiting with the database open. A daemon thread
        may be inside a write: refuse new calls at once, wait a little for
        the write lock, stop the workers (they drain their rings first), and
        unmap only if no write holds the lock (the exit unmaps the rest)."""
        if self._foreign:
            self._close_foreign()
            return
        if self.closed and (self._finalizer is None or not self._finalizer.alive):
            return
        self._mark_closed()              # a call in another thread now raises ClosedError at its next check
        got = self._write_lock_obj.acquire(timeout=EXIT_LOCK_TIMEOUT)
        try:
            if got:
                self._close_locked()
            elif self._finalizer is not None and self._finalizer.alive:
                self._finalizer()
        finally:
            if got:
                self._write_lock_obj.release()

    def _debug_flip_bit(self, worker, arena_offset, bit):
        """Test hook: flip one bit of worker `worker`'s arena (its current
        generation), as a stray write or a bad memory cell would. Corrupts the
        database on purpose."""
        import mmap
        if self.closed:
            raise ClosedError("the database is closed")
        region = self._regions()[worker][0]
        position = self._arena_offset + region * self.arena_size + arena_offset
        page = position - position % mmap.PAGESIZE
        view = mmap.mmap(self._segment_fds[worker], mmap.PAGESIZE, offset=page)
        try:
            view[position - page] ^= 1 << bit
        finally:
            view.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ---- worker supervision ------------------------------------------------------

    def _check_worker(self, worker):
        """Called by every wait on `worker` (each 50 ms slice) while work is
        pending. When the worker died, or made no progress for hang_timeout
        seconds (then it is killed), start its successor. If it died between
        records, the successor carries on from the ring and the call goes on;
        if it died handling one, the successor undoes the batch in flight and
        this raises WorkerCrashedError: the call fails whole and the database
        goes on. REQUIRES the write lock."""
        if self.closed:
            raise ClosedError(f"the database was closed while a call waited for worker {worker}")
        if self._broken is not None and self._broken[1] == worker:
            raise WorkerCrashedError(self._broken[0] + "; writes are refused, reads still work", hint=BROKEN_HINT,
                                     worker=worker, signal=self._broken[2])
        proc = self._procs[worker]
        stalled = None
        if proc.poll() is None:
            stalled = self._stalled_for(worker)
            if stalled is None:
                return
            proc.kill()                 # hung: SIGKILL, then treated like any crash
            proc.wait()
        resumed, message, signal = self._replace_worker(worker, stalled)
        if not resumed:
            raise WorkerCrashedError(message, worker=worker, signal=signal, restarted=True)

    def _stalled_for(self, worker):
        """Seconds worker `worker` has shown no progress across consecutive
        waits on it, once that reaches hang_timeout; else None."""
        if self._hang_timeout is None:
            return None
        progress = _engine.worker_progress(self._controls[worker])
        now = time.monotonic()
        seen = self._stall[worker]
        # A reading older than a second belongs to an earlier wait (the worker
        # may have been idle since): start over.
        if seen is None or seen[0] != progress or now - seen[2] > 1.0:
            self._stall[worker] = (progress, now, now)
            return None
        self._stall[worker] = (progress, seen[1], now)
        return now - seen[1] if now - seen[1] >= self._hang_timeout else None

    def _replace_worker(self, worker, stalled=None):
        """Worker `worker` is dead (reaped): start a successor on its arena and
        return (resumed, message, signal). A worker that died between records
        (its control block says it was handling none) lost nothing: its
        successor resumes from the ring (resumed=True) and nothing is blamed
        on the data. Otherwise the successor rolls back the batch the dead one
        left open, unless visible, and the crash counts against the chunk it
        was applying (poison batches). If no successor can start, writes are
        refused from then on (reads go on)."""
        proc = self._procs[worker]
        code = proc.returncode
        signal = -code if code < 0 else None
        position = _engine.worker_position(self._controls[worker])
        how = None if stalled is None else (f"made no progress for {stalled:.1f} s with work pending "
                                            f"(hang_timeout={self._hang_timeout}) and was killed")
        message = _crash_report(worker, proc.pid, code, position, how)
        work = position["in_flight"] if position else None
        resume = work is None
        poisoned = False
        if work is not None and work["fingerprint"] is not None:
            counts = self._crashes_on[worker]
            counts[work["fingerprint"]] = counts.get(work["fingerprint"], 0) + 1
            if counts[work["fingerprint"]] >= self._poison_after:
                self._poison[worker].add(work["fingerprint"])
                poisoned = True
        self._last_crash[worker] = message
        try:
            self._start_successor(worker, resume)
        except BaseException as exc:
            self._broken = (f"{message}; its successor could not start ({exc})", worker, signal)
            raise WorkerCrashedError(self._broken[0] + "; writes are refused, reads still work", hint=BROKEN_HINT,
                                     worker=worker, signal=signal) from exc
        self._restarts[worker] += 1
        if self._audit is not None:
            self._audit.event("worker_restart", worker=worker, signal=signal, exit_status=code,
                              hung=stalled is not None, restarts=self._restarts[worker],
                              poisoned=poisoned, resumed=resume, report=message)
        if resume:
            message += (f"; a new worker took over (restart {self._restarts[worker]}) and carried on "
                        "from its ring: nothing was lost")
        else:
            message += (f"; a new worker took over (restart {self._restarts[worker]}) and the batch in "
                        "flight was rolled back: nothing of it was applied, retry it")
        if poisoned:
            message += (f". That chunk of data has now crashed worker {worker} {self._poison_after} "
                        "times: it will be refused (PoisonBatchError)")
        self._last_crash[worker] = message
        return resume, message, signal

    def _start_successor(self, worker, resume):
        """Start a worker on the arena of dead worker `worker` and wait until it is ready."""
        incarnation = self._restarts[worker] + 1
        self._take_over_ring(worker, incarnation, resume)
        self._stall[worker] = None
        plan = None
        if self._path is not None:
            next_segment = 0
            if not self._read_only:         # a read-only opening changes nothing on disk
                next_segment = storage.cut_torn_tail(
                    self._path, worker, _engine.worker_position(self._controls[worker])["log_segment"])
            plan = {"dir": self._path, "checkpoint": None, "replay": [], "next_segment": next_segment,
                    "sync": storage.SYNC_MODES[self._sync], "interval_ms": self._sync_interval_ms,
                    "segment_bytes": self._log_segment_bytes, "log_bytes": 0, "read_only": self._read_only}
        respawn = {"visible_seq": self._visible_seq(), "resume": resume, "poison": sorted(self._poison[worker])}
        fd = self._segment_fds[worker]          # a dup of the partition segment's descriptor
        from amdb._worker import INCARNATION_ENV
        env = dict(self._worker_env)
        env[INCARNATION_ENV] = str(incarnation)
        argv = [sys.executable, "-m", "amdb._worker", f"fd:{fd}:{worker}", str(self._segment_size),
                str(self._owner_pid), repr(plan), repr(respawn)]
        pass_fds = (fd,) if self._shared_lock_fd is None else (fd, self._shared_lock_fd)
        self._procs[worker] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True, env=env,
                                               pass_fds=pass_fds)
        try:
            self._wait_ready(self._start_timeout, [worker])
        except BaseException:
            self._procs[worker].kill()
            self._procs[worker].wait()
            raise

    def _before_write(self):
        # A forked child never gets here: Engine._enter_exclusive refused it.
        self._require_writable()
        # Polling every worker costs a waitpid each (a third of a small put):
        # do it at most every LIVENESS_INTERVAL. A write that reaches a dead
        # worker finds out anyway, in its first wait slice.
        now = time.monotonic()
        if now - self._liveness_checked >= LIVENESS_INTERVAL:
            self._liveness_checked = now
            for index, proc in enumerate(self._procs):
                if proc.poll() is not None:
                    # Died between calls: no call of ours was in flight, so
                    # this one goes on once the successor is ready.
                    self._replace_worker(index)
        if self._path is not None:
            self._check_log()
        if self._keep_versions is not None:
            self._check_compact()

    def _require_owner(self, what):
        """For calls that need no write lock but only make sense in the owner
        (its workers, its locks): refused in a forked child, and once closed."""
        if self._foreign:
            self._enter_exclusive(what)         # raises Error(code="forked")
        if self.closed:
            raise ClosedError("the database is closed")

    def _require_writable(self):
        """For calls that change the database but are not writes (compact,
        checkpoint, backup): refused on a read-only opening, or once the
        database refuses writes. REQUIRES the write lock."""
        if self._read_only:
            raise StorageError("this database was opened with read_only=True", code="read_only",
                               hint="reopen it without read_only=True to change it")
        if self._broken is not None:
            message, worker, signal = self._broken
            raise WorkerCrashedError(message + "; writes are refused, reads still work", hint=BROKEN_HINT,
                                     worker=worker, signal=signal)

    def _check_log(self):
        """Refuse writes once a log is broken; checkpoint when a log grew past
        checkpoint_bytes. REQUIRES the write lock."""
        most, broken = self._log_state()
        if broken >= 0:
            raise StorageError(f"the write-ahead log of worker {broken} could not be written or "
                               "repaired; writes are refused until the database is reopened, reads go on")
        if self._checkpoint_bytes and most >= self._checkpoint_bytes:
            self._checkpoint_locked("automatic")

    # ---- retention and compaction ----------------------------------------------

    def compact(self, *, keep_versions=_DEFAULT):
        """Write every partition's next arena generation, keeping the newest
        `keep_versions` versions of each key (default: the database's
        keep_versions=; None keeps them all and only rewrites densely, leaving
        rolled-back versions and retired hash tables behind), and switch to it.

        Writes wait meanwhile; reads go on, and a read in flight finishes on
        the generation it started on. Reads of a reclaimed version raise
        VersionReclaimedError from then on. With a path, a checkpoint follows,
        so that reopening finds the compacted generation. Returns a dict:
        seq, keep_versions, versions_before, versions_after, versions_reclaimed,
        arena_bytes_before, arena_bytes_after, shm_bytes_before,
        shm_bytes_after, bytes_reclaimed, reclaim_pending, seconds."""
        keep = self._keep_versions if keep_versions is _DEFAULT else _keep_versions_option(keep_versions)
        with self._exclusive("compact()"):
            self._require_writable()
            return self._compact_locked(keep, "requested")

    def _check_compact(self):
        """Compact automatically (keep_versions=n) once at least
        compact_min_versions versions, and at least a quarter of all stored,
        lie certainly beyond the newest n of their key: versions - n * keys.
        REQUIRES the write lock. A failed automatic compaction does not fail
        the write that triggered it; it is counted, and retried later."""
        versions, nodes = self._version_counts()
        excess = versions - self._keep_versions * nodes
        if excess < self._compact_min_versions or 4 * excess < versions or versions < self._compact_retry_at:
            return
        try:
            self._compact_locked(self._keep_versions, "automatic")
        except (WorkerCrashedError, ClosedError, KeyboardInterrupt):
            raise
        except Error as exc:
            self._compact_retry_at = versions + max(self._compact_min_versions, versions // 4)
            if self._audit is not None:
                self._audit.event("compact_failed", why="automatic", error=str(exc))

    def _shm_bytes(self):
        """Memory the partition segments hold now (their allocated blocks)."""
        return sum(os.fstat(fd).st_blocks * 512 for fd in self._segment_fds[:self._workers])

    def _punch(self, worker, region):
        """Give the memory of `region` of `worker` back (layout.h, "Arena regions").
        REQUIRES: no reader can be inside it, and it is not the current one."""
        assert region != self._regions()[worker][0]
        punch_hole(self._segment_fds[worker], self._arena_offset + region * self.arena_size, self.arena_size)

    def _finish_reclaim(self, wait):
        """Punch out the regions the last compaction retired, once the readers
        that could still be in them are gone: waits COMPACT_DRAIN_TIMEOUT at
        most (wait=False; the regions then stay until the next compaction, or
        close) or until they are (wait=True; a compaction must, before it
        writes there again). True when nothing is left pending."""
        if not self._pending_reclaim:
            return True
        before = self._shm_bytes()
        if not self._wait_readers(self._pending_slot, -1.0 if wait else self._compact_drain_timeout):
            return False
        # Reads of forked children (layout.h, "Reader slots"): a stopped
        # child must not hang the owner, so even wait=True gives up.
        if not self._wait_readers(-1, COMPACT_READERS_TIMEOUT if wait else self._compact_drain_timeout,
                                  self._pending_epoch):
            if wait:
                pids = self._foreign_readers_before(self._pending_epoch)
                raise Error(f"a forked process (pid {', '.join(map(str, pids))}) has been reading the arena "
                            f"generation that compaction must overwrite for over {COMPACT_READERS_TIMEOUT:.0f} s",
                            code="readers_busy", hint="retry once that process's read is over; nothing was changed")
            return False
        for worker, region in self._pending_reclaim:
            self._punch(worker, region)
        self._pending_reclaim = []
        self._pending_slot = -1
        self._pending_epoch = 0
        self._compaction["bytes_reclaimed"] += before - self._shm_bytes()
        return True

    def _compact_locked(self, keep, why):
        """REQUIRES the write lock."""
        started = time.perf_counter()
        with self._compact_lock:
            self._finish_reclaim(wait=True)        # the target regions must be empty
            shm_before = self._shm_bytes()
            versions_before, _ = self._version_counts()
            arena_before = sum(self._stats_of(w)["arena_used"] for w in range(self._workers))
            regions_before = [region for region, _ in self._regions()]
            epoch_before = self._read_epoch
            failed = []
            try:
                seq, failed = self._compact_workers(keep or 0)
            finally:
                regions = [region for region, _ in self._regions()]
                retired = [(w, regions_before[w]) for w in range(self._workers) if regions[w] != regions_before[w]]
                if retired:
                    self._pending_reclaim = retired
                    self._pending_slot = epoch_before & 1
                    self._pending_epoch = self._shared_read_epoch()
                # A failed build left garbage in the other region, which no
                # reader ever saw: give it back now.
                for worker, _status in failed:
                    if regions[worker] == regions_before[worker]:
                        self._punch(worker, 1 - regions[worker])
            shm_compacted = self._shm_bytes()
            self._compaction["bytes_reclaimed"] += shm_before - shm_compacted
            pending = not self._finish_reclaim(wait=False)
            shm_after = self._shm_bytes()
        versions_after, _ = self._version_counts()
        arena_after = sum(self._stats_of(w)["arena_used"] for w in range(self._workers))
        summary = {
            "seq": seq, "why": why, "keep_versions": keep,
            "versions_before": versions_before, "versions_after": versions_after,
            "versions_reclaimed": versions_before - versions_after,
            "arena_bytes_before": arena_before, "arena_bytes_after": arena_after,
            "shm_bytes_before": shm_before, "shm_bytes_after": shm_after,
            "bytes_reclaimed": shm_before - shm_after, "reclaim_pending": pending,
            "failed_workers": [w for w, _ in failed], "seconds": None,
        }
        self._compaction["compactions"] += 1
        self._compaction["versions_reclaimed"] += summary["versions_reclaimed"]
        if failed:
            self._compaction["failures"] += 1
        if self._path is not None and not self._read_only and retired:
            # The compacted generations are what reopening should find.
            self._checkpoint_locked("compaction")
        summary["seconds"] = round(time.perf_counter() - started, 6)
        self._compaction["last"] = summary
        if self._audit is not None:
            self._audit.event("compact", **summary)
        if failed:
            worker, status = failed[0]
            raise_for_status(status, f"compaction of worker {worker} failed; its data is unchanged"
                                     + (f" (workers {[w for w, _ in failed]})" if len(failed) > 1 else ""))
        return summary

    # ---- durability ------------------------------------------------------------

    def checkpoint(self):
        """Write every worker's arena to a checkpoint file and start new log
        segments, so that opening replays less; older files go once two newer
        checkpoints exist. Writes wait meanwhile; reads go on. Returns the seq
        the checkpoint holds."""
        with self._exclusive("checkpoint()"):
            self._require_durable("checkpoint")
            self._require_writable()
            return self._checkpoint_locked("requested")

    def _checkpoint_locked(self, why):
        started = time.perf_counter()
        seq = self._visible_seq()
        failed = self._checkpoint_workers()
        if failed:
            worker, status = failed[0]
            raise StorageError(f"worker {worker} could not write its checkpoint (status {status}); "
                               "the log still holds everything, nothing is lost")
        removed = [] if self._backups_running else storage.remove_obsolete(self._path, self._workers)
        if self._audit is not None:
            self._audit.event("checkpoint", seq=seq, why=why, removed=len(removed),
                              seconds=round(time.perf_counter() - started, 3))
        return seq

    def backup(self, dest):
        """Copy the database, consistent as of one batch, into the new
        directory `dest` while writes go on: a checkpoint (writes wait for
        it), then the checkpoint files are copied (hard-linked when `dest` is
        on the same file system) without holding writes. Open the copy with
        ParallelDB(dest). Returns the seq the copy holds."""
        dest = _backup_destination(dest)
        with self._exclusive("backup()"):
            self._require_durable("backup")
            self._require_writable()
            tmp = _make_backup_dir(dest)     # before the checkpoint: a bad destination changes nothing
            try:
                seq = self._checkpoint_locked("backup")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            names = [storage.checkpoint_name(w, seq) for w in range(self._workers)]
            manifest = storage.read_manifest(self._path)
            self._backups_running += 1
        try:
            storage.copy_files(self._path, names, tmp)
            storage.write_manifest(tmp, manifest["workers"], manifest["slot_owner"], manifest["options"])
            os.rename(tmp, dest)
            storage._fsync_dir(os.path.dirname(dest))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError(f"backup to {dest!r} failed: {exc.strerror or exc}",
                               hint="check free space and permissions where the copy goes; "
                                    "the database itself is unchanged") from None
        finally:
            with self._write_lock_obj:
                self._backups_running -= 1
        if self._audit is not None:
            self._audit.event("backup", seq=seq, dest=dest)
        return seq

    def _sweep_locked(self):
        """Delete every key stored in a partition that does not own its slot
        (left there by an interrupted reshard). REQUIRES the write lock."""
        from amdb.native.hashing import slot_of
        table = self._slot_table()
        stale = [(w, key, None) for w in range(self._workers)
                 for key, _ in self._partition_items(w) if table[slot_of(key)] != w]
        if stale:
            self._write_routed(stale)
        return len(stale)

    def _slot_table(self):
        return storage.read_manifest(self._path)["slot_owner"]

    def _require_durable(self, what):
        if self.closed:
            raise ClosedError("the database is closed")
        if self._path is None:
            raise InvalidArgumentError(f"{what}() needs a durable database: open it with ParallelDB(path)",
                                       code="memory_only")
        if self._read_only:
            raise StorageError("this database was opened with read_only=True", code="read_only",
                               hint="reopen it without read_only=True to write")

    # ---- writes ----------------------------------------------------------------

    def batch_put(self, items):
        """Write every (key, value) pair of `items` as one atomic batch.

        Returns ``BatchOutcome(success=True, results=BatchResult)``. On any
        error nothing of the batch is kept and the exception propagates.
        """
        return BatchOutcome(True, self._batch_put(items))

    def batch_delete(self, keys):
        """Delete every key of `keys` as one atomic batch."""
        return BatchOutcome(True, self._batch_delete(keys))

    def put_array(self, keys, values):
        """Columnar batch put from two 1-D numpy arrays (S<n> or unsigned ints)."""
        if self.closed:
            raise ClosedError("the database is closed")
        key_data, key_width, strip_keys, n = _fixed_width(keys, "keys")
        value_data, value_width, strip_values, m = _fixed_width(values, "values")
        if n != m:
            raise InvalidArgumentError(f"put_array: {n} keys but {m} values")
        return BatchOutcome(True, self._put_arrays(key_data, key_width, strip_keys,
                                                   value_data, value_width, strip_values, n))

    def put_packed(self, keys, key_offsets, values, value_offsets):
        """Batch put from packed buffers: item i is keys[key_offsets[i]:key_offsets[i+1]]
        and values[value_offsets[i]:value_offsets[i+1]]; offsets are int64 arrays
        of n + 1 entries (the layout amdb.native.routing.pack_pairs produces).
        One atomic batch, no Python object per item."""
        import numpy as np
        if self.closed:
            raise ClosedError("the database is closed")
        arrays = []
        for name, array, dtype in (("keys", keys, np.uint8), ("key_offsets", key_offsets, np.int64),
                                   ("values", values, np.uint8), ("value_offsets", value_offsets, np.int64)):
            if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype != dtype:
                raise InvalidTypeError(f"put_packed: {name} must be a 1-D numpy array of {np.dtype(dtype)}",
                                       hint="see amdb.native.routing.pack_pairs for the layout")
            arrays.append(np.ascontiguousarray(array))
        if len(arrays[1]) != len(arrays[3]) or len(arrays[1]) == 0:
            raise InvalidArgumentError("put_packed: key_offsets and value_offsets must both have n + 1 entries")
        return BatchOutcome(True, self._put_packed(*arrays))

    def get_array(self, keys, dtype=None):
        """Look up a 1-D numpy array of keys; returns ``(values, found)``."""
        import numpy as np
        if self.closed:
            raise ClosedError("the database is closed")
        key_data, key_width, strip_keys, n = _fixed_width(keys, "keys")
        if dtype is None:
            out_dtype, width, exact = None, -1, False
        else:
            try:
                out_dtype = np.dtype(dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidTypeError(f"get_array: dtype={dtype!r} is not a numpy dtype: {exc}",
                                       hint="use dtype=None, 'S16' or np.uint64") from None
            if out_dtype.kind == "S" and out_dtype.itemsize == 0:
                raise InvalidArgumentError("get_array: dtype S0 holds no bytes",
                                           hint="use dtype=None to size the result to the longest value")
            if out_dtype.kind == "S":
                width, exact = out_dtype.itemsize, False
            elif out_dtype.kind == "u":
                width, exact = out_dtype.itemsize, True
            else:
                raise InvalidTypeError(f"get_array: dtype must be S<n> or an unsigned integer, not {out_dtype}",
                                       hint="use dtype=None, 'S16' or np.uint64")
        buffer, width, found = self._get_arrays(key_data, key_width, strip_keys, n, width, exact)
        if out_dtype is not None and out_dtype.kind == "u":
            values = buffer.view(out_dtype.newbyteorder(">")).astype(out_dtype)
        else:
            values = buffer.view(f"S{width}")
        return values, found

    # ---- history -----------------------------------------------------------------

    def history(self, key, *, oldest_first=False, at_seq=None):
        """Every version of `key` as amdb.Version records, newest first (or
        oldest first), including deletions; [] for a key never written."""
        versions = [Version(n, seq, ts / 1e9, value, deleted, h, ph)
                    for n, seq, ts, value, deleted, h, ph in self._history(key, at_seq)]
        if oldest_first:
            versions.reverse()
        return versions

    def verify(self, key=None):
        """Recompute hash chains — of one key, or of every key with one thread
        per worker — and return an amdb.VerifyReport listing every break.
        Writes wait while a full verification runs; reads go on."""
        import concurrent.futures
        self._require_owner("verify()")
        started = time.perf_counter()
        if key is not None:
            with self._compact_lock:        # a compaction changes what the bounds describe
                parts = [self._verify_key(key)]
        else:
            with self._exclusive("verify()"):
                self._quiesce()
                with concurrent.futures.ThreadPoolExecutor(max_workers=self._workers) as pool:
                    parts = list(pool.map(self._verify_partition, range(self._workers)))
        breaks = [Break(*b) for part in parts for b in part[3]]
        return VerifyReport(keys_checked=sum(p[0] for p in parts),
                            versions_checked=sum(p[1] for p in parts),
                            breaks=breaks[:10000], breaks_total=sum(p[2] for p in parts),
                            seconds=time.perf_counter() - started)

    def digest(self):
        """The SHA-256 ledger: {"root", "workers", "chunks", "seq"}.

        Each worker folds the hashes of the versions of every chunk it applies
        into a SHA-256 chain; "workers" are their heads (hex) and "root" is
        SHA-256 over all heads. Two databases with the same workers, max_batch
        and ring_size, fed the same batches in the same order, have the same
        digest; any rewritten version changes it (see amdb/history.py)."""
        import hashlib
        with self._exclusive("digest()"):
            self._quiesce()
            heads = self._ledger_heads()
            seq = self._visible_seq()
        root = hashlib.sha256(b"amdb-ledger-v1" + len(heads).to_bytes(8, "little")
                              + b"".join(h for h, _ in heads))
        return {"root": root.hexdigest(), "workers": [h.hex() for h, _ in heads],
                "chunks": [n for _, n in heads], "seq": seq}

    def snapshot(self):
        """A read view as of the newest finished batch: its get/batch_get/scan
        keep answering as of that moment while writes go on."""
        if self.closed:
            raise ClosedError("the database is closed")
        return Snapshot(self, self._visible_seq())

    # ---- introspection ---------------------------------------------------------

    def stats(self):
        """Per-worker and overall counters (keys, arena and ring use, applied seq)."""
        self._require_owner("stats()")
        per_worker = []
        for index, proc in enumerate(self._procs):
            entry = self._stats_of(index)
            entry["pid"] = proc.pid
            entry["alive"] = proc.poll() is None
            entry["restarts"] = self._restarts[index]
            entry["last_crash"] = self._last_crash[index]
            entry["poisoned_chunks"] = len(self._poison[index])
            per_worker.append(entry)
        return {
            "workers": per_worker,
            "keys": len(self),
            "visible_seq": self._visible_seq(),
            "closed": False,
            "audit": self._audit.stats() if self._audit is not None else None,
            "durability": None if self._path is None else {
                "path": self._path, "sync": self._sync, "recovery": self._recovery,
                "read_only": self._read_only,
                "log_bytes": sum(w["log_bytes"] for w in per_worker),
                "checkpoint_seq": min(w["checkpoint_seq"] for w in per_worker),
                "log_errors": sum(w["log_errors"] for w in per_worker),
                "log_broken": any(w["log_broken"] for w in per_worker)},
            "worker_restarts": sum(self._restarts),
            "compaction": dict(self._compaction, keep_versions=self._keep_versions,
                               compact_min_versions=self._compact_min_versions,
                               reclaim_pending=bool(self._pending_reclaim),
                               shm_bytes=self._shm_bytes()),
            "options": {"workers": self._workers, "max_batch": self.max_batch,
                        "ring_size": self.ring_size, "arena_size": self.arena_size,
                        "max_key_size": self.max_key_size, "max_value_size": self.max_value_size,
                        "keep_versions": self._keep_versions, "hang_timeout": self._hang_timeout,
                        "poison_after": self._poison_after},
        }

    @property
    def workers(self):
        return self._workers

    def __repr__(self):
        state = "closed" if self.closed else f"{len(self)} keys"
        return f"<amdb.ParallelDB workers={self._workers} {state}>"


def _reshard(path, manifest, workers, options):
    """Reopen `path` with `workers` workers, moving only the slots that change
    owner (storage.rebalance). Every step survives a crash: the manifest says
    "sweep" from the first step on, so an interrupted move is finished (or
    its copies removed) by the next opening. Moved keys keep their latest
    value; their history starts again at version 1 in the new partition."""
    from amdb.native.hashing import slot_of
    old_workers, old_table = manifest["workers"], manifest["slot_owner"]
    wide = max(old_workers, workers)
    new_table = storage.rebalance(old_table, workers)
    lock_fd = storage.lock_directory(path)          # nobody else between the steps below
    try:
        storage.remove_worker_files(path, old_workers)
        storage.write_manifest(path, wide, old_table, manifest["options"], sweep=True)
    finally:
        os.close(lock_fd)
    with ParallelDB(path, workers=wide, **options) as db:      # sweeps what an earlier try left
        with db._write_lock_obj:
            # Opening swept and cleared the flag: set it again before copying.
            storage.write_manifest(path, wide, old_table, manifest["options"], sweep=True)
            moved = [(new_table[slot], key, value) for w in range(wide) for key, value in db._partition_items(w)
                     for slot in (slot_of(key),) if new_table[slot] != old_table[slot]]
            if moved:
                db._write_routed(moved)                 # copies at the new owners, one atomic batch
            db._checkpoint_locked("reshard")
            storage.write_manifest(path, wide, new_table, manifest["options"], sweep=True)
            db._set_slot_owner(new_table)
            db._sweep_locked()                          # the old copies go
            db._checkpoint_locked("reshard")
    lock_fd = storage.lock_directory(path)
    try:
        storage.remove_worker_files(path, workers)
        storage.write_manifest(path, workers, new_table, manifest["options"])
    finally:
        os.close(lock_fd)


def _backup_destination(dest):
    """backup()'s `dest` as an absolute str path, checked before anything is
    written: a path that does not exist yet, in a writable directory."""
    if not isinstance(dest, (str, bytes, os.PathLike)):
        raise InvalidTypeError(f"backup() takes a directory path, not {type(dest).__name__}",
                               hint="pass e.g. db.backup('backups/mydb-2026-12-04')")
    dest = os.fsdecode(os.path.abspath(os.fspath(dest)))
    if os.path.lexists(dest):
        raise InvalidArgumentError(f"backup destination {dest!r} already exists",
                                   hint="pass a path that does not exist yet")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        why = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise StorageError(f"backup destination {dest!r}: its parent {parent!r} {why}",
                           code="bad_destination", hint="create the parent directory first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"backup destination {dest!r}: {parent!r} is not writable", code="bad_destination",
                           hint="choose a directory you can write to")
    return dest


def _make_backup_dir(dest):
    """Create the temporary directory a backup to `dest` is written in."""
    tmp = dest + ".tmp-backup"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
    except OSError as exc:
        raise StorageError(f"backup destination {dest!r}: cannot create a directory there: "
                           f"{exc.strerror or exc}", code="bad_destination",
                           hint="choose a directory you can write to") from None
    return tmp


def _check_fault_spec(workers):
    """Refuse a malformed AMDB_FAULT (crash-test fault injection, read by the
    workers) here, with a clear error, rather than as a worker that fails to start."""
    from amdb._worker import FAULT_ENV, parse_fault_spec
    fault = parse_fault_spec(os.environ.get(FAULT_ENV))
    if fault is not None and fault[0] >= workers:
        raise InvalidArgumentError(f"{FAULT_ENV} names worker {fault[0]} but the database has {workers} workers",
                                   code="bad_fault_spec", hint=f"use worker=0..{workers - 1} or worker=any")


def _crash_report(worker, pid, returncode, position, how=None):
    """One line on a dead worker: who, how it died, and what it was doing,
    from its control block and ring (engine.worker_position), which outlive it."""
    import signal as signals
    if how is None:                     # else the caller says (a hung worker it killed)
        if returncode < 0:
            try:
                name = signals.Signals(-returncode).name
            except ValueError:
                name = "unknown signal"
            how = f"was killed by signal {-returncode} ({name})"
        else:
            how = f"exited with status {returncode}"
    text = f"worker {worker} (pid {pid}) {how}"
    if position is None:
        return text
    work = position["in_flight"]
    if position.get("compact_state") == "building":
        text += " while compacting its arena (writing the new generation; the current one is intact)"
    elif position.get("compact_state") == "switching":
        text += (" while compacting its arena (the new generation was whole, the switch to it not finished;"
                 " a worker attaching again finishes it)")
    elif work is None:
        text += " while idle"
    elif work["op"] == "chunk":
        text += f" while applying batch seq {work['seq']} (chunk {work['chunk_no']}, {work['records']} records)"
    elif work["op"] == "abort":
        text += f" while rolling back batch seq {work['seq']}"
    else:
        text += f" before its {work['op']} of batch seq {work['seq']}"
    if position["applied_chunk"] == 0:
        return text + "; it had applied nothing yet"
    return text + f"; last applied: batch seq {position['applied_seq']} (chunk {position['applied_chunk']})"


def _fixed_width(array, what):
    """(uint8 buffer, item width, strip trailing NULs?, length) of a 1-D
    numpy array of S<n> or unsigned integers (big-endian, so order is kept)."""
    import numpy as np
    if not isinstance(array, np.ndarray):
        raise InvalidTypeError(f"{what} must be a numpy array, not {type(array).__name__}",
                               hint="use np.asarray(...) with dtype S<n> or uint64")
    if array.ndim != 1:
        raise InvalidArgumentError(f"{what} must be 1-D, got shape {array.shape}")
    kind = array.dtype.kind
    if kind == "S":
        data, strip = np.ascontiguousarray(array), True
    elif kind == "u":
        data, strip = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">"), copy=False)), False
    else:
        raise InvalidTypeError(f"{what} must have dtype S<n> or an unsigned integer dtype, not {array.dtype}",
                               hint="encode strings to bytes (dtype S<n>) and use uint64 for integers")
    width = array.dtype.itemsize
    return data.view(np.uint8).reshape(-1), width, strip, len(array)
