# cython: language_level=3
"""A worker's background committer (committer.pyx)."""
from libc.stdint cimport uint32_t, uint64_t
from amdb.shm.layout cimport PartitionView

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass

ctypedef struct Committer:
    PartitionView *p             # the worker's own view: its region may change (compaction), under `lock`
    pthread_t thread
    pthread_mutex_t lock         # held while it commits; a region switch takes it too
    uint32_t wake                # futex word: bumped to wake the thread
    uint32_t stop                # 1: leave
    bint running
    uint64_t switches            # region switches (under `lock`): a poke from before one is dropped

cdef void committer_start(Committer *k, PartitionView *p) noexcept nogil
cdef void committer_poke(Committer *k) noexcept nogil
cdef void committer_hold(Committer *k) noexcept nogil
cdef void committer_release(Committer *k) noexcept nogil
cdef void committer_stop(Committer *k) noexcept nogil
