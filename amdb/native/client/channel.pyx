# cython: language_level=3
"""The writes of an attached client (amdb/attach.py): put() and delete()
through its channel (layout.h, "Client channels"), at native speed and
without waiting, as the owner's own async single writes; every other write
runs in the owner, asked over the attach socket (attach.WRITE_CALLS), after
what the channel holds was sent on (so a client's writes keep their order).

Who calls it: amdb.db.ParallelDB of a writing client (its put and delete are
this class's own, bound at attach).

Shared memory: the client is the only writer of its channel's ring bytes and
of `head` and `client_waiting`; it reads `tail`, `broken`, `refused` (the
owner's forwarder writes them), and wakes the forwarder through the
database control block (forward_event, when forwarder_sleeping).

Process safety: one thread at a time fills the channel: the one holding
the GIL from its room check to its publication (_send). A client killed at
any instruction leaves at worst a record it had not published: the
forwarder never sees it; everything published before is sent on.
"""
from cpython.buffer cimport PyBuffer_Release
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping
from amdb.native.hashing cimport amdb_xxh64
from amdb.native.client.attachment cimport Attachment
from amdb.native.client.keys cimport bytes_view

from amdb.errors import Error, KeyTooLargeError, OwnerGoneError, ValueTooLargeError, raise_for_status

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1

cdef enum:
    WAIT_SLICE_NS = 50000000      # a wait for room checks the owner and Ctrl-C this often


