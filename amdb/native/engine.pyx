# cython: language_level=3
"""The owner side of ParallelDB: packs writes into the workers' rings and
reads every arena directly (lock-free), merging the workers' ordered lists.

Process safety:
  - Writes: one thread at a time (self._write_lock) is the single producer of
    every ring and the single writer of visible_seq. The lock is an RLock only
    so that a write can see that its own thread holds it: a write, close(),
    verify() or digest() called from code that a write of the same thread runs
    (a generator passed to batch_put) raises instead of waiting for itself.
  - Reads: any number of threads, without locks. Each read loads visible_seq
    (acquire) FIRST, then the roots it follows (acquire), so everything of a
    batch at or below visible_seq is visible to it and nothing above is.
  - close() vs reads: reads that hold the GIL cannot overlap close()'s unmap
    (which also runs under the GIL). Reads that release the GIL register in
    self._readers (seq_cst) and re-check `closed`; close() sets closed,
    then waits for that counter to reach zero before dropping the mappings.
    Code of the caller can run in the middle of a read (a generator of keys,
    an int subclass's comparisons, another thread meanwhile): reads check
    `closed` after the last such point and before they touch shared memory.
  - Compaction vs reads (layout.h, "Arena regions", invariant 8): every read
    takes a partition's base pointer (parts[w].arena) ONCE, with the GIL, and
    follows only offsets and roots read through that same base. The owner
    switches a base only under the GIL (_adopt_regions), and bumps
    _read_epoch with it; so a read sees one generation, old or new, never a
    mix. The old region's memory is given back only once every registered
    reader that could hold its base has left: readers that release the GIL,
    or that may run Python code (a garbage collection) in the middle of a
    walk, register in _readers[_read_epoch & 1]; after a switch the old
    parity's count can only fall (new readers count in the other one), and
    ParallelDB waits for it to reach zero (bounded) before it punches the old
    region out. Reads that hold the GIL and run no Python code between taking
    the base and their last arena access need no registration (get, `in`,
    a ScanIterator step). A ScanIterator keeps offsets from one step to the
    next: it notes _read_epoch and re-seeks after its last key when it changed.
"""
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check,
                            PyBytes_CheckExact)
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer, PyBUF_SIMPLE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from posix.unistd cimport usleep, getpid
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping
from amdb.shm.ring cimport (RingProducer, ring_wait_space, ring_reserve_nowait, ring_publish,
                            progress_prepare_wait, progress_sleep, ring_at)
from amdb.native.hashing cimport amdb_xxh64, SLOT_MASK, SLOT_COUNT, ring_chunk_fingerprint
from amdb.native.skiplist cimport skiplist_find_ge, skiplist_find_lt, compare_key_to_node
from amdb.native.hashindex cimport hashindex_find
from amdb.native.versions cimport visible_version, is_live, VERSION_RECLAIMED
from amdb.native.verify cimport VerifyResult, BreakRecord, verify_partition, verify_node, node_readable, verify_ledger

from amdb.errors import (ClosedError, Error, InvalidArgumentError, InvalidTypeError, KeyTooLargeError,
                         ValueTooLargeError, VersionReclaimedError, raise_for_status)

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1


# Every open Engine of this process, so that a forked child can turn each
# into a read-only view of its parent's database (_became_foreign).
import os as _os
import weakref as _weakref
_open_engines = _weakref.WeakSet()


def _after_fork_in_child():
    for engine in list(_open_engines):
        engine._became_foreign()


_os.register_at_fork(after_in_child=_after_fork_in_child)

cdef enum:
    WAIT_SLICE_NS = 50000000      # 50 ms: waits wake up this often to check liveness and Ctrl-C
    LOOKUP_GROUP = 32             # batch reads: keys whose cache misses overlap (prefetch)
    BATCH_GET_BLOCK = 512         # batch_get: keys looked up per GIL release
    FIRST_CHUNK_RECORDS = 512     # records in a batch's first chunk per worker; doubles per chunk

cdef enum ScanMode:
    SCAN_ITEMS = 0
    SCAN_KEYS = 1
    SCAN_VALUES = 2

cdef enum WaitResult:
    WAIT_DONE = 0
    WAIT_FAILED = 1
    WAIT_TIMEOUT = 2


class BatchResult(object):
    """What a batch write did: `count` records in `chunks` chunks; `seq` is the
    batch's sequence number (first_seq == last_seq == seq: a batch has one);
    `per_worker[i]` records went to worker i; `key_digest` folds the keys'
    xxh64 (audit log)."""

    __slots__ = ("count", "first_seq", "last_seq", "chunks", "per_worker", "key_digest")

    def __init__(self, count, first_seq, last_seq, chunks, per_worker, key_digest=0):
        self.count = count
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.chunks = chunks
        self.per_worker = per_worker
        self.key_digest = key_digest

    @property
    def seq(self):
        """The batch's sequence number (every version of it carries it)."""
        return self.last_seq

    def __repr__(self):
        return (f"BatchResult(count={self.count}, seq={self.last_seq}, chunks={self.chunks}, "
                f"per_worker={self.per_worker})")

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}


cdef int raise_not_bytes(object obj, str what) except -1:
    """Raise the error for a key/value that is not bytes-like."""
    if isinstance(obj, str):
        raise InvalidTypeError(f"{what} must be bytes-like, not str",
                               hint=f"encode it, e.g. {what}.encode('utf-8')")
    raise InvalidTypeError(f"{what} must be bytes-like (bytes, bytearray, memoryview), "
                           f"not {type(obj).__name__}",
                           hint="convert it to bytes first")


cdef inline int bytes_view(object obj, const uint8_t **data, Py_ssize_t *length,
                           Py_buffer *view, bint *held, str what) except -1:
    """Point at the bytes of a bytes-like object (no copy). `held` says whether
    `view` must be released with PyBuffer_Release."""
    held[0] = False
    if PyBytes_Check(obj):
        data[0] = <const uint8_t *>PyBytes_AS_STRING(obj)
        length[0] = PyBytes_GET_SIZE(obj)
        return 0
    if isinstance(obj, str):
        raise InvalidTypeError(f"{what} must be bytes-like, not str",
                               hint=f"encode it, e.g. {what}.encode('utf-8')")
    if not PyObject_CheckBuffer(obj):
        raise InvalidTypeError(f"{what} must be bytes-like (bytes, bytearray, memoryview), "
                               f"not {type(obj).__name__}",
                               hint="convert it to bytes first")
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except (BufferError, ValueError) as exc:     # numpy and released memoryviews raise ValueError
        raise InvalidArgumentError(f"{what} must be a C-contiguous buffer: {exc}",
                                   hint="pass bytes(x) instead") from None
    held[0] = True
    data[0] = <const uint8_t *>view.buf
    length[0] = view.len
    return 0


cdef int _raise_reclaimed(bytes key, version, at_seq, uint64_t oldest, uint64_t oldest_seq) except -1:
    """Raise VersionReclaimedError: what was asked for lies below the oldest
    version of `key` that compaction kept (version `oldest`, seq `oldest_seq`)."""
    if version is not None:
        what = f"version {version}"
    else:
        what = f"its value as of seq {at_seq}"
    raise VersionReclaimedError(
        f"{what} of key {key!r} was reclaimed by compaction: the oldest version kept is "
        f"version {oldest} (seq {oldest_seq})",
        key=key, version=version, at_seq=at_seq, oldest_version=oldest)


cdef int _raise_reclaimed_now(key) except -1:
    """A read as of now met a reclaimed version: compaction keeps at least the
    newest version of every key, so this cannot happen; if it ever did, the
    read raises rather than answer with other data."""
    raise VersionReclaimedError("the visible version of " + ("a key" if key is None else f"key {key!r}")
                                + " was reclaimed by compaction", key=key)


