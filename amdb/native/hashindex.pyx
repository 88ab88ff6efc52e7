# cython: language_level=3
"""The point-lookup index of one partition: open addressing over
(hash, node offset) in the arena, linear probing (nogil).

Process safety:
  - Writer: the partition's worker (hashindex_insert). Readers: the owner's
    threads (hashindex_find), concurrently.
  - Invariants: (1) a slot, once used, never changes; (2) entries are never
    removed (a deleted key keeps its node; its latest version is a
    tombstone); (3) a grown table is a new arena block holding every entry of
    the old one; the old table is never freed, so a reader that loaded it
    keeps a complete view of the keys that existed when it loaded it.
  - Slots are single words (21-bit hash tag | node offset / 8, layout.h):
    the writer publishes one with a release store; a reader acquire-loads it,
    stops at 0 (end of the probe run), and on a tag match confirms with the
    node's full hash and key. Home slots come from the hash's top bits, so a
    table of up to 2^21 slots grows without reading any node. A new table is filled with plain stores and published by a release
    store into the arena header's hash_table (layout.h, invariant 8);
    readers acquire-load it.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memset
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport amdb_load_acquire, amdb_store_release, amdb_store_relaxed, amdb_prefetch
from amdb.native.undo cimport note_arena_write

cdef enum:
    GROW_PREFETCH = 16     # slots ahead whose node is prefetched while rehashing
from amdb.shm.arena cimport alloc_block


cdef uint64_t hashindex_table_bytes(uint64_t capacity) noexcept nogil:
    return amdb_round8(sizeof(amdb_hash_table) + capacity * sizeof(amdb_hash_slot))


cdef uint64_t hashindex_find(const char *arena, uint64_t table_off, uint64_t hash,
                             const uint8_t *key, uint32_t key_len) noexcept nogil:
    """Node offset of `key` in the table at `table_off`, or 0."""
    cdef amdb_hash_table *table = table_at(arena, table_off)
    cdef uint64_t mask = table.capacity - 1
    cdef uint64_t i = amdb_slot_home(hash, table.log2_capacity)
    cdef uint64_t tag = amdb_slot_tag(hash)
    cdef uint64_t word, node_off
    cdef amdb_node *node
    while True:
        # Acquire: the node is whole once its slot is non-zero.
        word = amdb_load_acquire(&table.slots[i])
        if word == 0:
            return 0
        if amdb_slot_word_tag(word) == tag:
            node_off = amdb_slot_node(word)
            node = node_at(arena, node_off)
            if node.hash == hash and node.key_len == key_len and memcmp(amdb_node_key(node), key, key_len) == 0:
                return node_off
        i = (i + 1) & mask


cdef uint64_t hashindex_growth_bytes(PartitionView *p, uint64_t new_keys) noexcept nogil:
    """Arena bytes that inserting up to `new_keys` keys may allocate for
    grown tables (so the worker can commit them before applying a chunk)."""
    cdef amdb_hash_table *table = table_at(p.arena, amdb_arena_header_of(p.arena).hash_table)
    cdef uint64_t capacity = table.capacity
    cdef uint64_t count = table.count + new_keys
    cdef uint64_t total = 0
    while count * AMDB_HASH_MAX_LOAD_DEN > capacity * AMDB_HASH_MAX_LOAD_NUM:
        capacity *= 2
        total += hashindex_table_bytes(capacity)
    return total


cdef void _place(PartitionView *p, amdb_hash_table *table, uint64_t home, uint64_t word,
                 bint publish) noexcept nogil:
    """Put `word` in the first free slot from `home`. publish: the table is
    the live one (readers, and a checkpoint's copy: undo.pxd, see it)."""
    cdef uint64_t mask = table.capacity - 1
    cdef uint64_t i = home
    while table.slots[i] != 0:
        i = (i + 1) & mask
    if publish:
        note_arena_write(p, &table.slots[i])
        note_arena_write(p, &table.count)
        amdb_store_release(&table.slots[i], word)
    else:
        table.slots[i] = word
    table.count += 1


cdef void _grow(PartitionView *p) noexcept nogil:
    cdef amdb_hash_table *old = table_at(p.arena, amdb_arena_header_of(p.arena).hash_table)
    cdef uint64_t capacity = old.capacity * 2
    cdef uint32_t log2_capacity = old.log2_capacity + 1
    cdef uint64_t nbytes = hashindex_table_bytes(capacity)
    cdef uint64_t off = alloc_block(p, AMDB_BLOCK_HASH_TABLE, nbytes)
    cdef amdb_hash_table *table = table_at(p.arena, off)
    cdef uint64_t i, word, home
    memset(<char *>table + sizeof(amdb_block), 0, nbytes - sizeof(amdb_block))
    table.capacity = capacity
    table.log2_capacity = log2_capacity
    # Unpublished table: plain stores. The tag holds the top 21 hash bits,
    # enough to place an entry in tables of up to 2^21 slots; beyond that the
    # node's full hash is read (prefetched some slots ahead).
    for i in range(old.capacity):
        word = old.slots[i]
        if log2_capacity > AMDB_SLOT_TAG_BITS:
            if i + GROW_PREFETCH < old.capacity and old.slots[i + GROW_PREFETCH] != 0:
                amdb_prefetch(p.arena + amdb_slot_node(old.slots[i + GROW_PREFETCH]))
        if word != 0:
            if log2_capacity <= AMDB_SLOT_TAG_BITS:
                home = amdb_slot_word_tag(word) >> (AMDB_SLOT_TAG_BITS - log2_capacity)
            else:
                home = amdb_slot_home(node_at(p.arena, amdb_slot_node(word)).hash, log2_capacity)
            _place(p, table, home, word, False)
    # Release: the new table is whole before readers can load it.
    note_arena_write(p, &amdb_arena_header_of(p.arena).hash_table)
    amdb_store_release(&amdb_arena_header_of(p.arena).hash_table, off)


cdef uint64_t hashindex_slots_left(PartitionView *p) noexcept nogil:
    """New keys the current table takes without growing, up to its hard load
    (AMDB_HASH_HARD_LOAD_NUM/DEN): what async single writes may count on."""
    cdef amdb_hash_table *table = table_at(p.arena, amdb_arena_header_of(p.arena).hash_table)
    cdef uint64_t cap = table.capacity * AMDB_HASH_HARD_LOAD_NUM // AMDB_HASH_HARD_LOAD_DEN
    return cap - table.count if cap > table.count else 0


cdef void hashindex_insert(PartitionView *p, uint64_t hash, uint64_t node_off, bint may_grow) noexcept nogil:
    """Add (hash, node) for a key that is not in the index, growing the table
    past AMDB_HASH_MAX_LOAD when may_grow.

    REQUIRES: with may_grow, the worker committed hashindex_growth_bytes() for
    this chunk; without, the table is below its hard load (hashindex_slots_left).
    """
    cdef amdb_hash_table *table = table_at(p.arena, amdb_arena_header_of(p.arena).hash_table)
    if may_grow and (table.count + 1) * AMDB_HASH_MAX_LOAD_DEN > table.capacity * AMDB_HASH_MAX_LOAD_NUM:
        _grow(p)
        table = table_at(p.arena, amdb_arena_header_of(p.arena).hash_table)
    _place(p, table, amdb_slot_home(hash, table.log2_capacity), amdb_slot_word(hash, node_off), True)
