# cython: language_level=3
"""The arena readers (reader.pyx)."""
from libc.stdint cimport uint8_t, uint64_t
from amdb.native.client.attachment cimport Attachment
from amdb.native.client.writer cimport Writer


cdef class Reader:
    cdef Attachment att
    cdef Writer writer

    cdef uint64_t _lookup(self, const uint8_t *key, uint64_t key_len, uint64_t h, int worker, uint64_t visible,
                          const char **arena_out) noexcept nogil
    cdef bint _key_pending(self, int worker, uint64_t h) noexcept
    cdef int _wait_own_writes(self, int worker, Py_buffer *view, bint held) except -1
    cdef int _sync_own_writes(self) except -1
    cdef object _get_foreign(self, key, const uint8_t *kp, Py_ssize_t kl, Py_buffer *view, bint held, default)
    cdef object _get_held(self, Py_buffer *view, uint64_t version_off, const char *arena, default)
    cdef uint64_t _limit_seq(self, at_seq) except? 0
    cdef uint64_t _find_node(self, const uint8_t *key, uint64_t key_len, int *worker_out,
                             const char **arena_out) noexcept nogil
    cdef uint64_t _chain_of(self, bytes key, int *worker, const char **arena) except? 0
    cdef object _versioned_walk(self, bytes key, default, version, at_seq, uint64_t wanted, uint64_t limit)
    cdef void _lookup_many(self, Py_ssize_t n, const uint8_t **keys, uint64_t *lengths,
                           uint64_t *found, int *workers, uint64_t visible, const char **bases) noexcept nogil


cdef uint64_t find_node(Attachment att, const uint8_t *key, uint64_t key_len, int *worker_out,
                        const char **arena_out) noexcept nogil