cdef class Engine:
    cdef int nworkers
    cdef PartitionView *parts
    cdef RingProducer *producers
    cdef amdb_db_control *dbc
    cdef list _mappings
    cdef readonly bint closed
    cdef bint _attached
    cdef uint64_t _readers[2]      # registered readers, by parity of the read epoch they entered in
    cdef readonly uint64_t _read_epoch  # +1 whenever a partition's base pointer changes (compaction)
    cdef char **_arena_base        # per worker: where its region 0 is mapped
    cdef uint64_t *_region         # per worker: the region parts[w].arena points into
    cdef uint64_t next_seq         # seq the next batch will carry
    cdef uint64_t batch_seq        # seq of the batch being written
    cdef bint batch_used_seq       # it has opened a chunk (so its seq is spent)
    cdef uint64_t batch_key_digest # rolling xxh64 digest of the batch's keys (audit log)
    cdef public object _audit      # amdb.audit.AuditLog or None
    cdef uint64_t committed_len
    cdef readonly uint64_t max_batch
    cdef readonly uint64_t max_key_size
    cdef readonly uint64_t max_value_size
    cdef uint64_t chunk_byte_cap
    cdef object _write_lock
    cdef readonly bint durable     # a write-ahead log: batches end with COMMIT records
    cdef int forced_worker         # >= 0: _pack sends every record there (resharding), not by slot
    cdef bint _in_batch            # a batch is being written (between _begin_batch and its end)
    cdef object _batch_reentered   # the Error a re-entrant call of that batch's own code got, or None
    cdef bint _detach_pending      # closed while readers were inside: the last to leave detaches
    # A forked child's view (see "Process safety"): reads take reader slot
    # _reader_slot (-1: none yet); _foreign_inside reads are in flight, all
    # in read epoch _foreign_epoch, whose regions parts[] point into.
    cdef readonly bint _foreign
    cdef int _reader_slot
    cdef uint64_t _foreign_inside
    cdef uint64_t _foreign_epoch

    def __cinit__(self, *args, **kwargs):
        self.parts = NULL
        self.producers = NULL
        self._arena_base = NULL
        self._region = NULL
        self.dbc = NULL
        self.closed = True
        self._attached = False
        self._mappings = []
        self._audit = None
        self.forced_worker = -1
        self._reader_slot = -1
        self._batch_reentered = None

    def __dealloc__(self):
        free(self.parts)
        free(self.producers)
        free(self._arena_base)
        free(self._region)

    # ---- lifecycle (called by amdb.db.ParallelDB) --------------------------

    def _attach(self, Mapping db_mapping, list controls, list arenas, uint64_t max_batch,
                uint64_t max_key_size, uint64_t max_value_size, write_lock, bint durable=False):
        """Take the owner's view of the segments: `controls[i]` maps partition
        i's control block and ring read-write, `arenas[i]` its arena regions
        (AMDB_ARENA_REGIONS of them, back to back) read-only."""
        cdef int i
        cdef Mapping cm, am
        cdef amdb_control *c
        self.nworkers = len(controls)
        self.parts = <PartitionView *>calloc(self.nworkers, sizeof(PartitionView))
        self.producers = <RingProducer *>calloc(self.nworkers, sizeof(RingProducer))
        self._arena_base = <char **>calloc(self.nworkers, sizeof(char *))
        self._region = <uint64_t *>calloc(self.nworkers, sizeof(uint64_t))
        if self.parts == NULL or self.producers == NULL or self._arena_base == NULL or self._region == NULL:
            raise MemoryError()
        self.dbc = <amdb_db_control *>db_mapping.base
        for i in range(self.nworkers):
            cm = controls[i]
            am = arenas[i]
            c = <amdb_control *>cm.base
            self.parts[i].ctrl = c
            self.parts[i].ring = cm.base + c.ring_offset
            if am.length < AMDB_ARENA_REGIONS * c.arena_capacity:
                raise InvalidArgumentError("an arena mapping must cover every region")
            self._arena_base[i] = am.base
            # The generation the worker published (a new segment: region 0).
            self._region[i] = amdb_load_acquire(&c.arena_region)
            self.parts[i].arena = am.base + self._region[i] * c.arena_capacity
            self.parts[i].region_offset = c.arena_offset + self._region[i] * c.arena_capacity
            self.parts[i].fd = -1
            self.producers[i].ctrl = c
            self.producers[i].ring = self.parts[i].ring
            self.producers[i].capacity = c.ring_capacity
            self.producers[i].mask = c.ring_capacity - 1
            self.producers[i].head = c.ring_head
            self.producers[i].cached_tail = c.ring_tail
        self._mappings = [db_mapping] + controls + arenas
        self.max_batch = max_batch
        self.max_key_size = max_key_size
        self.max_value_size = max_value_size
        self.chunk_byte_cap = self.producers[0].capacity // 4
        self.next_seq = amdb_load_acquire(&self.dbc.visible_seq) + 1
        self._write_lock = write_lock
        self.durable = durable
        self._refresh_len()              # a recovered database starts with keys
        self._attached = True
        self.closed = False
        _open_engines.add(self)

    def _mark_closed(self):
        """Refuse new operations. Never waits: readers inside keep the memory
        (_release_memory)."""
        self.closed = True

    def _release_memory(self):
        """Drop the mappings now if no registered reader is inside, else when
        the last one leaves. REQUIRES closed and, in the owner, no write in
        flight (the write lock held, or the process exiting without it: then
        this is not called)."""
        if self._readers[0] == 0 and self._readers[1] == 0 and self._foreign_inside == 0:
            self._detach()
        else:
            self._detach_pending = True

    def _detach(self):
        """Forget every pointer and drop our references to the mappings."""
        self._detach_pending = False
        if self._foreign and self._reader_slot >= 0 and self.dbc != NULL:
            amdb_store_release(&self.dbc.readers[self._reader_slot].pid, 0)
            self._reader_slot = -1
        self._attached = False
        self.dbc = NULL
        self.nworkers = 0
        free(self.parts)
        free(self.producers)
        free(self._arena_base)
        free(self._region)
        self.parts = NULL
        self.producers = NULL
        self._arena_base = NULL
        self._region = NULL
        self._mappings = []
        _open_engines.discard(self)

    def _became_foreign(self):
        """Called in a forked child (os.register_at_fork): from now on this
        handle only reads, through a reader slot, and closes. The threads that
        were reading in the parent do not exist here: their registrations
        (_readers) never leave, so this process's memory is dropped only
        when it exits (the mappings are private to it), never too early."""
        self._foreign = True
        self._reader_slot = -1
        self._foreign_inside = 0
        self._foreign_epoch = 0          # no epoch: the first read adopts the current regions

    def _close_foreign(self):
        """close() in a forked child: its handle only. The owner's workers,
        locks, logs and audit log are not this process's to touch."""
        self.closed = True
        if self._attached:
            if self._foreign_inside == 0:
                self._detach()
            else:
                self._detach_pending = True

    cdef int _claim_reader_slot(self) except -1:
        """Take a free reader slot, or one whose process is gone."""
        from amdb.shm.segment import pid_alive
        cdef int i
        cdef uint64_t me = <uint64_t>getpid()
        cdef uint64_t holder
        for i in range(AMDB_READER_SLOTS):
            holder = amdb_load_seqcst(&self.dbc.readers[i].pid)
            if holder != 0 and (holder == me or pid_alive(<long>holder)):
                continue
            if amdb_cas_seqcst(&self.dbc.readers[i].pid, holder, me):
                amdb_store_seqcst(&self.dbc.readers[i].epoch, 0)
                self._reader_slot = i
                return 0
        raise Error(f"more than {AMDB_READER_SLOTS} processes read this database at once",
                    code="too_many_readers", hint="close the database in processes that no longer use it")

    cdef int _enter_foreign(self) except -1:
        """Begin a read in a forked child: pin the read epoch in our slot
        (layout.h, "Reader slots"), then point parts[] at the regions current
        in it if the epoch moved. Nested and concurrent reads of this
        process share the pin. REQUIRES the GIL."""
        cdef amdb_reader_slot *slot
        cdef uint64_t epoch, again
        if self.closed:
            raise ClosedError("the database is closed")
        if self._foreign_inside == 0:
            if self._reader_slot < 0:
                self._claim_reader_slot()
            slot = &self.dbc.readers[self._reader_slot]
            epoch = amdb_load_seqcst(&self.dbc.read_epoch)
            while True:
                amdb_store_seqcst(&slot.epoch, epoch)
                again = amdb_load_seqcst(&self.dbc.read_epoch)
                if again == epoch:
                    break
                epoch = again
            if epoch != self._foreign_epoch:
                self._adopt_regions(False)
                self._foreign_epoch = epoch
                self._refresh_len()
        self._foreign_inside += 1
        return 0

    cdef int _leave_foreign(self) except -1:
        self._foreign_inside -= 1
        if self._foreign_inside == 0:
            if self._reader_slot >= 0:
                amdb_store_release(&self.dbc.readers[self._reader_slot].epoch, 0)
            if self._detach_pending:
                self._detach()
        return 0

    def _check_worker(self, int worker):
        """Hook: raise WorkerCrashedError if `worker` is gone (ParallelDB overrides)."""

    cdef inline int _check_open(self) except -1:
        if self.closed:
            raise ClosedError("the database is closed")
        return 0

    def _enter_exclusive(self, str what):
        """The one guard of every method that writes, sends control records
        or needs the write lock, run before any lock or epoch: a forked
        child's handle only reads (Error code "forked"); the database is
        open; and the write lock is not already held by this thread (code
        the call runs, such as a generator passed to batch_put, calling back
        in: Error code "reentrant_write", which also fails that batch)."""
        if self._foreign:
            raise Error(f"this ParallelDB was opened by another process; a forked child cannot {what} "
                        "(it may read, and close its handle)", code="forked",
                        hint="open a new ParallelDB in the child, or create the database after forking")
        self._check_open()
        if self._write_lock._is_owned():
            self._refuse_reentrant(what)
        return None

    cdef int _check_writable(self) except -1:
        """Before taking the write lock for a write (see _enter_exclusive)."""
        if self._foreign or self.closed or self._write_lock._is_owned():
            self._enter_exclusive("write")
        return 0

    cdef int _refuse_reentrant(self, str what) except -1:
        """Raise the re-entrant-call error; the batch in flight, if any, fails
        with it even when the caller's code swallows it (_finish_batch)."""
        exc = Error(f"{what} was called from code that a write, close(), verify() or digest() of the "
                    "same thread is running (a generator or iterable passed to batch_put, say)",
                    code="reentrant_write",
                    hint="finish the batch first: collect the items, then write, or write from another thread")
        if self._in_batch and self._batch_reentered is None:
            self._batch_reentered = exc
        raise exc

    cdef inline int _enter_nogil_read(self) except -1:
        """Register a reader (see "Process safety"); returns the slot to pass
        to _leave_nogil_read (2: a forked child's reader slot). Take base
        pointers only after this. REQUIRES the GIL."""
        cdef int slot
        if self._foreign:
            self._enter_foreign()
            return 2
        slot = <int>(self._read_epoch & 1)
        amdb_fetch_add_seqcst(&self._readers[slot], 1)
        if self.closed:
            amdb_fetch_sub_seqcst(&self._readers[slot], 1)
            raise ClosedError("the database is closed")
        return slot

    cdef inline int _leave_nogil_read(self, int slot) except -1:
        if slot == 2:
            return self._leave_foreign()
        amdb_fetch_sub_seqcst(&self._readers[slot], 1)
        if self._detach_pending and self._readers[0] == 0 and self._readers[1] == 0:
            self._detach()
        return 0

    # ---- packing writes into the rings -------------------------------------

    cdef int _wait_space(self, int worker, uint64_t nbytes) except -1:
        cdef RingProducer *r = &self.producers[worker]
        cdef int status
        while True:
            with nogil:
                status = ring_wait_space(r, nbytes, WAIT_SLICE_NS)
            if status == AMDB_STATUS_OK:
                return 0
            PyErr_CheckSignals()
            self._check_worker(worker)

    cdef uint64_t _reserve(self, int worker, uint64_t nbytes) except? 0:
        cdef RingProducer *r = &self.producers[worker]
        cdef uint64_t offset = r.head & r.mask
        cdef uint64_t need = nbytes
        if offset + nbytes > r.capacity:
            need += r.capacity - offset        # room for the wrap as well
        if r.capacity - (r.head - r.cached_tail) < need:
            self._wait_space(worker, need)
        return ring_reserve_nowait(r, nbytes)

    cdef int _open_chunk(self, int worker) except -1:
        cdef RingProducer *r = &self.producers[worker]
        r.chunk_pos = self._reserve(worker, sizeof(amdb_ring_chunk))
        self.batch_used_seq = True
        r.chunk_count = 0
        r.chunk_bytes = sizeof(amdb_ring_chunk)
        r.chunk_flags = AMDB_CHUNK_FIRST_OF_BATCH if r.batch_chunks == 0 else 0
        # Ramp up: a batch's first chunks are small so the worker starts
        # applying while we still pack; later ones grow to max_batch.
        r.chunk_limit = min(self.max_batch, FIRST_CHUNK_RECORDS << min(r.batch_chunks, 20))
        r.chunk_open = True
        return 0

    cdef void _close_chunk(self, int worker) noexcept:
        cdef RingProducer *r = &self.producers[worker]
        cdef amdb_ring_chunk *header = <amdb_ring_chunk *>ring_at(r.ring, r.mask, r.chunk_pos)
        header.op = AMDB_OP_CHUNK
        header.flags = r.chunk_flags
        header.seq = self.batch_seq
        header.count = r.chunk_count
        header.end = r.head
        r.chunks_published += 1
        header.chunk_no = r.chunks_published
        ring_publish(r)
        if r.batch_chunks == 0:
            r.batch_first_chunk = r.chunks_published
        r.last_chunk_sent = r.chunks_published
        r.batch_chunks += 1
        r.chunk_open = False

    cdef int _pack(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                   const uint8_t *value, uint64_t value_len) except -1:
        """Append one put/delete record to its worker's open chunk."""
        cdef uint64_t h, nbytes, pos
        cdef int worker
        cdef RingProducer *r
        cdef amdb_ring_record *rec
        cdef uint8_t *out
        if key_len > self.max_key_size:
            raise KeyTooLargeError(f"key of {key_len} bytes exceeds max_key_size={self.max_key_size}")
        if value_len > self.max_value_size:
            raise ValueTooLargeError(f"value of {value_len} bytes exceeds max_value_size={self.max_value_size}")
        h = amdb_xxh64(key, key_len, 0)
        # Order-sensitive digest of the batch's keys, for the audit log.
        self.batch_key_digest = ((self.batch_key_digest << 5) | (self.batch_key_digest >> 59)) ^ h
        worker = self.dbc.slot_owner[h & SLOT_MASK] if self.forced_worker < 0 else self.forced_worker
        r = &self.producers[worker]
        nbytes = amdb_record_bytes(<uint32_t>key_len, <uint32_t>value_len)
        if r.chunk_open and (r.chunk_count >= r.chunk_limit or r.chunk_bytes + nbytes > self.chunk_byte_cap):
            self._close_chunk(worker)
        if not r.chunk_open:
            self._open_chunk(worker)
        pos = self._reserve(worker, nbytes)
        rec = <amdb_ring_record *>ring_at(r.ring, r.mask, pos)
        rec.op = op
        rec.key_len = <uint32_t>key_len
        rec.value_len = <uint32_t>value_len
        rec.reserved = 0
        rec.hash = h
        out = <uint8_t *>(rec + 1)
        if key_len:                      # key may be NULL when empty (numpy S0)
            memcpy(out, key, key_len)
        if value_len:
            memcpy(out + key_len, value, value_len)
        # Zero the padding: ring bytes are deterministic (and valgrind-clean).
        memset(out + key_len + value_len, 0, nbytes - sizeof(amdb_ring_record) - key_len - value_len)
        r.chunk_count += 1
        r.chunk_bytes += nbytes
        r.batch_records += 1
        return 0

    cdef int _begin_batch(self) except -1:
        cdef int i
        self._settle_aborts()
        for i in range(self.nworkers):
            self.producers[i].batch_chunks = 0
            self.producers[i].batch_records = 0
            self.producers[i].last_chunk_sent = 0
            self.producers[i].batch_first_chunk = 0
            self.producers[i].chunk_open = False
        self.batch_seq = self.next_seq
        self.batch_used_seq = False
        self.batch_key_digest = 0
        self._in_batch = True
        self._batch_reentered = None
        return 0

    cdef void _end_batch_seq(self) noexcept:
        """A committed batch that opened a chunk has used its seq up."""
        if self.batch_used_seq:
            self.next_seq += 1
            self.batch_used_seq = False

    cdef int _wait_progress(self, int worker, uint64_t applied_target, uint64_t aborted_target) except -1:
        """Wait until the worker applied chunk `applied_target` (or refused a
        chunk of this batch), or, with aborted_target, handled ABORT number
        `aborted_target`. Returns WAIT_DONE or WAIT_FAILED."""
        cdef amdb_control *c = self.parts[worker].ctrl
        cdef uint64_t first_chunk = self.producers[worker].batch_first_chunk
        cdef uint32_t seen
        cdef int result = WAIT_TIMEOUT
        cdef int i
        while True:
            with nogil:
                for i in range(AMDB_SPIN_STEPS + 1):
                    if aborted_target:
                        if amdb_load_acquire(&c.aborts_done) >= aborted_target:
                            result = WAIT_DONE
                    elif amdb_load_acquire(&c.applied_chunk) >= applied_target:
                        result = WAIT_DONE
                    elif amdb_load_acquire(&c.failed_chunk) >= first_chunk:
                        result = WAIT_FAILED
                    if result != WAIT_TIMEOUT:
                        break
                    if i == AMDB_SPIN_STEPS:
                        seen = progress_prepare_wait(c)
                        if aborted_target:
                            if amdb_load_acquire(&c.aborts_done) >= aborted_target:
                                result = WAIT_DONE
                        elif amdb_load_acquire(&c.applied_chunk) >= applied_target:
                            result = WAIT_DONE
                        elif amdb_load_acquire(&c.failed_chunk) >= first_chunk:
                            result = WAIT_FAILED
                        if result == WAIT_TIMEOUT:
                            progress_sleep(c, seen, WAIT_SLICE_NS)
                        else:
                            amdb_store32_seqcst(&c.owner_waiting, 0)
                    amdb_spin_step(i)
            if result != WAIT_TIMEOUT:
                return result
            PyErr_CheckSignals()
            self._check_worker(worker)

    cdef int _send_control(self, int worker, uint32_t op, uint64_t seq, uint64_t count) except -1:
        """Publish a COMMIT or CHECKPOINT record; the worker acknowledges it
        like a chunk (applied_chunk or failed_chunk = its chunk_no)."""
        cdef RingProducer *r = &self.producers[worker]
        cdef uint64_t pos = self._reserve(worker, sizeof(amdb_ring_chunk))
        cdef amdb_ring_chunk *rec = <amdb_ring_chunk *>ring_at(r.ring, r.mask, pos)
        rec.op = op
        rec.flags = 0
        rec.seq = seq
        rec.count = count
        rec.end = r.head
        r.chunks_published += 1
        rec.chunk_no = r.chunks_published
        ring_publish(r)
        r.last_chunk_sent = r.chunks_published
        return 0

    cdef tuple _broadcast_control(self, uint32_t op, uint64_t count):
        """Send control record `op` (as of the newest visible batch) to every
        worker and wait for all of them. REQUIRES the write lock (a batch
        boundary). Returns (seq, [(worker, status)] of the workers that failed)."""
        cdef int i
        cdef RingProducer *r
        cdef uint64_t seq
        self._check_open()
        self._settle_aborts()
        seq = amdb_load_acquire(&self.dbc.visible_seq)
        for i in range(self.nworkers):
            r = &self.producers[i]
            self._send_control(i, op, seq, count)
            r.batch_first_chunk = r.last_chunk_sent
        failed = []
        for i in range(self.nworkers):
            r = &self.producers[i]
            if self._wait_progress(i, r.last_chunk_sent, 0) == WAIT_FAILED:
                failed.append((i, amdb_load_relaxed(&r.ctrl.failed_status)))
        return seq, failed

    def _checkpoint_workers(self):
        """Have every worker write a checkpoint as of the newest batch and
        wait for all of them. REQUIRES the write lock (a batch boundary).
        Returns [(worker, status)] of the workers that failed."""
        return self._broadcast_control(AMDB_OP_CHECKPOINT, 0)[1]

    def _compact_workers(self, uint64_t keep):
        """Have every worker write its next arena generation keeping the newest
        `keep` versions of each key (0: all), wait for all of them, and point
        this process's readers at the generations they switched to.
        REQUIRES the write lock (a batch boundary) and an empty target region
        in every partition (ParallelDB punches the retired ones out).
        Returns (seq, [(worker, status)] of the workers that failed). The
        regions left behind may be given back once the readers of the read
        epoch before it are gone (_wait_readers; ParallelDB._compact_locked)."""
        try:
            return self._broadcast_control(AMDB_OP_COMPACT, keep)
        finally:
            # Also when a wait raised (a worker died, and its successor
            # finished the switch): the workers that did switch no longer
            # write their old region.
            self._adopt_regions()
            self._refresh_len()

    def _adopt_regions(self, bint publish=True):
        """Point parts[w].arena at the region each worker's control block names
        as current (after a compaction, or a worker that attached again), and
        bump the read epoch once if any base changed. Runs with the GIL, so
        no GIL-holding read step sees half of it. The owner (publish) also
        bumps the shared read epoch, after the switch it saw (layout.h,
        "Reader slots"); a forked child adopts without publishing. Returns
        [(worker, region it left)]."""
        cdef int i
        cdef uint64_t region
        cdef amdb_control *c
        retired = []
        for i in range(self.nworkers):
            c = self.parts[i].ctrl
            # Acquire: the worker wrote the generation (and its header) before
            # publishing the region; we read them through the new base next.
            region = amdb_load_acquire(&c.arena_region)
            if region != self._region[i] and region < AMDB_ARENA_REGIONS:
                retired.append((i, self._region[i]))
                self._region[i] = region
                self.parts[i].arena = self._arena_base[i] + region * c.arena_capacity
                self.parts[i].region_offset = c.arena_offset + region * c.arena_capacity
        if retired:
            self._read_epoch += 1
            if publish:
                amdb_fetch_add_seqcst(&self.dbc.read_epoch, 1)
        return retired

    def _shared_read_epoch(self):
        """The shared read epoch now (layout.h, "Reader slots")."""
        return amdb_load_seqcst(&self.dbc.read_epoch)

    def _foreign_readers_before(self, uint64_t epoch):
        """[pid] of live processes whose reader slot holds a read epoch below
        `epoch`: they may still read a region retired before it."""
        from amdb.shm.segment import pid_alive
        cdef int i
        cdef uint64_t pid, held
        out = []
        for i in range(AMDB_READER_SLOTS):
            pid = amdb_load_seqcst(&self.dbc.readers[i].pid)
            held = amdb_load_seqcst(&self.dbc.readers[i].epoch)
            if pid != 0 and 0 < held < epoch and pid_alive(<long>pid):
                out.append(pid)
        return out

    def _wait_readers(self, int slot, double timeout, uint64_t epoch=0):
        """Wait until no registered reader of `slot` (0 or 1; -1: none) is left
        (readers that entered before the read epoch moved on) and, with
        `epoch`, no live forked child reads in a shared read epoch below it;
        at most `timeout` seconds (negative: until they are gone; Ctrl-C
        works). True when none is left."""
        cdef uint64_t deadline_ns = amdb_monotonic_ns() + <uint64_t>(max(timeout, 0.0) * 1e9)
        cdef uint64_t slice_end
        cdef bint gone
        while True:
            slice_end = amdb_monotonic_ns() + WAIT_SLICE_NS
            gone = slot < 0 or slot > 1
            with nogil:
                while not gone:
                    if amdb_load_seqcst(&self._readers[slot]) == 0:
                        gone = True
                    elif amdb_monotonic_ns() >= slice_end:
                        break
                    else:
                        usleep(50)
            if gone and (epoch == 0 or not self._foreign_readers_before(epoch)):
                return True
            if timeout >= 0 and amdb_monotonic_ns() >= deadline_ns:
                return False
            if gone:
                with nogil:
                    usleep(1000)        # a forked child's read: they are short
            PyErr_CheckSignals()

    def _debug_enter_read(self):
        """Test hook: register as a reader, as a GIL-free read does (returns
        the slot for _debug_leave_read)."""
        return self._enter_nogil_read()

    def _debug_leave_read(self, int slot):
        if slot not in (0, 1):
            raise InvalidArgumentError("a reader slot is 0 or 1")
        self._leave_nogil_read(slot)

    def _regions(self):
        """[(region, generation)] of every partition as this process reads it."""
        cdef int i
        out = []
        for i in range(self.nworkers):
            out.append((self._region[i], amdb_arena_header_of(self.parts[i].arena).generation))
        return out

    def _version_counts(self):
        """(versions, nodes) stored in every partition together (relaxed: statistics,
        and the automatic compaction's trigger)."""
        cdef int i
        cdef uint64_t versions = 0, nodes = 0
        for i in range(self.nworkers):
            versions += amdb_load_relaxed(&self.parts[i].ctrl.version_count)
            nodes += amdb_load_relaxed(&self.parts[i].ctrl.node_count)
        return versions, nodes

    cdef object _finish_batch(self):
        """Publish every open chunk, wait for every worker of the batch, then
        advance visible_seq: the batch becomes visible all at once."""
        cdef int i
        cdef RingProducer *r
        cdef uint64_t count = 0, chunks = 0, participants = 0
        cdef int failed_worker = -1
        cdef uint64_t failed_status = 0
        if self._batch_reentered is not None:
            # The batch's own code called a write back and swallowed the
            # error: the batch fails anyway, as docs/API.md promises.
            raise Error("the batch's own code made a re-entrant call (refused); nothing of the batch was kept",
                        code="reentrant_write", hint=self._batch_reentered.hint) from self._batch_reentered
        for i in range(self.nworkers):
            if self.producers[i].chunk_open:
                self._close_chunk(i)
            if self.producers[i].batch_chunks:
                participants += 1
        if self.durable and participants:
            # wal.h, invariants 2-3: the batch is acknowledged only once every
            # worker in it has logged its COMMIT.
            for i in range(self.nworkers):
                if self.producers[i].batch_chunks:
                    self._send_control(i, AMDB_OP_COMMIT, self.batch_seq, participants)
        for i in range(self.nworkers):
            r = &self.producers[i]
            if r.batch_chunks == 0:
                continue
            if self._wait_progress(i, r.last_chunk_sent, 0) == WAIT_FAILED and failed_worker < 0:
                failed_worker = i
                failed_status = amdb_load_relaxed(&r.ctrl.failed_status)
            count += r.batch_records
            chunks += r.batch_chunks
        if failed_worker >= 0:
            self._abort_batch()
            raise_for_status(<int>failed_status, f"worker {failed_worker} refused the batch; nothing of it was applied")
        self._in_batch = False
        if chunks == 0:
            return BatchResult(0, 0, 0, 0, [0] * self.nworkers, 0)
        # Release: every worker's versions of the batch happen-before any
        # reader that acquires the new watermark.
        amdb_store_release(&self.dbc.visible_seq, self.batch_seq)
        self._end_batch_seq()
        self._refresh_len()
        return BatchResult(count, self.batch_seq, self.batch_seq, chunks,
                           [self.producers[i].batch_records for i in range(self.nworkers)],
                           self.batch_key_digest)

    cdef void _refresh_len(self) noexcept:
        cdef uint64_t total = 0
        cdef int i
        for i in range(self.nworkers):
            total += amdb_load_relaxed(&self.parts[i].ctrl.live_keys)
        self.committed_len = total

    cdef int _abort_batch(self) except -1:
        """Undo the batch in flight: drop what was not published, and have every
        worker that received part of it roll that part back.

        Never blocks, so Ctrl-C and a stuck worker surface at once: an ABORT
        that does not fit its ring now stays pending, and no acknowledgement
        is awaited here; the next write settles both before it sends anything
        (_settle_aborts).
        Until then the batch is invisible anyway: its versions are above
        visible_seq, which only a write after the settlement can advance.
        """
        cdef int i
        cdef RingProducer *r
        self._in_batch = False
        for i in range(self.nworkers):
            r = &self.producers[i]
            if r.chunk_open:
                r.head = r.ctrl.ring_head       # our own last publication
                r.chunk_open = False
            if r.batch_chunks:
                r.abort_to_send = self.batch_seq
                r.batch_chunks = 0
        # The seq is not used up: the next batch reuses it once every rollback
        # is acknowledged (_settle_aborts), so seqs count committed batches
        # and a failed attempt leaves no trace in seqs or in the ledger.
        self.batch_used_seq = False
        for i in range(self.nworkers):
            self._send_abort(i, False)
        return 0

    cdef bint _send_abort(self, int worker, bint wait) except -1:
        """Write the pending ABORT record of `worker`, if any. With wait=False,
        only if its ring has room now. True when nothing is left to send."""
        cdef RingProducer *r = &self.producers[worker]
        cdef amdb_ring_chunk *rec
        cdef uint64_t pos, need = sizeof(amdb_ring_chunk)
        if r.abort_to_send == 0:
            return True
        if r.capacity - (r.head & r.mask) < need:
            need += r.capacity - (r.head & r.mask)
        r.cached_tail = amdb_load_acquire(&r.ctrl.ring_tail)
        if not wait and r.capacity - (r.head - r.cached_tail) < need:
            return False
        pos = self._reserve(worker, sizeof(amdb_ring_chunk))
        rec = <amdb_ring_chunk *>ring_at(r.ring, r.mask, pos)
        rec.op = AMDB_OP_ABORT
        rec.flags = 0
        r.aborts_sent += 1
        rec.seq = r.abort_to_send
        rec.count = 0
        rec.end = r.head
        rec.chunk_no = r.aborts_sent
        ring_publish(r)
        r.abort_to_ack = r.aborts_sent
        r.abort_to_send = 0
        return True

    cdef int _settle_aborts(self) except -1:
        """Make pending rollbacks happen before a new batch: write the ABORTs
        still owed (waiting for ring space), then wait for every rollback to be
        acknowledged. Waits check worker liveness and Ctrl-C; what they leave
        undone stays pending for the next write."""
        cdef int i
        cdef RingProducer *r
        for i in range(self.nworkers):
            if self.producers[i].abort_to_send:
                self._check_worker(i)
                self._send_abort(i, True)
        for i in range(self.nworkers):
            r = &self.producers[i]
            if r.abort_to_ack:
                self._check_worker(i)
                self._wait_progress(i, 0, r.abort_to_ack)
                r.abort_to_ack = 0
        return 0

    cdef object _write_pairs(self, items):
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        cdef Py_ssize_t kl, vl
        cdef Py_buffer kview, vview
        cdef bint kheld = False, vheld = False
        cdef object key, value
        self._begin_batch()              # settles earlier aborts; raises before anything is sent
        try:
            if isinstance(items, (list, tuple)):
                seq = items
            else:
                try:
                    seq = iter(items)
                except TypeError:
                    raise InvalidTypeError(f"batch_put takes an iterable of (key, value) pairs, "
                                           f"not {type(items).__name__}") from None
            for item in seq:
                if type(item) is tuple and len(<tuple>item) == 2:
                    key = (<tuple>item)[0]
                    value = (<tuple>item)[1]
                elif isinstance(item, (tuple, list)) and len(item) == 2:
                    key, value = item
                else:
                    raise InvalidArgumentError(
                        f"batch_put items must be (key, value) pairs, got {type(item).__name__}"
                        + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""),
                        hint="pass an iterable of 2-tuples, e.g. zip(keys, values)")
                bytes_view(key, &kp, &kl, &kview, &kheld, "key")
                try:
                    bytes_view(value, &vp, &vl, &vview, &vheld, "value")
                    try:
                        self._pack(AMDB_OP_PUT, kp, kl, vp, vl)
                    finally:
                        if vheld:
                            PyBuffer_Release(&vview)
                finally:
                    if kheld:
                        PyBuffer_Release(&kview)
            return self._finish_batch()
        except BaseException:
            self._abort_batch()
            raise

    def _write_routed(self, ops):
        """One atomic batch of (worker, key, value or None for a delete), each
        record sent to the given worker whatever the slot table says. For
        moving slots between workers (ParallelDB reopened with another count).
        REQUIRES the write lock."""
        cdef int worker
        self._check_open()
        self._begin_batch()
        try:
            for worker, key, value in ops:
                if not 0 <= worker < self.nworkers or not isinstance(key, bytes):
                    raise InvalidArgumentError(f"bad routed record for worker {worker}")
                self.forced_worker = worker
                if value is None:
                    self._pack(AMDB_OP_DELETE, <const uint8_t *>PyBytes_AS_STRING(key), len(key), NULL, 0)
                else:
                    self._pack(AMDB_OP_PUT, <const uint8_t *>PyBytes_AS_STRING(key), len(key),
                               <const uint8_t *>PyBytes_AS_STRING(value), len(value))
            self.forced_worker = -1
            return self._finish_batch()
        except BaseException:
            self.forced_worker = -1
            self._abort_batch()
            raise

    def _set_slot_owner(self, table):
        """Replace the slot table. REQUIRES the write lock and no reader yet
        (ParallelDB does it while opening, before anyone has the object)."""
        cdef int slot
        self._check_open()
        if len(table) != SLOT_COUNT or any(not 0 <= w < self.nworkers for w in table):
            raise InvalidArgumentError("a slot table maps 16384 slots to workers")
        for slot in range(SLOT_COUNT):
            self.dbc.slot_owner[slot] = <uint16_t>table[slot]

    def _partition_items(self, int worker):
        """[(key, value)] of the live keys stored in partition `worker`, in key
        order, as of now (whoever the slot table says owns them)."""
        cdef const char *arena
        cdef uint64_t off, version_off, visible
        cdef amdb_node *n
        cdef amdb_version *v
        cdef int slot
        self._check_open()
        if not 0 <= worker < self.nworkers:
            raise InvalidArgumentError(f"no worker {worker}")
        out = []
        slot = self._enter_nogil_read()      # building tuples may collect garbage mid-walk
        try:
            arena = self.parts[worker].arena
            visible = amdb_load_acquire(&self.dbc.visible_seq)
            off = amdb_load_acquire(&node_at(arena, arena_skiplist_head(arena)).next[0])
            while off != 0:
                n = node_at(arena, off)
                version_off = visible_version(arena, n, visible)
                if is_live(arena, version_off):
                    v = version_at(arena, version_off)
                    out.append((PyBytes_FromStringAndSize(<char *>amdb_node_key(n), n.key_len),
                                PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)))
                off = amdb_load_acquire(&n.next[0])
        finally:
            self._leave_nogil_read(slot)
        return out

    cdef object _write_deletes(self, keys):
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer kview
        cdef bint kheld = False
        self._begin_batch()              # settles earlier aborts; raises before anything is sent
        try:
            if isinstance(keys, (bytes, bytearray, str)):
                raise InvalidTypeError("batch_delete takes an iterable of keys, not a single key",
                                       hint="wrap it in a list: [key]")
            try:
                keys = iter(keys)
            except TypeError:
                raise InvalidTypeError(f"batch_delete takes an iterable of keys, not {type(keys).__name__}",
                                       hint="pass a list of bytes keys") from None
            for key in keys:
                bytes_view(key, &kp, &kl, &kview, &kheld, "key")
                try:
                    self._pack(AMDB_OP_DELETE, kp, kl, NULL, 0)
                finally:
                    if kheld:
                        PyBuffer_Release(&kview)
            return self._finish_batch()
        except BaseException:
            self._abort_batch()
            raise

    cdef object _write_arrays(self, const uint8_t[::1] keys, Py_ssize_t key_width, bint strip_keys,
                              const uint8_t[::1] values, Py_ssize_t value_width, bint strip_values,
                              Py_ssize_t n):
        cdef Py_ssize_t i, kl, vl
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        self._begin_batch()              # settles earlier aborts; raises before anything is sent
        try:
            for i in range(n):
                kp = &keys[i * key_width] if key_width else NULL
                vp = &values[i * value_width] if value_width else NULL
                kl = key_width
                vl = value_width
                if strip_keys:
                    while kl > 0 and kp[kl - 1] == 0:
                        kl -= 1
                if strip_values:
                    while vl > 0 and vp[vl - 1] == 0:
                        vl -= 1
                self._pack(AMDB_OP_PUT, kp, kl, vp, vl)
            return self._finish_batch()
        except BaseException:
            self._abort_batch()
            raise

    cdef object _write_packed(self, const uint8_t[::1] keys, const int64_t[::1] key_offsets,
                              const uint8_t[::1] values, const int64_t[::1] value_offsets):
        cdef Py_ssize_t i, n = key_offsets.shape[0] - 1
        cdef const uint8_t *kbase = &keys[0] if keys.shape[0] else <const uint8_t *>""
        cdef const uint8_t *vbase = &values[0] if values.shape[0] else <const uint8_t *>""
        # Validate every offset before anything is packed, by comparisons only:
        # a difference of two int64 offsets can overflow (and wrap to a small length).
        for i in range(n):
            if key_offsets[i] < 0 or key_offsets[i] > key_offsets[i + 1] or key_offsets[i + 1] > keys.shape[0] \
                    or value_offsets[i] < 0 or value_offsets[i] > value_offsets[i + 1] \
                    or value_offsets[i + 1] > values.shape[0]:
                raise InvalidArgumentError(f"put_packed: offsets of item {i} are out of order or out of bounds")
        self._begin_batch()
        try:
            for i in range(n):
                self._pack(AMDB_OP_PUT, kbase + key_offsets[i], key_offsets[i + 1] - key_offsets[i],
                           vbase + value_offsets[i], value_offsets[i + 1] - value_offsets[i])
            return self._finish_batch()
        except BaseException:
            self._abort_batch()
            raise

    def _put_packed(self, keys, key_offsets, values, value_offsets):
        self._check_writable()
        with self._write_lock:
            self._check_open()
            self._before_write()
            result = self._write_packed(keys, key_offsets, values, value_offsets)
            if self._audit is not None:
                self._audit.write_op("put_packed", result.count, result.first_seq, result.last_seq,
                                     result.key_digest)
            return result

    # ---- public writes -----------------------------------------------------

    def put(self, key, value):
        """Store `value` under `key` (both bytes-like)."""
        self._check_writable()
        with self._write_lock:
            self._check_open()
            self._before_write()
            result = self._write_pairs(((key, value),))
            if self._audit is not None:
                self._audit.write_op("put", result.count, result.first_seq, result.last_seq,
                                     result.key_digest)

    def delete(self, key):
        """Delete `key`; deleting a missing key does nothing."""
        self._check_writable()
        with self._write_lock:
            self._check_open()
            self._before_write()
            result = self._write_deletes((key,))
            if self._audit is not None:
                self._audit.write_op("delete", result.count, result.first_seq, result.last_seq,
                                     result.key_digest)

    def _batch_put(self, items):
        self._check_writable()
        with self._write_lock:
            self._check_open()
            self._before_write()
            result = self._write_pairs(items)
            if self._audit is not None:
                self._audit.write_op("batch_put", result.count, result.first_seq, result.last_seq,
                                     result.key_digest)
            return result

    def _batch_delete(self, keys):
        self._check_writable()
        with self._write_lock:
            self._check_open()
            self._before_write()
            result = self._write_deletes(keys)
            if self._audit is not None:
                self._audit.write_op("batch_delete", result.count, result.first_seq, result.last_seq,
                                     result.key_digest)
            return result

    def _put_arrays(self, keys, Py_ssize_t key_width, bint strip_keys,
                    values, Py_ssize_t value_width, bint strip_values, Py_ssize_t n):
        if key_width > <Py_ssize_t>self.max_key_size:
            raise KeyTooLargeError(f"keys of {key_width} bytes exceed max_key_size={self.max_key_size}")
        if value_width > <Py_ssize_t>self.max_value_size:
            raise ValueTooLargeError(f"values of {value_width} bytes exceed max_value_size={self.max_value_size}")
        self._check_writable()
        with self._write_lock:
            self._check_open()
            self._before_write()
            result = self._write_arrays(keys, key_width, strip_keys, values, value_width, strip_values, n)
            if self._audit is not None:
                self._audit.write_op("put_array", result.count, result.first_seq, result.last_seq,
                                     result.key_digest)
            return result

    def _before_write(self):
        """Hook: raise if the database can no longer accept writes."""

    # ---- reads -------------------------------------------------------------

    cdef inline uint64_t _lookup(self, const uint8_t *key, uint64_t key_len, uint64_t visible,
                                 int *worker_out, const char **arena_out) noexcept nogil:
        """Visible live version offset of `key`, 0, or VERSION_RECLAIMED; the
        base of the region it lies in goes to *arena_out (taken once: see
        "Process safety")."""
        cdef uint64_t h = amdb_xxh64(key, key_len, 0)
        cdef int worker = self.dbc.slot_owner[h & SLOT_MASK]
        cdef const char *arena = self.parts[worker].arena
        cdef uint64_t node_off, version_off
        worker_out[0] = worker
        arena_out[0] = arena
        node_off = hashindex_find(arena, arena_hash_table(arena), h, key, <uint32_t>key_len)
        if node_off == 0:
            return 0
        version_off = visible_version(arena, node_at(arena, node_off), visible)
        if version_off == VERSION_RECLAIMED:
            return version_off
        return version_off if is_live(arena, version_off) else 0

    def get(self, key, default=None, *, version=None, at_seq=None):
        """The value of `key` as bytes, or `default` when it is absent.

        version=n: the key's n-th version (1 = first); at_seq=s: the value as
        of sequence number s. Either gives `default` when that version does
        not exist or is a deletion, and raises VersionReclaimedError when
        compaction reclaimed it (see docs/API.md)."""
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer view
        cdef bint held = False
        cdef uint64_t visible, version_off
        cdef int worker
        cdef const char *arena
        cdef amdb_version *v
        if self.closed:
            raise ClosedError("the database is closed")
        if version is not None or at_seq is not None:
            return self._get_versioned(key, default, version, at_seq)
        bytes_view(key, &kp, &kl, &view, &held, "key")
        if self.closed:                  # the key's export may have run the caller's code
            if held:
                PyBuffer_Release(&view)
            raise ClosedError("the database is closed")
        if self._foreign:
            return self._get_foreign(key, kp, kl, &view, held, default)
        # Acquire first: roots loaded after it are at least as new as the batch.
        visible = amdb_load_acquire(&self.dbc.visible_seq)
        version_off = self._lookup(kp, kl, visible, &worker, &arena)
        if held:
            return self._get_held(&view, version_off, arena, default)
        if version_off == 0:
            return default
        if version_off == VERSION_RECLAIMED:    # cannot happen for a read as of now; never a wrong answer
            _raise_reclaimed_now(key)
        v = version_at(arena, version_off)
        return PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)

    cdef object _get_foreign(self, key, const uint8_t *kp, Py_ssize_t kl, Py_buffer *view, bint held, default):
        """get() in a forked child: the same lookup inside a reader slot."""
        cdef uint64_t version_off = 0
        cdef int worker
        cdef const char *arena
        cdef amdb_version *v
        value = default
        try:
            self._enter_foreign()
            try:
                version_off = self._lookup(kp, kl, amdb_load_acquire(&self.dbc.visible_seq), &worker, &arena)
                if version_off != 0 and version_off != VERSION_RECLAIMED:
                    v = version_at(arena, version_off)
                    value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
            finally:
                self._leave_foreign()
        finally:
            if held:
                PyBuffer_Release(view)
        if version_off == VERSION_RECLAIMED:
            _raise_reclaimed_now(key)
        return value

    cdef object _get_held(self, Py_buffer *view, uint64_t version_off, const char *arena, default):
        """get()'s end for a key whose buffer we hold: the value is copied
        before the buffer is released, since releasing it may run the
        caller's code, and with it a compaction."""
        cdef amdb_version *v
        if version_off == 0 or version_off == VERSION_RECLAIMED:
            value = default
        else:
            v = version_at(arena, version_off)
            value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
        PyBuffer_Release(view)
        if version_off == VERSION_RECLAIMED:
            _raise_reclaimed_now(None)
        return value

    cdef uint64_t _limit_seq(self, at_seq) except? 0:
        """The newest seq a read may see: visible_seq, or at_seq (validated).
        Checks `closed` last: the checks of an int subclass run its code."""
        cdef uint64_t visible, seq = 0xFFFFFFFFFFFFFFFF
        if at_seq is not None:
            if isinstance(at_seq, bool) or not isinstance(at_seq, int):
                raise InvalidTypeError(f"at_seq= must be an int, not {type(at_seq).__name__}",
                                       hint="pass a sequence number from BatchResult.last_seq or snapshot().seq")
            if at_seq < 0:
                raise InvalidArgumentError(f"at_seq={at_seq} is negative", hint="sequence numbers start at 0")
            if at_seq <= 0xFFFFFFFFFFFFFFFF:
                seq = at_seq             # above: in the future whatever visible_seq is
        self._check_open()
        visible = amdb_load_acquire(&self.dbc.visible_seq)
        if at_seq is None:
            return visible
        if seq > visible:
            raise InvalidArgumentError(f"at_seq={at_seq} is in the future: the newest visible sequence "
                                       f"number is {visible}", hint="use db.snapshot().seq for 'now'")
        return seq

    cdef uint64_t _find_node(self, const uint8_t *key, uint64_t key_len, int *worker_out,
                             const char **arena_out) noexcept nogil:
        """Node offset of `key` (0 when absent), its worker and the base it lies in."""
        cdef uint64_t h = amdb_xxh64(key, key_len, 0)
        cdef int worker = self.dbc.slot_owner[h & SLOT_MASK]
        cdef const char *arena = self.parts[worker].arena
        worker_out[0] = worker
        arena_out[0] = arena
        return hashindex_find(arena, arena_hash_table(arena), h, key, <uint32_t>key_len)

    cdef uint64_t _chain_of(self, bytes key, int *worker, const char **arena) except? 0:
        """Newest version offset of `key` (0: never written), its worker and
        the base of its region. No code of the caller runs in here: the
        caller validated everything first."""
        cdef uint64_t node_off
        self._check_open()
        node_off = self._find_node(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                                   worker, arena)
        if node_off == 0:
            return 0
        return amdb_load_acquire(&node_at(arena[0], node_off).latest)

    def _get_versioned(self, key, default, version, at_seq):
        cdef uint64_t limit, wanted = 0
        cdef int slot
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise InvalidTypeError(f"version= must be an int, not {type(version).__name__}",
                                       hint="versions count 1, 2, 3... per key (see db.history(key))")
            if version < 1:
                raise InvalidArgumentError(f"version={version}: versions count from 1",
                                           hint="version=1 is a key's first version; see db.history(key)")
            # No key has 2**64 - 1 versions: a larger number finds none either.
            wanted = version if version <= 0xFFFFFFFFFFFFFFFF else 0xFFFFFFFFFFFFFFFF
        limit = self._limit_seq(at_seq)
        key = _as_key(key, "key")        # the caller's code runs here, if at all; not below
        if self._foreign:
            slot = self._enter_nogil_read()
            try:
                return self._versioned_walk(key, default, version, at_seq, wanted, limit)
            finally:
                self._leave_nogil_read(slot)
        return self._versioned_walk(key, default, version, at_seq, wanted, limit)

    cdef object _versioned_walk(self, bytes key, default, version, at_seq, uint64_t wanted, uint64_t limit):
        """_get_versioned's walk down the key's chain. No code of the caller runs in here."""
        cdef int worker
        cdef uint64_t off, number
        cdef const char *arena
        cdef amdb_version *v
        cdef amdb_version_tail *tail
        off = self._chain_of(key, &worker, &arena)
        while off != 0:
            v = version_at(arena, off)
            tail = amdb_version_tail_of(v)
            number = tail.version_no
            if v.seq <= limit:
                if wanted == 0 or number == wanted:
                    if v.flags & AMDB_VERSION_TOMBSTONE:
                        return default
                    return PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
                if number < wanted:
                    return default
            if v.prev == 0 and number > 1 and (wanted == 0 or wanted < number):
                # The answer lies below the oldest kept version (layout.h, invariant 9).
                _raise_reclaimed(key, version, at_seq, number, v.seq)
            off = v.prev
        return default

    def _history(self, key, at_seq):
        """[(version_no, seq, timestamp_ns, value or None, deleted, hash, prev_hash)],
        newest first, of the versions visible as of at_seq (None: now). After
        compaction: the kept ones; VersionReclaimedError when none of them is
        visible at at_seq but older, reclaimed ones were."""
        cdef int worker, slot
        cdef uint64_t limit, off, oldest = 0, oldest_seq = 0
        cdef const char *arena
        cdef amdb_version *v
        cdef amdb_version_tail *tail
        cdef list out = []
        if self.closed:
            raise ClosedError("the database is closed")
        limit = self._limit_seq(at_seq)
        key = _as_key(key, "key")
        # Registered: building the tuples may collect garbage, and run other
        # threads, in the middle of the walk.
        slot = self._enter_nogil_read()
        try:
            off = self._chain_of(key, &worker, &arena)
            while off != 0:
                v = version_at(arena, off)
                tail = amdb_version_tail_of(v)
                if v.seq <= limit:
                    deleted = bool(v.flags & AMDB_VERSION_TOMBSTONE)
                    out.append((tail.version_no, v.seq, tail.timestamp_ns,
                                None if deleted else PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len),
                                deleted, tail.hash, tail.prev_hash))
                if v.prev == 0 and tail.version_no > 1:
                    oldest = tail.version_no
                    oldest_seq = v.seq
                off = v.prev
        finally:
            self._leave_nogil_read(slot)
        if not out and oldest:
            _raise_reclaimed(key, None, at_seq, oldest, oldest_seq)
        return out

    def __contains__(self, key):
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer view
        cdef bint held = False
        cdef int worker
        cdef const char *arena
        cdef uint64_t found
        if self.closed:
            raise ClosedError("the database is closed")
        bytes_view(key, &kp, &kl, &view, &held, "key")
        if self.closed:                  # the key's export may have run the caller's code
            if held:
                PyBuffer_Release(&view)
            raise ClosedError("the database is closed")
        if self._foreign:
            try:
                self._enter_foreign()
                try:
                    found = self._lookup(kp, kl, amdb_load_acquire(&self.dbc.visible_seq), &worker, &arena)
                finally:
                    self._leave_foreign()
            finally:
                if held:
                    PyBuffer_Release(&view)
        else:
            found = self._lookup(kp, kl, amdb_load_acquire(&self.dbc.visible_seq), &worker, &arena)
            if held:
                PyBuffer_Release(&view)
        if found == VERSION_RECLAIMED:
            _raise_reclaimed_now(key)
        return found != 0

    def __len__(self):
        if self.closed:
            raise ClosedError("the database is closed")
        if self._foreign:                # the owner's writes do not refresh this process's count
            self._refresh_len()
        return self.committed_len

    cdef void _lookup_many(self, Py_ssize_t n, const uint8_t **keys, uint64_t *lengths,
                           uint64_t *found, int *workers, uint64_t visible, const char **bases) noexcept nogil:
        """Batch lookup with overlapping cache misses: each group of keys goes
        through hash -> slot -> node -> version in stages, prefetching the
        next stage for the whole group before touching any of it. Reads as of
        `visible` (loaded by the caller before this call: acquire first), in
        the regions at bases[w] (taken by the caller once, as a registered
        reader). found[i]: a live version offset, 0, or VERSION_RECLAIMED."""
        cdef uint64_t hashes[LOOKUP_GROUP]
        cdef amdb_hash_slot *slots[LOOKUP_GROUP]
        cdef amdb_hash_table *tables[256]
        cdef amdb_hash_table *t
        cdef const char *arena
        cdef Py_ssize_t base, j, m, i
        cdef uint64_t node_off, off
        cdef int w
        for w in range(self.nworkers if self.nworkers < 256 else 256):
            tables[w] = table_at(bases[w], arena_hash_table(bases[w]))
        base = 0
        while base < n:
            m = n - base if n - base < LOOKUP_GROUP else LOOKUP_GROUP
            for j in range(m):
                i = base + j
                hashes[j] = amdb_xxh64(keys[i], lengths[i], 0)
                w = self.dbc.slot_owner[hashes[j] & SLOT_MASK]
                workers[i] = w
                if w < 256:
                    t = tables[w]
                    slots[j] = &t.slots[amdb_slot_home(hashes[j], t.log2_capacity)]
                    amdb_prefetch(slots[j])
                else:
                    slots[j] = NULL
            for j in range(m):
                if slots[j] != NULL:
                    node_off = amdb_load_acquire(slots[j])
                    if node_off != 0 and amdb_slot_word_tag(node_off) == amdb_slot_tag(hashes[j]):
                        amdb_prefetch(bases[workers[base + j]] + amdb_slot_node(node_off))
            for j in range(m):
                i = base + j
                arena = bases[workers[i]]
                if workers[i] < 256:
                    node_off = hashindex_find(arena, <uint64_t>(<char *>tables[workers[i]] - arena),
                                              hashes[j], keys[i], <uint32_t>lengths[i])
                else:
                    node_off = hashindex_find(arena, arena_hash_table(arena),
                                              hashes[j], keys[i], <uint32_t>lengths[i])
                found[i] = node_off
                if node_off != 0:
                    amdb_prefetch(arena + amdb_load_acquire(&node_at(arena, node_off).latest))
            for j in range(m):
                i = base + j
                if found[i] != 0:
                    arena = bases[workers[i]]
                    off = visible_version(arena, node_at(arena, found[i]), visible)
                    found[i] = off if off == VERSION_RECLAIMED or is_live(arena, off) else 0
            base += m

    def batch_get(self, keys, *, at_seq=None):
        """Values of `keys` (None where absent), looked up with the GIL released;
        as of sequence number at_seq when given."""
        cdef tuple held_keys
        cdef Py_ssize_t n, i
        cdef const uint8_t **ptrs = NULL
        cdef uint64_t *lengths = NULL
        cdef uint64_t *found = NULL
        cdef int *workers = NULL
        cdef list result, converted
        cdef Py_ssize_t block, m
        cdef uint64_t limit
        cdef amdb_version *v
        cdef object key, value
        cdef const char *bases[256]
        cdef int slot, w
        if self.closed:
            raise ClosedError("the database is closed")
        if isinstance(keys, (bytes, bytearray, str)):
            raise InvalidTypeError("batch_get takes an iterable of keys, not a single key",
                                   hint="wrap it in a list: [key]")
        try:
            held_keys = tuple(keys)        # our own references: safe to read without the GIL
        except TypeError:
            raise InvalidTypeError(f"batch_get takes an iterable of keys, not {type(keys).__name__}",
                                   hint="pass a list of bytes keys") from None        # our own references: safe to read without the GIL
        n = len(held_keys)
        converted = None
        ptrs = <const uint8_t **>malloc(max(n, 1) * sizeof(uint8_t *))
        lengths = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        found = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        workers = <int *>malloc(max(n, 1) * sizeof(int))
        try:
            if ptrs == NULL or lengths == NULL or found == NULL or workers == NULL:
                raise MemoryError()
            for i in range(n):
                key = held_keys[i]
                if not PyBytes_Check(key):
                    if isinstance(key, str) or not PyObject_CheckBuffer(key):
                        raise_not_bytes(key, "key")
                    key = _as_key(key, "key")
                    if converted is None:
                        converted = []
                    converted.append(key)
                ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(key)
                lengths[i] = <uint64_t>PyBytes_GET_SIZE(key)
            result = PyList_New(n)
            limit = self._limit_seq(at_seq)
            slot = self._enter_nogil_read()
            try:
                # One base per partition for the whole call: every block reads
                # the same generations (we are registered, so they stay).
                for w in range(self.nworkers):
                    bases[w] = self.parts[w].arena
                # Blocks small enough that a block's versions are still in
                # cache when their bytes objects are built.
                block = 0
                while block < n:
                    m = min(n - block, BATCH_GET_BLOCK)
                    with nogil:
                        self._lookup_many(m, ptrs + block, lengths + block, found + block, workers + block,
                                          limit, bases)
                    for i in range(block, block + m):
                        if found[i] == VERSION_RECLAIMED:
                            value = None
                        elif found[i] != 0:
                            v = version_at(bases[workers[i]], found[i])
                            value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
                        else:
                            value = None
                        Py_INCREF(value)
                        PyList_SET_ITEM(result, i, value)
                    for i in range(block, block + m):
                        if found[i] == VERSION_RECLAIMED:
                            raise VersionReclaimedError(
                                f"the value of key {held_keys[i]!r} as of seq {limit} was reclaimed by compaction",
                                key=PyBytes_FromStringAndSize(<char *>ptrs[i], lengths[i]), at_seq=limit)
                    block += m
            finally:
                self._leave_nogil_read(slot)
            return result
        finally:
            free(ptrs)
            free(lengths)
            free(found)
            free(workers)

    def _get_arrays(self, const uint8_t[::1] keys, Py_ssize_t key_width, bint strip_keys,
                    Py_ssize_t n, Py_ssize_t value_width, bint exact):
        """Look up n fixed-width keys and copy their values into one zero-padded
        buffer of n * width bytes. width = value_width, or the longest value
        found when value_width < 0. Returns (buffer, width, found)."""
        import numpy as np
        cdef const uint8_t **ptrs = <const uint8_t **>malloc(max(n, 1) * sizeof(uint8_t *))
        cdef uint64_t *lengths = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        cdef uint64_t *found = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        cdef int *workers = <int *>malloc(max(n, 1) * sizeof(int))
        cdef Py_ssize_t i, kl, width, longest = 0
        cdef uint64_t limit
        cdef amdb_version *v
        cdef uint8_t[::1] out
        cdef uint8_t[::1] found_view
        cdef const char *bases[256]
        cdef int slot, w
        try:
            if ptrs == NULL or lengths == NULL or found == NULL or workers == NULL:
                raise MemoryError()
            for i in range(n):
                ptrs[i] = &keys[i * key_width] if key_width else <const uint8_t *>""
                kl = key_width
                if strip_keys:
                    while kl > 0 and ptrs[i][kl - 1] == 0:
                        kl -= 1
                lengths[i] = kl
            slot = self._enter_nogil_read()
            try:
                for w in range(self.nworkers):
                    bases[w] = self.parts[w].arena
                limit = amdb_load_acquire(&self.dbc.visible_seq)
                with nogil:
                    self._lookup_many(n, ptrs, lengths, found, workers, limit, bases)
                for i in range(n):
                    if found[i] == VERSION_RECLAIMED:   # cannot happen as of now; never a wrong answer
                        raise VersionReclaimedError(f"the visible version of key #{i} was reclaimed by compaction")
                    if found[i] != 0:
                        v = version_at(bases[workers[i]], found[i])
                        if v.value_len > longest:
                            longest = v.value_len
                        if exact and value_width >= 0 and v.value_len != value_width:
                            raise InvalidArgumentError(
                                f"the value of key #{i} has {v.value_len} bytes; the requested unsigned "
                                f"dtype needs exactly {value_width}",
                                hint="store integers with put_array and the same dtype, or read bytes with dtype=None")
                        if value_width >= 0 and v.value_len > value_width:
                            raise ValueTooLargeError(
                                f"the value of key #{i} has {v.value_len} bytes, which does not fit "
                                f"the requested dtype ({value_width} bytes)",
                                hint="pass dtype=None to size the result to the longest value")
                width = value_width if value_width >= 0 else max(longest, 1)
                out_arr = np.zeros(n * width, dtype=np.uint8)
                found_arr = np.zeros(n, dtype=np.uint8)
                out = out_arr
                found_view = found_arr
                for i in range(n):
                    if found[i] != 0:
                        found_view[i] = 1
                        v = version_at(bases[workers[i]], found[i])
                        if v.value_len:
                            memcpy(&out[i * width], amdb_version_value(v), v.value_len)
            finally:
                self._leave_nogil_read(slot)
            return out_arr, width, found_arr.view(np.bool_)
        finally:
            free(ptrs)
            free(lengths)
            free(found)
            free(workers)

    cdef list _breaks_of(self, PartitionView *view, int worker, VerifyResult *r):
        """Break tuples of `r`, found in the region `view` names (REQUIRES a
        registered reader: it builds tuples)."""
        cdef list out = []
        cdef uint64_t i
        cdef BreakRecord *b
        cdef amdb_node *n
        kinds = {1: "hash", 2: "link", 3: "version_no", 4: "node", 5: "key_hash", 6: "order",
                 7: "first", 8: "bounds", 9: "count", 10: "ledger"}
        for i in range(r.breaks_len):
            b = &r.breaks[i]
            key = None
            if b.node_off != 0 and node_readable(view, b.node_off):
                n = node_at(view.arena, b.node_off)
                key = PyBytes_FromStringAndSize(<char *>amdb_node_key(n), n.key_len)
            out.append((worker, key, b.version_no or None, kinds.get(b.kind, str(b.kind)),
                        b.expected, b.stored))
        return out

    def _verify_partition(self, int worker):
        """(keys, versions, breaks_total, [break tuples]) of one partition,
        checked with the GIL released (callers run partitions in threads)."""
        cdef VerifyResult r
        cdef PartitionView view
        cdef int slot
        memset(&r, 0, sizeof(r))
        slot = self._enter_nogil_read()
        try:
            view = self.parts[worker]            # one base for the whole check
            with nogil:
                verify_partition(&view, &r)
                verify_ledger(&view, &r)
            return (r.keys, r.versions, r.breaks_total, self._breaks_of(&view, worker, &r))
        finally:
            free(r.breaks)
            self._leave_nogil_read(slot)

    def _verify_key(self, key):
        """REQUIRES no compaction in flight (ParallelDB.verify holds its
        lock): the bounds come from the control block's line 4, which
        describes the new generation before this process reads it."""
        cdef int worker, slot
        cdef uint64_t node_off
        cdef const char *arena
        cdef VerifyResult r
        cdef PartitionView view
        self._check_open()
        memset(&r, 0, sizeof(r))
        key = _as_key(key, "key")
        slot = self._enter_nogil_read()
        try:
            node_off = self._find_node(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                                       &worker, &arena)
            view = self.parts[worker]
            view.arena = <char *>arena
            if node_off != 0 and node_readable(&view, node_off):
                verify_node(&view, node_off, &r)
            return (r.keys, r.versions, r.breaks_total, self._breaks_of(&view, worker, &r))
        finally:
            free(r.breaks)
            self._leave_nogil_read(slot)

    def _quiesce(self):
        """REQUIRES the write lock: settle pending rollbacks, so that the
        arenas hold exactly the committed batches."""
        self._settle_aborts()

    def _ledger_heads(self):
        """[(head bytes, chunks)] per worker. REQUIRES the write lock and _quiesce()."""
        cdef int i
        cdef amdb_control *c
        self._check_open()
        out = []
        for i in range(self.nworkers):
            c = self.parts[i].ctrl
            amdb_load_acquire(&c.applied_chunk)
            out.append((PyBytes_FromStringAndSize(<char *>c.ledger_head, 32),
                        amdb_load_relaxed(&c.ledger_chunks)))
        return out

    def _debug_layout(self, key):
        """Arena offsets (in the current region of its worker) of `key`'s node
        fields and versions (tests corrupt them: ParallelDB._debug_flip_bit)."""
        cdef int worker, slot
        cdef uint64_t node_off, off
        cdef const char *arena
        cdef amdb_node *n
        cdef amdb_version *v
        cdef amdb_version_tail *t
        self._check_open()
        key = _as_key(key, "key")
        versions = []
        slot = self._enter_nogil_read()
        try:
            node_off = self._find_node(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                                       &worker, &arena)
            if node_off == 0:
                return None
            n = node_at(arena, node_off)
            off = amdb_load_acquire(&n.latest)
            while off != 0:
                v = version_at(arena, off)
                t = amdb_version_tail_of(v)
                versions.append({
                    "version": t.version_no, "off": off,
                    "prev_off": off + <size_t>&v.prev - <size_t>v,
                    "value_off": off + sizeof(amdb_version), "value_len": v.value_len,
                    "hash_off": <size_t>&t.hash - <size_t>arena,
                    "prev_hash_off": <size_t>&t.prev_hash - <size_t>arena,
                })
                off = v.prev
            return {"worker": worker, "node_off": node_off,
                    "region": (<size_t>arena - <size_t>self._arena_base[worker]) // self.parts[worker].ctrl.arena_capacity,
                    "latest_off": node_off + <size_t>&n.latest - <size_t>n,
                    "next0_off": node_off + <size_t>&n.next[0] - <size_t>n,
                    "key_off": node_off + <size_t>amdb_node_key(n) - <size_t>n, "key_len": n.key_len,
                    "versions": versions}
        finally:
            self._leave_nogil_read(slot)

    def _debug_arena_header(self, int worker):
        """The arena header of `worker`'s current generation (layout.h), and
        where its fields lie (tests corrupt them)."""
        cdef amdb_arena_header *h
        self._check_open()
        h = amdb_arena_header_of(self.parts[worker].arena)
        return {"generation": h.generation, "skiplist_head": h.skiplist_head, "hash_table": h.hash_table,
                "base_block": h.base_block, "compact_seq": h.compact_seq, "keep_versions": h.keep_versions,
                "base_block_off": <size_t>&h.base_block - <size_t>h,
                # head and kept are the last 64 bytes of the block (layout.h)
                "base_head_off": h.base_block + sizeof(amdb_ledger_base_block) - 64,
                "base_kept_off": h.base_block + sizeof(amdb_ledger_base_block) - 32}

    def _stats_of(self, int worker):
        cdef amdb_control *c
        self._check_open()
        c = self.parts[worker].ctrl
        return {
            "worker": worker,
            "keys": amdb_load_relaxed(&c.live_keys),
            "nodes": amdb_load_relaxed(&c.node_count),
            "versions": amdb_load_relaxed(&c.version_count),
            "chunks_applied": amdb_load_relaxed(&c.chunks_applied),
            "arena_used": amdb_load_relaxed(&c.arena_used),
            "arena_committed": amdb_load_relaxed(&c.arena_committed),
            "arena_capacity": c.arena_capacity,
            "ring_used": amdb_load_relaxed(&c.ring_head) - amdb_load_acquire(&c.ring_tail),
            "ring_capacity": c.ring_capacity,
            "applied_seq": amdb_load_acquire(&c.applied_seq),
            "state": ("starting", "ready", "stopped")[min(amdb_load_acquire(&c.worker_state), 2)],
            "log_segment": amdb_load_relaxed(&c.log_segment),
            "log_bytes": amdb_load_relaxed(&c.log_bytes),
            "checkpoint_seq": amdb_load_relaxed(&c.checkpoint_seq),
            "log_syncs": amdb_load_relaxed(&c.log_syncs),
            "log_errors": amdb_load_relaxed(&c.log_errors),
            "log_broken": bool(amdb_load_relaxed(&c.log_broken)),
            "region": self._region[worker],
            "generation": amdb_arena_header_of(self.parts[worker].arena).generation,
            "compact_state": ("idle", "building", "switching", "?")[min(amdb_load_acquire(&c.compact_state), 3)],
            "compactions": amdb_load_relaxed(&c.compactions),
            "versions_reclaimed": amdb_load_relaxed(&c.versions_reclaimed),
            "last_compact_seq": amdb_load_relaxed(&c.last_compact_seq),
            "last_compact_seconds": amdb_load_relaxed(&c.last_compact_ns) / 1e9,
            "last_compact_arena_bytes": (amdb_load_relaxed(&c.last_bytes_before),
                                         amdb_load_relaxed(&c.last_bytes_after)),
        }

    def _log_state(self):
        """(largest log_bytes of any worker, first worker whose log is broken or -1):
        cheap enough to ask before every write."""
        cdef int i
        cdef uint64_t most = 0, n
        cdef int broken = -1
        self._check_open()
        for i in range(self.nworkers):
            n = amdb_load_relaxed(&self.parts[i].ctrl.log_bytes)
            if n > most:
                most = n
            if broken < 0 and amdb_load_relaxed(&self.parts[i].ctrl.log_broken):
                broken = i
        return most, broken

    def _visible_seq(self):
        return amdb_load_acquire(&self.dbc.visible_seq) if self.dbc != NULL else 0

    def _take_over_ring(self, int worker, uint64_t incarnation, bint resume):
        """Worker `worker` is dead: prepare its ring and control block for a
        successor. With resume (it died between records: handling_pos was 0)
        the successor starts at ring_tail and carries on, so every record
        still in the ring, and every rollback owed, is applied as if nothing
        happened. Otherwise whatever the dead worker had not released belongs
        to the batch in flight, which is rolled back (its successor undoes its
        part, the owner raises), so the successor starts at the published head.
        REQUIRES: the write lock, and no live worker on this ring (the owner
        writes the worker's fields only while nobody else can)."""
        cdef RingProducer *r = &self.producers[worker]
        cdef amdb_control *c = r.ctrl
        cdef uint64_t head = amdb_load_relaxed(&c.ring_head)
        self._check_open()
        if not resume:
            amdb_store_release(&c.ring_tail, head)
            r.cached_tail = head
            # Rolled back by the successor (crash_repair) if pending.
            r.abort_to_send = 0
            r.abort_to_ack = 0
        amdb_store_release(&c.handling_pos, 0)
        amdb_store32_seqcst(&c.consumer_sleeping, 0)
        amdb_store_relaxed(&c.incarnation, incarnation)
        amdb_store_relaxed(&c.start_status, 0)
        amdb_store_release(&c.worker_state, AMDB_WORKER_STARTING)

    def scan(self, start=None, stop=None, *, prefix=None, bint reverse=False, bint keys_only=False,
             at_seq=None):
        """Iterate (key, value) pairs (or keys) in bytewise key order across all
        workers, from `start` (inclusive) to `stop` (exclusive), as of now (or
        as of sequence number at_seq)."""
        self._check_open()
        cdef uint64_t limit = self._limit_seq(at_seq)
        if prefix is not None:
            if start is not None or stop is not None:
                raise InvalidArgumentError("scan: prefix= cannot be combined with start= or stop=")
            start = _as_key(prefix, "prefix")
            stop = _prefix_successor(start)
        else:
            start = None if start is None else _as_key(start, "start")
            stop = None if stop is None else _as_key(stop, "stop")
        self._check_open()               # the bounds' conversion may have run the caller's code
        return ScanIterator(self, start, stop, reverse, SCAN_KEYS if keys_only else SCAN_ITEMS, limit)

    def keys(self):
        """Every key, in key order."""
        return self.scan(keys_only=True)

    def items(self):
        """Every (key, value) pair, in key order."""
        return self.scan()

    def values(self):
        """Every value, in key order."""
        self._check_open()
        return ScanIterator(self, None, None, False, SCAN_VALUES, amdb_load_acquire(&self.dbc.visible_seq))

    def __iter__(self):
        return self.scan(keys_only=True)


