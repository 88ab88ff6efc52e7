# cython: language_level=3
"""The point-lookup index of one partition: open addressing over
(hash, node offset) in the arena, linear probing (nogil).

Process safety:
  - Writer: the partition's worker (hashindex_insert). Readers: the owner's
    threads (hashindex_find), concurrently.
  - Invariants: (1) a slot, once used, never changes; (2) entries are never
    removed (a deleted key keeps its node; its latest version is a
    tombstone); (3) a grown table is a new arena block holding every entry of
    the old one; the old table stays whole while a reader can be in it, so a
    reader that loaded it keeps a complete view of the keys that existed
    when it loaded it. Once the owner says no reader is left in it, the
    worker gives its slots' pages back (layout.h, "Outgrown hash tables").
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
from amdb.shm.atomic cimport amdb_load_acquire, amdb_load_relaxed, amdb_store_release, amdb_store_relaxed, amdb_prefetch
from amdb.native.undo cimport note_arena_write

cdef enum:
    GROW_PREFETCH = 16     # slots ahead whose node is prefetched while rehashing
from amdb.shm.arena cimport alloc_block, punch_arena


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


cdef void _note_retired(PartitionView *p, uint64_t off, uint64_t number) noexcept nogil:
    cdef RetiredTables *r = <RetiredTables *>p.retired
    if r.count < RETIRED_TABLES_MAX:       # always: tables double (else it is never given back)
        r.off[r.count] = off
        r.region[r.count] = amdb_load_relaxed(&p.ctrl.arena_region)
        r.number[r.count] = number
        r.count += 1


cdef void _grow(PartitionView *p) noexcept nogil:
    cdef uint64_t old_off = amdb_arena_header_of(p.arena).hash_table
    cdef amdb_hash_table *old = table_at(p.arena, old_off)
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
    if p.retired != NULL:
        # Release: the new root is published before the owner, seeing the
        # count, starts waiting for the readers of the old table.
        amdb_store_release(&p.ctrl.tables_retired, p.ctrl.tables_retired + 1)
        _note_retired(p, old_off, p.ctrl.tables_retired)


cdef void _release_table(PartitionView *p, uint64_t off) noexcept nogil:
    """Give back the slots of the outgrown table at `off`, then flag it, so
    that a walk of the arena (stats, a successor's) knows they are gone. A
    punch that fails leaves the table as it was: in memory, and unflagged."""
    cdef amdb_hash_table *table = table_at(p.arena, off)
    cdef uint64_t nbytes = <uint64_t>table.block.words * 8
    cdef uint64_t length = table_released_bytes(off, nbytes)
    if table.flags & AMDB_TABLE_RELEASED:
        return
    if length and punch_arena(p, table_release_start(off), length) != 0:
        return
    note_arena_write(p, <uint64_t *>&table.log2_capacity)   # log2_capacity and flags: one word
    table.flags = table.flags | AMDB_TABLE_RELEASED


cdef void hashindex_release_outgrown(PartitionView *p) noexcept nogil:
    """Give back every noted table the owner said no reader is left in
    (tables_drained, acquire), unless a background checkpoint is copying the
    arena (p.undo): the root its copy restores may name one of them. Tables
    of another region (a compaction since) went with that region."""
    cdef RetiredTables *r = <RetiredTables *>p.retired
    cdef uint64_t drained, region, i, kept = 0
    if r == NULL or r.count == 0 or p.undo != NULL:
        return
    drained = amdb_load_acquire(&p.ctrl.tables_drained)
    region = amdb_load_relaxed(&p.ctrl.arena_region)
    for i in range(r.count):
        if r.region[i] != region:
            continue
        if r.number[i] <= drained:
            _release_table(p, r.off[i])
        else:
            r.off[kept] = r.off[i]
            r.region[kept] = r.region[i]
            r.number[kept] = r.number[i]
            kept += 1
    r.count = kept


cdef void hashindex_collect_outgrown(PartitionView *p, bint readers_exist) noexcept nogil:
    """At the worker's start: note every table of the generation that is
    not its current one and was not given back (a walk of the arena). With
    no reader yet (a first start, loaded from a checkpoint), at once; a
    successor's readers may be in them, so it counts one more retirement
    and waits for the owner as after a growth."""
    cdef amdb_control *c = p.ctrl
    cdef uint64_t current = amdb_arena_header_of(p.arena).hash_table
    cdef uint64_t used = amdb_load_relaxed(&c.arena_used)
    cdef uint64_t off = AMDB_ARENA_FIRST_BLOCK
    cdef uint64_t number = 0
    cdef amdb_block *block
    cdef bint found = False
    if p.retired == NULL:
        return
    (<RetiredTables *>p.retired).count = 0     # the walk finds every one (log replay's too)
    if readers_exist:
        number = amdb_load_relaxed(&c.tables_retired) + 1
    while off + sizeof(amdb_block) <= used:
        block = <amdb_block *>(p.arena + off)
        if block.words == 0 or off + <uint64_t>block.words * 8 > used:
            break                          # the block a crashed predecessor was writing
        if (block.kind == AMDB_BLOCK_HASH_TABLE and off != current
                and not (table_at(p.arena, off).flags & AMDB_TABLE_RELEASED)):
            _note_retired(p, off, number)
            found = True
        off += <uint64_t>block.words * 8
    if found and readers_exist:
        amdb_store_release(&c.tables_retired, number)


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
