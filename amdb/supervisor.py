"""The supervisor: what only the process that opens a database (the owner)
does. It creates the shared segments, starts the workers and waits for them,
watches them and replaces the ones that die or hang, and runs checkpoints,
compactions, resharding and the shutdown.

Who calls it: amdb.db.ParallelDB, which composes it with the client
(amdb.native.client: Attachment, Reader, Writer); the Writer asks it, during
every wait, whether a worker still lives (check_worker) and, before every
write, whether writes may go on (before_write).

Shared memory: it creates every segment (amdb.shm.segment), fills the
control block headers (amdb.shm.control) before any worker starts, resets a
dead worker's ring for its successor (through the Writer, under the write
lock) and punches out arena regions that compaction retired once no reader
can be in them. Everything else it only reads.
"""
import atexit
import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
import weakref

from amdb import SLOT_COUNT, attach, storage
from amdb.errors import (ClosedError, Error, InvalidArgumentError, StorageError, WorkerCrashedError,
                         WorkerStartError, raise_for_status)
from amdb.native.client import inspect
from amdb.native.constants import CHANNEL_BYTES, STATUS, WORKER_READY
from amdb.native.client.reader import Reader
from amdb.native.client.writer import Writer, WriteLock, channel_unsent_bytes, take_over_channel
from amdb.shm import control, segment
from amdb.shm.arena import Mapping, punch_hole

SHUTDOWN_TIMEOUT = 10.0             # seconds a worker gets to leave before it is killed
BROKEN_HINT = "reopen the database to write again; see the worker's stderr for why it failed"
LIVENESS_INTERVAL = 0.05            # seconds between worker-liveness polls before writes
PRESSURE_MIN_VERSIONS = 1000        # /dev/shm nearly full: compact again after this many more versions
COMPACT_DRAIN_TIMEOUT = 1.0         # seconds a compaction waits for readers of the old generation
                                    # before it leaves the old region's memory to the next one
COMPACT_READERS_TIMEOUT = 30.0      # seconds a compaction waits for another process's read (a forked
                                    # child's, an attached client's) of the region it must write before
                                    # it gives up (Error readers_busy); an automatic one waits
                                    # COMPACT_DRAIN_TIMEOUT, then is retried later: a stopped reader
                                    # delays a write by that much at most
EXIT_LOCK_TIMEOUT = 2.0             # seconds the exit handler waits for a write in another thread
SUCCESSOR_ATTEMPTS = 3              # successors started for one dead worker before writes are refused


def _close_all(fds):
    while fds:
        os.close(fds.pop())


class _ClientServices:
    """What the attach server does for writing clients (amdb/attach.py): a
    channel each (layout.h, "Client channels", forwarded by the Writer), and
    their other writes run here on the owner's database."""

    def __init__(self, supervisor):
        self.sup = weakref.proxy(supervisor)
        # A durable database's channels are files in its directory (layout.h,
        # "Client channels", point 5): Mapping -> path, until let go drained.
        self.channel_files = {}
        self.files_lock = threading.Lock()      # the forwarder's thread and close() both let go
        supervisor.writer.on_channel_released = self.released

    def open_channel(self, pid):
        """A new channel for client `pid`: (fd, entry, capacity)."""
        writer = self.sup.writer
        size = control.CONTROL_BYTES + CHANNEL_BYTES
        path = mapping = None
        if self.sup.path is None:
            fd = os.memfd_create("amdb-channel", os.MFD_CLOEXEC)
        else:
            path, fd = storage.create_channel_file(self.sup.path)
        try:
            try:
                os.ftruncate(fd, size)
                os.posix_fallocate(fd, 0, size)     # memory now: a write into it never faults
            except OSError as exc:
                where = "memory (/dev/shm)" if path is None else f"space in {self.sup.path}"
                raise StorageError(f"no room for a client's channel of {size} bytes: {exc.strerror}",
                                   code="io_error", hint=f"free {where}") from None
            mapping = Mapping(fd, 0, size, True)
            if path is not None:
                with self.files_lock:
                    self.channel_files[mapping] = path
            entry = writer.add_channel(mapping, CHANNEL_BYTES, pid)
            if entry < 0:
                raise Error(f"every one of its {writer.max_forwards} client channels is taken (max_clients)",
                            code="too_many_readers",
                            hint="close the database in processes that no longer use it, or open the owner "
                                 "with a larger max_clients=")
            writer.start_forwarder()
            return fd, entry, CHANNEL_BYTES
        except BaseException:
            os.close(fd)
            if path is not None:
                with self.files_lock:
                    self.channel_files.pop(mapping, None)
                storage.remove_quietly(path)
            raise

    def released(self, mappings):
        """The forwarder let these channels go, drained (or broken): their
        files go too."""
        with self.files_lock:
            paths = [self.channel_files.pop(m, None) for m in mappings]
        for path in paths:
            if path is not None:
                storage.remove_quietly(path)

    def close_channel(self, entry):
        self.sup.writer.close_channel(entry)

    def call(self, name, args, kwargs):
        """A writing client's call (attach.WRITE_CALLS), run on the owner's database."""
        db = self.sup.owner_ref() if self.sup.owner_ref is not None else None
        if db is None or self.sup.att.closed:
            raise ClosedError("the owner closed the database")
        return getattr(db, name)(*args, **kwargs)

    def stopped(self):
        """The server stops (close, exit, collection): the forwarder sends on
        what clients published, then stops, before the workers are asked to."""
        try:
            self.sup.writer.stop_forwarder()
        except ReferenceError:
            pass
        # A channel's file goes once everything in it was sent on; one with
        # records left stays, and the next opening applies them (point 5).
        with self.files_lock:
            left = list(self.channel_files.items())
            self.channel_files.clear()
        for mapping, path in left:
            if channel_unsent_bytes(mapping) == 0:
                storage.remove_quietly(path)


def _reap(owner_pid, controls, procs, timeout, fds, servers):
    """Stop serving attaches (clients see their owner go), ask every worker
    to stop, wait for them, kill the ones that do not go.
    Shared by close(), the exit handler and the garbage-collection finalizer.
    Does nothing in a forked child: the workers belong to the owner. Unmaps
    nothing: a mapping goes when its last holder drops it (Attachment.detach),
    never under a call that may still use it."""
    if os.getpid() != owner_pid:
        return
    while servers:
        servers.pop().stop()
    _close_all(fds)
    for mapping in controls:
        control.request_shutdown(mapping)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Open databases of this process, closed by one exit handler (close_at_exit)
