# cython: language_level=3
"""A process-private sparse index of one skip list, for seeks (seek_index.pyx)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef enum:
    SEEK_INDEX_LEVEL = 2          # indexes the nodes of height > 2 (1 in 16); seeks descend from level 2
    SEEK_INDEX_MIN_NODES = 4096   # shorter lists: a plain descent is as fast
    SEEK_KEY_BYTES = 24           # key bytes an entry keeps (longer ties compare the node)

ctypedef struct SeekEntry:
    uint8_t key[SEEK_KEY_BYTES]   # the node's first key bytes, zero padded
    uint32_t key_len              # the node's whole key length
    uint32_t unused
    uint64_t node                 # the node's offset in its generation

ctypedef struct SeekIndex:
    const char *arena             # the generation indexed: its region and number
    uint64_t generation
    uint64_t built_nodes          # node_count when built (rebuilt past 5/4 of it)
    uint64_t count
    uint64_t capacity
    SeekEntry *entries            # ascending key order

cdef void seek_index_free(SeekIndex *ix) noexcept nogil
cdef void seek_index_start(SeekIndex *ix, const char *arena, uint64_t node_count, uint64_t prefix,
                           const uint8_t *key, uint32_t key_len, uint64_t *start, int *level) noexcept nogil
