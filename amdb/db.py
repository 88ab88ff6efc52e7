"""ParallelDB: the public database object, a facade over three parts.

  - the Attachment (amdb.native.client.attachment): this process's view of
    the shared memory;
  - the Reader and the Writer (amdb.native.client.reader / writer): every
    read and every write. Their hottest methods (get, put, delete, batch_get,
    batch_put, scan) are bound onto each ParallelDB at open, so a call costs
    no Python frame;
  - the Supervisor (amdb.supervisor): segments, workers, checkpoints,
    compaction, shutdown.

Options are checked once, by amdb.options.parse_options. docs/API.md is the
contract; docs/ARCHITECTURE.md shows where each part lives.
"""
import contextlib
import functools
import os
from collections import abc
import shutil
import threading
import time
import weakref
from typing import NamedTuple

from amdb import attach, storage
from amdb.errors import ClosedError, Error, InvalidArgumentError, InvalidTypeError, LockedError, StorageError
from amdb.history import Break, Snapshot, VerifyReport, Version
from amdb.native.client import inspect
from amdb.native.client.attachment import Attachment
from amdb.native.client.batch import WriteBatch
from amdb.native.client.channel import ClientWriter
from amdb.native.client.reader import Reader
from amdb.native.client.writer import BatchResult, Writer, WriteLock
from amdb.options import DEFAULTS, Options, keep_versions_option, parse_options
from amdb.supervisor import Supervisor
from amdb.views import MappingViews

__all__ = ["ParallelDB", "BatchOutcome", "BatchResult", "backup"]

_DEFAULT = object()                 # compact(keep_versions=...) not given: the database's setting
_MISSING = object()


class BatchOutcome(NamedTuple):
    """``success, results = db.batch_put(items)``; errors raise, so success is True."""
    success: bool
    results: BatchResult