cdef bytes _as_key(obj, str what):
    """`obj` as an exact bytes object (a bytes subclass is copied: `bytes`-typed
    Cython variables refuse subclasses)."""
    if PyBytes_CheckExact(obj):
        return <bytes>obj
    cdef const uint8_t *p
    cdef Py_ssize_t n
    cdef Py_buffer view
    cdef bint held = False
    bytes_view(obj, &p, &n, &view, &held, what)
    try:
        return PyBytes_FromStringAndSize(<char *>p, n)
    finally:
        if held:
            PyBuffer_Release(&view)


cdef object _prefix_successor(bytes prefix):
    """Smallest key greater than every key starting with `prefix` (None: none)."""
    cdef bytearray b = bytearray(prefix)
    while len(b) and b[len(b) - 1] == 0xFF:
        b.pop()
    if not len(b):
        return None
    b[len(b) - 1] += 1
    return bytes(b)


cdef class ScanIterator:
    """Merges the workers' ordered lists into one ordered stream. Reads a
    snapshot: versions newer than visible_seq at creation are skipped.

    Between two steps it keeps offsets into the generations it read; when a
    compaction switched any partition's generation meanwhile (the engine's
    read epoch moved), it re-seeks every partition just past the last key it
    returned, in the new generations, as LevelDB iterators re-seek after a
    change of version. A key whose value as of the snapshot was reclaimed
    raises VersionReclaimedError when the scan reaches it."""
    cdef Engine engine
    cdef uint64_t visible
    cdef int nworkers
    cdef uint64_t *cursor          # per worker: node offset with a visible live version, or 0
    cdef uint64_t *cursor_version  #   and that version (VERSION_RECLAIMED: compaction reclaimed it)
    cdef bytes start, stop
    cdef bint reverse
    cdef int mode
    cdef uint64_t epoch            # engine._read_epoch the cursors belong to
    cdef bytes last_key            # the last key returned (None: none yet)

    def __cinit__(self, Engine engine, start, stop, bint reverse, int mode, uint64_t visible):
        cdef int w
        self.engine = engine
        self.nworkers = engine.nworkers
        self.start = start
        self.stop = stop
        self.reverse = reverse
        self.mode = mode
        self.last_key = None
        self.cursor = <uint64_t *>calloc(max(self.nworkers, 1), sizeof(uint64_t))
        self.cursor_version = <uint64_t *>calloc(max(self.nworkers, 1), sizeof(uint64_t))
        if self.cursor == NULL or self.cursor_version == NULL:
            raise MemoryError()
        self.visible = visible
        if engine._foreign:
            engine._enter_foreign()      # may adopt new regions: take the epoch after it
            try:
                self.epoch = engine._read_epoch
                for w in range(self.nworkers):
                    self._seek_first(w)
            finally:
                engine._leave_foreign()
        else:
            self.epoch = engine._read_epoch
            for w in range(self.nworkers):
                self._seek_first(w)

    def __dealloc__(self):
        free(self.cursor)
        free(self.cursor_version)

    cdef bint _in_bounds(self, amdb_node *n) noexcept:
        cdef const uint8_t *k
        if self.reverse:
            if self.start is None:
                return True
            k = <const uint8_t *>PyBytes_AS_STRING(self.start)
            return compare_key_to_node(amdb_key_prefix(k, len(self.start)), k, len(self.start), n) <= 0
        if self.stop is None:
            return True
        k = <const uint8_t *>PyBytes_AS_STRING(self.stop)
        return compare_key_to_node(amdb_key_prefix(k, len(self.stop)), k, len(self.stop), n) > 0

    cdef void _settle(self, int w, uint64_t off) noexcept:
        """Move worker w's cursor to the first node from `off` on (in scan
        direction) that is in bounds and has a visible live version (or whose
        visible version was reclaimed: the scan raises when it gets there)."""
        cdef const char *arena = self.engine.parts[w].arena
        cdef amdb_node *n
        cdef uint64_t version_off
        while off != 0:
            n = node_at(arena, off)
            if not self._in_bounds(n):
                off = 0
                break
            version_off = visible_version(arena, n, self.visible)
            if version_off == VERSION_RECLAIMED or is_live(arena, version_off):
                self.cursor_version[w] = version_off
                break
            if self.reverse:
                off = skiplist_find_lt(arena, arena_skiplist_head(arena), n.key_prefix, amdb_node_key(n),
                                       n.key_len, False)
            else:
                off = amdb_load_acquire(&n.next[0])
        self.cursor[w] = off

    cdef void _seek_first(self, int w) noexcept:
        cdef const char *arena = self.engine.parts[w].arena
        cdef uint64_t head = arena_skiplist_head(arena)
        cdef const uint8_t *k
        cdef uint64_t off
        if self.reverse:
            if self.stop is None:
                off = skiplist_find_lt(arena, head, 0, NULL, 0, True)
            else:
                k = <const uint8_t *>PyBytes_AS_STRING(self.stop)
                off = skiplist_find_lt(arena, head, amdb_key_prefix(k, len(self.stop)), k, len(self.stop), False)
        else:
            if self.start is None:
                off = amdb_load_acquire(&node_at(arena, head).next[0])
            else:
                k = <const uint8_t *>PyBytes_AS_STRING(self.start)
                off = skiplist_find_ge(arena, head, amdb_key_prefix(k, len(self.start)), k, len(self.start))
        self._settle(w, off)

    cdef void _seek_past(self, int w, bytes key) noexcept:
        """Position worker w just past `key` in scan direction."""
        cdef const char *arena = self.engine.parts[w].arena
        cdef uint64_t head = arena_skiplist_head(arena)
        cdef const uint8_t *k = <const uint8_t *>PyBytes_AS_STRING(key)
        cdef uint32_t length = <uint32_t>PyBytes_GET_SIZE(key)
        cdef uint64_t prefix = amdb_key_prefix(k, length)
        cdef uint64_t off
        if self.reverse:
            off = skiplist_find_lt(arena, head, prefix, k, length, False)
        else:
            off = skiplist_find_ge(arena, head, prefix, k, length)
            if off != 0 and compare_key_to_node(prefix, k, length, node_at(arena, off)) == 0:
                off = amdb_load_acquire(&node_at(arena, off).next[0])
        self._settle(w, off)

    cdef void _reseek(self) noexcept:
        cdef int w
        self.epoch = self.engine._read_epoch
        for w in range(self.nworkers):
            self.cursor[w] = 0
            if self.last_key is None:
                self._seek_first(w)
            else:
                self._seek_past(w, self.last_key)

    def __iter__(self):
        return self

    def __next__(self):
        if self.engine.closed:
            raise ClosedError("the database was closed while a scan was open")
        if not self.engine._foreign:
            return self._step()
        self.engine._enter_foreign()
        try:
            return self._step()
        finally:
            self.engine._leave_foreign()

    cdef object _step(self):
        cdef int w, best = -1
        cdef amdb_node *n
        cdef amdb_node *b
        cdef int c
        cdef const char *arena
        cdef amdb_version *v
        if self.epoch != self.engine._read_epoch:
            self._reseek()                 # a compaction switched generations since the last step
        for w in range(self.nworkers):
            if self.cursor[w] == 0:
                continue
            if best < 0:
                best = w
                continue
            n = node_at(self.engine.parts[w].arena, self.cursor[w])
            b = node_at(self.engine.parts[best].arena, self.cursor[best])
            c = compare_key_to_node(n.key_prefix, amdb_node_key(n), n.key_len, b)
            if (c < 0 and not self.reverse) or (c > 0 and self.reverse):
                best = w
        if best < 0:
            raise StopIteration
        arena = self.engine.parts[best].arena
        n = node_at(arena, self.cursor[best])
        key = PyBytes_FromStringAndSize(<char *>amdb_node_key(n), n.key_len)
        if self.cursor_version[best] == VERSION_RECLAIMED:
            raise VersionReclaimedError(
                f"the value of key {key!r} as of seq {self.visible} (this scan's snapshot) was reclaimed "
                f"by compaction", key=key, at_seq=self.visible)
        if self.mode != SCAN_KEYS:
            v = version_at(arena, self.cursor_version[best])
            value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
        self.last_key = key
        if self.reverse:
            self._settle(best, skiplist_find_lt(arena, arena_skiplist_head(arena), n.key_prefix,
                                                amdb_node_key(n), n.key_len, False))
        else:
            self._settle(best, amdb_load_acquire(&n.next[0]))
        if self.mode == SCAN_KEYS:
            return key
        if self.mode == SCAN_VALUES:
            return value
        return (key, value)


