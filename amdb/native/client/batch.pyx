# cython: language_level=3
"""db.write_batch(): mixed puts and deletes streamed into the rings as the
caller makes them, made visible whole at the end, or rolled back whole.

    with db.write_batch() as wb:
        wb.put(k, v)
        wb.delete(k2)

Who calls it: amdb.db.ParallelDB.write_batch. It holds the database's write
lock from the start of the block to its end (Writer.open_stream /
close_stream): other threads' writes wait meanwhile, and a write of the
block's own thread through the database (db.put inside the block) is a
re-entrant call: it raises, and the batch fails. Each wb.put / wb.delete is
one native call that copies the record into its worker's ring and keeps no
Python object: a batch of ten million records is bounded in memory by the
rings (a full ring waits for its worker).

Shared memory: through the Writer only (the ring producer).
"""
from cpython.buffer cimport PyBuffer_Release
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING
from amdb.shm.layout cimport (AMDB_OP_PUT, AMDB_OP_DELETE, AMDB_OP_INCREMENT, AMDB_OP_PUT_IF_ABSENT,
                              AMDB_OP_COMPARE_AND_SET)
from amdb.native.client.writer cimport Writer
from amdb.native.client.keys cimport bytes_view, as_key
from amdb.native.client.writer import increment_argument, compare_and_set_argument

from amdb.errors import InvalidArgumentError, ValueTooLargeError

cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident()


cdef class WriteBatch:
    """A batch the caller fills (see the module docstring). Use it as a
    context manager, or call write() (or discard()) once done."""
    cdef Writer writer
    cdef unsigned long thread
    cdef readonly bint open
    cdef readonly uint64_t count
    cdef readonly object result

    def __cinit__(self, Writer writer):
        self.writer = writer
        writer.open_stream()
        self.thread = PyThread_get_thread_ident()
        self.open = True

    cdef int _check(self) except -1:
        if not self.open:
            raise InvalidArgumentError("this write batch is already written or discarded",
                                       hint="start a new one: db.write_batch()")
        if PyThread_get_thread_ident() != self.thread:
            raise InvalidArgumentError("a write batch is filled by the thread that began it",
                                       hint="give each thread its own db.write_batch()")
        return 0

    def put(self, key, value):
        """Add a put of `value` under `key` (bytes-like) to the batch."""
        cdef const uint8_t *kp
        cdef const uint8_t *vp
        cdef Py_ssize_t kl, vl
        cdef Py_buffer kview, vview
        cdef bint kheld = False, vheld = False
        self._check()
        bytes_view(key, &kp, &kl, &kview, &kheld, "key")
        try:
            bytes_view(value, &vp, &vl, &vview, &vheld, "value")
            try:
                self.writer.stream_record(AMDB_OP_PUT, kp, kl, vp, vl)
            finally:
                if vheld:
                    PyBuffer_Release(&vview)
        finally:
            if kheld:
                PyBuffer_Release(&kview)
        self.count += 1

    def delete(self, key):
        """Add a delete of `key` to the batch (a missing key: nothing happens)."""
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer kview
        cdef bint kheld = False
        self._check()
        bytes_view(key, &kp, &kl, &kview, &kheld, "key")
        try:
            self.writer.stream_record(AMDB_OP_DELETE, kp, kl, NULL, 0)
        finally:
            if kheld:
                PyBuffer_Release(&kview)
        self.count += 1

    # Read-modify-write in a batch (layout.h, "Read-modify-write"): resolved by
    # the worker when it applies the batch, after the batch's earlier writes
    # of the same key. A condition that fails (or an increment of a value
    # that is no counter, or that overflows) rolls the whole batch back, and
    # write() raises (ConditionFailedError for a condition). They return None:
    # read the keys once the batch is written.

    def increment(self, key, delta=1, *, initial=0):
        """Add an increment of the counter under `key` (see db.increment)."""
        self._rmw(AMDB_OP_INCREMENT, key, increment_argument(delta, initial))

    def put_if_absent(self, key, value):
        """Add a put that requires `key` to be absent when the batch applies."""
        self._rmw(AMDB_OP_PUT_IF_ABSENT, key, as_key(value, "value"))

    def compare_and_set(self, key, expected, new):
        """Add a put of `new` that requires `key` to hold `expected` (None:
        to be absent) when the batch applies."""
        self._rmw(AMDB_OP_COMPARE_AND_SET, key, compare_and_set_argument(expected, new))

    cdef int _rmw(self, uint32_t op, key, bytes argument) except -1:
        cdef bytes k
        self._check()
        k = as_key(key, "key")
        if <uint64_t>len(argument) > self.writer.max_value_size:
            raise ValueTooLargeError(f"the record needs {len(argument)} bytes, more than max_value_size="
                                     f"{self.writer.max_value_size}")
        self.writer.stream_record(op, <const uint8_t *>PyBytes_AS_STRING(k), len(k),
                                  <const uint8_t *>PyBytes_AS_STRING(argument), len(argument))
        self.count += 1
        return 0

    def write(self):
        """Make the batch visible, whole; returns its BatchResult."""
        self._check()
        self.open = False
        self.result = self.writer.close_stream(True)
        return self.result

    def discard(self):
        """Roll the batch back: nothing of it is kept (idempotent)."""
        if self.open:
            self._check()
            self.open = False
            self.writer.close_stream(False)

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

    def __dealloc__(self):
        # Dropped without write() or discard() (no `with`): roll it back, so
        # that the write lock goes. Only the thread that holds the lock can;
        # dropped elsewhere, the batch stays open until that thread ends.
        if self.open and PyThread_get_thread_ident() == self.thread:
            self.open = False
            try:
                self.writer.close_stream(False)
            except BaseException:
                pass
