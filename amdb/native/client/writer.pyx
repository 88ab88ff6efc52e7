# cython: language_level=3
"""The ring producer: every write of an open database, packed into the
workers' rings, and the control records (COMMIT, ABORT, CHECKPOINT,
COMPACT) that go the same way.

Who calls it: amdb.db.ParallelDB (its write methods are this class's own,
bound at open) and amdb.supervisor.Supervisor (control records, routed
batches, a dead worker's ring). Every wait on a worker asks the supervisor
(check_worker) each WAIT_SLICE_NS whether that worker still lives.

Shared memory: it is the single producer of every ring (layout.h, line 1,
and the ring bytes) and the single writer of visible_seq, under its write
lock; it reads the workers' progress lines (acquire).

Process safety: one thread at a time holds the write lock. The lock is an
RLock only so that a write can see that its own thread holds it: a write or
an admin call made from code that a write of the same thread runs (a
generator passed to batch_put) raises instead of waiting for itself, and the
batch it came from fails (enter_exclusive, _finish_batch).

The write path: put / delete / batch_put / batch_delete / put_arrays /
put_packed -> _write (guard, lock, supervisor.before_write, audit) ->
_run_batch (begin; the packer of the source; finish or abort) ->
_append_record (the one place a record header is filled) -> _finish_batch
(publish, COMMIT when durable, wait for every worker, advance visible_seq).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyBuffer_Release
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.ring cimport (RingProducer, ring_wait_space, ring_commit_ahead, ring_set_committed,
                            ring_reserve_nowait, ring_publish,
                            progress_prepare_wait, progress_sleep, ring_at)
from amdb.native.hashing cimport amdb_xxh64, SLOT_MASK, SLOT_COUNT
from amdb.native.client.attachment cimport Attachment, pending_key_entry
from amdb.native.client.keys cimport bytes_view, as_key
from amdb.shm.arena cimport Mapping

from amdb.errors import (ClosedError, Error, WorkerCrashedError, InvalidArgumentError, InvalidTypeError,
                         KeyTooLargeError, ValueTooLargeError, ArenaFullError, SHM_FULL_HINT, raise_for_status,
                         shm_usage)

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned int usec)

cdef enum:
    WAIT_SLICE_NS = 50000000      # 50 ms: waits wake up this often to check liveness and Ctrl-C
    FIRST_CHUNK_RECORDS = 512     # records in a batch's first chunk per worker; doubles per chunk
    FORWARD_BUDGET = 256          # records one forwarding pass sends on before it lets the mutex go
    FORWARD_SLEEP_NS = 100000000  # 100 ms: an idle forwarder's sleep (it checks `forwarder_stop` after)
    FORWARD_PAUSED_US = 200       # the forwarder's poll while the owner holds its write lock
    FORWARD_DRAIN_NS = 2000000000 # 2 s: what close() gives the forwarder to send on what clients published
    FORWARD_ROOM_WAIT_NS = 1000000000  # 1 s: the forwarder's wait for a worker's room before it asks Python

cdef enum ForwardResult:          # what one forwarding pass did or met (flags)
    FWD_SENT = 1                  # sent records on
    FWD_SHORT = 2                 # a record waits for its worker's credit or ring room (stuck_*)
    FWD_SYNC = 4                  # a record must be written synchronously (stuck: its channel)
    FWD_PAUSED = 8                # the owner holds its write lock, or is closed
    FWD_DONE = 32                 # a channel is done (drained after its client left, or broken)

cdef enum WaitResult:
    WAIT_DONE = 0
    WAIT_FAILED = 1
    WAIT_TIMEOUT = 2

cdef enum RoomState:              # what _room_state found
    NO_ROOM_YET = 0
    ROOM = 1
    DRAINED = 2                   # every async chunk of ours applied, and still no room

cdef enum SoloOutcome:            # what _send_solo did
    SOLO_SENT = 0
    SOLO_SYNC = 1                 # write synchronously (no async now: a batch, a closed database...)
    SOLO_CHECKS_DUE = 2           # the supervisor's periodic checks first
    SOLO_SHORT = 3                # the worker's credit or ring is short: wait for it

cdef enum Source:                 # what a batch is packed from (_run_batch)
    PAIRS = 0                     # an iterable of (key, value)
    DELETES = 1                   # an iterable of keys
    ARRAYS = 2                    # fixed-width numpy buffers (put_array)
    PACKED = 3                    # packed buffers and offsets (put_packed)
    ROUTED = 4                    # (worker, key, value or None) records, routed by the caller
    RMW = 5                       # one read-modify-write record: (op, key, argument bytes)


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



cdef inline void fill_record(amdb_ring_record *rec, uint32_t op, const uint8_t *key, uint64_t key_len,
                             const uint8_t *value, uint64_t value_len, uint64_t h, uint64_t nbytes,
                             uint32_t ticket) noexcept nogil:
    """The one place a ring record is filled (a batch's or a SOLO chunk's);
    `ticket`: a read-modify-write's result ticket, else 0 (layout.h)."""
    cdef uint8_t *out = <uint8_t *>(rec + 1)
    rec.op = op
    rec.key_len = <uint32_t>key_len
    rec.value_len = <uint32_t>value_len
    rec.reserved = ticket
    rec.hash = h
    if key_len:                      # key may be NULL when empty (numpy S0)
        memcpy(out, key, key_len)
    if value_len:
        memcpy(out + key_len, value, value_len)
    # Zero the padding: ring bytes are deterministic (and valgrind-clean).
    memset(out + key_len + value_len, 0, nbytes - sizeof(amdb_ring_record) - key_len - value_len)


cdef int64_t as_int64(object n, str what) except? -1:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidTypeError(f"{what} must be an int, not {type(n).__name__}")
    if not -(1 << 63) <= n < (1 << 63):
        raise InvalidArgumentError(f"{what}={n} is outside the signed 64-bit range of a counter")
    return n


def increment_argument(delta, initial):
    """The value of an INCREMENT record: delta, initial (int64 LE each)."""
    cdef int64_t words[2]
    words[0] = as_int64(delta, "delta")
    words[1] = as_int64(initial, "initial")
    return PyBytes_FromStringAndSize(<char *>words, 16)


def compare_and_set_argument(expected, new):
    """The value of a COMPARE_AND_SET record: expected length + 1 (0: None),
    the expected bytes, the new value (layout.h, "Read-modify-write")."""
    cdef uint64_t header
    cdef bytes want = None if expected is None else as_key(expected, "expected")
    cdef bytes value = as_key(new, "new")
    header = 0 if want is None else len(want) + 1
    return PyBytes_FromStringAndSize(<char *>&header, 8) + (want or b"") + value


cdef uint64_t _status_of(exc):
    """The AMDB_STATUS_* an error of a forwarded write stands for (what the
    client raises again: amdb.errors.raise_for_status); CORRUPT when none."""
    from amdb.errors import _STATUS_ERRORS
    code = getattr(exc, "code", None)
    for status, (cls, status_code, message) in _STATUS_ERRORS.items():
        if status_code == code:
            return status
    return AMDB_STATUS_CORRUPT


# ---- Channel records (layout.h, "Client channels", points 2 and 5) ------------------

cdef inline uint64_t channel_record(const char *ring, uint64_t capacity, uint64_t pos, uint64_t head,
                                    uint64_t max_key, uint64_t max_value, uint32_t *op, uint32_t *key_len,
                                    uint32_t *value_len) noexcept nogil:
    """The bytes the record at `pos` (tail <= pos < head) of a channel's ring
    takes, with its op and lengths (a WRAP: to the ring's end); 0 when it is
    malformed. Trusts no byte, and reads each once: what is checked is what
    the caller uses, whatever the client's memory says a moment later."""
    cdef uint64_t offset = pos & (capacity - 1), nbytes
    cdef amdb_ring_record *rec
    if head - pos > capacity or offset & 7:
        return 0
    op[0] = (<volatile uint32_t *>(ring + offset))[0]
    if op[0] == AMDB_OP_WRAP:
        return capacity - offset if capacity - offset <= head - pos else 0
    if offset + sizeof(amdb_ring_record) > capacity:
        return 0
    rec = <amdb_ring_record *>(ring + offset)
    key_len[0] = (<volatile uint32_t *>&rec.key_len)[0]
    value_len[0] = (<volatile uint32_t *>&rec.value_len)[0]
    nbytes = amdb_record_bytes(key_len[0], value_len[0])
    if ((op[0] != AMDB_OP_PUT and op[0] != AMDB_OP_DELETE) or key_len[0] > max_key or value_len[0] > max_value
            or (op[0] == AMDB_OP_DELETE and value_len[0]) or offset + nbytes > capacity or nbytes > head - pos):
        return 0
    return nbytes


# ---- Channels a dead owner left (layout.h, "Client channels", point 5) -------------

cdef amdb_channel *_channel_of(Mapping m) except NULL:
    cdef amdb_channel *ch = <amdb_channel *>m.base
    if (m.length < AMDB_CONTROL_BYTES or ch.magic != AMDB_CHANNEL_MAGIC or ch.capacity < 4096
            or ch.capacity & (ch.capacity - 1) or m.length < AMDB_CONTROL_BYTES + ch.capacity):
        raise ValueError("not a channel")
    return ch


def channel_unsent_bytes(Mapping m):
    """Bytes a channel's client published that the forwarder has not sent on."""
    cdef amdb_channel *ch = _channel_of(m)
    return amdb_load_seqcst(&ch.head) - amdb_load_acquire(&ch.tail)