# ---- segment initialisation (owner, before any worker starts) --------------

CONTROL_BYTES = AMDB_CONTROL_BYTES
ARENA_REGIONS = AMDB_ARENA_REGIONS
DB_CONTROL_BYTES = (sizeof(amdb_db_control) + AMDB_PAGE - 1) // AMDB_PAGE * AMDB_PAGE
RECORD_HEADER_BYTES = sizeof(amdb_ring_record)
CHUNK_HEADER_BYTES = sizeof(amdb_ring_chunk)


def init_db_control(Mapping m, int worker_count, slot_owner, uint64_t visible_seq=0):
    """Fill the database control block: header, visible_seq, slot table."""
    cdef amdb_db_control *d = <amdb_db_control *>m.base
    cdef int slot
    if len(slot_owner) != AMDB_SLOT_COUNT:
        raise ValueError("slot table must have 16384 entries")
    d.magic = AMDB_DATABASE_MAGIC
    d.layout_version = AMDB_LAYOUT_VERSION
    d.worker_count = worker_count
    d.slot_count = AMDB_SLOT_COUNT
    for slot in range(AMDB_SLOT_COUNT):
        d.slot_owner[slot] = <uint16_t>slot_owner[slot]
    d.read_epoch = 1                     # 0 in a reader slot means "not reading"
    amdb_store_release(&d.visible_seq, visible_seq)