class ParallelDB(MappingViews, abc.MutableMapping):
    """An embedded key-value database that spreads its keys over worker processes.

    See docs/API.md for the full contract. With ``path``, a directory that
    keeps every acknowledged write (write-ahead logs and checkpoints,
    amdb/storage.py); without, memory only. A MutableMapping of bytes to
    bytes: ``db[k] = v``, ``db[k]``, ``del db[k]``, ``update()``, views.
    """

    def __init__(self, path=None, *, workers=DEFAULTS["workers"], max_batch=DEFAULTS["max_batch"],
                 ring_size=DEFAULTS["ring_size"], arena_size=DEFAULTS["arena_size"],
                 max_key_size=DEFAULTS["max_key_size"], max_value_size=DEFAULTS["max_value_size"],
                 start_timeout=DEFAULTS["start_timeout"], audit=DEFAULTS["audit"],
                 audit_max_bytes=DEFAULTS["audit_max_bytes"], sync=DEFAULTS["sync"],
                 sync_interval_ms=DEFAULTS["sync_interval_ms"], log_segment_bytes=DEFAULTS["log_segment_bytes"],
                 checkpoint_bytes=DEFAULTS["checkpoint_bytes"], read_only=DEFAULTS["read_only"],
                 keep_versions=DEFAULTS["keep_versions"], compact_min_versions=DEFAULTS["compact_min_versions"],
                 hang_timeout=DEFAULTS["hang_timeout"], poison_after=DEFAULTS["poison_after"],
                 shm_dir=DEFAULTS["shm_dir"], max_clients=DEFAULTS["max_clients"]):
        self._options = options = parse_options(
            path, workers=workers, max_batch=max_batch, ring_size=ring_size, arena_size=arena_size,
            max_key_size=max_key_size, max_value_size=max_value_size, start_timeout=start_timeout, audit=audit,
            audit_max_bytes=audit_max_bytes, sync=sync, sync_interval_ms=sync_interval_ms,
            log_segment_bytes=log_segment_bytes, checkpoint_bytes=checkpoint_bytes, read_only=read_only,
            keep_versions=keep_versions, compact_min_versions=compact_min_versions, hang_timeout=hang_timeout,
            poison_after=poison_after, shm_dir=shm_dir, max_clients=max_clients)
        self._fresh()
        if options.read_only:
            supervisor = self._open_read_only(options, workers)
            if supervisor is None:
                return                  # attached as a client of the open database
        else:
            supervisor = Supervisor(options, self._att, self._write_lock)
            try:
                supervisor.open(owner=self)
            except LockedError:
                # Open in another process: attach to it, as a client that writes.
                if not self._attach_to_owner(options, workers):
                    raise
                return
        self._supervisor = supervisor
        self._bind(supervisor.writer, supervisor.reader)
        if options.audit is not None:
            from amdb.audit import AuditLog
            audit_log = AuditLog(options.audit, max_bytes=options.audit_max_bytes)
            supervisor.audit = self._writer.audit = audit_log
            recovery = supervisor.recovery
            audit_log.event("open", workers=options.workers, max_batch=options.max_batch,
                            ring_size=options.ring_size, arena_size=options.arena_size, path=options.path,
                            recovered_seq=recovery["recovered_seq"] if recovery else None)
            if recovery and (recovery["logs_cut"] or recovery["checkpoints_rejected"]
                             or recovery.get("channel_records_replayed")):
                audit_log.event("recovery", **recovery)

    def _fresh(self):
        """The state every ParallelDB starts with, owner or client."""
        # An RLock only so that a write can tell that its own thread holds it
        # (Writer.enter_exclusive): never entered twice.
        self._write_lock = WriteLock()
        self._att = Attachment()
        self._corrupted = False         # _debug_flip_bit was used: verify() is expected to find breaks
        self._client = None             # attached to another process's database (amdb/attach.py)
        self._inherited = []            # a forked child that attached: its parents' views, closed at close()

    def _bind(self, writer, reader):
        self._writer, self._reader = writer, reader
        # The hot paths: the client's own methods, no Python frame in between.
        writer_methods = ("put", "delete", "flush", "increment", "put_if_absent", "compare_and_set")
        for name in writer_methods + ("batch_get", "iterator", "scan"):
            setattr(self, name, getattr(self._writer if name in writer_methods else self._reader, name))
        self.get = self._reader.get
        _open_dbs.add(self)

    # ---- attached from another process (amdb/attach.py) ------------------------------

    def _open_read_only(self, options, workers):
        """read_only=True: attach to the process that has the directory open,
        if one does (returns None); else open it read-only here (returns the
        Supervisor). A writer still starting holds the lock before it serves
        attaches: wait for it, up to start_timeout."""
        from amdb.errors import LockedError
        handle = attach.Handle(attach.socket_path(options.path), options.path, 0)
        deadline = time.monotonic() + options.start_timeout
        while True:
            try:
                self._open_client(handle, workers)
                return None
            except attach.NoOwner:
                pass
            supervisor = Supervisor(options, self._att, self._write_lock)
            try:
                supervisor.open(owner=self)
                return supervisor
            except LockedError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def _attach_to_owner(self, options, workers):
        """ParallelDB(path) while another process has it open: attach to that
        process as a client that writes (True), unless none serves attaches
        there, or it is this very process (False: LockedError stands)."""
        handle = attach.Handle(attach.socket_path(options.path), options.path, 0)
        try:
            self._open_client(handle, workers, write=True)
        except attach.NoOwner:
            return False
        except Error as exc:
            if exc.code != "attach_refused":     # a read-only holder serves no writers: LockedError
                raise
            return False
        if self._client.handle.owner_pid == os.getpid():
            self.close()
            self._fresh()
            return False
        return True

    def _open_client(self, handle, workers=None, write=False):
        """Attach to the database whose owner serves `handle` (amdb/attach.py):
        reads straight from the shared memory; with `write`, writes too
        (put and delete through a channel, the rest run by the owner)."""
        description, self._client = attach.attach_client(self._att, handle, write)
        owner = description["options"]
        if workers is not None and workers != description["workers"]:
            self._client.close()
            self._att.close_foreign()
            raise InvalidArgumentError(
                f"the database is open with workers={description['workers']}, not workers={workers}",
                code="workers_changed", hint="attach with workers=None")
        self._options = Options(**dict(owner, read_only=not write, audit=None, manifest=None))
        self._supervisor = None
        if not write:
            self._bind(Writer(self._att, self._options.max_batch, self._options.max_key_size,
                              self._options.max_value_size, self._write_lock, self._options.path is not None,
                              None),
                       Reader(self._att, None))
            return
        writer = ClientWriter(self._att, self._client.channel, self._client, self._options.max_key_size,
                              self._options.max_value_size,
                              not (self._options.path is not None and self._options.sync == "batch"))
        self._bind(writer, Reader(self._att, None))
        # The writes that are not put or delete run in the owner (attach.WRITE_CALLS).
        for name in CLIENT_CALLS:
            setattr(self, name, functools.partial(writer.call, name))
        self.write_batch = functools.partial(ClientWriteBatch, writer)
        # A path is the client's: the owner's working directory may be another.
        self.backup = lambda dest, *args, **kwargs: writer.call("backup", os.path.abspath(os.fspath(dest)),
                                                               *args, **kwargs)

    @classmethod
    def attach(cls, handle, *, read_only=False):
        """Attach to a database open in another process, from its
        ``db.handle()``: reads zero-copy, as fast as the owner's own; writes
        (unless read_only) through a channel of its own (put, delete) or run
        by the owner (the rest). Raises OwnerGoneError when that process no
        longer serves it."""
        if not isinstance(handle, attach.Handle):
            raise InvalidTypeError(f"attach() takes an amdb.Handle (from db.handle()), not {type(handle).__name__}",
                                   hint="call db.handle() in the process that has the database open and pass "
                                        "what it returns (or pass the pickled ParallelDB itself)")
        db = cls.__new__(cls)
        db._fresh()
        try:
            db._open_client(handle, write=not read_only)
        except attach.NoOwner:
            raise attach.owner_gone_error(handle.path, f"no process serves it any more (owner was process "
                                                       f"{handle.owner_pid})") from None
        return db

    def handle(self):
        """A small picklable token (amdb.Handle) that attaches to this database
        from another process of the same user: ``ParallelDB.attach(handle)``.
        ``pickle.dumps(db)`` carries one, so a ParallelDB passed to a process
        pool or a spawned Process arrives attached (it reads and writes)."""
        if self._client is not None:
            return self._client.handle
        if self._att.foreign:
            self._writer.enter_exclusive("hand out a handle")     # a forked child: raises
        if self._att.closed:
            raise self._att.closed_error()
        return self._supervisor.handle()

    def __reduce__(self):
        return (_attach_from_handle, (self.handle(),))

    # ---- the guard and the lifecycle ------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, what):
        """Hold the write lock for `what`, after the one guard every such
        method passes first (Writer.enter_exclusive: not a forked child,
        open, not re-entered from the code of a call of this thread)."""
        self._writer.enter_exclusive(what)
        with self._write_lock:
            if self._att.closed:
                raise self._att.closed_error()
            with self._supervisor.quiesced():
                yield

    def _require_owner(self, what):
        """For calls that need no write lock but only make sense in the owner
        (its workers, its locks): refused in a forked child, and once closed."""
        if self._att.foreign:
            self._writer.enter_exclusive(what)      # raises Error(code="forked" or "attached_read_only")
        if self._att.closed:
            raise self._att.closed_error()

    def _require_durable(self, what):
        if self._options.path is None:
            raise InvalidArgumentError(f"{what}() needs a durable database: open it with ParallelDB(path)",
                                       code="memory_only")

    @property
    def closed(self):
        return self._att.closed

    def close(self):
        """Stop the workers and release all shared memory. Idempotent.

        In a forked child it closes this process's handle only (see
        "Forking and multiprocessing" in docs/API.md)."""
        while self._inherited:                  # a forked child that attached: its parents' views too
            inherited_att, inherited_client = self._inherited.pop()
            if inherited_client is not None:
                inherited_client.close()
            inherited_att.close_foreign()
        failure = None
        if self._client is not None:
            if self._client.channel is not None and not self._att.closed:
                try:
                    self._writer.flush()    # close() returns once this client's writes are applied
                except ClosedError:
                    pass                    # the owner is gone: what it got is its to apply
                except Error as exc:
                    failure = exc           # a write the owner refused: raised once closed
            self._client.close()
        if self._att.foreign:
            self._att.close_foreign()
            if failure is not None:
                raise failure
            return
        if self._write_lock._is_owned():
            self._writer.enter_exclusive("close()")     # raises: called back from a write of this thread
        # What attached clients published goes on first (the write lock would pause it).
        self._writer.stop_forwarder()
        with self._write_lock:
            # Async writes already in a ring are applied: the workers drain
            # their rings before they stop. New ones see `closed`.
            self._supervisor.close_locked()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ---- writes (put and delete are the Writer's own, bound at open) ----------------

    def put(self, key, value):
        """Store `value` under `key` (both bytes-like)."""
        self._writer.put(key, value)

    def delete(self, key):
        """Delete `key`; deleting a missing key does nothing."""
        self._writer.delete(key)

    def flush(self):
        """Wait until every write this process made so far is applied and
        visible to every read (put() and delete() return before that; reads
        of this process never need a flush to see them). Raises the error of
        a write that failed after it returned (see docs/API.md)."""
        self._writer.flush()

    # ---- read-modify-write, applied by the key's worker (docs/API.md) ----------------

    def increment(self, key, delta=1, *, initial=0, wait=True):
        """Add `delta` to the counter under `key`, atomically, and return the
        new value; a missing key counts as `initial`. A counter is stored as
        8 bytes, signed big-endian: ``n.to_bytes(8, "big", signed=True)``.
        wait=False returns None at once, like put()."""
        return self._writer.increment(key, delta, initial=initial, wait=wait)

    def put_if_absent(self, key, value):
        """Store `value` only if `key` is absent: True when it was stored."""
        return self._writer.put_if_absent(key, value)

    def compare_and_set(self, key, expected, new):
        """Store `new` only if `key` holds `expected` (None: is absent): True
        when it was stored."""
        return self._writer.compare_and_set(key, expected, new)

    def batch_put(self, items):
        """Write every (key, value) pair of `items` as one atomic batch.

        Returns ``BatchOutcome(success=True, results=BatchResult)``. On any
        error nothing of the batch is kept and the exception propagates.
        """
        if isinstance(items, abc.Mapping):
            items = items.items()
        return BatchOutcome(True, self._writer.batch_put(items))

    def batch_delete(self, keys):
        """Delete every key of `keys` as one atomic batch."""
        return BatchOutcome(True, self._writer.batch_delete(keys))

    def write_batch(self):
        """A batch of puts and deletes streamed into the rings as they come
        and made visible whole at the end of the ``with`` block (rolled back
        whole if the block raises). See docs/API.md, "Write batches"."""
        return WriteBatch(self._writer)

    def _apply_client_batch(self, ops):
        """A writing client's write_batch(), written here as one batch
        (attach.WRITE_CALLS): [(op, key, args...)] as ClientWriteBatch keeps
        them. Its BatchResult."""
        with self.write_batch() as wb:
            for op, key, *args in ops:
                if op == "put":
                    wb.put(key, args[0])
                elif op == "delete":
                    wb.delete(key)
                elif op == "increment":
                    wb.increment(key, args[0], initial=args[1])
                elif op == "put_if_absent":
                    wb.put_if_absent(key, args[0])
                elif op == "compare_and_set":
                    wb.compare_and_set(key, args[0], args[1])
                else:
                    raise InvalidArgumentError(f"unknown batch operation {op!r}")
        return wb.result

    def put_array(self, keys, values):
        """Columnar batch put from two 1-D numpy arrays (S<n> or unsigned ints)."""
        if self.closed:
            raise self._att.closed_error()
        key_data, key_width, strip_keys, n = _fixed_width(keys, "keys")
        value_data, value_width, strip_values, m = _fixed_width(values, "values")
        if n != m:
            raise InvalidArgumentError(f"put_array: {n} keys but {m} values")
        return BatchOutcome(True, self._writer.put_arrays(key_data, key_width, strip_keys,
                                                          value_data, value_width, strip_values, n))

    def put_packed(self, keys, key_offsets, values, value_offsets):
        """Batch put from packed buffers: item i is keys[key_offsets[i]:key_offsets[i+1]]
        and values[value_offsets[i]:value_offsets[i+1]]; offsets are int64 arrays
        of n + 1 entries (the layout amdb.native.routing.pack_pairs produces).
        One atomic batch, no Python object per item."""
        import numpy as np
        if self.closed:
            raise self._att.closed_error()
        arrays = []
        for name, array, dtype in (("keys", keys, np.uint8), ("key_offsets", key_offsets, np.int64),
                                   ("values", values, np.uint8), ("value_offsets", value_offsets, np.int64)):
            if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype != dtype:
                raise InvalidTypeError(f"put_packed: {name} must be a 1-D numpy array of {np.dtype(dtype)}",
                                       hint="see amdb.native.routing.pack_pairs for the layout")
            arrays.append(np.ascontiguousarray(array))
        if len(arrays[1]) != len(arrays[3]) or len(arrays[1]) == 0:
            raise InvalidArgumentError("put_packed: key_offsets and value_offsets must both have n + 1 entries")
        return BatchOutcome(True, self._writer.put_packed(*arrays))

    def get_array(self, keys, dtype=None, *, lengths=False):
        """Look up a numpy array of keys (as put_array takes them); returns
        ``(values, found)``, or ``(values, found, lengths)`` with `lengths`:
        each value's length in bytes (0 where missing), for variable-length
        values read into fixed-width items. See docs/API.md for the dtypes."""
        import numpy as np
        if self.closed:
            raise self._att.closed_error()
        key_data, key_width, strip_keys, n = _fixed_width(keys, "keys")
        if dtype is None:
            out_dtype, width, exact = None, -1, False
        else:
            try:
                out_dtype = np.dtype(dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidTypeError(f"get_array: dtype={dtype!r} is not a numpy dtype: {exc}",
                                       hint="use dtype=None, 'S16', 'V16' or np.uint64") from None
            kind = out_dtype.kind
            if kind in "SV" and out_dtype.itemsize == 0:
                raise InvalidArgumentError(f"get_array: dtype {out_dtype} holds no bytes",
                                           hint="use dtype=None to size the result to the longest value")
            if kind == "S" or (kind == "V" and out_dtype.fields is None):
                width, exact = out_dtype.itemsize, False
            elif kind in "ui":
                width, exact = out_dtype.itemsize, True
            else:
                raise InvalidTypeError(f"get_array: dtype must be S<n>, V<n> or an integer dtype, not {out_dtype}",
                                       hint="use dtype=None, 'S16', 'V16' or np.uint64")
        buffer, width, found, value_lengths = self._reader.get_arrays(key_data, key_width, strip_keys, n, width,
                                                                      exact)
        if out_dtype is None:
            values = buffer.view(f"S{width}")
        elif out_dtype.kind == "u":
            values = buffer.view(out_dtype.newbyteorder(">")).astype(out_dtype)
        elif out_dtype.kind == "i":
            values = _ordered_to_signed(buffer, out_dtype)
            values[~found] = 0
        else:
            values = buffer.view(out_dtype)
        return (values, found, value_lengths) if lengths else (values, found)

    # ---- reads (get, batch_get, scan, keys, items, values are the Reader's own) -------

    def get(self, key, default=None, *, version=None, at_seq=None):
        """The value of `key` as bytes, or `default` when it is absent (see docs/API.md)."""
        return self._reader.get(key, default, version=version, at_seq=at_seq)

    def batch_get(self, keys, *, at_seq=None):
        """Values of `keys` (None where absent), looked up with the GIL released."""
        return self._reader.batch_get(keys, at_seq=at_seq)

    def iterator(self, start=None, stop=None, *, prefix=None, reverse=False, include_start=True,
                 include_stop=False, keys_only=False, values_only=False, at_seq=None, limit=None):
        """An ordered cursor with seek(), prev(), valid, key, value, reading one
        snapshot (see docs/API.md, "Iterators")."""
        return self._reader.iterator(start, stop, prefix=prefix, reverse=reverse, include_start=include_start,
                                     include_stop=include_stop, keys_only=keys_only, values_only=values_only,
                                     at_seq=at_seq, limit=limit)

    def scan(self, start=None, stop=None, *, prefix=None, reverse=False, keys_only=False, at_seq=None, limit=None):
        """Iterate (key, value) pairs (or keys) in bytewise key order: from
        start (inclusive) to stop (exclusive), within prefix, at most limit."""
        return self._reader.scan(start, stop, prefix=prefix, reverse=reverse, keys_only=keys_only, at_seq=at_seq,
                                 limit=limit)

    def _view_iterator(self, keys_only, values_only, reverse):
        return self._reader.iterator(keys_only=keys_only, values_only=values_only, reverse=reverse)

    def __iter__(self):
        return self._reader.iter_keys()

    def __contains__(self, key):
        return self._reader.contains(key)

    def __len__(self):
        return self._reader.count()

    def prefixed(self, prefix):
        """A namespace: the keys under `prefix` as a database of their own,
        keys relative to it (amdb.prefixed.PrefixedDB; plyvel's prefixed_db)."""
        from amdb.prefixed import PrefixedDB
        return PrefixedDB(self, prefix)

    # ---- the mapping interface (collections.abc.MutableMapping) ---------------------

    def __getitem__(self, key):
        value = self._reader.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        self.put(key, value)            # the instance's own (a forked child's attaches first)

    def __delitem__(self, key):
        """Delete `key`, raising KeyError when it is absent (db.delete()
        does not)."""
        if not self._reader.contains(key):
            raise KeyError(key)
        self.delete(key)

    def update(self, other=(), /, **kwargs):
        """Put every pair of `other` (a mapping, or an iterable of (key,
        value) pairs) as one atomic batch. Keyword arguments have str keys,
        which the database refuses (InvalidTypeError)."""
        if kwargs:
            raise InvalidTypeError("update(): keyword arguments give str keys; keys must be bytes",
                                   hint="pass a dict of bytes: db.update({b'k': b'v'})")
        self.batch_put(other)

    def clear(self):
        """Delete every key (one batch per worker-sized chunk of keys: a
        concurrent reader may see part of it done)."""
        chunk = max(1, min(self._options.max_batch, 100_000))
        while True:
            keys = list(self._reader.scan(keys_only=True, limit=chunk))
            if not keys:
                return
            self.batch_delete(keys)

    def setdefault(self, key, default=None):
        """db[key] if present, else store `default` and return it; atomic
        (put_if_absent): of racing callers, one stores its default and every
        one of them returns the value stored."""
        while True:
            value = self._reader.get(key, _MISSING)
            if value is not _MISSING:
                return value
            if default is None:
                raise InvalidTypeError("setdefault(key) without a default would store None; values are bytes",
                                       hint="pass a bytes default")
            if self.put_if_absent(key, default):
                return default
            # Another writer stored it first: read what it stored (again, if
            # yet another one deleted it meanwhile).

    # ---- history -----------------------------------------------------------------

    def history(self, key, *, oldest_first=False, at_seq=None):
        """Every version of `key` as amdb.Version records, newest first (or
        oldest first), including deletions; [] for a key never written."""
        versions = [Version(n, seq, ts / 1e9, value, deleted, h, ph)
                    for n, seq, ts, value, deleted, h, ph in self._reader.history_records(key, at_seq)]
        if oldest_first:
            versions.reverse()
        return versions

    def verify(self, key=None):
        """Recompute hash chains — of one key, or of every key with one thread
        per worker — and return an amdb.VerifyReport listing every break.
        Writes wait while a full verification runs; reads go on."""
        import concurrent.futures
        if self._client is not None and key is None:
            return self._client.admin("verify", self._att)      # run by the owner (attach.ADMIN_CALLS)
        self._require_owner("verify()")
        started = time.perf_counter()
        if key is not None:
            with self._supervisor.compact_lock:     # a compaction changes what the bounds describe
                parts = [inspect.verify_key(self._att, key)]
        else:
            with self._exclusive("verify()"):
                self._writer.quiesce()
                with concurrent.futures.ThreadPoolExecutor(max_workers=self._att.nworkers) as pool:
                    parts = list(pool.map(lambda w: inspect.verify_partition(self._att, w),
                                          range(self._att.nworkers)))
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
        if self._client is not None:
            return self._client.admin("digest", self._att)
        with self._exclusive("digest()"):
            self._writer.quiesce()
            heads = inspect.ledger_heads(self._att)
            seq = self._att.visible_seq()
        root = hashlib.sha256(b"amdb-ledger-v1" + len(heads).to_bytes(8, "little")
                              + b"".join(h for h, _ in heads))
        return {"root": root.hexdigest(), "workers": [h.hex() for h, _ in heads],
                "chunks": [n for _, n in heads], "seq": seq}

    def snapshot(self):
        """A read view as of the newest finished batch: its get/batch_get/scan
        keep answering as of that moment while writes go on."""
        if self._att.closed:
            raise self._att.closed_error()
        self._writer.flush()                # a snapshot holds every write this process made
        self._reader.sync_reads()           # (a client: every write its owner acknowledged)
        seq = self._att.pin_visible()       # pinned before the seq is taken (Attachment.pin_visible)
        try:
            return Snapshot(self, seq, (self._att.pin, self._att.unpin))
        finally:
            self._att.unpin(seq)

    # ---- retention, compaction, durability ----------------------------------------

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
        keep = self._options.keep_versions if keep_versions is _DEFAULT else keep_versions_option(keep_versions)
        with self._exclusive("compact()"):
            self._supervisor.require_writable()
            return self._supervisor.compact_locked(keep, "requested")

    def checkpoint(self):
        """Write every worker's arena to a checkpoint file and start new log
        segments, so that opening replays less; older files go once two newer
        checkpoints exist. Each worker writes its file in the background:
        reads and writes go on meanwhile (writes of this call's own thread
        too, from other threads). Returns, once every file is written, the
        seq the checkpoint holds."""
        with self._exclusive("checkpoint()"):
            self._require_durable("checkpoint")
            self._supervisor.require_writable()
            seq = self._supervisor.checkpoint_locked("requested", wait=False)
        self._supervisor.finish_checkpoint(seq)
        return seq

    def backup(self, dest):
        """Copy the database, consistent as of one batch, into the new
        directory `dest` while writes go on: a checkpoint (written in the
        background), then the checkpoint files are copied (hard-linked when
        `dest` is on the same file system). Open the copy with
        ParallelDB(dest). Returns the seq the copy holds."""
        dest = _backup_destination(dest)
        with self._exclusive("backup()"):
            self._require_durable("backup")
            self._supervisor.require_writable()
            tmp = _make_backup_dir(dest)     # before the checkpoint: a bad destination changes nothing
            try:
                seq = self._supervisor.checkpoint_locked("backup", wait=False)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            names = [storage.checkpoint_name(w, seq) for w in range(self._options.workers)]
            manifest = storage.read_manifest(self._options.path)
            self._supervisor.backups_running += 1     # the files it copies stay until it is done
        try:
            try:
                self._supervisor.finish_checkpoint(seq, remove_obsolete=False)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            storage.copy_files(self._options.path, names, tmp)
            storage.write_manifest(tmp, manifest["workers"], manifest["slot_owner"], manifest["options"])
            os.rename(tmp, dest)
            storage._fsync_dir(os.path.dirname(dest))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError(f"backup to {dest!r} failed: {exc.strerror or exc}",
                               hint="check free space and permissions where the copy goes; "
                                    "the database itself is unchanged") from None
        finally:
            with self._write_lock:
                self._supervisor.backups_running -= 1
        if self._supervisor.audit is not None:
            self._supervisor.audit.event("backup", seq=seq, dest=dest)
        return seq

    # ---- introspection ---------------------------------------------------------

    def stats(self):
        """Per-worker and overall counters (keys, arena and ring use, applied seq).
        In an attached client, its owner's (asked over the attach socket)."""
        if self._client is not None:
            return self._client.admin("stats", self._att)
        self._require_owner("stats()")
        self._writer.flush()
        return self._supervisor.stats()

    @property
    def workers(self):
        return self._options.workers

    @property
    def durable(self):
        return self._options.path is not None

    @property
    def max_batch(self):
        return self._options.max_batch

    @property
    def max_key_size(self):
        return self._options.max_key_size

    @property
    def max_value_size(self):
        return self._options.max_value_size

    @property
    def ring_size(self):
        return self._options.ring_size

    @property
    def arena_size(self):
        return self._options.arena_size

    def __repr__(self):
        state = "closed" if self.closed else f"{len(self)} keys"
        return f"<amdb.ParallelDB workers={self._options.workers} {state}>"

    # ---- test hooks ----------------------------------------------------------------

    def _debug_flip_bit(self, worker, arena_offset, bit):
        """Flip one bit of worker `worker`'s arena: corrupts the database on purpose."""
        self._corrupted = True
        self._supervisor.debug_flip_bit(worker, arena_offset, bit)

    def _debug_layout(self, key):
        return inspect.debug_layout(self._att, key)

    def _debug_arena_header(self, worker):
        return inspect.debug_arena_header(self._att, worker)

    def _debug_enter_read(self):
        return self._att.debug_enter_read()

    def _debug_leave_read(self, slot):
        self._att.debug_leave_read(slot)

    def _regions(self):
        return self._att.regions()


# A writing client's calls run by its owner (attach.WRITE_CALLS; put and
# delete go through its channel).
CLIENT_CALLS = ("batch_put", "batch_delete", "put_array", "put_packed", "compact", "checkpoint", "backup",
                "verify")


class ClientWriteBatch:
    """write_batch() in a writing client: the records are kept here and the
    owner writes them as one batch when the block ends (_apply_client_batch),
    visible whole or not at all; nothing is sent when the block raises.
    Each record's key and value are checked as it is added."""

    def __init__(self, writer):
        self._writer = writer
        self._ops = []
        self.open = True
        self.result = None

    def _add(self, op, key, *args):
        if not self.open:
            raise InvalidArgumentError("this write batch is already written or discarded",
                                       hint="start a new one: db.write_batch()")
        key = _client_bytes(key, "key", self._writer.max_key_size)
        self._ops.append((op, key) + args)

    def put(self, key, value):
        self._add("put", key, _client_bytes(value, "value", self._writer.max_value_size))

    def delete(self, key):
        self._add("delete", key)

    def increment(self, key, delta=1, *, initial=0):
        from amdb.native.client.writer import increment_argument
        increment_argument(delta, initial)          # checked now: ints in the signed 64-bit range
        self._add("increment", key, delta, initial)

    def put_if_absent(self, key, value):
        self._add("put_if_absent", key, _client_bytes(value, "value", self._writer.max_value_size))

    def compare_and_set(self, key, expected, new):
        self._add("compare_and_set", key,
                  None if expected is None else _client_bytes(expected, "expected", self._writer.max_value_size),
                  _client_bytes(new, "new", self._writer.max_value_size))

    @property
    def count(self):
        return len(self._ops)

    def write(self):
        if not self.open:
            raise InvalidArgumentError("this write batch is already written or discarded")
        self.open = False
        self.result = self._writer.call("_apply_client_batch", self._ops)
        self._ops = []
        return self.result

    def discard(self):
        self.open = False
        self._ops = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.open:
            return False
        if exc_type is None:
            self.write()
        else:
            self.discard()
        return False


def _client_bytes(obj, what, limit):
    """bytes of a bytes-like key or value, checked against its limit before
    anything is sent."""
    from amdb.errors import KeyTooLargeError, ValueTooLargeError
    if isinstance(obj, bytes):
        data = obj
    else:
        try:
            data = bytes(memoryview(obj))
        except TypeError:
            raise InvalidTypeError(f"{what} must be bytes-like, not {type(obj).__name__}") from None
    if len(data) > limit:
        cls = KeyTooLargeError if what == "key" else ValueTooLargeError
        raise cls(f"{what} of {len(data)} bytes exceeds max_{'key' if what == 'key' else 'value'}_size={limit}")
    return data


# ---- forked children ----------------------------------------------------------
# A child made by os.fork() (or the "fork" start method) inherits every open
# ParallelDB. It reads through its parent's mappings at once (Attachment.
# became_foreign); its first write, or any call only the owner serves,
# attaches it to the owner as a client (as ParallelDB.attach would) and runs
# there. Only the names below start that: every other write path of the
# class goes through one of them (__setitem__ through put, pop through
# __delitem__ and delete, ...).
_REATTACHING_CALLS = ("put", "delete", "batch_put", "batch_delete", "put_array", "put_packed", "write_batch",
                      "increment", "put_if_absent", "compare_and_set", "update", "clear", "setdefault",
                      "compact", "checkpoint", "backup", "verify", "digest", "stats", "handle")
_open_dbs = weakref.WeakSet()           # every ParallelDB bound in this process (owner or client)
_reattach_lock = threading.Lock()       # one attach at a time, among a child's threads


def _arm_reattach_in_child():
    """os.register_at_fork(after_in_child): each inherited ParallelDB that
    writes gets, for each _REATTACHING_CALLS name, a stub that attaches first."""
    global _reattach_lock
    _reattach_lock = threading.Lock()   # the parent's may be held by a thread the child lacks
    for db in list(_open_dbs):
        if db.__dict__.get("_att") is None or db._att.closed or db._options.read_only:
            continue
        proxy = weakref.proxy(db)
        for name in _REATTACHING_CALLS:
            db.__dict__[name] = functools.partial(_attach_then_call, proxy, name)


def _attach_then_call(db, name, *args, **kwargs):
    _attach_forked_child(db)
    return getattr(db, name)(*args, **kwargs)


def _attach_forked_child(db):
    """Turn a forked child's inherited `db` into a client of the owner (the
    parent, or the owner its parent was a client of). Its reads went through
    the parent's mappings until now; snapshots and iterators made before keep
    them until close()."""
    with _reattach_lock:
        if getattr(db.__dict__.get("put"), "func", None) is not _attach_then_call:
            return                      # another thread of the child attached it meanwhile
        if db._att.closed:
            raise db._att.closed_error()
        if db._client is not None:
            handle = db._client.handle
        elif db._supervisor is not None and db._supervisor.attach_servers:
            handle = db._supervisor.handle()
        else:
            raise Error(f"this forked child cannot write: its parent serves no attaches "
                        f"({db._supervisor.attach_refused})", code="forked",
                        hint="open the database in the child after forking, or write from the parent")
        fresh = ParallelDB.attach(handle)       # OwnerGoneError once the owner is gone
        inherited = db._inherited + [(db._att, db._client)]
        for name in _REATTACHING_CALLS:
            db.__dict__.pop(name, None)
        db.__dict__.update(fresh.__dict__)
        _open_dbs.discard(fresh)
        fresh.__dict__.clear()
        db._inherited = inherited


def _instance_first(method):
    """A method of the class that defers to the instance's own binding of
    its name: a client's calls run by the owner (CLIENT_CALLS), a forked
    child's stubs. So a method taken from the object before (``cp =
    db.checkpoint``, then a fork) still does what db.checkpoint() does."""
    name = method.__name__

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        own = self.__dict__.get(name)
        if own is not None:
            return own(*args, **kwargs)
        return method(self, *args, **kwargs)
    return call


for _name in _REATTACHING_CALLS:
    setattr(ParallelDB, _name, _instance_first(getattr(ParallelDB, _name)))
os.register_at_fork(after_in_child=_arm_reattach_in_child)


def _attach_from_handle(handle):
    """Unpickling a ParallelDB: attach to its database (ParallelDB.attach)."""
    return ParallelDB.attach(handle)


def backup(path, dest, **options):
    """Consistent copy of the database directory `path` into the new
    directory `dest`: opens it (recovering as usual), then ParallelDB.backup."""
    manifest = storage.read_manifest(path)
    if manifest is None:
        raise InvalidArgumentError(f"{path} is not an AmDb database (no {storage.MANIFEST})")
    with ParallelDB(path, workers=manifest["workers"], **options) as db:
        return db.backup(dest)


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


def _fixed_width(array, what):
    """(uint8 buffer, item width, strip trailing NULs?, length) of a numpy
    array of fixed-width items:
      - 1-D S<n>: bytes with trailing NULs stripped, as numpy itself reads them;
      - 1-D V<n>, or 2-D uint8 (one row per item): raw bytes, nothing stripped;
      - 1-D unsigned ints: big-endian, so integer order = key order;
      - 1-D signed ints: big-endian with the sign bit flipped (order kept too)."""
    import numpy as np
    if not isinstance(array, np.ndarray):
        raise InvalidTypeError(f"{what} must be a numpy array, not {type(array).__name__}",
                               hint="use np.asarray(...) with dtype S<n>, V<n> or uint64")
    kind = array.dtype.kind
    if array.ndim == 2 and kind == "u" and array.dtype.itemsize == 1:
        data = np.ascontiguousarray(array)
        return data.reshape(-1), array.shape[1], False, array.shape[0]
    if array.ndim != 1:
        raise InvalidArgumentError(f"{what} must be 1-D (or 2-D uint8, one row per item), got shape "
                                   f"{array.shape} of {array.dtype}")
    if kind == "S":
        data, strip = np.ascontiguousarray(array), True
    elif kind == "V" and array.dtype.fields is None:
        data, strip = np.ascontiguousarray(array), False
    elif kind == "u":
        data, strip = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">"), copy=False)), False
    elif kind == "i":
        data, strip = _signed_to_ordered(array), False
    else:
        raise InvalidTypeError(f"{what} must have dtype S<n>, V<n> or an integer dtype, not {array.dtype}",
                               hint="encode strings to bytes (S<n>), raw binary as V<n> or 2-D uint8, "
                                    "integers as uint64 or int64")
    width = array.dtype.itemsize
    return data.view(np.uint8).reshape(-1), width, strip, len(array)


def _signed_to_ordered(array):
    """Signed ints as big-endian unsigned with the sign bit flipped: the
    bytes sort as the integers do (-1 < 0 < 1)."""
    import numpy as np
    size = array.dtype.itemsize
    flip = np.array(1 << (8 * size - 1), f"<u{size}")
    unsigned = array.astype(f"<i{size}", copy=False).view(f"<u{size}") ^ flip
    return np.ascontiguousarray(unsigned.astype(f">u{size}"))


def _ordered_to_signed(buffer, dtype):
    """The inverse of _signed_to_ordered, into `dtype`."""
    import numpy as np
    size = dtype.itemsize
    flip = np.array(1 << (8 * size - 1), f"<u{size}")
    unsigned = buffer.view(f">u{size}").astype(f"<u{size}") ^ flip
    return unsigned.view(f"<i{size}").astype(dtype)
