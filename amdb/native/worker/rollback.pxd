# cython: language_level=3
"""Undoing (rollback.pyx)."""
from libc.stdint cimport uint64_t
from amdb.native.worker.state cimport Worker

cdef void undo_open_batch(Worker *w) noexcept nogil
cdef void rollback_batch(Worker *w, uint64_t abort_seq, uint64_t abort_no) noexcept nogil
cdef int crash_repair(Worker *w, uint64_t visible_seq, uint64_t undo_seq, uint64_t *undone_seq) noexcept nogil
