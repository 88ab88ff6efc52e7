# cython: language_level=3
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from amdb.shm.layout cimport PartitionView

cdef uint64_t hashindex_find(const char *arena, uint64_t table_off, uint64_t hash,
                             const uint8_t *key, uint32_t key_len) noexcept nogil
cdef void hashindex_insert(PartitionView *p, uint64_t hash, uint64_t node_off, bint may_grow) noexcept nogil
cdef uint64_t hashindex_slots_left(PartitionView *p) noexcept nogil
cdef uint64_t hashindex_growth_bytes(PartitionView *p, uint64_t new_keys) noexcept nogil
cdef uint64_t hashindex_table_bytes(uint64_t capacity) noexcept nogil
