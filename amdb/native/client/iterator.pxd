# cython: language_level=3
"""Scans (iterator.pyx)."""
from libc.stdint cimport uint64_t
from amdb.shm.layout cimport amdb_node
from amdb.native.client.attachment cimport Attachment

cdef enum ScanMode:
    SCAN_ITEMS = 0
    SCAN_KEYS = 1
    SCAN_VALUES = 2


cdef class ScanIterator:
    cdef Attachment att
    cdef uint64_t visible
    cdef int nworkers
    cdef uint64_t *cursor          # per worker: node offset with a visible live version, or 0
    cdef uint64_t *cursor_version  #   and that version (VERSION_RECLAIMED: compaction reclaimed it)
    cdef bytes start, stop
    cdef bint reverse
    cdef int mode
    cdef uint64_t epoch            # att.read_epoch the cursors belong to
    cdef bytes last_key            # the last key returned (None: none yet)

    cdef bint _in_bounds(self, amdb_node *n) noexcept
    cdef void _settle(self, int w, uint64_t off) noexcept
    cdef void _seek_first(self, int w) noexcept
    cdef void _seek_past(self, int w, bytes key) noexcept
    cdef void _reseek(self) noexcept
    cdef object _step(self)