# rather than by their garbage-collection finalizers, which would stop the
# workers under a write another (daemon) thread is still making.
_open_supervisors = weakref.WeakSet()


def shm_held_bytes():
    """/dev/shm the open databases of this process hold (shm_full messages)."""
    total = 0
    for sup in list(_open_supervisors):
        try:
            total += sup.shm_bytes()
        except (OSError, ValueError, AttributeError):
            pass
    return total


@atexit.register
def _close_all_at_exit():
    for supervisor in list(_open_supervisors):
        try:
            supervisor.close_at_exit()
        except Exception:           # one database's trouble must not keep the others open
            pass


class Supervisor:
    """The owner's half of an open database (see the module docstring)."""

    def __init__(self, options, attachment, write_lock):
        self.o = options
        self.att = attachment
        self.write_lock = write_lock    # an RLock: the Writer's, so that re-entry is seen
        self.writer = None              # set by open()
        self.reader = None
        self.audit = None
        self.path = None
        self.lock_fd = None
        self.recovery = None
        self.backups_running = 0
        self.compact_lock = threading.Lock()   # held by a compaction; verify(key) waits for it
        self.pending_reclaim = []       # [(worker, region)] retired, memory not given back yet
        self.pending_slot = -1          # reader slot that must drain first
        self.pending_epoch = 0          # and forked children's reads below this shared read epoch
        self.tables_drain = None        # ([(worker, tables_retired)], shared read epoch): a drain begun
        self.compact_retry_at = 0       # automatic compaction: versions before trying again
        self.pressure_retry_at = 0      # the same, when /dev/shm is nearly full (smaller steps)
        self.compact_drain_timeout = COMPACT_DRAIN_TIMEOUT
        self.compaction = {"compactions": 0, "versions_reclaimed": 0, "bytes_reclaimed": 0,
                           "failures": 0, "deferred": 0, "last": None}
        self.owner_pid = os.getpid()
        self.liveness_checked = 0.0
        self.segment_fds = []
        self.attach_servers = []        # the AttachServer, once it serves (a list: _reap empties it)
        self.attach_refused = "it is closed"
        self.owner_ref = None           # the ParallelDB (weak): what clients' admin calls run on
        self.arena_offset = 0
        self.segment_size = 0
        self.worker_env = None
        self.procs = []
        self.controls = []
        self.broken = None
        self.finalizer = None
        self.shared_lock_fd = None
        self.sweep_pending = False
        # Worker supervision (check_worker): successors started per worker,
        # crashes per chunk fingerprint, fingerprints refused (poison), and
        # the last progress reading (hang detection).
        workers = options.workers
        self.restarts = [0] * workers
        self.crashes_on = [{} for _ in range(workers)]
        self.poison = [set() for _ in range(workers)]
        self.last_crash = [None] * workers
        self.stall = [None] * workers

    # ---- opening ---------------------------------------------------------------

    def open(self, owner):
        """Open the database: reshard the directory if the worker count
        changed, lock it and plan recovery, create the segments, start the
        workers, attach, and finish an interrupted reshard. `owner` is the
        object whose collection shuts the workers down (the ParallelDB)."""
        o = self.o
        plan = None
        self.owner_ref = weakref.ref(owner)
        slot_owner = [slot % o.workers for slot in range(SLOT_COUNT)]
        if o.path is not None:
            manifest = o.manifest
            if manifest is not None and manifest["workers"] != o.workers and not o.read_only:
                _reshard(o.path, manifest, o.workers, o.reopen_kwargs())
            plan, slot_owner = self._open_directory(o.path, manifest, o.max_key_size, o.max_value_size)
        try:
            self._start(slot_owner, plan, owner)
        except BaseException:
            self._release_lock()
            raise
        try:
            if self.sweep_pending:
                with self.write_lock:
                    self.sweep_locked()
                    manifest = storage.read_manifest(self.path)
                    storage.write_manifest(self.path, manifest["workers"], manifest["slot_owner"],
                                           manifest["options"])
            if plan is not None and not o.read_only:
                self._replay_channels(plan.recovered_seq)
        except BaseException:
            with self.write_lock:
                self.close_locked()
            raise
        # Served only now: no client writes before what a dead owner's clients wrote is back.
        self._serve_attaches(self.db_fd)

    def _replay_channels(self, recovered_seq):
        """Apply what clients of a dead owner published and it had not sent on
        (layout.h, "Client channels", point 5): each channel file it left, its
        records in order (runs of puts, runs of deletes, as batches), then the
        file goes. Before attaches are served and before the owner's caller
        has the database: nothing else is written meanwhile. Counted in
        stats()["durability"]["recovery"]; a damaged file is renamed
        *.rejected once what came before the damage is applied."""
        report = self.recovery
        for key in ("channels_replayed", "channel_records_replayed", "channel_records_refused"):
            report.setdefault(key, 0)
        for name in storage.channel_files(self.path):
            path = os.path.join(self.path, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    mapping = Mapping(fd, 0, os.fstat(fd).st_size, True)
                finally:
                    os.close(fd)
                records, problem = take_over_channel(mapping, recovered_seq)
            except (OSError, ValueError, Error) as exc:
                records, problem = [], f"unreadable: {exc}"
            self._apply_channel_records(records, report)
            report["channels_replayed"] += 1
            if problem is None:
                storage.remove_quietly(path)
            else:                           # what came before the damage is applied; the file is kept aside
                report.setdefault("channel_problems", []).append({"file": name, "problem": problem})
                try:
                    os.replace(path, path + ".rejected")
                except OSError:
                    storage.remove_quietly(path)

    def _apply_channel_records(self, records, report):
        """Runs of puts and runs of deletes, in order, max_batch at most each.
        A record this opening's limits refuse (max_key_size, max_value_size
        lowered since) is counted, not applied."""
        o = self.o
        fits = [r for r in records if len(r[1]) <= o.max_key_size and len(r[2]) <= o.max_value_size]
        report["channel_records_refused"] += len(records) - len(fits)
        for op, run in itertools.groupby(fits, key=lambda r: r[0]):
            run = list(run)
            for start in range(0, len(run), o.max_batch):
                part = run[start:start + o.max_batch]
                if op == "delete":
                    self.writer.batch_delete([key for _, key, _ in part])
                else:
                    self.writer.batch_put([(key, value) for _, key, value in part])
                report["channel_records_replayed"] += len(part)

    def _open_directory(self, path, manifest, max_key_size, max_value_size):
        """Create or lock the directory and plan recovery. Returns (plan, slot table).
        Read-only: a shared lock, and nothing in the directory changes."""
        if not self.o.read_only:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create {path}: {exc.strerror}") from None
            storage.check_directory_writable(path)
        self.lock_fd = storage.lock_directory(path, shared=self.o.read_only)
        try:
            manifest = storage.read_manifest(path)        # again, now that we hold the lock
            if manifest is None:
                slot_owner = [slot % self.o.workers for slot in range(SLOT_COUNT)]
                storage.write_manifest(path, self.o.workers, slot_owner,
                                       {"max_key_size": max_key_size, "max_value_size": max_value_size})
            else:
                if manifest["workers"] != self.o.workers:
                    raise InvalidArgumentError(
                        f"{path} was written with workers={manifest['workers']}; a read-only opening "
                        f"cannot move slots to workers={self.o.workers}",
                        code="workers_changed", hint=f"open it with workers={manifest['workers']} (or None)")
                slot_owner = manifest["slot_owner"]
                self.sweep_pending = bool(manifest.get("sweep")) and not self.o.read_only
            plan = storage.plan_recovery(path, self.o.workers, repair=not self.o.read_only)
        except BaseException:
            self._release_lock()
            raise
        self.path = path
        self.recovery = plan.report
        return plan, slot_owner

    def _release_lock(self):
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def _start(self, slot_owner, plan, owner):
        _check_fault_spec(self.o.workers)
        shm_dir = self.o.shm_dir
        segment.sweep_stale(shm_dir)
        prefix = segment.new_prefix()
        names = []
        arenas = []
        db_fd = -1
        try:
            db_name = prefix + "_db"
            db_bytes = self.db_control_bytes = control.db_control_bytes(self.o.max_clients)
            db_shm = segment.create(db_name, db_bytes, db_bytes, shm_dir)
            names.append(db_name)
            db_mapping = Mapping(db_shm.fd, 0, db_bytes, True)
            db_fd = os.dup(db_shm.fd)               # handed to clients (amdb/attach.py)
            db_shm.close_fd()
            control.init_db_control(db_mapping, self.o.workers, slot_owner, self.o.max_clients,
                                    plan.recovered_seq if plan is not None else 0)
            ring_offset = control.CONTROL_BYTES
            arena_offset = ring_offset + self.o.ring_size
            self.arena_offset = arena_offset
            self.ring_offset = ring_offset
            # The control block and the first step of the ring are backed now;
            # the rest of the ring as the Writer first writes there.
            ring_backed = min(self.o.ring_size, control.RING_COMMIT_STEP)
            # Two regions of arena_size: the live generation and the one a
            # compaction writes (layout.h). Sparse until committed.
            segment_size = arena_offset + control.ARENA_REGIONS * self.o.arena_size
            for index in range(self.o.workers):
                name = f"{prefix}_{index}"
                shm = segment.create(name, segment_size, ring_offset + ring_backed, shm_dir)
                names.append(name)
                try:
                    mapping = Mapping(shm.fd, 0, arena_offset, True)
                    arenas.append(Mapping(shm.fd, arena_offset, control.ARENA_REGIONS * self.o.arena_size, False))
                    self.segment_fds.append(os.dup(shm.fd))    # successors, punch_hole, debug_flip_bit
                finally:
                    shm.close_fd()
                self.controls.append(mapping)
                control.init_partition_control(mapping, index, segment_size, ring_offset, self.o.ring_size,
                                               arena_offset, self.o.arena_size)
            env = dict(os.environ)
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
            self.worker_env = env
            self.segment_size = segment_size
            self.shared_lock_fd = self.lock_fd
            for index in range(self.o.workers):
                # A file segment (shm_dir) is handed over as a descriptor, as
                # to a successor; a POSIX one by name.
                attach = names[index + 1] if shm_dir is None else f"fd:{self.segment_fds[index]}:{index}"
                argv = [sys.executable, "-m", "amdb._worker", attach, str(segment_size),
                        str(os.getpid())]
                if plan is not None:
                    # repr/literal_eval rather than JSON: CPython's _json scanner trips
                    # valgrind (make memcheck) in every worker.
                    argv.append(repr(storage.worker_plan(
                        self.path, plan.workers[index], self.o.sync, self.o.sync_interval_ms,
                        self.o.log_segment_bytes, self.o.read_only)))
                # Workers inherit the directory lock: it is held until the
                # last of them is gone, not only the owner (storage.lock_directory).
                inherited = () if shm_dir is None else (self.segment_fds[index],)
                self.procs.append(subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, close_fds=True, env=env,
                    pass_fds=inherited + (() if self.lock_fd is None else (self.lock_fd,))))
            self._wait_ready(self.o.start_timeout)
        except BaseException:
            _reap(self.owner_pid, self.controls, self.procs, 2.0, self.segment_fds, [])
            if db_fd >= 0:
                os.close(db_fd)
            for name in names:
                segment.unlink_quietly(name, shm_dir)
            raise
        # Every worker has its segment open: the names can go (see segment.py).
        for name in names:
            segment.unlink_quietly(name, shm_dir)
        self.att.attach(db_mapping, list(self.controls), arenas)
        self.writer = Writer(self.att, self.o.max_batch, self.o.max_key_size, self.o.max_value_size,
                             self.write_lock, plan is not None, self)
        self.write_lock.writer = self.writer      # holding it keeps the forwarder of clients' writes out
        self.writer.set_ring_files(self.segment_fds[:self.o.workers], self.ring_offset,
                                   min(self.o.ring_size, control.RING_COMMIT_STEP))
        self.reader = Reader(self.att, self.writer)
        # Async single writes (layout.h): not where a write must be durable
        # before it returns, nor where nothing may be written.
        self.writer.async_enabled = not self.o.read_only and not (self.path is not None and self.o.sync == "batch")
        if self.lock_fd is not None:
            # Closed by _reap with the segment fds (after close() stops writes).
            self.segment_fds.append(self.lock_fd)
            self.lock_fd = None
        self.segment_fds.append(db_fd)
        self.db_fd = db_fd
        # self.procs itself, not a copy: successors of crashed workers join it.
        self.finalizer = weakref.finalize(owner, _reap, self.owner_pid, list(self.controls),
                                           self.procs, SHUTDOWN_TIMEOUT, self.segment_fds, self.attach_servers)
        self.finalizer.atexit = False      # _close_all_at_exit closes it instead
        _open_supervisors.add(self)

    def _serve_attaches(self, db_fd):
        """Serve attaches from other processes (amdb/attach.py): on a socket in
        the directory, or in the abstract namespace for a memory-only
        database. A directory where no socket can be made (a read-only disk)
        is simply not served: other processes then open it read-only themselves."""
        address = attach.memory_only_address() if self.path is None else attach.socket_path(self.path)
        fds = [db_fd] + self.segment_fds[:self.o.workers]
        try:
            self.attach_servers.append(attach.AttachServer(
                address, self.describe_for_clients, fds, self._admin_for_client,
                None if self.o.read_only else _ClientServices(self)))
        except OSError as exc:
            self.attach_refused = f"its socket could not be made ({exc.strerror or exc})"

    def _admin_for_client(self, name):
        """An attached client's stats(), verify() or digest(), run here on the
        owner's database (attach.ADMIN_CALLS), in the server's admin thread."""
        db = self.owner_ref() if self.owner_ref is not None else None
        if db is None or self.att.closed:
            raise ClosedError("the owner closed the database")
        return getattr(db, name)()

    def describe_for_clients(self):
        """What a client needs to map the segments the owner hands over."""
        import dataclasses
        options = {f.name: getattr(self.o, f.name) for f in dataclasses.fields(self.o) if f.name != "manifest"}
        return {"workers": self.o.workers, "db_control_bytes": self.db_control_bytes,
                "arena_offset": self.arena_offset, "arena_size": self.o.arena_size,
                "regions": control.ARENA_REGIONS, "owner_pid": self.owner_pid, "path": self.path,
                "options": options}

    def handle(self):
        """The token that attaches other processes (ParallelDB.handle)."""
        if not self.attach_servers:
            raise Error(f"this database serves no attaches: {self.attach_refused}", code="no_attach",
                        hint="open it read-only in the other process: ParallelDB(path, read_only=True)")
        return attach.Handle(self.attach_servers[0].address, self.path, self.owner_pid)

    def _wait_ready(self, timeout, indexes=None):
        deadline = time.monotonic() + timeout
        for index in range(self.o.workers) if indexes is None else indexes:
            mapping, proc = self.controls[index], self.procs[index]
            seen = 0
            while True:
                state, status = control.worker_start_status(mapping)
                if state == WORKER_READY:
                    break
                if status:                                        # AMDB_WORKER_FAILED: it says why
                    proc.wait()
                    raise_for_status(status, f"worker {index} could not start")
                if proc.poll() is not None:
                    raise WorkerStartError(f"worker {index} exited with status {proc.returncode} "
                                           "before it was ready" + (" (recovery failed: its error is on stderr)"
                                                                    if self.path else ""))
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"worker {index} was not ready after {timeout} s")
                seen = control.wait_worker_progress(mapping, seen, 0.05)

    @contextlib.contextmanager
    def quiesced(self):
        """No async single write goes out meanwhile, and every one sent before
        is applied and covered by visible_seq (a checkpoint, a compaction and
        a sweep need the arenas to hold exactly what visible_seq says).
        REQUIRES the write lock. Nests."""
        writer = self.writer
        writer.exclusive += 1
        try:
            writer.flush()
            yield
        finally:
            writer.exclusive -= 1
            writer.invalidate_credit()   # a compaction, say, took room

    # ---- supervision of the workers ----------------------------------------------

    def check_worker(self, worker):
        """Called by every wait on `worker` (each 50 ms slice) while work is
        pending. When the worker died, or made no progress for hang_timeout
        seconds (then it is killed), start its successor. If it died between
        records, the successor carries on from the ring and the call goes on;
        if it died handling one, the successor undoes the batch in flight and
        this raises WorkerCrashedError: the call fails whole and the database
        goes on. REQUIRES the write lock."""
        if self.att.closed:
            raise ClosedError(f"the database was closed while a call waited for worker {worker}")
        if self.broken is not None and self.broken[1] == worker:
            raise WorkerCrashedError(self.broken[0] + "; writes are refused, reads still work", hint=BROKEN_HINT,
                                     worker=worker, signal=self.broken[2])
        proc = self.procs[worker]
        stalled = None
        if proc.poll() is None:
            stalled = self._stalled_for(worker)
            if stalled is None:
                return
            proc.kill()                 # hung: SIGKILL, then treated like any crash
            proc.wait()
        rolled_back, message, signal = self._replace_worker(worker, stalled)
        if rolled_back:
            raise WorkerCrashedError(message, worker=worker, signal=signal, restarted=True)

    def _stalled_for(self, worker):
        """Seconds worker `worker` has shown no progress across consecutive
        waits on it, once that reaches hang_timeout; else None."""
        if self.o.hang_timeout is None:
            return None
        progress = control.worker_progress(self.controls[worker])
        now = time.monotonic()
        seen = self.stall[worker]
        # A reading older than a second belongs to an earlier wait (the worker
        # may have been idle since): start over.
        if seen is None or seen[0] != progress or now - seen[2] > 1.0:
            self.stall[worker] = (progress, now, now)
            return None
        self.stall[worker] = (progress, seen[1], now)
        return now - seen[1] if now - seen[1] >= self.o.hang_timeout else None

    def _replace_worker(self, worker, stalled=None):
        """Worker `worker` is dead (reaped): start a successor on its arena and
        return (rolled_back, message, signal). How the successor takes over
        depends on what the dead one was doing (its control block says):
          - between records, or past the end of the one it had taken (it was
            acknowledged): nothing is lost, the successor resumes from the
            ring ("resume");
          - inside a SOLO chunk (an async single write, acknowledged already):
            the successor undoes what it applied and applies it again from
            the ring ("redo");
          - inside a record of a batch or a control record: the successor
            undoes the batch unless visible and starts past everything in
            the ring; the call in flight fails (rolled_back: the caller
            raises WorkerCrashedError).
        Only the last two count the crash against the data (poison batches).
        If no successor can start, writes are refused from then on (reads go on)."""
        proc = self.procs[worker]
        code = proc.returncode
        signal = -code if code < 0 else None
        position = control.worker_position(self.controls[worker])
        how = None if stalled is None else (f"made no progress for {stalled:.1f} s with work pending "
                                            f"(hang_timeout={self.o.hang_timeout}) and was killed")
        message = _crash_report(worker, proc.pid, code, position, how)
        work = position["in_flight"] if position else None
        if work is not None and work["op"] == "chunk" and position["applied_chunk"] >= work["chunk_no"]:
            work = None                             # done and acknowledged: only the bookkeeping was left
        mode = "resume" if work is None else ("redo" if work.get("solo") else "rollback")
        poisoned = False
        if work is not None and work["fingerprint"] is not None:
            counts = self.crashes_on[worker]
            counts[work["fingerprint"]] = counts.get(work["fingerprint"], 0) + 1
            if counts[work["fingerprint"]] >= self.o.poison_after:
                self.poison[worker].add(work["fingerprint"])
                poisoned = True
        self.last_crash[worker] = message
        try:
            for attempt in range(SUCCESSOR_ATTEMPTS):
                try:
                    self._start_successor(worker, mode, 0 if work is None else work["seq"])
                    break
                except WorkerStartError:
                    # Killed while it started (by whatever killed its
                    # predecessor, say): its repair is idempotent, try again.
                    if attempt == SUCCESSOR_ATTEMPTS - 1 or control.worker_start_status(self.controls[worker])[1]:
                        raise
        except BaseException as exc:
            self.broken = (f"{message}; its successor could not start ({exc})", worker, signal)
            self.writer.async_enabled = False
            raise WorkerCrashedError(self.broken[0] + "; writes are refused, reads still work", hint=BROKEN_HINT,
                                     worker=worker, signal=signal) from exc
        self.restarts[worker] += 1
        if self.audit is not None:
            self.audit.event("worker_restart", worker=worker, signal=signal, exit_status=code,
                             hung=stalled is not None, restarts=self.restarts[worker],
                             poisoned=poisoned, mode=mode, report=message)
        if mode == "resume":
            message += (f"; a new worker took over (restart {self.restarts[worker]}) and carried on "
                        "from its ring: nothing was lost")
        elif mode == "redo":
            message += (f"; a new worker took over (restart {self.restarts[worker]}), undid the write it was "
                        "applying and applies it again: nothing was lost")
        else:
            message += (f"; a new worker took over (restart {self.restarts[worker]}) and the batch in "
                        "flight was rolled back: nothing of it was applied, retry it")
        if poisoned:
            message += (f". That chunk of data has now crashed worker {worker} {self.o.poison_after} "
                        "times: it will be refused (PoisonBatchError)")
        self.last_crash[worker] = message
        return mode == "rollback", message, signal

    def _start_successor(self, worker, mode, undo_seq):
        """Start a worker on the arena of dead worker `worker` and wait until
        it is ready (mode and undo_seq: _replace_worker)."""
        incarnation = self.restarts[worker] + 1
        self.writer.take_over_ring(worker, incarnation, mode != "rollback")
        self.writer.invalidate_credit(worker)
        self.stall[worker] = None
        plan = None
        if self.path is not None:
            next_segment = 0
            if not self.o.read_only:         # a read-only opening changes nothing on disk
                next_segment = storage.cut_torn_tail(
                    self.path, worker, control.worker_position(self.controls[worker])["log_segment"])
            plan = {"dir": self.path, "checkpoint": None, "replay": [], "next_segment": next_segment,
                    "sync": storage.SYNC_MODES[self.o.sync], "interval_ms": self.o.sync_interval_ms,
                    "segment_bytes": self.o.log_segment_bytes, "log_bytes": 0, "read_only": self.o.read_only}
        respawn = {"visible_seq": self.att.visible_seq(), "undo_seq": undo_seq, "poison": sorted(self.poison[worker])}
        fd = self.segment_fds[worker]          # a dup of the partition segment's descriptor
        from amdb._worker import INCARNATION_ENV
        env = dict(self.worker_env)
        env[INCARNATION_ENV] = str(incarnation)
        argv = [sys.executable, "-m", "amdb._worker", f"fd:{fd}:{worker}", str(self.segment_size),
                str(self.owner_pid), repr(plan), repr(respawn)]
        pass_fds = (fd,) if self.shared_lock_fd is None else (fd, self.shared_lock_fd)
        self.procs[worker] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True, env=env,
                                               pass_fds=pass_fds)
        try:
            self._wait_ready(self.o.start_timeout, [worker])
        except BaseException:
            self.procs[worker].kill()
            self.procs[worker].wait()
            raise

    def before_write(self):
        """Called by every write under the write lock, before anything is
        packed: refuse writes when they cannot be kept, replace workers that
        died between calls, checkpoint and compact when due.
        A forked child never gets here: Writer.enter_exclusive refused it."""
        self.require_writable()
        # Polling every worker costs a waitpid each (a third of a small put):
        # do it at most every LIVENESS_INTERVAL. A write that reaches a dead
        # worker finds out anyway, in its first wait slice.
        now = time.monotonic()
        if now - self.liveness_checked >= LIVENESS_INTERVAL:
            self.liveness_checked = now
            for index, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    # Died between calls: no call of ours was in flight, so
                    # this one goes on once the successor is ready.
                    self._replace_worker(index)
        if self.path is not None:
            self._check_log()
        if self.o.keep_versions is not None:
            self._check_compact()
        self.drain_outgrown_tables()
        # Async single writes skip these checks until then (Writer._send_solo).
        self.writer.next_check_ns = time.monotonic_ns() + int(LIVENESS_INTERVAL * 1e9)

    def drain_outgrown_tables(self):
        """Tell workers when no reader is left in the hash tables they
        outgrew, so that they give those tables' memory back (layout.h,
        "Outgrown hash tables", 2). Never waits: a drain that finds a reader
        still in is finished by a later call (before a later write). A drain
        finished late begins the next at once: tables were outgrown meanwhile."""
        for _ in range(2):
            if self.tables_drain is None:
                pending = self.att.outgrown_tables()
                if pending is None:
                    return
                self.tables_drain = (pending, self.att.bump_shared_read_epoch())
            pending, epoch = self.tables_drain
            if not self.att.readers_idle() or self.att.foreign_readers_before(epoch):
                return
            for worker, retired in pending:
                control.mark_tables_drained(self.controls[worker], retired)
            self.tables_drain = None

    def require_writable(self):
        """For calls that change the database but are not writes (compact,
        checkpoint, backup): refused on a read-only opening, or once the
        database refuses writes. REQUIRES the write lock."""
        if self.o.read_only:
            raise StorageError("this database was opened with read_only=True", code="read_only",
                               hint="reopen it without read_only=True to change it")
        if self.broken is not None:
            message, worker, signal = self.broken
            raise WorkerCrashedError(message + "; writes are refused, reads still work", hint=BROKEN_HINT,
                                     worker=worker, signal=signal)

    def _check_log(self):
        """Refuse writes once a log is broken; checkpoint when a log grew past
        checkpoint_bytes and a quarter of its arena, unless one is still being
        written (its worker would stop applying until that one is out).
        REQUIRES the write lock."""
        due, broken = inspect.log_state(self.att, self.o.checkpoint_bytes or 0)
        if broken >= 0:
            raise StorageError(f"the write-ahead log of worker {broken} could not be written or "
                               "repaired; writes are refused until the database is reopened, reads go on")
        if due and not inspect.checkpoint_running(self.att):
            self.checkpoint_locked("automatic", wait=False)   # written in the background

    # ---- retention and compaction ---------------------------------------------------

    def _check_compact(self):
        """Compact automatically (keep_versions=n) once at least
        compact_min_versions versions, and at least a third of all stored,
        lie certainly beyond the newest n of their key: versions - n * keys,
        or, when /dev/shm (shm_dir) is more than 7/8 full, once any does;
        and no background checkpoint is being written.
        REQUIRES the write lock. A failed automatic compaction does not fail
        the write that triggered it; it is counted, and retried later."""
        versions, nodes = self.att.version_counts()
        excess = versions - self.o.keep_versions * nodes
        if excess <= 0:
            return
        if excess < self.o.compact_min_versions or 3 * excess < versions or versions < self.compact_retry_at:
            if versions < self.pressure_retry_at or not self._shm_pressure():
                return
        if inspect.checkpoint_running(self.att):
            # A compaction waits for the checkpoint that copies the region it
            # retires: never make a write wait for that; the next write retries.
            return
        try:
            summary = self.compact_locked(self.o.keep_versions, "automatic")
            # What an open snapshot or iterator still reads was kept: wait for
            # another quarter of growth rather than compact again at every write.
            after = summary["versions_after"]
            self.compact_retry_at = after + max(self.o.compact_min_versions, after // 4)
            self.pressure_retry_at = after + max(PRESSURE_MIN_VERSIONS, after // 8)
        except (WorkerCrashedError, ClosedError, KeyboardInterrupt):
            raise
        except Error as exc:
            self.compact_retry_at = versions + max(self.o.compact_min_versions, versions // 4)
            self.pressure_retry_at = versions + max(PRESSURE_MIN_VERSIONS, versions // 8)
            if exc.code == "readers_busy":
                self.compaction["deferred"] += 1
            if self.audit is not None:
                self.audit.event("compact_failed", why="automatic", error=str(exc))

    def _shm_space(self):
        """(size, free bytes) of the file system the segments live in
        (/dev/shm, or shm_dir), or (None, None) when it cannot be asked."""
        try:
            st = os.statvfs(self.o.shm_dir or segment.SHM_DIR)
        except OSError:
            return None, None
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def _shm_pressure(self):
        """The shared-memory file system is more than 7/8 full: compact
        whatever can be reclaimed, not only once a third of it could."""
        size, free = self._shm_space()
        return size is not None and free * 8 < size

    def shm_bytes(self):
        """Memory the partition segments hold now (their allocated blocks)."""
        return sum(self.segment_shm_bytes())

    def segment_shm_bytes(self):
        """Per worker: what its segment (control block, ring, arena regions)
        holds in /dev/shm now."""
        return [os.fstat(fd).st_blocks * 512 for fd in self.segment_fds[:self.o.workers]]

    def memory(self, per_worker):
        """stats()["memory"]: per worker and in total, the /dev/shm each
        segment holds, the arena's used and committed bytes and where the used
        ones go (inspect.memory_census), the ring's committed bytes, and how
        full /dev/shm is. `per_worker`: the workers' counters (stats_of)."""
        self.drain_outgrown_tables()
        rings = self.writer.ring_committed()
        held = self.segment_shm_bytes()
        workers = []
        for index, counters in enumerate(per_worker):
            entry = {"worker": index, "shm_bytes": held[index], "ring_committed": rings[index],
                     "arena_used": counters["arena_used"], "arena_committed": counters["arena_committed"],
                     "keys": counters["keys"]}
            entry.update(inspect.memory_census(self.att, index))
            workers.append(entry)
        total = {name: sum(w[name] for w in workers) for name in workers[0] if name not in ("worker", "walked")}
        keys = total["keys"]
        # What the arena holds: its address space less the outgrown tables' slots given back.
        total["arena_bytes_per_key"] = (total["arena_used"] - total["released"]) / keys if keys else None
        total["shm_bytes_per_key"] = total["shm_bytes"] / keys if keys else None
        shm_size, shm_free = self._shm_space()
        return {"workers": workers, "total": total, "shm_dir": self.o.shm_dir or segment.SHM_DIR,
                "shm_size": shm_size, "shm_free": shm_free, "db_control_bytes": self.db_control_bytes}

    def _punch(self, worker, region):
        """Give the memory of `region` of `worker` back (layout.h, "Arena regions").
        REQUIRES: no reader can be inside it, and it is not the current one."""
        assert region != self.att.regions()[worker][0]
        punch_hole(self.segment_fds[worker], self.arena_offset + region * self.o.arena_size, self.o.arena_size)

    def _finish_reclaim(self, wait, patience=COMPACT_READERS_TIMEOUT):
        """Punch out the regions the last compaction retired, once the readers
        that could still be in them are gone: waits COMPACT_DRAIN_TIMEOUT at
        most (wait=False; the regions then stay until the next compaction, or
        close) or until they are (wait=True; a compaction must, before it
        writes there again; other processes' reads are waited for `patience`
        seconds, then readers_busy). True when nothing is left pending."""
        if not self.pending_reclaim:
            return True
        before = self.shm_bytes()
        if not self.att.wait_readers(self.pending_slot, -1.0 if wait else self.compact_drain_timeout):
            return False
        # Reads of forked children (layout.h, "Reader slots"): a stopped
        # child must not hang the owner, so even wait=True gives up.
        if not self.att.wait_readers(-1, patience if wait else self.compact_drain_timeout, self.pending_epoch):
            if wait:
                pids = self.att.foreign_readers_before(self.pending_epoch)
                raise Error(f"another process (pid {', '.join(map(str, pids))}: a forked child or an attached "
                            f"client) has been reading the arena generation that compaction must overwrite for "
                            f"over {patience:g} s", code="readers_busy",
                            hint="retry once that process's read is over; nothing was changed")
            return False
        for worker, region in self.pending_reclaim:
            self._punch(worker, region)
        self.pending_reclaim = []
        self.pending_slot = -1
        self.pending_epoch = 0
        self.compaction["bytes_reclaimed"] += before - self.shm_bytes()
        return True

    def compact_locked(self, keep, why):
        """REQUIRES the write lock."""
        with self.quiesced():
            return self._compact(keep, why)

    def _compact(self, keep, why):
        started = time.perf_counter()
        with self.compact_lock:
            # The target regions must be empty. A write that triggered an
            # automatic compaction waits for a stopped reader briefly only.
            self._finish_reclaim(wait=True, patience=(self.compact_drain_timeout if why == "automatic"
                                                      else COMPACT_READERS_TIMEOUT))
            shm_before = self.shm_bytes()
            versions_before, _ = self.att.version_counts()
            arena_before = sum(self._stats_of(w)["arena_used"] for w in range(self.o.workers))
            regions_before = [region for region, _ in self.att.regions()]
            epoch_before = self.att.read_epoch
            failed = []
            try:
                seq, failed = self.writer.compact_workers(keep or 0, self.att.compact_horizon())
            finally:
                regions = [region for region, _ in self.att.regions()]
                retired = [(w, regions_before[w]) for w in range(self.o.workers) if regions[w] != regions_before[w]]
                if retired:
                    self.pending_reclaim = retired
                    self.pending_slot = epoch_before & 1
                    self.pending_epoch = self.att.shared_read_epoch()
                # A failed build left garbage in the other region, which no
                # reader ever saw: give it back now.
                for worker, _status in failed:
                    if regions[worker] == regions_before[worker]:
                        self._punch(worker, 1 - regions[worker])
            shm_compacted = self.shm_bytes()
            self.compaction["bytes_reclaimed"] += shm_before - shm_compacted
            pending = not self._finish_reclaim(wait=False)
            shm_after = self.shm_bytes()
        versions_after, _ = self.att.version_counts()
        arena_after = sum(self._stats_of(w)["arena_used"] for w in range(self.o.workers))
        summary = {
            "seq": seq, "why": why, "keep_versions": keep,
            "versions_before": versions_before, "versions_after": versions_after,
            "versions_reclaimed": versions_before - versions_after,
            "arena_bytes_before": arena_before, "arena_bytes_after": arena_after,
            "shm_bytes_before": shm_before, "shm_bytes_after": shm_after,
            "bytes_reclaimed": shm_before - shm_after, "reclaim_pending": pending,
            "failed_workers": [w for w, _ in failed], "seconds": None,
        }
        self.compaction["compactions"] += 1
        self.compaction["versions_reclaimed"] += summary["versions_reclaimed"]
        if failed:
            self.compaction["failures"] += 1
        if self.path is not None and not self.o.read_only and retired:
            # The compacted generations are what reopening should find.
            self.checkpoint_locked("compaction", wait=False)
        summary["seconds"] = round(time.perf_counter() - started, 6)
        self.compaction["last"] = summary
        if self.audit is not None:
            self.audit.event("compact", **summary)
        if failed:
            worker, status = failed[0]
            raise_for_status(status, f"compaction of worker {worker} failed; its data is unchanged"
                                     + (f" (workers {[w for w, _ in failed]})" if len(failed) > 1 else ""))
        return summary

    # ---- durability --------------------------------------------------------------------

    def checkpoint_locked(self, why, wait=True):
        """Checkpoint every worker as of now. Each writes its file in the
        background (wal.pyx, "Background checkpoints") while writes go on;
        with `wait`, return once every file is written (reshard); without
        (automatic ones), once every one began. REQUIRES the write lock;
        db.checkpoint() and backup() wait without it (finish_checkpoint)."""
        with self.quiesced():
            return self._checkpoint(why, wait)

    def _checkpoint(self, why, wait):
        started = time.perf_counter()
        seq = self.att.visible_seq()
        self._raise_failed(self.writer.checkpoint_workers(wait))
        removed = [] if self.backups_running else storage.remove_obsolete(self.path, self.o.workers)
        if self.audit is not None:
            self.audit.event("checkpoint", seq=seq, why=why, removed=len(removed), waited=wait,
                              seconds=round(time.perf_counter() - started, 3))
        return seq

    def finish_checkpoint(self, seq, remove_obsolete=True):
        """Wait, without the write lock, until the checkpoint of `seq` begun
        by checkpoint_locked(wait=False) is written by every worker; then
        let the files it made obsolete go."""
        self._raise_failed(self.writer.wait_checkpoints(seq))
        if remove_obsolete:
            with self.write_lock:
                if not self.backups_running and not self.att.closed:
                    storage.remove_obsolete(self.path, self.o.workers)

    @staticmethod
    def _raise_failed(failed):
        if failed:
            worker, status = failed[0]
            why = {STATUS["TIMEOUT"]: "died while writing it", STATUS["NO_MEMORY"]: "ran out of memory",
                   STATUS["IO_ERROR"]: "could not write it (I/O error)"}.get(status, f"failed (status {status})")
            raise StorageError(f"the checkpoint failed: worker {worker} {why}; "
                               "its log still holds everything, nothing is lost",
                               hint="see db.stats() for the log state; check free disk space")

    def sweep_locked(self):
        """Delete every key stored in a partition that does not own its slot
        (left there by an interrupted reshard). REQUIRES the write lock."""
        with self.quiesced():
            return self._sweep()

    def _sweep(self):
        from amdb.native.hashing import slot_of
        table = self._slot_table()
        stale = [(w, key, None) for w in range(self.o.workers)
                 for key, _ in self.reader.partition_items(w) if table[slot_of(key)] != w]
        if stale:
            self.writer.write_routed(stale)
        return len(stale)

    def _slot_table(self):
        return storage.read_manifest(self.path)["slot_owner"]

    # ---- shutdown, statistics, test hooks ---------------------------------------------

    def close_locked(self):
        """Stop the workers and let the memory go. REQUIRES the write lock, or
        the process exiting (close_at_exit)."""
        audit, self.audit = self.audit, None
        if audit is not None and not self.att.closed:
            audit.event("close", keys=self.att.committed_len, seq=self.att.visible_seq())
        if audit is not None:
            audit.close()
        self.att.mark_closed()
        if self.finalizer is not None and self.finalizer.alive:
            self.finalizer()            # runs _reap once: workers stop after draining their rings
        self.controls = []
        self.att.release_memory()           # now, or when the last reader inside leaves
        _open_supervisors.discard(self)

    def close_at_exit(self):
        """The interpreter is exiting with the database open. A daemon thread
        may be inside a write: refuse new calls at once, wait a little for
        the write lock, stop the workers (they drain their rings first), and
        unmap only if no write holds the lock (the exit unmaps the rest)."""
        if self.att.foreign:
            self.att.close_foreign()
            return
        if self.att.closed and (self.finalizer is None or not self.finalizer.alive):
            return
        self.writer.stop_forwarder()        # what attached clients published goes on first
        self.att.mark_closed()              # a call in another thread now raises ClosedError at its next check
        got = self.write_lock.acquire(timeout=EXIT_LOCK_TIMEOUT)
        try:
            if got:
                self.close_locked()
            elif self.finalizer is not None and self.finalizer.alive:
                self.finalizer()
        finally:
            if got:
                self.write_lock.release()

    def debug_hold_checkpoints(self, stage):
        """Test hook: background checkpoints pause at `stage` ("copying":
        halfway through the copy, "noted", "renamed"; wal.pyx) until called
        again with None."""
        for m in self.controls:
            control.hold_checkpoints(m, stage)

    def debug_wait_checkpoint_held(self, worker, timeout=30.0):
        """Test hook: wait until worker's checkpoint is paused by
        debug_hold_checkpoints; returns the stage, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            stage = control.checkpoint_held(self.controls[worker])
            if stage is not None or time.monotonic() >= deadline:
                return stage
            seen = control.wait_worker_progress(self.controls[worker], seen, 0.05)

    def debug_flip_bit(self, worker, arena_offset, bit):
        """Test hook: flip one bit of worker `worker`'s arena (its current
        generation), as a stray write or a bad memory cell would. Corrupts the
        database on purpose."""
        import mmap
        if self.att.closed:
            raise ClosedError("the database is closed")
        region = self.att.regions()[worker][0]
        position = self.arena_offset + region * self.o.arena_size + arena_offset
        page = position - position % mmap.PAGESIZE
        view = mmap.mmap(self.segment_fds[worker], mmap.PAGESIZE, offset=page)
        try:
            view[position - page] ^= 1 << bit
        finally:
            view.close()

    def stats(self):
        """Per-worker and overall counters (keys, arena and ring use, applied seq)."""
        per_worker = []
        for index, proc in enumerate(self.procs):
            entry = self._stats_of(index)
            entry["pid"] = proc.pid
            entry["alive"] = proc.poll() is None
            entry["restarts"] = self.restarts[index]
            entry["last_crash"] = self.last_crash[index]
            entry["poisoned_chunks"] = len(self.poison[index])
            per_worker.append(entry)
        return {
            "workers": per_worker,
            "keys": self.att.committed_len,
            "visible_seq": self.att.visible_seq(),
            "closed": False,
            "audit": self.audit.stats() if self.audit is not None else None,
            "durability": None if self.path is None else {
                "path": self.path, "sync": self.o.sync, "recovery": self.recovery,
                "read_only": self.o.read_only,
                "log_bytes": sum(w["log_bytes"] for w in per_worker),
                "checkpoint_seq": min(w["checkpoint_seq"] for w in per_worker),
                "log_errors": sum(w["log_errors"] for w in per_worker),
                "log_broken": any(w["log_broken"] for w in per_worker)},
            "worker_restarts": sum(self.restarts),
            "clients": ({"attached": self.attach_servers[0].client_pids(),
                         "attaches": self.attach_servers[0].attaches,
                         "refused": self.attach_servers[0].refused,
                         "channels": self.writer.channels_open(),       # writing clients' (layout.h)
                         "max_clients": self.o.max_clients,
                         "reader_slots_held": self.att.reader_slots_held(),
                         "forwarded": self.writer.forwarded} if self.attach_servers else None),
            "memory": self.memory(per_worker),
            "compaction": dict(self.compaction, keep_versions=self.o.keep_versions,
                               compact_min_versions=self.o.compact_min_versions,
                               reclaim_pending=bool(self.pending_reclaim),
                               shm_bytes=self.shm_bytes()),
            "options": {"workers": self.o.workers, "max_batch": self.o.max_batch,
                        "ring_size": self.o.ring_size, "arena_size": self.o.arena_size,
                        "max_key_size": self.o.max_key_size, "max_value_size": self.o.max_value_size,
                        "keep_versions": self.o.keep_versions, "hang_timeout": self.o.hang_timeout,
                        "poison_after": self.o.poison_after},
        }

    def _stats_of(self, worker):
        return inspect.stats_of(self.att, worker)


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
    from amdb.native.client.attachment import Attachment
    from amdb.options import parse_options
    attachment, write_lock = Attachment(), WriteLock()
    supervisor = Supervisor(parse_options(path, workers=wide, **options), attachment, write_lock)
    supervisor.open(owner=attachment)           # sweeps what an earlier try left
    with write_lock:
        try:
            # Opening swept and cleared the flag: set it again before copying.
            storage.write_manifest(path, wide, old_table, manifest["options"], sweep=True)
            moved = [(new_table[slot], key, value) for w in range(wide)
                     for key, value in supervisor.reader.partition_items(w)
                     for slot in (slot_of(key),) if new_table[slot] != old_table[slot]]
            if moved:
                supervisor.writer.write_routed(moved)   # copies at the new owners, one atomic batch
            supervisor.checkpoint_locked("reshard")
            storage.write_manifest(path, wide, new_table, manifest["options"], sweep=True)
            supervisor.writer.set_slot_owner(new_table)
            supervisor.sweep_locked()                   # the old copies go
            supervisor.checkpoint_locked("reshard")
        finally:
            supervisor.close_locked()
    lock_fd = storage.lock_directory(path)
    try:
        storage.remove_worker_files(path, workers)
        storage.write_manifest(path, workers, new_table, manifest["options"])
    finally:
        os.close(lock_fd)