cdef class ClientWriter:
    """put() and delete() through the channel; the rest through `link`
    (attach.ClientLink.call)."""
    cdef Attachment att
    cdef object link
    cdef object mapping               # the channel's Mapping: kept while this writer lives
    cdef amdb_channel *ch
    cdef char *ring
    cdef uint64_t capacity
    cdef uint64_t mask
    cdef uint64_t head                # what this client published (ch.head is its publication)
    cdef uint64_t cached_tail
    cdef uint64_t refused_seen        # ch.refused as of the last error raised for it
    cdef readonly uint64_t max_key_size
    cdef readonly uint64_t max_value_size
    cdef uint64_t reported[AMDB_MAX_WORKERS]  # per worker: the refused chunk flush() raised for last
    # False where a put must be durable before it returns (sync="batch"), as
    # the owner's own are: then every write is run by the owner.
    cdef readonly bint async_puts

    def __cinit__(self, Attachment att, Mapping mapping, link, uint64_t max_key_size, uint64_t max_value_size,
                  bint async_puts=True):
        cdef amdb_channel *ch = <amdb_channel *>mapping.base
        if ch.magic != AMDB_CHANNEL_MAGIC or ch.capacity & (ch.capacity - 1) or ch.capacity < 4096:
            raise Error("the owner handed over a channel this client cannot read", code="attach_refused")
        self.att = att
        self.link = link
        self.mapping = mapping
        self.ch = ch
        self.ring = mapping.base + AMDB_CONTROL_BYTES
        self.capacity = ch.capacity
        self.mask = ch.capacity - 1
        self.head = amdb_load_relaxed(&ch.head)
        self.cached_tail = amdb_load_acquire(&ch.tail)
        self.refused_seen = amdb_load_acquire(&ch.refused)
        self.max_key_size = max_key_size
        self.max_value_size = max_value_size
        self.async_puts = async_puts
        att.set_channel(mapping)

    # ---- put and delete: through the channel ---------------------------------------

    def put(self, key, value):
        """Store `value` under `key`: in the channel, acknowledged at once (the
        owner sends it on even if this process dies next); reads of this
        process see it (they wait for the owner to have sent it on)."""
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        cdef Py_ssize_t kl, vl
        cdef Py_buffer kview, vview
        cdef bint kheld = False, vheld = False, sent = False
        bytes_view(key, &kp, &kl, &kview, &kheld, "key")
        try:
            bytes_view(value, &vp, &vl, &vview, &vheld, "value")
            try:
                sent = self._send(AMDB_OP_PUT, kp, kl, vp, vl)
            finally:
                if vheld:
                    PyBuffer_Release(&vview)
        finally:
            if kheld:
                PyBuffer_Release(&kview)
        if not sent:
            self.call("put", key, value)

    def delete(self, key):
        """Delete `key` (through the channel, as put)."""
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer kview
        cdef bint kheld = False, sent = False
        bytes_view(key, &kp, &kl, &kview, &kheld, "key")
        try:
            sent = self._send(AMDB_OP_DELETE, kp, kl, NULL, 0)
        finally:
            if kheld:
                PyBuffer_Release(&kview)
        if not sent:
            self.call("delete", key)

    cdef bint _send(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                    const uint8_t *value, uint64_t value_len) except -1:
        """Publish one record; False when it is too big for the channel (the
        owner then runs the write). Raises, before anything is written, for
        a key or value over the limits, a closed database, a gone owner, or
        an earlier write the owner could not apply."""
        cdef uint64_t nbytes, offset, need
        cdef amdb_ring_record *rec
        cdef uint8_t *out
        self._check_own()
        if key_len > self.max_key_size:
            raise KeyTooLargeError(f"key of {key_len} bytes exceeds max_key_size={self.max_key_size}")
        if value_len > self.max_value_size:
            raise ValueTooLargeError(f"value of {value_len} bytes exceeds max_value_size={self.max_value_size}")
        self._check_refused()
        nbytes = amdb_record_bytes(<uint32_t>key_len, <uint32_t>value_len)
        if nbytes > self.capacity // 4 or not self.async_puts:
            return False
        # One producer at a time: this thread holds the GIL from the room
        # check to the publication. Only _wait_room lets it go; the room is
        # then checked again, from the head as other threads left it.
        while True:
            offset = self.head & self.mask
            need = nbytes + (self.capacity - offset if offset + nbytes > self.capacity else 0)
            if self.capacity - (self.head - self.cached_tail) >= need:
                break
            self.cached_tail = amdb_load_acquire(&self.ch.tail)
            if self.capacity - (self.head - self.cached_tail) >= need:
                break
            self._wait_room(need)
        if offset + nbytes > self.capacity:
            (<uint32_t *>(self.ring + offset))[0] = AMDB_OP_WRAP
            self.head += self.capacity - offset
            offset = 0
        rec = <amdb_ring_record *>(self.ring + offset)
        rec.op = op
        rec.key_len = <uint32_t>key_len
        rec.value_len = <uint32_t>value_len
        rec.reserved = 0
        rec.hash = 0                  # not sent on yet (the forwarder hashes the key itself)
        out = <uint8_t *>(rec + 1)
        if key_len:
            memcpy(out, key, key_len)
        if value_len:
            memcpy(out + key_len, value, value_len)
        memset(out + key_len + value_len, 0, nbytes - sizeof(amdb_ring_record) - key_len - value_len)
        self.head += nbytes
        # Published (seq_cst: ordered before the load of forwarder_sleeping,
        # which the forwarder stores before its last look: Dekker).
        amdb_store_seqcst(&self.ch.head, self.head)
        if amdb_load32_seqcst(&self.att.dbc.forwarder_sleeping):
            amdb_fetch_add32_seqcst(&self.att.dbc.forward_event, 1)
            amdb_futex_wake_all(&self.att.dbc.forward_event)
        if amdb_load_seqcst(&self.ch.closed):
            # The owner is closing: its last pass may have missed this
            # record (layout.h, "Client channels", point 4). Not acknowledged.
            raise OwnerGoneError("the owner closed the database while this write was being sent: it may "
                                 "not have been applied", hint="reopen the database and check")
        return True

    cdef int _check_own(self) except -1:
        """Open, and this process's: a forked child of a client has no
        channel of its own (Attachment.became_foreign took it away)."""
        if self.att.closed:
            raise self.att.closed_error()
        if self.att.channel == NULL:
            # A forked child gets here only through a method of its parent's
            # looked up before the fork (db.py, "forked children").
            raise Error("this method belongs to the parent process's channel; a forked child cannot write "
                        "through it", code="forked",
                        hint="call it on the database object in the child (db.put(...)): its first write "
                             "attaches the child to the owner")
        if amdb_load_seqcst(&self.ch.closed):
            raise OwnerGoneError("the owner closed the database: this client can no longer write",
                                 hint="reopen the database")
        return 0

    cdef int _wait_room(self, uint64_t need) except -1:
        """The channel is full: wait until the forwarder sent enough on."""
        cdef uint32_t seen
        cdef amdb_channel *ch = self.ch
        while True:
            with nogil:
                seen = amdb_load32_seqcst(&ch.tail_event)
                amdb_store32_seqcst(&ch.client_waiting, 1)
                self.cached_tail = amdb_load_acquire(&ch.tail)
                if self.capacity - (self.head - self.cached_tail) < need:
                    amdb_futex_wait(&ch.tail_event, seen, WAIT_SLICE_NS)
                    self.cached_tail = amdb_load_acquire(&ch.tail)
                amdb_store32_seqcst(&ch.client_waiting, 0)
            if self.capacity - (self.head - self.cached_tail) >= need:
                return 0
            PyErr_CheckSignals()
            if self.att.closed:
                raise self.att.closed_error()
            if amdb_load32_seqcst(&ch.broken):
                self.att.drain_channel()      # raises what broke it

    cdef int _check_refused(self) except -1:
        """Raise what the owner could not apply of this client's acknowledged
        writes since the last time (layout.h, "Client channels", point 3)."""
        cdef uint64_t refused = amdb_load_acquire(&self.ch.refused)
        cdef uint64_t count = refused - self.refused_seen
        if count == 0:
            return 0
        self.refused_seen = refused
        raise_for_status(<int>amdb_load_relaxed(&self.ch.refused_status),
                         f"{count} async write(s) of this client that had returned could not be applied "
                         "by the owner")

    # ---- everything else: run by the owner -----------------------------------------

    def call(self, str name, *args, **kwargs):
        """Run the database's method `name` in the owner (attach.WRITE_CALLS),
        once every write published in the channel is sent on: its result."""
        self._check_own()
        self.att.drain_channel()
        self._check_refused()
        return self.link.call(name, args, kwargs, self.att)

    def flush(self):
        """Wait until every write of this client so far is applied and
        visible to every read; raise the error of one the owner could not
        apply."""
        cdef int w
        cdef uint64_t target
        cdef amdb_control *c
        if self.att.channel == NULL:
            return                         # a forked child: none of these writes are its own
        self.att.check_open()
        self.att.enter_foreign(-1)         # drains the channel, then catches up on every worker
        try:
            self._check_refused()
            # A record a worker refused after it was sent on (layout.h,
            # "Client channels", point 3): the last one sent to it not
            # applied, while its refusals reached it.
            for w in range(self.att.nworkers):
                target = amdb_load_relaxed(&self.ch.forwarded_chunk[w])
                c = self.att.parts[w].ctrl
                if (target > self.reported[w] and amdb_load_acquire(&c.applied_chunk) < target
                        and amdb_load_acquire(&c.failed_chunk) >= target):
                    self.reported[w] = target
                    raise_for_status(<int>amdb_load_relaxed(&c.failed_status),
                                     f"an async write of this client to worker {w} that had returned was refused")
        finally:
            self.att.leave_foreign()

    def increment(self, key, delta=1, *, initial=0, wait=True):
        result = self.call("increment", key, delta, initial=initial, wait=True)
        return result if wait else None

    def put_if_absent(self, key, value):
        return self.call("put_if_absent", key, value)

    def compare_and_set(self, key, expected, new):
        return self.call("compare_and_set", key, expected, new)

    def enter_exclusive(self, str what):
        """The guard of the database's other writes: a writing client runs
        them in the owner (ParallelDB binds them to call)."""
        self._check_own()
        return None
