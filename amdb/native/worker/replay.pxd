# cython: language_level=3
"""Log replay (replay.pyx)."""
from libc.stdint cimport uint64_t
from amdb.native.worker.state cimport Worker

cdef int replay_log(Worker *w, char *data, uint64_t length, uint64_t *frames_out) noexcept nogil