def init_partition_control(Mapping m, int index, uint64_t segment_size, uint64_t ring_offset,
                           uint64_t ring_capacity, uint64_t arena_offset, uint64_t arena_capacity):
    """Fill the read-only header line of a partition's control block."""
    cdef amdb_control *c = <amdb_control *>m.base
    c.layout_version = AMDB_LAYOUT_VERSION
    c.segment_size = segment_size
    c.ring_offset = ring_offset
    c.ring_capacity = ring_capacity
    c.arena_offset = arena_offset
    c.arena_capacity = arena_capacity
    c.worker_index = index
    # Release: the header is whole before a worker can check the magic.
    amdb_store_release(&c.magic, AMDB_PARTITION_MAGIC)


def worker_state(Mapping m):
    """AMDB_WORKER_* of the partition whose control block `m` maps."""
    return amdb_load_acquire(&(<amdb_control *>m.base).worker_state)


def wait_worker_progress(Mapping m, uint32_t seen, double timeout):
    """Sleep until the worker publishes progress after event value `seen`, or
    `timeout` seconds. Returns the event value to pass next time."""
    cdef amdb_control *c = <amdb_control *>m.base
    cdef int64_t ns = <int64_t>(timeout * 1e9)
    cdef uint32_t now
    with nogil:
        now = progress_prepare_wait(c)
        if now == seen:
            progress_sleep(c, seen, ns)
        else:
            amdb_store32_seqcst(&c.owner_waiting, 0)
        now = amdb_load32_seqcst(&c.progress_event)
    return now


