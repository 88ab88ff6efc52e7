# cython: language_level=3
"""Iterators (iterator.pyx)."""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from amdb.shm.layout cimport amdb_node
from amdb.native.client.attachment cimport Attachment

cdef enum IterMode:
    MODE_ITEMS = 0
    MODE_KEYS = 1
    MODE_VALUES = 2


cdef class Iterator:
    cdef Attachment att
    cdef uint64_t visible          # the snapshot: versions above it are skipped
    cdef int64_t remaining         # items next() may still hand out (-1: no limit)
    cdef int nworkers
    cdef uint64_t *cursor          # per worker: the next usable node in direction, or 0
    cdef uint64_t *cursor_version  #   and its version (VERSION_RECLAIMED: compaction reclaimed it)
    cdef uint64_t *back            # per worker, BACK_CAPACITY nodes: the backward buffer
    cdef uint32_t *back_len
    cdef bytes lo, hi              # bounds (None: open)
    cdef bint lo_inclusive, hi_inclusive
    cdef bint reverse
    cdef int mode
    cdef readonly bint closed
    cdef bint pinned               # counted in att.pins until closed or freed
    cdef uint64_t epoch            # att.read_epoch the cursors belong to
    cdef bytes anchor              # where the cursor stands (re-seeks after a compaction start there)
    cdef bint anchor_inclusive
    cdef bytes key_prefix          # a namespace (db.prefixed()): keys shown without it, seeks within it
    cdef Py_ssize_t strip          # len(key_prefix), 0 without one

    cdef int _enter(self) except -1
    cdef int _leave(self) except -1
    cdef bint _below_hi(self, amdb_node *n) noexcept
    cdef bint _above_lo(self, amdb_node *n) noexcept
    cdef bint _usable(self, int w, uint64_t off) noexcept
    cdef void _settle_up(self, int w, uint64_t off) noexcept
    cdef void _fill_back(self, int w, amdb_node *limit) noexcept
    cdef void _settle_down(self, int w, amdb_node *limit) noexcept
    cdef void _step(self, int w) noexcept
    cdef void _seek_worker(self, int w, bytes key, bint inclusive, bint upward) noexcept
    cdef void _seek_end(self, bint first) noexcept
    cdef void _turn(self, bint upward) noexcept
    cdef int _best(self, bint ascending) noexcept
    cdef bytes _key_of(self, int w)
    cdef void _reseek(self) noexcept
    cdef void _place(self, bytes key, bint inclusive) noexcept
    cdef void _seek_up_all(self, bytes key, bint inclusive) noexcept
    cdef object _item(self, int w)