def take_over_channel(Mapping m, uint64_t recovered_seq):
    """A channel file a dead owner left: seal it (closed, seq_cst, before
    head is read: a client still writing into it sees that and raises,
    point 4), then return what its client published that may be missing
    from the recovered database, in order: the records from the first one
    not marked with a seq <= recovered_seq on.
    Before returning, those records' marks are cleared and tail is moved to
    the first of them, so that a crash of this opening while it replays
    them makes the next opening replay them all again, never skip one by a
    mark that seqs of this opening's own may reach. Returns (records,
    problem): records as ("put" or "delete", key, value); problem says where
    a malformed record cut the walk, else None."""
    cdef amdb_channel *ch = _channel_of(m)
    cdef char *ring = m.base + AMDB_CONTROL_BYTES
    cdef uint64_t capacity = ch.capacity, mask = ch.capacity - 1
    cdef uint64_t head, tail, pos, offset, nbytes, first_pending
    cdef uint32_t op = 0, key_len = 0, value_len = 0
    cdef amdb_ring_record *rec
    cdef bint pending = False
    amdb_store_seqcst(&ch.closed, 1)
    head = amdb_load_seqcst(&ch.head)
    tail = amdb_load_acquire(&ch.tail)
    if head < tail or head - tail > capacity:
        return [], f"head {head} and tail {tail} out of range"
    records, marks, problem = [], [], None
    pos = first_pending = tail
    while pos != head:
        nbytes = channel_record(ring, capacity, pos, head, 65536, capacity, &op, &key_len, &value_len)
        if nbytes == 0:
            problem = f"a malformed record at {pos}"
            break
        if op == AMDB_OP_WRAP:
            pos += nbytes
            continue
        rec = <amdb_ring_record *>(ring + (pos & mask))
        if not pending and (rec.hash == 0 or rec.hash > recovered_seq):
            pending = True
            first_pending = pos
        if pending:
            key = PyBytes_FromStringAndSize(<char *>(rec + 1), key_len)
            value = PyBytes_FromStringAndSize(<char *>(rec + 1) + key_len, value_len)
            records.append(("delete" if op == AMDB_OP_DELETE else "put", key, value))
            marks.append(pos & mask)
        pos += nbytes
    if not pending:
        first_pending = pos
    for offset in marks:
        (<amdb_ring_record *>(ring + offset)).hash = 0
    amdb_store_release(&ch.tail, first_pending)
    return records, problem


class WriteLock(object):
    """The owner's write lock: a reentrant lock that also keeps the forwarder
    of clients' writes out while it is held (Writer.pause_forwarding), so
    that what the holder does (a batch, a checkpoint, a compaction, a worker
    replaced) never has a client's SOLO chunk land in the middle of it."""

    def __init__(self):
        import threading
        self._lock = threading.RLock()
        self._depth = 0
        self.writer = None              # set once the Writer exists (the owner's only)

    def acquire(self, blocking=True, timeout=-1):
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        if self._depth == 1 and self.writer is not None:
            try:
                self.writer.forward_now()
                self.writer.pause_forwarding()
            except BaseException:
                self._depth -= 1
                self._lock.release()
                raise
        return True

    def release(self):
        self._depth -= 1
        if self._depth == 0 and self.writer is not None:
            self.writer.resume_forwarding()
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _is_owned(self):
        return self._lock._is_owned()


