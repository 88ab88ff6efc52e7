# cython: language_level=3
from libc.stdint cimport uint32_t, uint64_t
from amdb.shm.layout cimport PartitionView, AMDB_COMMIT_MIN_STEP, AMDB_COMMIT_STEP

cdef uint64_t shm_free_bytes(int fd) noexcept nogil


cdef inline uint64_t commit_step(uint64_t committed) noexcept nogil:
    """Bytes committed at a time with `committed` committed: an eighth,
    within AMDB_COMMIT_MIN_STEP .. AMDB_COMMIT_STEP (layout.h)."""
    cdef uint64_t step = committed // 8 // AMDB_COMMIT_MIN_STEP * AMDB_COMMIT_MIN_STEP
    if step < AMDB_COMMIT_MIN_STEP:
        return AMDB_COMMIT_MIN_STEP
    return step if step < AMDB_COMMIT_STEP else AMDB_COMMIT_STEP
cdef int commit_pages(PartitionView *p, uint64_t nbytes) noexcept nogil
cdef int commit_pages_by(PartitionView *p, uint64_t nbytes, uint64_t step) noexcept nogil
cdef int commit_range(PartitionView *p, uint64_t committed, uint64_t target) noexcept nogil
cdef uint64_t region_init_bytes(uint64_t table_capacity) noexcept nogil
cdef void region_init(PartitionView *p, uint64_t table_capacity, uint32_t log2_capacity,
                      uint64_t generation) noexcept nogil
cdef uint64_t alloc_block(PartitionView *p, uint32_t kind, uint64_t nbytes) noexcept nogil
cdef int arena_init(PartitionView *p) noexcept nogil
cdef int punch_arena(PartitionView *p, uint64_t off, uint64_t length) noexcept nogil

cdef class Mapping:
    cdef char *base
    cdef size_t length
    cdef readonly bint writable
    cdef void release(self) noexcept