def request_shutdown(Mapping m):
    """Ask the worker to leave its loop once its ring is empty, and wake it."""
    cdef amdb_control *c = <amdb_control *>m.base
    if c == NULL:
        return
    amdb_store_seqcst(&c.shutdown_requested, 1)
    amdb_fetch_add32_seqcst(&c.ring_data_event, 1)
    amdb_futex_wake_all(&c.ring_data_event)


def worker_position(Mapping m):
    """Where the worker of control block `m` is, read from shared memory (it
    works for a dead worker, whatever killed it; the crash report of
    ParallelDB._check_worker): what it last applied, and the ring record it
    was working on — the record it had taken off the ring and not finished
    (layout.h, handling_pos) — or None when it died between records.

    Returns {"pid", "compact_state" ("idle" | "building" | "switching": a
    compaction it was writing, compact.pyx), "applied_chunk", "applied_seq", "failed_chunk",
    "aborts_done", "in_flight": None or {"op": "chunk" | "abort" | "commit" | "checkpoint" | "compaction", "seq",
    "chunk_no", "records"}}. Reads racily; use it once the worker is gone."""
    cdef amdb_control *c = <amdb_control *>m.base
    cdef uint64_t mask, tail, head, pos, handling
    cdef amdb_ring_chunk *record
    cdef object in_flight = None
    cdef uint32_t op
    if c == NULL:
        return None
    mask = c.ring_capacity - 1
    head = amdb_load_acquire(&c.ring_head)
    tail = amdb_load_acquire(&c.ring_tail)
    # Acquire: the worker wrote the op, seq and chunk_no before the position.
    handling = amdb_load_acquire(&c.handling_pos)
    if handling != 0:
        pos = handling - 1
        op = c.handling_op
        names = {AMDB_OP_CHUNK: "chunk", AMDB_OP_ABORT: "abort", AMDB_OP_COMMIT: "commit",
                 AMDB_OP_CHECKPOINT: "checkpoint", AMDB_OP_COMPACT: "compaction"}
        in_flight = {"op": names.get(op, f"op {op}"), "seq": amdb_load_relaxed(&c.handling_seq),
                     "chunk_no": amdb_load_relaxed(&c.handling_chunk_no), "records": 0, "fingerprint": None}
        # A chunk's bytes stay the worker's until it releases them: read them
        # only while the ring still holds them (tail <= pos).
        if op == AMDB_OP_CHUNK and c.ring_offset + c.ring_capacity <= m.length and tail <= pos \
                and pos < c.handling_end <= head:
            record = <amdb_ring_chunk *>ring_at(m.base + c.ring_offset, mask, pos)
            in_flight["records"] = record.count
            # Which data it died on, wherever it lies in the ring (poison batches).
            in_flight["fingerprint"] = ring_chunk_fingerprint(m.base + c.ring_offset, c.ring_capacity,
                                                              pos, c.handling_end)
    return {"pid": amdb_load_relaxed(&c.worker_pid),
            "log_segment": amdb_load_relaxed(&c.log_segment),
            "incarnation": amdb_load_relaxed(&c.incarnation),
            "compact_state": ("idle", "building", "switching", "?")[min(amdb_load_acquire(&c.compact_state), 3)],
            "applied_chunk": amdb_load_acquire(&c.applied_chunk),
            "applied_seq": amdb_load_relaxed(&c.applied_seq),
            "failed_chunk": amdb_load_acquire(&c.failed_chunk),
            "aborts_done": amdb_load_acquire(&c.aborts_done),
            "unread_bytes": head - tail,
            "in_flight": in_flight}


def worker_start_status(Mapping m):
    """(AMDB_WORKER_* state, AMDB_STATUS_* it failed to start with, 0 if none)."""
    cdef amdb_control *c = <amdb_control *>m.base
    cdef uint64_t state = amdb_load_acquire(&c.worker_state)
    return state, (amdb_load_relaxed(&c.start_status) if state == AMDB_WORKER_FAILED else 0)


def worker_progress(Mapping m):
    """Everything that moves while the worker of control block `m` works
    (ring, progress counters, heartbeat): the owner compares two readings
    to tell a busy worker from a hung one (ParallelDB hang_timeout=)."""
    cdef amdb_control *c = <amdb_control *>m.base
    return (amdb_load_acquire(&c.ring_tail), amdb_load_acquire(&c.applied_chunk),
            amdb_load_acquire(&c.failed_chunk), amdb_load_acquire(&c.aborts_done),
            amdb_load_relaxed(&c.heartbeat), amdb_load_relaxed(&c.worker_state))
