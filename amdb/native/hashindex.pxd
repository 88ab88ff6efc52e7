# cython: language_level=3
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from amdb.shm.layout cimport PartitionView, amdb_hash_table, AMDB_PAGE

cdef uint64_t hashindex_find(const char *arena, uint64_t table_off, uint64_t hash,
                             const uint8_t *key, uint32_t key_len) noexcept nogil
cdef void hashindex_insert(PartitionView *p, uint64_t hash, uint64_t node_off, bint may_grow) noexcept nogil
cdef uint64_t hashindex_slots_left(PartitionView *p) noexcept nogil
cdef uint64_t hashindex_growth_bytes(PartitionView *p, uint64_t new_keys) noexcept nogil
cdef uint64_t hashindex_table_bytes(uint64_t capacity) noexcept nogil

cdef enum:
    RETIRED_TABLES_MAX = 64      # a generation outgrows at most 43 tables (2^12 .. 2^55 slots)

# The worker's list of outgrown tables whose memory it has not given back yet
# (layout.h, "Outgrown hash tables"); PartitionView.retired points at it in
# the worker's own view only (NULL elsewhere: nothing is noted).
ctypedef struct RetiredTables:
    uint64_t count
    uint64_t off[RETIRED_TABLES_MAX]       # table offsets in region region[i]
    uint64_t region[RETIRED_TABLES_MAX]
    uint64_t number[RETIRED_TABLES_MAX]    # control.tables_retired once it was outgrown

cdef void hashindex_release_outgrown(PartitionView *p) noexcept nogil
cdef void hashindex_collect_outgrown(PartitionView *p, bint readers_exist) noexcept nogil


cdef inline uint64_t table_release_start(uint64_t off) noexcept nogil:
    """Where the memory that releasing the table block at `off` gives back
    starts: the first whole page after its header (regions start on a page)."""
    return (off + sizeof(amdb_hash_table) + AMDB_PAGE - 1) // AMDB_PAGE * AMDB_PAGE


cdef inline uint64_t table_released_bytes(uint64_t off, uint64_t nbytes) noexcept nogil:
    """Bytes that releasing the table block at `off` gives back: its whole
    pages after the header."""
    cdef uint64_t start = table_release_start(off)
    cdef uint64_t end = (off + nbytes) // AMDB_PAGE * AMDB_PAGE
    return end - start if end > start else 0
