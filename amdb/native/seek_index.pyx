# cython: language_level=3
"""Where a seek's descent of a skip list starts: a process-private sorted
array of the list's tall nodes (height > SEEK_INDEX_LEVEL), binary searched
in cache instead of descended through cold nodes from the head.

A seek (iterators, scan(start=)) descends every worker's list. The top
levels of a descent are few nodes and stay in cache; the bottom levels are
cache misses, about three per level. The index answers the top levels from
one contiguous array, so a descent starts at level SEEK_INDEX_LEVEL from
the last indexed node below the key: a handful of node visits instead of
~3 per level of the whole height.

Why a stale index is still correct: nodes are never removed from a
generation and keys never change (skiplist.pyx, invariants 1 and 2). A
descent from level L of any linked node X whose key < the sought key, or of
the head, finds the first node >= key, whatever was inserted since: the
nodes inserted between X and the key are linked at level 0 at least, and
those taller than L are reached at level L. So the index is rebuilt only
for speed (the list grew by a quarter since) or because the generation
changed (a compaction: offsets of another generation mean nothing).

Who calls it: Iterator (client/iterator.pyx), under the GIL, with the
Attachment's per-worker SeekIndex; a built index is private to the process
(after a fork, the child's copy is its own).
Shared memory: reads only, acquire loads of next[] as every reader.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy, memset
from amdb.shm.layout cimport *
from amdb.native.skiplist cimport compare_key_to_node, amdb_compare_bytes


cdef void seek_index_free(SeekIndex *ix) noexcept nogil:
    free(ix.entries)
    memset(ix, 0, sizeof(SeekIndex))


cdef bint _build(SeekIndex *ix, const char *arena, uint64_t node_count) noexcept nogil:
    """Walk level SEEK_INDEX_LEVEL of the list; False when out of memory."""
    cdef uint64_t head = arena_skiplist_head(arena)
    cdef uint64_t off
    cdef amdb_node *n
    cdef SeekEntry *grown
    cdef SeekEntry *e
    cdef uint64_t capacity
    ix.count = 0
    off = amdb_node_next_acquire(node_at(arena, head), SEEK_INDEX_LEVEL)
    while off != 0:
        if ix.count == ix.capacity:
            capacity = ix.capacity * 2 if ix.capacity else node_count // 8 + 64
            grown = <SeekEntry *>realloc(ix.entries, capacity * sizeof(SeekEntry))
            if grown == NULL:
                return False
            ix.entries = grown
            ix.capacity = capacity
        n = node_at(arena, off)
        e = &ix.entries[ix.count]
        memset(e.key, 0, SEEK_KEY_BYTES)
        memcpy(e.key, amdb_node_key(n), n.key_len if n.key_len < SEEK_KEY_BYTES else SEEK_KEY_BYTES)
        e.key_len = n.key_len
        e.node = off
        ix.count += 1
        off = amdb_node_next_acquire(n, SEEK_INDEX_LEVEL)
    ix.arena = arena
    ix.generation = amdb_arena_header_of(arena).generation
    ix.built_nodes = node_count
    return True


cdef inline int _compare(const char *arena, const SeekEntry *e, uint64_t prefix, const uint8_t *key,
                         uint32_t key_len) noexcept nogil:
    """memcmp order of key vs the entry's node key."""
    cdef uint32_t common = key_len if key_len < e.key_len else e.key_len
    cdef int c
    if common > SEEK_KEY_BYTES:
        common = SEEK_KEY_BYTES
    c = amdb_compare_bytes(key, e.key, common)
    if c != 0:
        return c
    if key_len <= SEEK_KEY_BYTES or e.key_len <= SEEK_KEY_BYTES:
        return (key_len > e.key_len) - (key_len < e.key_len)
    return compare_key_to_node(prefix, key, key_len, node_at(arena, e.node))


cdef void seek_index_start(SeekIndex *ix, const char *arena, uint64_t node_count, uint64_t prefix,
                           const uint8_t *key, uint32_t key_len, uint64_t *start, int *level) noexcept nogil:
    """Where to begin the descent for the first node >= key in the list of
    `arena` (node_count: its partition's count now): `start` (a node whose
    key < key, or the head) from `level` down."""
    cdef uint64_t lo, hi, mid
    start[0] = arena_skiplist_head(arena)
    level[0] = AMDB_MAX_HEIGHT - 1
    if node_count < SEEK_INDEX_MIN_NODES:
        return
    if (ix.arena != arena or ix.generation != amdb_arena_header_of(arena).generation
            or node_count > ix.built_nodes + ix.built_nodes // 4):
        if not _build(ix, arena, node_count):
            seek_index_free(ix)
            return
    # The first entry >= key; the one before it is below the key.
    lo = 0
    hi = ix.count
    while lo < hi:
        mid = (lo + hi) >> 1
        if _compare(arena, &ix.entries[mid], prefix, key, key_len) > 0:
            lo = mid + 1
        else:
            hi = mid
    if lo > 0:
        start[0] = ix.entries[lo - 1].node
    level[0] = SEEK_INDEX_LEVEL