cdef class Writer:
    """Every write of the database (see the module docstring)."""

    def __cinit__(self, Attachment att, uint64_t max_batch, uint64_t max_key_size, uint64_t max_value_size,
                  write_lock, bint durable, supervisor):
        cdef int i
        cdef amdb_control *c
        self.att = att
        self.producers = <RingProducer *>calloc(max(att.nworkers, 1), sizeof(RingProducer))
        self.charged_bytes = <uint64_t *>calloc(max(att.nworkers, 1), sizeof(uint64_t))
        self.charged_records = <uint64_t *>calloc(max(att.nworkers, 1), sizeof(uint64_t))
        self.credit_bytes = <uint64_t *>calloc(max(att.nworkers, 1), sizeof(uint64_t))
        self.credit_records = <uint64_t *>calloc(max(att.nworkers, 1), sizeof(uint64_t))
        self.rmw_next_ticket = <uint32_t *>calloc(max(att.nworkers, 1), sizeof(uint32_t))
        self.rmw_busy = <uint8_t *>calloc(max(att.nworkers, 1) * AMDB_RMW_RESULTS, 1)
        self.max_forwards = <int>att.reader_slots
        self.forwards = <Forward *>calloc(max(self.max_forwards, 1), sizeof(Forward))
        if (self.forwards == NULL or self.producers == NULL or self.charged_bytes == NULL or self.charged_records == NULL
                or self.credit_bytes == NULL or self.credit_records == NULL
                or self.rmw_next_ticket == NULL or self.rmw_busy == NULL):
            raise MemoryError()
        for i in range(att.nworkers):
            c = att.parts[i].ctrl
            self.producers[i].ctrl = c
            self.producers[i].ring = att.parts[i].ring
            self.producers[i].capacity = c.ring_capacity
            self.producers[i].mask = c.ring_capacity - 1
            # Relaxed: this process is the only producer (what it, or a
            # recovery, published last); acquire: the worker is done with
            # every byte before the tail.
            self.producers[i].head = amdb_load_relaxed(&c.ring_head)
            self.producers[i].cached_tail = amdb_load_acquire(&c.ring_tail)
            self.producers[i].fd = -1              # set_ring_files: until then, all of it committed
            self.producers[i].file_offset = 0
            ring_set_committed(&self.producers[i], c.ring_capacity)
        self.max_batch = max_batch
        self.max_key_size = max_key_size
        self.max_value_size = max_value_size
        self.chunk_byte_cap = self.producers[0].capacity // 4
        self.next_seq = amdb_load_acquire(&att.dbc.visible_seq) + 1
        self.write_lock = write_lock
        self.durable = durable
        self.supervisor = supervisor
        self.audit = None
        self.forced_worker = -1
        self._batch_reentered = None
        self._async_error = None
        self.async_enabled = False       # the supervisor turns async single writes on
        self.next_check_ns = 0
        if pthread_mutex_init(&self.producer_mutex, NULL) != 0:
            raise MemoryError()
        self.paused = 0
        self.forward_count = 0
        self.forward_next = 0
        self.forwarder_stop = False
        self.forward_mappings = {}
        self.forwarder_thread = None
        self.on_channel_released = None
        self.forwarded = 0
        # The charges so far: what the worker refunded (control line 9) is
        # what this process charged, as of the start.
        for i in range(att.nworkers):
            c = att.parts[i].ctrl
            self.charged_bytes[i] = amdb_load_relaxed(&c.refunded_bytes)
            self.charged_records[i] = amdb_load_relaxed(&c.refunded_records)

    def __dealloc__(self):
        pthread_mutex_destroy(&self.producer_mutex)
        free(self.producers)
        free(self.charged_bytes)
        free(self.charged_records)
        free(self.credit_bytes)
        free(self.credit_records)
        free(self.rmw_next_ticket)
        free(self.rmw_busy)
        free(self.forwards)

    # ---- the guard ------------------------------------------------------------

    def enter_exclusive(self, str what):
        """The one guard of every method that writes, sends control records
        or needs the write lock, run before any lock or epoch: a forked
        child's handle only reads (Error code "forked"); the database is
        open; and the write lock is not already held by this thread (code
        the call runs, such as a generator passed to batch_put, calling back
        in: Error code "reentrant_write", which also fails that batch)."""
        if self.att.client:
            if self.att.closed:
                self.att.check_open()
            raise Error(f"this ParallelDB is attached for reads only (read_only=True); it cannot {what}",
                        code="attached_read_only",
                        hint="attach without read_only=True to write, or call it in the process that opened "
                             "the database")
        if self.att.foreign:
            # A forked child gets here only through a method of its parent's
            # looked up before the fork (db.py, "forked children").
            raise Error(f"this method belongs to the parent process's database; a forked child cannot {what} "
                        "through it", code="forked",
                        hint="call it on the database object in the child (db.put(...)): its first write "
                             "attaches the child to the owner")
        self.att.check_open()
        if self.write_lock._is_owned():
            self._refuse_reentrant(what)
        return None

    cdef int _check_writable(self) except -1:
        """Before taking the write lock for a write (see enter_exclusive)."""
        if self.att.foreign or self.att.closed or self.write_lock._is_owned():
            self.enter_exclusive("write")
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

    # ---- public writes ----------------------------------------------------------

    def put(self, key, value):
        """Store `value` under `key` (both bytes-like). Returns once the write
        is in its worker's ring with its arena memory reserved (async single
        write, layout.h), or, when that cannot be done now, once it is applied."""
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        cdef Py_ssize_t kl, vl
        cdef Py_buffer kview, vview
        cdef bint kheld = False, vheld = False, sent = False
        if self.exclusive or self.att.closed or self.att.foreign:
            self._check_writable()       # a forked child, a closed database, a re-entrant call: raise
        bytes_view(key, &kp, &kl, &kview, &kheld, "key")
        try:
            bytes_view(value, &vp, &vl, &vview, &vheld, "value")
            try:
                sent = self._write_async(AMDB_OP_PUT, kp, kl, vp, vl, "put", 0)
            finally:
                if vheld:
                    PyBuffer_Release(&vview)
        finally:
            if kheld:
                PyBuffer_Release(&kview)
        if not sent:
            self._write("put", PAIRS, ((key, value),))

    def delete(self, key):
        """Delete `key`; deleting a missing key does nothing (async like put)."""
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer kview
        cdef bint kheld = False, sent = False
        if self.exclusive or self.att.closed or self.att.foreign:
            self._check_writable()
        bytes_view(key, &kp, &kl, &kview, &kheld, "key")
        try:
            sent = self._write_async(AMDB_OP_DELETE, kp, kl, NULL, 0, "delete", 0)
        finally:
            if kheld:
                PyBuffer_Release(&kview)
        if not sent:
            self._write("delete", DELETES, (key,))

    # ---- read-modify-write (layout.h, "Read-modify-write") -------------------------

    def increment(self, key, delta=1, *, initial=0, wait=True):
        """Add `delta` to the counter under `key` in its worker, atomically,
        and return the new value. A missing (or deleted) key counts as
        `initial`. Counters are 8-byte signed big-endian values
        (int.to_bytes(8, "big", signed=True)); another value under the key
        raises InvalidTypeError, a sum beyond 64 bits InvalidArgumentError,
        and nothing is written.

        wait=False: return None at once, like put() (the worker applies it
        later, in order; its error, if any, is raised by a later flush() or
        write, as for put())."""
        if not wait:
            self._rmw_nowait(AMDB_OP_INCREMENT, key, increment_argument(delta, initial), "increment")
            return None
        return self._rmw(AMDB_OP_INCREMENT, key, increment_argument(delta, initial), "increment")

    cdef int _rmw_nowait(self, uint32_t op, key, bytes argument, str name) except -1:
        """A read-modify-write without a result ticket sent like put(): a
        failure refuses it, and surfaces as an async write's error does."""
        cdef bytes k
        if self.exclusive or self.att.closed or self.att.foreign:
            self._check_writable()
        k = as_key(key, "key")
        self._check_rmw_sizes(op, k, argument, name)
        if not self._write_async(op, <const uint8_t *>PyBytes_AS_STRING(k), len(k),
                                 <const uint8_t *>PyBytes_AS_STRING(argument), len(argument), name, 0):
            self._write(name, RMW, (op, k, argument, 0))
        return 0

    cdef int _check_rmw_sizes(self, uint32_t op, bytes k, bytes argument, str name) except -1:
        if <uint64_t>len(k) > self.max_key_size:
            raise KeyTooLargeError(f"key of {len(k)} bytes exceeds max_key_size={self.max_key_size}")
        if <uint64_t>len(argument) > self.max_value_size:
            raise ValueTooLargeError(
                f"{name} needs {len(argument)} bytes in one record, more than max_value_size="
                f"{self.max_value_size}" + (" (expected and new value together, plus 8)"
                                            if op == AMDB_OP_COMPARE_AND_SET else ""))
        return 0

    def put_if_absent(self, key, value):
        """Store `value` under `key` only if the key is absent (or deleted):
        True when it was stored, False when the key held a value."""
        return self._rmw(AMDB_OP_PUT_IF_ABSENT, key, as_key(value, "value"), "put_if_absent") == 1

    def compare_and_set(self, key, expected, new):
        """Store `new` under `key` only if the key's value is `expected`
        (None: only if the key is absent): True when it was stored."""
        return self._rmw(AMDB_OP_COMPARE_AND_SET, key, compare_and_set_argument(expected, new),
                         "compare_and_set") == 1

    cdef object _rmw(self, uint32_t op, key, bytes argument, str name):
        """Send one read-modify-write record with a result ticket, as a SOLO
        chunk (or, when async writes cannot go now, as a batch of one), wait
        until its worker applied it, and return its result (the counter, or
        1 done / 0 not)."""
        cdef bytes k
        cdef uint64_t h, chunk
        cdef uint32_t ticket
        cdef int w
        cdef bint sent
        if self.exclusive or self.att.closed or self.att.foreign:
            self._check_writable()
        k = as_key(key, "key")
        self._check_rmw_sizes(op, k, argument, name)
        h = amdb_xxh64(<const uint8_t *>PyBytes_AS_STRING(k), len(k), 0)
        w = self.att.dbc.slot_owner[h & SLOT_MASK]
        ticket = self._take_ticket(w)
        try:
            # The ticket travels as an argument, never in a field: the sends
            # let other threads run (they wait for room, run the supervisor).
            sent = self._write_async(op, <const uint8_t *>PyBytes_AS_STRING(k), len(k),
                                     <const uint8_t *>PyBytes_AS_STRING(argument), len(argument), name, ticket)
            # _send_solo published our chunk last and returned without letting
            # another thread in: async_chunk[w] is ours.
            chunk = self.att.async_chunk[w]
            if sent:
                self.wait_async(w, chunk)
                self._raise_async_error()
            else:
                self._write(name, RMW, (op, k, argument, ticket))
            return self._rmw_result(w, ticket, k, name)
        finally:
            self.rmw_busy[w * AMDB_RMW_RESULTS + ticket % AMDB_RMW_RESULTS] = 0

    cdef uint32_t _take_ticket(self, int w) except 0:
        """A result ticket of worker w whose slot no record in flight holds
        (layout.h): the next one, or the first free one after it."""
        cdef uint32_t ticket
        cdef int tries
        while True:
            for tries in range(AMDB_RMW_RESULTS):
                ticket = self.rmw_next_ticket[w] + 1
                if ticket == 0:
                    ticket = 1
                self.rmw_next_ticket[w] = ticket
                if not self.rmw_busy[w * AMDB_RMW_RESULTS + ticket % AMDB_RMW_RESULTS]:
                    self.rmw_busy[w * AMDB_RMW_RESULTS + ticket % AMDB_RMW_RESULTS] = 1
                    return ticket
            # Every slot holds a record in flight (that many threads): let them finish.
            with nogil:
                amdb_spin_step(AMDB_SPIN_STEPS)
            PyErr_CheckSignals()
            self.att.check_open()

    cdef object _rmw_result(self, int w, uint32_t ticket, bytes key, str name):
        """The result the worker left for `ticket` (its applied_chunk was
        acquired since: the slot is whole)."""
        cdef amdb_rmw_result *slot = &self.att.parts[w].ctrl.rmw_results[ticket % AMDB_RMW_RESULTS]
        if slot.ticket != ticket:
            raise Error(f"{name}: worker {w} applied the write but left no result for it",
                        code="corrupt", hint="report this bug; the write itself was applied")
        if slot.status != AMDB_STATUS_OK:
            raise_for_status(slot.status, f"{name} of key {key!r}")
        return slot.value

    cdef int _pack_rmw(self, uint32_t op, bytes key, bytes argument, uint32_t ticket) except -1:
        """A batch of one read-modify-write record with its result ticket."""
        return self._append_record(op, <const uint8_t *>PyBytes_AS_STRING(key), len(key),
                                   <const uint8_t *>PyBytes_AS_STRING(argument), len(argument), ticket)

    def set_ring_files(self, fds, uint64_t ring_offset, uint64_t committed):
        """The owner's descriptors of the partition segments, the ring's offset
        in them and how much of each ring the segment was created with backed:
        the rest is committed as writes first reach it (ring_commit_ahead).
        The descriptors stay the supervisor's (open until close)."""
        cdef int i
        for i in range(self.att.nworkers):
            self.producers[i].fd = fds[i]
            self.producers[i].file_offset = ring_offset
            # A ring already written to (not so far) counts as backed whole.
            ring_set_committed(&self.producers[i], committed if self.producers[i].head == 0
                               else self.producers[i].capacity)

    def ring_committed(self):
        """Bytes of each ring backed in /dev/shm so far (committed by need)."""
        return [self.producers[i].committed for i in range(self.att.nworkers)]

    def flush(self):
        """Wait until every write of this process so far is applied (and
        visible to every read), raising the error of an async write that
        failed after it returned (a poison record, a broken log)."""
        if self.att.foreign:
            return
        self.att.check_open()
        self._sync_async()
        self._raise_async_error()

    # ---- async single writes (layout.h, "Async single writes") -----------------

    cdef bint _write_async(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                           const uint8_t *value, uint64_t value_len, str name, uint32_t ticket) except -1:
        """Write one record as a SOLO chunk, without waiting for its worker:
        True once sent. When the supervisor's checks are due, they run first
        (under the write lock); when the worker's credit or ring is short
        while it still has async writes of ours to apply, we wait for it
        (backpressure). False when the write must go synchronously instead."""
        cdef int worker = -1
        cdef int outcome
        while True:
            outcome = self._send_solo(op, key, key_len, value, value_len, name, &worker, ticket)
            if outcome == SOLO_SENT:
                return True
            if outcome == SOLO_CHECKS_DUE:
                with self.write_lock:
                    if self.exclusive or self.att.closed:
                        return False     # let the synchronous path raise or wait
                    self.supervisor.before_write()
            elif outcome == SOLO_SHORT and self._wait_room(worker, key_len, value_len):
                continue
            else:
                return False

    cdef int _send_solo(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                        const uint8_t *value, uint64_t value_len, str name, int *worker_out,
                        uint32_t ticket) except -1:
        """Send a SOLO chunk of one record without waiting for its worker when
        every condition holds (SOLO_SENT), else say why nothing was sent.
        Never releases the GIL, so no other thread's call can come between its
        checks and its publication; no batch or admin call is in progress
        (exclusive == 0), so the chunk never lands inside another batch. The
        producer mutex keeps the forwarder out meanwhile."""
        cdef uint64_t h, seq = 0
        cdef int w, outcome
        if (not self.async_enabled or self.exclusive or self.att.closed or self.att.foreign
                or self._async_error is not None or key_len > self.max_key_size
                or value_len > self.max_value_size):
            return SOLO_SYNC
        if amdb_monotonic_ns() >= self.next_check_ns:
            return SOLO_CHECKS_DUE
        h = amdb_xxh64(key, key_len, 0)
        w = self.att.dbc.slot_owner[h & SLOT_MASK]
        worker_out[0] = w
        pthread_mutex_lock(&self.producer_mutex)
        outcome = self._solo_core(op, key, key_len, value, value_len, h, w, ticket, &seq, NULL)
        pthread_mutex_unlock(&self.producer_mutex)
        if outcome == SOLO_SENT and self.audit is not None:
            self.audit.write_op(name, 1, seq, seq, h)
        return outcome

    cdef int _solo_core(self, uint32_t op, const uint8_t *key, uint64_t key_len, const uint8_t *value,
                        uint64_t value_len, uint64_t h, int w, uint32_t ticket, uint64_t *seq_out,
                        uint64_t *seq_mark) noexcept nogil:
        """The SOLO chunk itself, for the owner's put (_send_solo) and the
        forwarder: SOLO_SENT, or why not (SOLO_SYNC, SOLO_SHORT). REQUIRES
        producer_mutex, and no batch or admin call in progress. `seq_mark`
        (or NULL): where the chunk's seq is stored before it is published
        (a channel record's, layout.h "Client channels", point 5)."""
        cdef uint64_t nbytes, charge, offset, need, seq, header_pos, pos
        cdef RingProducer *r = &self.producers[w]
        cdef amdb_control *c
        cdef amdb_ring_chunk *header
        if r.abort_to_send or r.abort_to_ack or r.chunk_open:
            return SOLO_SYNC             # a rollback must be settled first (_begin_batch)
        c = r.ctrl
        # The charge (layout.h, point 1): within the worker's credit, reread
        # (acquire: the room behind it is committed) only when short.
        charge = amdb_async_charge(<uint32_t>key_len, <uint32_t>value_len)
        if (self.charged_bytes[w] + charge > self.credit_bytes[w]
                or self.charged_records[w] + 1 > self.credit_records[w]):
            self.credit_bytes[w] = amdb_load_acquire(&c.credit_bytes)
            self.credit_records[w] = amdb_load_acquire(&c.credit_records)
            if (self.charged_bytes[w] + charge > self.credit_bytes[w]
                    or self.charged_records[w] + 1 > self.credit_records[w]):
                return SOLO_SHORT
        # Ring room for the chunk header and the record, and a wrap marker
        # (after one wrap both fit: they are reserved back to back).
        nbytes = amdb_record_bytes(<uint32_t>key_len, <uint32_t>value_len)
        need = sizeof(amdb_ring_chunk) + nbytes
        if ring_commit_ahead(r, need) != 0:
            return SOLO_SYNC              # /dev/shm is full: the synchronous path raises
        offset = r.head & r.mask
        if offset + need > r.wrap_at:
            need += r.capacity - offset
        if r.capacity - (r.head - r.cached_tail) < need:
            r.cached_tail = amdb_load_acquire(&c.ring_tail)
            if r.capacity - (r.head - r.cached_tail) < need:
                return SOLO_SHORT
        seq = self.next_seq
        self.next_seq += 1
        header_pos = ring_reserve_nowait(r, sizeof(amdb_ring_chunk))
        pos = ring_reserve_nowait(r, nbytes)
        fill_record(<amdb_ring_record *>ring_at(r.ring, r.mask, pos), op, key, key_len, value, value_len, h, nbytes,
                    ticket)
        header = <amdb_ring_chunk *>ring_at(r.ring, r.mask, header_pos)
        header.op = AMDB_OP_CHUNK
        header.flags = AMDB_CHUNK_FIRST_OF_BATCH | AMDB_CHUNK_SOLO
        header.seq = seq
        header.count = 1
        header.end = r.head
        r.chunks_published += 1
        header.chunk_no = r.chunks_published
        if seq_mark != NULL:
            amdb_store_release(seq_mark, seq)     # before the publication: a crash leaves it marked
        ring_publish(r)
        r.last_chunk_sent = r.chunks_published
        # For clients: what the owner acknowledged (layout.h, solo_seq).
        amdb_store_release(&self.att.dbc.solo_chunk[w], r.chunks_published)
        amdb_store_release(&self.att.dbc.solo_seq, seq)
        self.charged_bytes[w] += charge
        self.charged_records[w] += 1
        self.att.async_chunk[w] = r.chunks_published
        self.att.pending_key_chunk[pending_key_entry(w, h)] = r.chunks_published
        self.att.async_pending = True
        self.att.last_async_seq = seq    # what a forked child makes visible (wait_parent_writes)
        self.last_async_seq = seq
        seq_out[0] = seq
        return SOLO_SENT

    cdef bint _wait_room(self, int w, uint64_t key_len, uint64_t value_len) except -1:
        """Backpressure: wait until worker w has credit and ring room for one
        more record of this size. True when it has; False (write
        synchronously) when it applied every async write of ours and still
        has not: it needs more memory committed, which a synchronous write
        asks for (and raises ArenaFullError when /dev/shm has none)."""
        cdef int slot
        # Registered as a reader: close() in another thread (the exit handler,
        # say) keeps the memory mapped until we leave.
        slot = self.att.enter_read()
        try:
            return self._wait_room_registered(w, key_len, value_len)
        finally:
            self.att.leave_read(slot)

    cdef int _room_state(self, int w, uint64_t key_len, uint64_t value_len) noexcept nogil:
        """Backpressure's question: ROOM when worker w has credit and ring
        room for one more record of this size; DRAINED when it applied (or
        refused) every async chunk of ours and still has not (a synchronous
        write must ask for memory); NO_ROOM_YET otherwise."""
        cdef RingProducer *r = &self.producers[w]
        cdef amdb_control *c = r.ctrl
        cdef uint64_t charge = amdb_async_charge(<uint32_t>key_len, <uint32_t>value_len)
        cdef uint64_t need = 2 * (sizeof(amdb_ring_chunk) + amdb_record_bytes(<uint32_t>key_len, <uint32_t>value_len))
        if (self.charged_bytes[w] + charge <= amdb_load_acquire(&c.credit_bytes)
                and self.charged_records[w] + 1 <= amdb_load_acquire(&c.credit_records)
                and r.capacity - (r.head - amdb_load_acquire(&c.ring_tail)) >= need):
            return ROOM
        if (amdb_load_acquire(&c.applied_chunk) >= self.att.async_chunk[w]
                or amdb_load_acquire(&c.failed_chunk) >= self.att.async_chunk[w]):
            return DRAINED
        return NO_ROOM_YET

    cdef bint _wait_room_registered(self, int w, uint64_t key_len, uint64_t value_len) except -1:
        cdef amdb_control *c = self.producers[w].ctrl
        cdef uint32_t seen
        cdef int i
        cdef int state = NO_ROOM_YET
        while True:
            with nogil:
                for i in range(AMDB_SPIN_STEPS + 1):
                    state = self._room_state(w, key_len, value_len)
                    if state != NO_ROOM_YET:
                        break
                    if i == AMDB_SPIN_STEPS:
                        seen = progress_prepare_wait(c)
                        progress_sleep(c, seen, WAIT_SLICE_NS)
                    amdb_spin_step(i)
            if state != NO_ROOM_YET:
                return state == ROOM
            PyErr_CheckSignals()
            if self.att.closed:
                return False
            self._check_worker_if_lock_free(w)

    cdef int _check_worker_if_lock_free(self, int w) except -1:
        """For waits that hold no write lock: replace worker w if it died,
        when the lock is free. Never waits for it (a compaction holding it
        may be waiting for this very wait to leave); a thread that holds it
        checks in its own waits. Raises what check_worker raises."""
        if self.write_lock.acquire(False):
            try:
                self.supervisor.check_worker(w)
            finally:
                self.write_lock.release()
        return 0

    cdef int _sync_async(self) except -1:
        """Wait until every SOLO chunk this process sent is applied (or
        refused), then raise visible_seq over them (a CAS-max: readers and
        the writer may raise it at once; it only grows)."""
        cdef int w
        cdef uint64_t seq, target
        if not self.att.async_pending or self.att.foreign:
            return 0
        seq = self.last_async_seq
        for w in range(self.att.nworkers):
            target = self.att.async_chunk[w]
            if target:
                self.wait_async(w, target)
        self.att.check_open()            # waits let other threads run, close() among them
        amdb_fetch_max_seqcst(&self.att.dbc.visible_seq, seq)
        if self.last_async_seq == seq:   # nothing sent while we waited
            self.att.async_pending = False
        self.att.refresh_len()
        return 0

    def sync_async(self):
        """_sync_async for the reader (reads of more than one key)."""
        self._sync_async()

    def wait_async(self, int w, uint64_t target):
        """Wait until worker w applied (or refused) chunk `target`, a SOLO
        chunk of this process: a read of w's keys then sees it. Checks the
        worker's liveness every WAIT_SLICE_NS (taking the write lock to
        replace it, as every wait does)."""
        cdef amdb_control *c
        cdef int slot
        # Registered as a reader: close() in another thread keeps the memory
        # mapped until we leave (attachment.pyx, "Process safety").
        slot = self.att.enter_read()
        try:
            c = self.att.parts[w].ctrl
            self._wait_applied(w, c, target)
        finally:
            self.att.leave_read(slot)

    cdef int _wait_applied(self, int w, amdb_control *c, uint64_t target) except -1:
        cdef uint32_t seen
        cdef int i
        cdef bint done = False
        while True:
            with nogil:
                for i in range(AMDB_SPIN_STEPS + 1):
                    if (amdb_load_acquire(&c.applied_chunk) >= target
                            or amdb_load_acquire(&c.failed_chunk) >= target):
                        done = True
                        break
                    if i == AMDB_SPIN_STEPS:
                        seen = progress_prepare_wait(c)
                        if (amdb_load_acquire(&c.applied_chunk) >= target
                                or amdb_load_acquire(&c.failed_chunk) >= target):
                            done = True
                            amdb_store32_seqcst(&c.owner_waiting, 0)
                        else:
                            progress_sleep(c, seen, WAIT_SLICE_NS)
                    amdb_spin_step(i)
            if done:
                break
            PyErr_CheckSignals()
            if self.att.closed:
                raise ClosedError("the database was closed while a read waited for this process's writes")
            # A worker that cannot be replaced will never apply it: writes
            # raise from now on, reads go on without it.
            try:
                self._check_worker_if_lock_free(w)
            except WorkerCrashedError as exc:
                if self._async_error is None:
                    self._async_error = exc
                break
        if amdb_load_acquire(&c.applied_chunk) < target and self._async_error is None:
            try:
                raise_for_status(<int>amdb_load_relaxed(&c.failed_status),
                                 f"an async write to worker {w} that had returned was refused")
            except Error as exc:
                self._async_error = exc
        if self.att.async_chunk[w] == target:
            self.att.async_chunk[w] = 0
        return 0

    cdef int _raise_async_error(self) except -1:
        if self._async_error is not None:
            exc, self._async_error = self._async_error, None
            raise exc
        return 0

    # ---- forwarding: attached clients' async single writes (layout.h, "Client channels") ----
    #
    # A daemon thread of the owner (run_forwarder) takes the records clients
    # publish in their channels and sends each on as a SOLO chunk of the
    # owner's own (_solo_core), under producer_mutex, in passes of at most
    # FORWARD_BUDGET records that start at the next channel each time (no
    # client starves another). It sends nothing while the owner holds its
    # write lock (pause_forwarding, by WriteLock), so no SOLO chunk lands
    # inside a batch, a checkpoint or a compaction. It needs the GIL only for
    # what a write of the owner would do in Python: backpressure with nothing
    # sent, a record that must be written synchronously, letting a channel go
    # (_forward_until_python). The supervisor's periodic checks run in a
    # thread of their own (run_forwarder_checks).
    # Lock order: the GIL, then producer_mutex; a holder of producer_mutex
    # never waits for the GIL (the forwarder holds it only without the GIL,
    # the owner's threads only while they keep the GIL they have).

    def pause_forwarding(self):
        """The write lock was taken (WriteLock): wait for the forwarder's pass
        in progress, then keep it out until resume_forwarding."""
        if self.att.foreign:
            return                         # a forked child: no forwarder (the mutex may be the parent's)
        # All inside nogil: a thread holding the mutex must never wait for the
        # GIL (the owner's put holds the GIL while it waits for the mutex).
        with nogil:
            pthread_mutex_lock(&self.producer_mutex)
            self.paused += 1
            pthread_mutex_unlock(&self.producer_mutex)

    def forward_now(self):
        """Before the write lock pauses the forwarder (WriteLock): send on
        what clients published, in this thread, so that an owner taking the
        lock again and again never starves them (one pass; what it cannot
        send now, the forwarder does later)."""
        cdef int stuck = -1, stuck_worker = -1
        cdef uint64_t stuck_bytes = 0
        if self.forward_count == 0 or self.att.foreign:
            return
        with nogil:
            self._forward_pass(&stuck, &stuck_worker, &stuck_bytes)

    def resume_forwarding(self):
        if self.att.foreign:
            return
        pthread_mutex_lock(&self.producer_mutex)
        self.paused -= 1
        pthread_mutex_unlock(&self.producer_mutex)

    def add_channel(self, mapping, uint64_t capacity, uint64_t client_pid):
        """Forward a new client's channel (a writable, zeroed Mapping: header,
        then `capacity` ring bytes): its header is written here. Returns its
        entry, for close_channel; -1 when every entry is taken."""
        cdef Mapping m = mapping
        cdef amdb_channel *ch = <amdb_channel *>m.base
        cdef int i, index = -1
        ch.magic = AMDB_CHANNEL_MAGIC
        ch.capacity = capacity
        ch.client_pid = client_pid
        pthread_mutex_lock(&self.producer_mutex)
        for i in range(self.max_forwards):
            if self.forwards[i].ch == NULL:
                index = i
                break
        if index >= 0:
            self.forwards[index].ch = <amdb_channel *>m.base
            self.forwards[index].ring = m.base + AMDB_CONTROL_BYTES
            self.forwards[index].capacity = capacity
            self.forwards[index].mask = capacity - 1
            self.forwards[index].tail = amdb_load_acquire(&self.forwards[index].ch.tail)
            self.forwards[index].closing = False
            self.forwards[index].done = False
            if index >= self.forward_count:
                self.forward_count = index + 1
            self.forward_mappings[index] = mapping
        pthread_mutex_unlock(&self.producer_mutex)
        return index

    def close_channel(self, int index):
        """The client of entry `index` is gone: send on what it published
        (acknowledged writes), then let the channel go."""
        pthread_mutex_lock(&self.producer_mutex)
        if 0 <= index < self.max_forwards and self.forwards[index].ch != NULL:
            self.forwards[index].closing = True
        pthread_mutex_unlock(&self.producer_mutex)
        self._wake_forwarder()

    def channels_open(self):
        """Client channels still forwarded (statistics, tests)."""
        return len(self.forward_mappings)

    def _wake_forwarder(self):
        amdb_fetch_add32_seqcst(&self.att.dbc.forward_event, 1)
        amdb_futex_wake_all(&self.att.dbc.forward_event)

    def start_forwarder(self):
        import threading
        if self.forwarder_thread is None:
            self.forwarder_stop = False
            self.checks_wake = threading.Event()
            self.forwarder_thread = threading.Thread(target=self.run_forwarder, name="amdb-forwarder",
                                                     daemon=True)
            self.checks_thread = threading.Thread(target=self.run_forwarder_checks,
                                                  name="amdb-forwarder-checks", daemon=True)
            self.forwarder_thread.start()
            self.checks_thread.start()

    def stop_forwarder(self):
        """Send on what clients published (FORWARD_DRAIN_NS at most: their
        acknowledged writes), then stop the thread. Called by close() before
        it takes the write lock (which would pause the forwarder)."""
        import threading
        thread = self.forwarder_thread
        if thread is None:
            return
        self.forward_deadline = amdb_monotonic_ns() + FORWARD_DRAIN_NS
        self.forwarder_stop = True
        self._wake_forwarder()
        self.checks_wake.set()
        for t in (thread, self.checks_thread):
            if t is threading.current_thread():
                return                     # a collection run by that thread itself: it stops after this
        thread.join()                      # bounded: its waits for the write lock are (WAIT_SLICE_NS)
        self.checks_thread.join()          # the same
        self.forwarder_thread = self.checks_thread = None

    def run_forwarder(self):
        """The forwarder thread's body (see above). Asked to stop, it goes on
        until what clients published is sent on (or FORWARD_DRAIN_NS pass, or
        the owner holds its write lock), then seals the channels and makes
        one last pass (layout.h, "Client channels", point 4)."""
        cdef int stuck = -1, stuck_worker = -1, result = 0
        cdef uint64_t stuck_bytes = 0
        cdef bint stopping, sealed = False
        while True:
            stopping = self.forwarder_stop
            with nogil:
                result = self._forward_until_python(&stuck, &stuck_worker, &stuck_bytes)
            if stopping:
                if sealed:
                    if result & FWD_DONE:
                        self._release_done_channels()
                    return
                if (not result & (FWD_SENT | FWD_SHORT | FWD_SYNC) or result & FWD_PAUSED or self.att.closed
                        or amdb_monotonic_ns() > self.forward_deadline):
                    self._seal_channels()
                    sealed = True
                    continue
            try:
                if result & FWD_DONE:
                    self._release_done_channels()
                if result & FWD_SYNC:
                    self._forward_sync(stuck)
                elif result & FWD_SHORT and not result & FWD_SENT:
                    if not self._wait_room(stuck_worker, stuck_bytes, 0):
                        self._forward_sync(stuck)
            except Exception:
                # A check or a synchronous write raised (a worker being
                # replaced, say): the records wait, and the next pass retries.
                with nogil:
                    usleep(FORWARD_PAUSED_US)

    cdef int _forward_until_python(self, int *stuck, int *stuck_worker, uint64_t *stuck_bytes) noexcept nogil:
        """Forwarding passes, sleeps and pauses, without the GIL, until a
        pass needs what only Python does (the result of that pass): letting
        a channel go, a synchronous write, backpressure with nothing sent, or
        stopping. So an owner busy in Python (which holds the GIL for up to
        sys.getswitchinterval() at a time) slows clients' writes no more than
        its use of the cores does (the periodic checks have a thread of
        their own: run_forwarder_checks)."""
        cdef int result
        while True:
            result = self._forward_pass(stuck, stuck_worker, stuck_bytes)
            # forwarder_stop: set with the GIL, read after the pass's mutex
            # (a full barrier); stop_forwarder wakes a sleeping forwarder.
            if self.forwarder_stop or result & (FWD_DONE | FWD_SYNC):
                return result
            if result & FWD_SENT:
                continue
            if result & FWD_SHORT:
                if self._room_within(stuck_worker[0], stuck_bytes[0], FORWARD_ROOM_WAIT_NS):
                    continue
                return result             # Python: liveness, or a synchronous write
            if result & FWD_PAUSED:
                usleep(FORWARD_PAUSED_US)
            else:
                self._forwarder_sleep()

    cdef bint _room_within(self, int w, uint64_t nbytes, uint64_t timeout_ns) noexcept nogil:
        """The forwarder's backpressure: wait, without the GIL, until worker w
        has credit and ring room for a record of `nbytes` (True), for
        timeout_ns at most, or until it applied every chunk sent to it and
        still has none (False: _wait_room and a synchronous write decide).
        Needs no reader registration: close() stops the forwarder before it
        unmaps anything."""
        cdef amdb_control *c = self.producers[w].ctrl
        cdef uint64_t deadline = amdb_monotonic_ns() + timeout_ns
        cdef uint32_t seen
        cdef int i = 0, state
        while not self.forwarder_stop and not self.att.closed:
            # The producer's counts change only under the mutex, which the
            # owner's puts take too: read them as a pass would.
            pthread_mutex_lock(&self.producer_mutex)
            state = self._room_state(w, nbytes, 0)
            pthread_mutex_unlock(&self.producer_mutex)
            if state != NO_ROOM_YET:
                return state == ROOM
            if amdb_monotonic_ns() > deadline:
                return False
            if i < AMDB_SPIN_STEPS:
                amdb_spin_step(i)
                i += 1
            else:
                seen = progress_prepare_wait(c)
                progress_sleep(c, seen, 1000000)      # 1 ms at most: the worker wakes us as it applies
        return False

    def _seal_channels(self):
        """Stopping: every channel says so (closed, seq_cst) before the last pass."""
        cdef int i
        pthread_mutex_lock(&self.producer_mutex)
        for i in range(self.forward_count):
            if self.forwards[i].ch != NULL:
                amdb_store_seqcst(&self.forwards[i].ch.closed, 1)
        pthread_mutex_unlock(&self.producer_mutex)

    def run_forwarder_checks(self):
        """The supervisor's periodic checks (liveness, outgrown tables,
        automatic checkpoints and compactions) for what the forwarder sends
        on, as an owner's async write runs them, when due while clients are
        attached (a worker that died under the forwarder is replaced so): in
        a thread of their own, so that the forwarder never waits for the GIL
        or the write lock to run them."""
        wake = self.checks_wake
        while not wake.wait(WAIT_SLICE_NS / 1e9):
            if self.forward_count and amdb_monotonic_ns() >= self.next_check_ns:
                try:
                    self._forwarder_checks()
                except Exception:
                    pass                   # a worker being replaced, say: the next interval retries

    def _forwarder_checks(self):
        try:
            # Never blocks for long: a close() holding the lock may be
            # waiting for this thread to stop (stop_forwarder).
            if self.write_lock.acquire(True, WAIT_SLICE_NS / 1e9):
                try:
                    if not self.att.closed and not self.forwarder_stop:
                        self.supervisor.before_write()
                finally:
                    self.write_lock.release()
        finally:
            if self.next_check_ns <= amdb_monotonic_ns():
                self.next_check_ns = amdb_monotonic_ns() + WAIT_SLICE_NS

    def _release_done_channels(self):
        cdef int i
        cdef list gone = []
        pthread_mutex_lock(&self.producer_mutex)
        for i in range(self.forward_count):
            if self.forwards[i].ch != NULL and self.forwards[i].done and self.forwards[i].closing:
                self.forwards[i].ch = NULL
                gone.append(self.forward_mappings.pop(i, None))   # under the mutex: add_channel may reuse i
        while self.forward_count and self.forwards[self.forward_count - 1].ch == NULL:
            self.forward_count -= 1
        pthread_mutex_unlock(&self.producer_mutex)
        if gone and self.on_channel_released is not None:
            self.on_channel_released(gone)    # by their Mappings: an entry may be reused already
        del gone                              # the mappings go here, outside the mutex

    cdef int _forward_pass(self, int *stuck, int *stuck_worker, uint64_t *stuck_bytes) noexcept nogil:
        """Send on what clients published, FORWARD_BUDGET records at most;
        ForwardResult flags. A malformed record breaks its channel (layout.h,
        "Client channels", point 2). The supervisor's periodic checks are
        run_forwarder_checks's, or the write lock holder's (forward_now)."""
        cdef int k, i, w, outcome, result = 0
        cdef int budget = FORWARD_BUDGET
        cdef Forward *f
        cdef amdb_ring_record *rec
        cdef const uint8_t *key
        cdef uint64_t head, tail, nbytes, h, seq
        cdef uint32_t op, key_len, value_len
        pthread_mutex_lock(&self.producer_mutex)
        if self.paused or self.att.closed or self.exclusive:
            pthread_mutex_unlock(&self.producer_mutex)
            return FWD_PAUSED
        for k in range(self.forward_count):
            i = (self.forward_next + k) % self.forward_count
            f = &self.forwards[i]
            if f.ch == NULL:
                continue
            if f.done:
                if f.closing:
                    result |= FWD_DONE       # still to let go (a pass of forward_now found it done)
                continue
            head = amdb_load_seqcst(&f.ch.head)
            tail = f.tail
            while tail != head and budget > 0:
                nbytes = channel_record(f.ring, f.capacity, tail, head, self.max_key_size, self.max_value_size,
                                        &op, &key_len, &value_len)
                if nbytes == 0:
                    f.ch.broken = 1
                    break
                if op == AMDB_OP_WRAP:
                    tail += nbytes
                    continue
                rec = <amdb_ring_record *>(f.ring + (tail & f.mask))
                if not self.async_enabled:
                    stuck[0] = i
                    result |= FWD_SYNC
                    break
                key = <const uint8_t *>(rec + 1)
                h = amdb_xxh64(key, key_len, 0)           # the client's hash is not trusted
                w = self.att.dbc.slot_owner[h & SLOT_MASK]
                outcome = self._solo_core(op, key, key_len, key + key_len, value_len, h, w, 0, &seq, &rec.hash)
                if outcome == SOLO_SENT:
                    f.ch.forwarded_chunk[w] = self.producers[w].chunks_published   # published by tail's release
                    tail += nbytes
                    budget -= 1
                    self.forwarded += 1
                    result |= FWD_SENT
                    continue
                stuck[0] = i
                if outcome == SOLO_SHORT:
                    stuck_worker[0] = w
                    stuck_bytes[0] = key_len + value_len
                    result |= FWD_SHORT
                else:
                    result |= FWD_SYNC
                break
            if tail != f.tail:
                f.tail = tail
                amdb_store_release(&f.ch.tail, tail)
                if amdb_load32_seqcst(&f.ch.client_waiting):
                    amdb_fetch_add32_seqcst(&f.ch.tail_event, 1)
                    amdb_futex_wake_all(&f.ch.tail_event)
            if f.ch.broken or (f.closing and tail == head):
                f.done = True
                result |= FWD_DONE
            if result & FWD_SYNC:
                break
        if self.forward_count:
            self.forward_next = (self.forward_next + 1) % self.forward_count
        pthread_mutex_unlock(&self.producer_mutex)
        return result

    cdef void _forwarder_sleep(self) noexcept nogil:
        """Nothing to send on: spin a little, then sleep until a client
        publishes (it wakes us: forward_event) or FORWARD_SLEEP_NS pass."""
        cdef amdb_db_control *dbc = self.att.dbc
        cdef uint32_t seen
        cdef int i, spin
        cdef bint pending = False
        for spin in range(AMDB_SPIN_STEPS + 1):
            pthread_mutex_lock(&self.producer_mutex)
            for i in range(self.forward_count):
                if (self.forwards[i].ch != NULL and not self.forwards[i].done
                        and amdb_load_seqcst(&self.forwards[i].ch.head) != self.forwards[i].tail):
                    pending = True
                    break
            pthread_mutex_unlock(&self.producer_mutex)
            if pending or self.forwarder_stop:
                break
            if spin == AMDB_SPIN_STEPS - 1:
                seen = amdb_load32_seqcst(&dbc.forward_event)
                amdb_store32_seqcst(&dbc.forwarder_sleeping, 1)   # then a last look (Dekker with the client)
            elif spin == AMDB_SPIN_STEPS:
                amdb_futex_wait(&dbc.forward_event, seen, FORWARD_SLEEP_NS)
            else:
                amdb_spin_step(spin)
        amdb_store32_seqcst(&dbc.forwarder_sleeping, 0)

    cdef int _forward_sync(self, int index) except -1:
        """The record at the tail of channel `index` could not go as a SOLO
        chunk (async writes off, /dev/shm full, the worker short even with
        nothing of ours left to apply): write it synchronously, as an owner's
        put would be. If that fails, the client's next write raises it
        (layout.h, "Client channels", point 3)."""
        cdef Forward *f = &self.forwards[index]
        cdef amdb_ring_record *rec
        cdef uint64_t nbytes, tail
        cdef bytes key, value
        cdef uint32_t op = 0, key_len = 0, value_len = 0
        if f.ch == NULL or f.done:
            return 0
        tail = f.tail
        # Checked again, as read now: the client's memory may have changed since the pass.
        nbytes = channel_record(f.ring, f.capacity, tail, amdb_load_seqcst(&f.ch.head), self.max_key_size,
                                self.max_value_size, &op, &key_len, &value_len)
        if nbytes == 0 or op == AMDB_OP_WRAP:
            f.ch.broken = 1
            return 0
        rec = <amdb_ring_record *>(f.ring + (tail & f.mask))
        key = PyBytes_FromStringAndSize(<char *>(rec + 1), key_len)
        value = PyBytes_FromStringAndSize(<char *>(rec + 1) + key_len, value_len)
        if not self.write_lock.acquire(True, WAIT_SLICE_NS / 1e9):
            return 0                       # the next pass comes back to it
        try:
            if (self.att.closed or self.forwarder_stop and amdb_monotonic_ns() > self.forward_deadline
                    or f.ch == NULL or f.tail != tail):
                return 0                   # taking the lock sent it on (forward_now)
            self._forward_sync_locked(f, op, key, value, &rec.hash)
        finally:
            self.write_lock.release()
        pthread_mutex_lock(&self.producer_mutex)
        if f.ch != NULL and f.tail == tail:
            f.tail = tail + nbytes
            amdb_store_release(&f.ch.tail, f.tail)
            amdb_fetch_add32_seqcst(&f.ch.tail_event, 1)
            amdb_futex_wake_all(&f.ch.tail_event)
        pthread_mutex_unlock(&self.producer_mutex)
        return 0

    cdef int _forward_sync_locked(self, Forward *f, uint32_t op, bytes key, bytes value,
                                  uint64_t *seq_mark) except -1:
        """What _write does under the write lock (which this thread holds:
        _write itself would refuse a re-entrant call). The channel record is
        marked with the seq its batch takes (_begin_batch: next_seq), as a
        SOLO chunk's is."""
        for attempt in range(2):
            try:
                self.exclusive += 1
                try:
                    self._sync_async()
                    self.supervisor.before_write()
                    amdb_store_release(seq_mark, self.next_seq)
                    if op == AMDB_OP_DELETE:
                        self._run_batch(DELETES, (key,))
                    else:
                        self._run_batch(PAIRS, ((key, value),))
                finally:
                    self.exclusive -= 1
                    self.invalidate_credit()
                break
            except WorkerCrashedError:
                if attempt:
                    f.ch.refused_status = AMDB_STATUS_TIMEOUT
                    f.ch.refused += 1
            except Error as exc:
                f.ch.refused_status = _status_of(exc)
                f.ch.refused += 1
                break
        return 0

    def invalidate_credit(self, int worker=-1):
        """Forget the cached credit (of `worker`, or of every worker): after a
        batch, a compaction or a new worker, the next async write rereads it."""
        cdef int w
        for w in range(self.att.nworkers):
            if worker < 0 or w == worker:
                self.credit_bytes[w] = 0
                self.credit_records[w] = 0

    def batch_put(self, items):
        """Write every (key, value) pair of `items` as one atomic batch; the BatchResult."""
        return self._write("batch_put", PAIRS, items)

    def batch_delete(self, keys):
        """Delete every key of `keys` as one atomic batch; the BatchResult."""
        return self._write("batch_delete", DELETES, keys)

    def put_arrays(self, keys, Py_ssize_t key_width, bint strip_keys,
                   values, Py_ssize_t value_width, bint strip_values, Py_ssize_t n):
        """n fixed-width keys and values from flat uint8 buffers (ParallelDB.put_array)."""
        if key_width > <Py_ssize_t>self.max_key_size:
            raise KeyTooLargeError(f"keys of {key_width} bytes exceed max_key_size={self.max_key_size}")
        if value_width > <Py_ssize_t>self.max_value_size:
            raise ValueTooLargeError(f"values of {value_width} bytes exceed max_value_size={self.max_value_size}")
        return self._write("put_array", ARRAYS, (keys, key_width, strip_keys, values, value_width, strip_values, n))

    def put_packed(self, const uint8_t[::1] keys, const int64_t[::1] key_offsets,
                   const uint8_t[::1] values, const int64_t[::1] value_offsets):
        """Item i is keys[key_offsets[i]:key_offsets[i+1]] and the same of values."""
        cdef Py_ssize_t i, n = key_offsets.shape[0] - 1
        # Validate every offset before anything is packed, by comparisons only:
        # a difference of two int64 offsets can overflow (and wrap to a small length).
        for i in range(n):
            if key_offsets[i] < 0 or key_offsets[i] > key_offsets[i + 1] or key_offsets[i + 1] > keys.shape[0] \
                    or value_offsets[i] < 0 or value_offsets[i] > value_offsets[i + 1] \
                    or value_offsets[i + 1] > values.shape[0]:
                raise InvalidArgumentError(f"put_packed: offsets of item {i} are out of order or out of bounds")
        return self._write("put_packed", PACKED, (keys, key_offsets, values, value_offsets))

    # ---- write_batch(): a batch streamed from the caller's code (batch.pyx) ---------

    def open_stream(self):
        """Begin a batch that the caller fills record by record (WriteBatch):
        the guard, the write lock (held until close_stream), the async
        writes settled, the supervisor's checks, the batch begun."""
        self._check_writable()
        self.write_lock.acquire()
        try:
            self.att.check_open()
            self.exclusive += 1
            try:
                self._sync_async()
                self._raise_async_error()
                self.supervisor.before_write()
                self._begin_batch()
            except BaseException:
                self.exclusive -= 1
                raise
        except BaseException:
            self.write_lock.release()
            raise

    cdef int stream_record(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                           const uint8_t *value, uint64_t value_len) except -1:
        """One record of the open stream (REQUIRES open_stream by this thread)."""
        return self._append_record(op, key, key_len, value, value_len, 0)

    def close_stream(self, bint commit):
        """End the stream: make it visible whole (commit) or roll it back
        whole, then let go of the write lock. Returns the BatchResult (None
        when rolled back)."""
        result = None
        try:
            if commit:
                try:
                    result = self._finish_batch()
                except BaseException:
                    self._abort_batch()
                    raise
                if self.audit is not None:
                    self.audit.write_op("write_batch", result.count, result.first_seq, result.last_seq,
                                        result.key_digest)
            else:
                self._abort_batch()
        finally:
            self.exclusive -= 1
            self.invalidate_credit()
            self.write_lock.release()
        return result

    def write_routed(self, ops):
        """One atomic batch of (worker, key, value or None for a delete), each
        record sent to the given worker whatever the slot table says. For
        moving slots between workers (ParallelDB reopened with another count).
        REQUIRES the write lock."""
        self.att.check_open()
        return self._run_batch(ROUTED, ops)

    cdef object _write(self, str name, int source, object data):
        """The one entry of every public write: the guard, the lock, the
        supervisor's checks, the batch, the audit record."""
        self._check_writable()
        with self.write_lock:
            self.att.check_open()
            self.exclusive += 1
            try:
                self._sync_async()       # a batch never covers an async write still in a ring
                self._raise_async_error()
                self.supervisor.before_write()
                result = self._run_batch(source, data)
            finally:
                self.exclusive -= 1
                self.invalidate_credit()
            if self.audit is not None:
                self.audit.write_op(name, result.count, result.first_seq, result.last_seq, result.key_digest)
            return result

    cdef object _run_batch(self, int source, object data):
        """Pack `data` as one batch and finish it, or abort it whole."""
        self._begin_batch()              # settles earlier aborts; raises before anything is sent
        try:
            if source == PAIRS:
                self._pack_pairs(data)
            elif source == DELETES:
                self._pack_deletes(data)
            elif source == ARRAYS:
                self._pack_arrays(data[0], data[1], data[2], data[3], data[4], data[5], data[6])
            elif source == PACKED:
                self._pack_packed(data[0], data[1], data[2], data[3])
            elif source == RMW:
                self._pack_rmw(data[0], data[1], data[2], data[3])
            else:
                self._pack_routed(data)
            return self._finish_batch()
        except BaseException:
            self.forced_worker = -1
            self._abort_batch()
            raise

    # ---- packers: one per kind of source ----------------------------------------

    cdef int _pack_pairs(self, items) except -1:
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        cdef Py_ssize_t kl, vl
        cdef Py_buffer kview, vview
        cdef bint kheld = False, vheld = False
        cdef object key, value
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
                    self._append_record(AMDB_OP_PUT, kp, kl, vp, vl, 0)
                finally:
                    if vheld:
                        PyBuffer_Release(&vview)
            finally:
                if kheld:
                    PyBuffer_Release(&kview)
        return 0

    cdef int _pack_deletes(self, keys) except -1:
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer kview
        cdef bint kheld = False
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
                self._append_record(AMDB_OP_DELETE, kp, kl, NULL, 0, 0)
            finally:
                if kheld:
                    PyBuffer_Release(&kview)
        return 0

    cdef int _pack_arrays(self, const uint8_t[::1] keys, Py_ssize_t key_width, bint strip_keys,
                          const uint8_t[::1] values, Py_ssize_t value_width, bint strip_values,
                          Py_ssize_t n) except -1:
        cdef Py_ssize_t i, kl, vl
        cdef const uint8_t *kp
        cdef const uint8_t *vp
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
            self._append_record(AMDB_OP_PUT, kp, kl, vp, vl, 0)
        return 0

    cdef int _pack_packed(self, const uint8_t[::1] keys, const int64_t[::1] key_offsets,
                          const uint8_t[::1] values, const int64_t[::1] value_offsets) except -1:
        """REQUIRES offsets checked (put_packed)."""
        cdef Py_ssize_t i, n = key_offsets.shape[0] - 1
        cdef const uint8_t *kbase = &keys[0] if keys.shape[0] else <const uint8_t *>""
        cdef const uint8_t *vbase = &values[0] if values.shape[0] else <const uint8_t *>""
        for i in range(n):
            self._append_record(AMDB_OP_PUT, kbase + key_offsets[i], key_offsets[i + 1] - key_offsets[i],
                                vbase + value_offsets[i], value_offsets[i + 1] - value_offsets[i], 0)
        return 0

    cdef int _pack_routed(self, ops) except -1:
        cdef int worker
        for worker, key, value in ops:
            if not 0 <= worker < self.att.nworkers or not isinstance(key, bytes):
                raise InvalidArgumentError(f"bad routed record for worker {worker}")
            self.forced_worker = worker
            if value is None:
                self._append_record(AMDB_OP_DELETE, <const uint8_t *>PyBytes_AS_STRING(key), len(key), NULL, 0, 0)
            else:
                self._append_record(AMDB_OP_PUT, <const uint8_t *>PyBytes_AS_STRING(key), len(key),
                                    <const uint8_t *>PyBytes_AS_STRING(value), len(value), 0)
        self.forced_worker = -1
        return 0

    # ---- the rings ----------------------------------------------------------------

    cdef int _wait_space(self, int worker, uint64_t nbytes) except -1:
        cdef RingProducer *r = &self.producers[worker]
        cdef int status
        while True:
            with nogil:
                status = ring_wait_space(r, nbytes, WAIT_SLICE_NS)
            if status == AMDB_STATUS_OK:
                return 0
            PyErr_CheckSignals()
            self.supervisor.check_worker(worker)

    cdef uint64_t _reserve(self, int worker, uint64_t nbytes) except? 0:
        cdef RingProducer *r = &self.producers[worker]
        cdef uint64_t offset, need = nbytes
        if ring_commit_ahead(r, nbytes) != 0:
            raise ArenaFullError(f"/dev/shm cannot hold more of worker {worker}'s ring ({shm_usage()})",
                                 code="shm_full", hint=SHM_FULL_HINT)
        offset = r.head & r.mask
        if offset + nbytes > r.wrap_at:
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

    cdef int _append_record(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                            const uint8_t *value, uint64_t value_len, uint32_t ticket) except -1:
        """Append one record to its worker's open chunk (`ticket`: a
        read-modify-write's result ticket, layout.h)."""
        cdef uint64_t h, nbytes, pos
        cdef int worker
        cdef RingProducer *r
        if key_len > self.max_key_size:
            raise KeyTooLargeError(f"key of {key_len} bytes exceeds max_key_size={self.max_key_size}")
        if value_len > self.max_value_size:
            raise ValueTooLargeError(f"value of {value_len} bytes exceeds max_value_size={self.max_value_size}")
        h = amdb_xxh64(key, key_len, 0)
        # Order-sensitive digest of the batch's keys, for the audit log.
        self.batch_key_digest = ((self.batch_key_digest << 5) | (self.batch_key_digest >> 59)) ^ h
        worker = self.att.dbc.slot_owner[h & SLOT_MASK] if self.forced_worker < 0 else self.forced_worker
        r = &self.producers[worker]
        nbytes = amdb_record_bytes(<uint32_t>key_len, <uint32_t>value_len)
        # A chunk holds at most a quarter of the ring's committed part (of the
        # ring once all of it is): a bigger unpublished chunk could need, after
        # an early wrap, the room its own start holds (ring.pyx, invariant 4).
        if r.chunk_open and (r.chunk_count >= r.chunk_limit
                             or r.chunk_bytes + nbytes > min(self.chunk_byte_cap, r.wrap_at // 4)):
            self._close_chunk(worker)
        if not r.chunk_open:
            self._open_chunk(worker)
        pos = self._reserve(worker, nbytes)
        fill_record(<amdb_ring_record *>ring_at(r.ring, r.mask, pos), op, key, key_len, value, value_len, h, nbytes,
                    ticket)
        r.chunk_count += 1
        r.chunk_bytes += nbytes
        r.batch_records += 1
        return 0

    cdef int _begin_batch(self) except -1:
        cdef int i
        self._settle_aborts()
        for i in range(self.att.nworkers):
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
        cdef amdb_control *c = self.att.parts[worker].ctrl
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
            self.supervisor.check_worker(worker)

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
        self.att.check_open()
        self._settle_aborts()
        seq = amdb_load_acquire(&self.att.dbc.visible_seq)
        for i in range(self.att.nworkers):
            r = &self.producers[i]
            self._send_control(i, op, seq, count)
            r.batch_first_chunk = r.last_chunk_sent
        failed = []
        for i in range(self.att.nworkers):
            r = &self.producers[i]
            if self._wait_progress(i, r.last_chunk_sent, 0) == WAIT_FAILED:
                failed.append((i, amdb_load_relaxed(&r.ctrl.failed_status)))
        return seq, failed

    def checkpoint_workers(self, bint wait=True):
        """Have every worker begin a checkpoint as of the newest batch (each
        writes it in the background: wal.pyx) and, with `wait`, wait until
        every one is written. REQUIRES the write lock (a batch boundary).
        Returns [(worker, status)] of the workers that failed."""
        cdef int i
        seq, failed = self._broadcast_control(AMDB_OP_CHECKPOINT, 0)
        if not wait:
            return failed
        return failed + self.wait_checkpoints(seq, skip={w for w, _ in failed})

    def wait_checkpoints(self, uint64_t seq, skip=()):
        """Wait until every worker (but those in `skip`) ended its background
        checkpoint of `seq`; returns [(worker, status)] of those that failed.
        Needs no write lock: writes go on meanwhile."""
        cdef int i
        failed = []
        for i in range(self.att.nworkers):
            if i not in skip:
                status = self._wait_checkpoint(i, seq)
                if status != AMDB_STATUS_OK:
                    failed.append((i, status))
        return failed

    cdef uint64_t _wait_checkpoint(self, int worker, uint64_t seq) except? 0xffffffffffffffff:
        """Wait until `worker`'s background checkpoint of `seq` ended;
        returns its AMDB_STATUS_*. A worker that dies meanwhile raises
        (check_worker, when the write lock is free or ours; a thread that
        holds it checks in its own waits): its checkpoint is lost, its log
        holds everything."""
        cdef int slot
        # Registered as a reader, as _wait_room: this wait holds no write
        # lock, so close() in another thread (the exit handler, say) could
        # otherwise unmap the control block under it.
        slot = self.att.enter_read()
        try:
            return self._wait_checkpoint_registered(worker, seq)
        finally:
            self.att.leave_read(slot)

    cdef uint64_t _wait_checkpoint_registered(self, int worker, uint64_t seq) except? 0xffffffffffffffff:
        cdef amdb_control *c = self.att.parts[worker].ctrl
        cdef uint64_t incarnation = amdb_load_relaxed(&c.incarnation)
        cdef uint32_t seen
        cdef bint done = False
        while True:
            if amdb_load_relaxed(&c.incarnation) != incarnation:
                # Replaced: the checkpoint died with its worker (its log holds everything).
                return AMDB_STATUS_TIMEOUT
            with nogil:
                seen = progress_prepare_wait(c)
                if amdb_load_acquire(&c.checkpoint_done) >= seq:
                    done = True
                    amdb_store32_seqcst(&c.owner_waiting, 0)
                else:
                    progress_sleep(c, seen, WAIT_SLICE_NS)
            if done or amdb_load_acquire(&c.checkpoint_done) >= seq:
                return amdb_load_relaxed(&c.checkpoint_status)
            PyErr_CheckSignals()
            if self.att.closed:
                raise ClosedError("the database was closed while a checkpoint was being written")
            self._check_worker_if_lock_free(worker)

    def compact_workers(self, uint64_t keep, uint64_t horizon):
        """Have every worker write its next arena generation keeping the newest
        `keep` versions of each key (0: all), and every version a read as of
        seq `horizon` needs (a snapshot or iterator still open), wait for all of them, and point
        this process's readers at the generations they switched to.
        REQUIRES the write lock (a batch boundary) and an empty target region
        in every partition (ParallelDB punches the retired ones out).
        Returns (seq, [(worker, status)] of the workers that failed). The
        regions left behind may be given back once the readers of the read
        epoch before it are gone (_wait_readers; ParallelDB._compact_locked)."""
        cdef int i
        for i in range(self.att.nworkers):
            # Plain store, ordered before the COMPACT record by its publication (release).
            self.att.parts[i].ctrl.compact_horizon = horizon
        try:
            return self._broadcast_control(AMDB_OP_COMPACT, keep)
        finally:
            # Also when a wait raised (a worker died, and its successor
            # finished the switch): the workers that did switch no longer
            # write their old region.
            self.att.adopt_regions()
            self.att.refresh_len()

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
        for i in range(self.att.nworkers):
            if self.producers[i].chunk_open:
                self._close_chunk(i)
            if self.producers[i].batch_chunks:
                participants += 1
        if self.durable and participants:
            # wal.h, invariants 2-3: the batch is acknowledged only once every
            # worker in it has logged its COMMIT.
            for i in range(self.att.nworkers):
                if self.producers[i].batch_chunks:
                    self._send_control(i, AMDB_OP_COMMIT, self.batch_seq, participants)
        for i in range(self.att.nworkers):
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
            return BatchResult(0, 0, 0, 0, [0] * self.att.nworkers, 0)
        # Release (seq_cst): every worker's versions of the batch happen-before
        # any reader that acquires the new watermark. A CAS-max: readers raise
        # it over async writes too (_sync_async).
        amdb_fetch_max_seqcst(&self.att.dbc.visible_seq, self.batch_seq)
        self._end_batch_seq()
        self.att.refresh_len()
        return BatchResult(count, self.batch_seq, self.batch_seq, chunks,
                           [self.producers[i].batch_records for i in range(self.att.nworkers)],
                           self.batch_key_digest)

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
        for i in range(self.att.nworkers):
            r = &self.producers[i]
            if r.chunk_open:
                r.head = amdb_load_relaxed(&r.ctrl.ring_head)   # our own last publication
                r.chunk_open = False
            if r.batch_chunks:
                r.abort_to_send = self.batch_seq
                r.batch_chunks = 0
        # The seq is not used up: the next batch reuses it once every rollback
        # is acknowledged (_settle_aborts), so seqs count committed batches
        # and a failed attempt leaves no trace in seqs or in the ledger.
        self.batch_used_seq = False
        for i in range(self.att.nworkers):
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
        ring_commit_ahead(r, need)        # settles wrap_at (a failure raises in _reserve below)
        if (r.head & r.mask) + need > r.wrap_at:
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
        for i in range(self.att.nworkers):
            if self.producers[i].abort_to_send:
                self.supervisor.check_worker(i)
                self._send_abort(i, True)
        for i in range(self.att.nworkers):
            r = &self.producers[i]
            if r.abort_to_ack:
                self.supervisor.check_worker(i)
                self._wait_progress(i, 0, r.abort_to_ack)
                r.abort_to_ack = 0
        return 0

    # ---- what the supervisor asks of the rings ------------------------------------

    def set_slot_owner(self, table):
        """Replace the slot table. REQUIRES the write lock and no reader yet
        (ParallelDB does it while opening, before anyone has the object)."""
        cdef int slot
        self.att.check_open()
        if len(table) != SLOT_COUNT or any(not 0 <= w < self.att.nworkers for w in table):
            raise InvalidArgumentError("a slot table maps 16384 slots to workers")
        for slot in range(SLOT_COUNT):
            self.att.dbc.slot_owner[slot] = <uint16_t>table[slot]


    def quiesce(self):
        """REQUIRES the write lock: settle pending rollbacks, so that the
        arenas hold exactly the committed batches."""
        self._settle_aborts()


    def take_over_ring(self, int worker, uint64_t incarnation, bint resume):
        """Worker `worker` is dead: prepare its ring and control block for a
        successor. With resume (it died between records, or inside a SOLO
        chunk it must apply again) the successor starts at ring_tail and
        carries on, so every record
        still in the ring, and every rollback owed, is applied as if nothing
        happened. Otherwise whatever the dead worker had not released belongs
        to the batch in flight, which is rolled back (its successor undoes its
        part, the owner raises), so the successor starts at the published head.
        REQUIRES: the write lock, and no live worker on this ring (the owner
        writes the worker's fields only while nobody else can)."""
        cdef RingProducer *r = &self.producers[worker]
        cdef amdb_control *c = r.ctrl
        cdef uint64_t head = amdb_load_relaxed(&c.ring_head)
        self.att.check_open()
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

