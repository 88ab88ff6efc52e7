# cython: language_level=3
"""The ordered index of one partition: a skip list in the arena (nogil).

Process safety:
  - Writer: the partition's worker only (skiplist_insert). Readers: the
    owner's threads (find_ge / find_lt / walking next[0]), concurrently.
  - Invariants: (1) nodes are never removed or moved; (2) a node's key,
    height, prefix and hash never change once linked; (3) at every level the
    list is sorted by key; (4) a node is linked into level i only after it is
    linked into level i-1, so level 0 is complete and is the commit point.
  - Memory order: the writer fills the new node (key, next[] pointers to its
    successors) with plain stores, then links it bottom-up with a release
    store into each predecessor's next[i]. Readers acquire-load every next[i]
    they follow, so they see a fully initialized node.
Nodes are sized to their height (next[height], then key bytes); branching
factor 4 (p = 1/4) as in LevelDB.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport amdb_load_acquire, amdb_load_relaxed, amdb_store_release, amdb_store_relaxed, amdb_prefetch
from amdb.native.undo cimport note_arena_write


cdef uint64_t skiplist_find_ge(const char *arena, uint64_t head, uint64_t prefix,
                               const uint8_t *key, uint32_t key_len) noexcept nogil:
    """Offset of the first node whose key >= key, or 0."""
    return skiplist_find_ge_from(arena, head, AMDB_MAX_HEIGHT - 1, prefix, key, key_len)


cdef uint64_t skiplist_find_ge_from(const char *arena, uint64_t start, int top_level, uint64_t prefix,
                                    const uint8_t *key, uint32_t key_len) noexcept nogil:
    """skiplist_find_ge descending from node `start` at `top_level`.
    REQUIRES: start is the head, or a linked node of height > top_level whose
    key < key (seek_index.pyx says why that is enough)."""
    cdef uint64_t x = start
    cdef uint64_t nxt
    cdef int level
    for level in range(top_level, -1, -1):
        while True:
            # Acquire: we read the node's key right after.
            nxt = amdb_node_next_acquire(node_at(arena, x), level)
            if nxt != 0 and compare_key_to_node(prefix, key, key_len, node_at(arena, nxt)) > 0:
                x = nxt
            else:
                break
    return amdb_node_next_acquire(node_at(arena, x), 0)


cdef uint64_t skiplist_find_lt(const char *arena, uint64_t head, uint64_t prefix,
                               const uint8_t *key, uint32_t key_len, bint unbounded) noexcept nogil:
    """Offset of the last node whose key < key (the last node overall when
    `unbounded`), or 0 when there is none."""
    cdef uint64_t x = head
    cdef uint64_t nxt
    cdef int level
    for level in range(AMDB_MAX_HEIGHT - 1, -1, -1):
        while True:
            nxt = amdb_node_next_acquire(node_at(arena, x), level)
            if nxt != 0 and (unbounded or compare_key_to_node(prefix, key, key_len, node_at(arena, nxt)) > 0):
                x = nxt
            else:
                break
    return 0 if x == head else x


cdef void skiplist_find_ge_many(int n, const char **arenas, const uint64_t *starts, const int *top_levels,
                                uint64_t prefix, const uint8_t *key, uint32_t key_len, uint64_t *out) noexcept nogil:
    """skiplist_find_ge_from of one key in n lists at once (n <=
    AMDB_MAX_WORKERS), list i from starts[i] at top_levels[i]: the descents
    take one step each in turn, and each prefetches the node its next step
    reads, so that the cache misses of the n lists overlap instead of adding
    up (a seek of a merged iterator visits every worker's list)."""
    cdef uint64_t x[AMDB_MAX_WORKERS]
    cdef int level[AMDB_MAX_WORKERS]
    cdef int i, active = n
    cdef uint64_t nxt
    cdef const char *arena
    for i in range(n):
        x[i] = starts[i]
        level[i] = top_levels[i]
    while active:
        for i in range(n):
            if level[i] < 0:
                continue
            arena = arenas[i]
            # Acquire: we read the node's key right after.
            nxt = amdb_node_next_acquire(node_at(arena, x[i]), level[i])
            if nxt != 0 and compare_key_to_node(prefix, key, key_len, node_at(arena, nxt)) > 0:
                x[i] = nxt
                nxt = amdb_node_next_acquire(node_at(arena, nxt), level[i])
                if nxt != 0:
                    amdb_prefetch(arena + nxt)
            else:
                level[i] -= 1
                if level[i] < 0:
                    out[i] = amdb_node_next_acquire(node_at(arena, x[i]), 0)
                    active -= 1


cdef uint64_t skiplist_find_lt_coarse(const char *arena, uint64_t head, uint64_t prefix, const uint8_t *key,
                                      uint32_t key_len, bint unbounded, int min_level) noexcept nogil:
    """Like skiplist_find_lt, but the descent stops at level `min_level`: the
    last node of height > min_level whose key < key (or the head, when none
    is). The nodes between it and `key` are then a level-0 walk of about
    4^min_level steps: reverse iteration fills a buffer from there, in
    O(log n) per buffer instead of per item."""
    cdef uint64_t x = head
    cdef uint64_t nxt
    cdef int level
    for level in range(AMDB_MAX_HEIGHT - 1, min_level - 1, -1):
        while True:
            nxt = amdb_node_next_acquire(node_at(arena, x), level)
            if nxt != 0 and (unbounded or compare_key_to_node(prefix, key, key_len, node_at(arena, nxt)) > 0):
                x = nxt
            else:
                break
    return x


cdef uint32_t skiplist_random_height(SkipFinger *finger) noexcept nogil:
    """Height with P(h > k) = 4^-k (xorshift64*, worker-private state)."""
    cdef uint64_t x = finger.rng_state
    cdef uint32_t height = 1
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    finger.rng_state = x
    x *= 0x2545F4914F6CDD1DULL
    while height < AMDB_MAX_HEIGHT and (x & 3) == 0:
        height += 1
        x >>= 2
    return height


cdef void skiplist_finger_reset(PartitionView *p, SkipFinger *finger) noexcept nogil:
    cdef int level
    for level in range(AMDB_MAX_HEIGHT):
        finger.pred[level] = amdb_arena_header_of(p.arena).skiplist_head


cdef void skiplist_insert(PartitionView *p, uint64_t node_off, SkipFinger *finger) noexcept nogil:
    """Link the filled, unpublished node `node_off` into the list.

    REQUIRES: no node with the same key is linked (the hash index says so);
    only the partition's worker calls this. Keys inserted in ascending order
    (the worker sorts every chunk) start from the finger and cost O(1)
    amortised per level instead of a search from the head.
    """
    cdef char *arena = p.arena
    cdef uint64_t head = amdb_arena_header_of(p.arena).skiplist_head
    cdef amdb_node *node = node_at(arena, node_off)
    cdef const uint8_t *key = amdb_node_key(node)
    cdef uint64_t prefix = node.key_prefix
    cdef uint32_t key_len = node.key_len
    cdef uint64_t update[AMDB_MAX_HEIGHT]
    cdef uint64_t x = head
    cdef uint64_t f, nxt
    cdef amdb_node *fn
    cdef int level
    for level in range(AMDB_MAX_HEIGHT - 1, -1, -1):
        # Start from the finger when it is further along than x and still
        # below the key: both are valid starting points at this level.
        f = finger.pred[level]
        if f != head and f != x:
            fn = node_at(arena, f)
            if compare_key_to_node(prefix, key, key_len, fn) > 0 and (
                    x == head or compare_key_to_node(fn.key_prefix, amdb_node_key(fn), fn.key_len,
                                                     node_at(arena, x)) > 0):
                x = f
        while True:
            # Relaxed: we are the only writer of these links.
            nxt = amdb_node_next_relaxed(node_at(arena, x), level)
            if nxt != 0 and compare_key_to_node(prefix, key, key_len, node_at(arena, nxt)) > 0:
                x = nxt
            else:
                break
        update[level] = x
    # The node is unpublished: plain stores for its own links.
    for level in range(node.height):
        amdb_node_init_next(node, level, amdb_node_next_relaxed(node_at(arena, update[level]), level))
    # Publish bottom-up; level 0 is the commit point (invariant 4). The
    # predecessors are published nodes: a checkpoint copying them notes
    # their old links (undo.pxd).
    for level in range(node.height):
        note_arena_write(p, &node_at(arena, update[level]).next[level])
        amdb_node_publish_next(node_at(arena, update[level]), level, node_off)
    for level in range(AMDB_MAX_HEIGHT):
        finger.pred[level] = node_off if level < node.height else update[level]
