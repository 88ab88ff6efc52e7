# cython: language_level=3
"""Verification of a partition's hash chains (nogil, read-only).

Process safety: runs in the owner, which maps the arena read-only, while the
worker may still append (ParallelDB.verify holds the write lock, so no batch
is in flight, but that is not needed for memory safety). Every offset is
checked before it is followed — inside the arena, 8-aligned, pointing at a
block of the right kind and size — so corrupted data is reported as a break
and never dereferenced. Walks are bounded by the number of blocks the arena
could hold, so a corrupted link that loops ends as a break too.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport realloc, malloc, free
from libc.string cimport memcmp, memcpy, memset
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport amdb_load_acquire, amdb_load_relaxed
from amdb.native.hashing cimport amdb_xxh64, amdb_sha256, amdb_sha256_init, amdb_sha256_update, amdb_sha256_final
from amdb.native.versions cimport chain_hash
from amdb.native.skiplist cimport compare_key_to_node


cdef void add_break(VerifyResult *r, uint64_t node_off, uint64_t version_no, uint32_t kind,
                    uint64_t expected, uint64_t stored) noexcept nogil:
    cdef BreakRecord *grown
    cdef uint64_t capacity
    r.breaks_total += 1
    if r.breaks_len == r.breaks_capacity:
        if r.breaks_capacity >= 10000:
            return
        capacity = 64 if r.breaks_capacity == 0 else r.breaks_capacity * 2
        grown = <BreakRecord *>realloc(r.breaks, capacity * sizeof(BreakRecord))
        if grown == NULL:
            return
        r.breaks = grown
        r.breaks_capacity = capacity
    r.breaks[r.breaks_len].node_off = node_off
    r.breaks[r.breaks_len].version_no = version_no
    r.breaks[r.breaks_len].kind = kind
    r.breaks[r.breaks_len].expected = expected
    r.breaks[r.breaks_len].stored = stored
    r.breaks_len += 1


cdef inline bint block_readable(const PartitionView *p, uint64_t off, uint32_t kind) noexcept nogil:
    """Whether a block of `kind` starts at `off` and lies inside the arena."""
    cdef uint64_t used = amdb_load_relaxed(&p.ctrl.arena_used)
    cdef const amdb_block *b
    if off < AMDB_ARENA_FIRST_BLOCK or (off & 7) or off + sizeof(amdb_block) > used:
        return False
    b = <const amdb_block *>(p.arena + off)
    return b.kind == kind and b.words != 0 and off + <uint64_t>b.words * 8 <= used


cdef bint node_readable(const PartitionView *p, uint64_t off) noexcept nogil:
    cdef const amdb_node *n
    if not block_readable(p, off, AMDB_BLOCK_NODE):
        return False
    n = node_at(p.arena, off)
    return (1 <= n.height <= AMDB_MAX_HEIGHT
            and amdb_node_bytes(n.height, n.key_len) == <uint64_t>n.block.words * 8)


cdef inline bint version_readable(const PartitionView *p, uint64_t off) noexcept nogil:
    cdef const amdb_version *v
    if not block_readable(p, off, AMDB_BLOCK_VERSION):
        return False
    v = version_at(p.arena, off)
    return amdb_version_block_bytes(v.value_len, v.flags) == <uint64_t>v.block.words * 8


cdef inline uint64_t off_of(const PartitionView *p, const amdb_version *v) noexcept nogil:
    return <uint64_t>(<const char *>v - p.arena)


cdef void verify_node(const PartitionView *p, uint64_t node_off, VerifyResult *r) noexcept nogil:
    """Check one key: its node and every version of its chain.
    REQUIRES: node_readable(p, node_off).

    A chain ends at version 1 (prev_hash 0), or, in a generation that
    compaction wrote, at the oldest version it kept: version_no > 1, prev_hash
    kept, lying below the generation's LEDGER_BASE block and right after the
    key's node, where compaction writes it (layout.h, invariant 9). A link
    zeroed anywhere else is a break."""
    cdef amdb_node *n = node_at(p.arena, node_off)
    cdef uint64_t base_block = amdb_load_relaxed(&amdb_arena_header_of(p.arena).base_block)
    cdef const uint8_t *key = amdb_node_key(n)
    cdef uint64_t off = amdb_node_latest_acquire(n)
    cdef uint64_t expect_no = 0, recomputed, steps = 0, prev_hash, after_node
    cdef uint64_t max_steps = amdb_load_relaxed(&p.ctrl.arena_used) // sizeof(amdb_version) + 1
    cdef amdb_version *v
    cdef amdb_version_tail *t
    cdef amdb_version_tail *pt
    cdef uint64_t *stored
    r.keys += 1
    recomputed = amdb_xxh64(key, n.key_len, 0)
    if recomputed != n.hash:
        add_break(r, node_off, 0, BREAK_KEY_HASH, recomputed, n.hash)
    elif amdb_key_prefix(key, n.key_len) != n.key_prefix:
        add_break(r, node_off, 0, BREAK_KEY_HASH, amdb_key_prefix(key, n.key_len), n.key_prefix)
    while off != 0:
        steps += 1
        if steps > max_steps or not version_readable(p, off):
            add_break(r, node_off, expect_no, BREAK_BOUNDS, 0, off)
            return
        v = version_at(p.arena, off)
        t = amdb_version_tail_of(v)
        r.versions += 1
        # prev_hash: stored, or (LINKED) the hash of prev, read only once
        # prev is known to be a whole version (an unreadable prev is
        # reported by the next iteration).
        stored = amdb_version_stored_prev_hash(v)
        if stored != NULL:
            prev_hash = stored[0]
        elif v.prev != 0 and version_readable(p, v.prev):
            prev_hash = amdb_version_tail_of(version_at(p.arena, v.prev)).hash
        else:
            prev_hash = 0
        recomputed = chain_hash(prev_hash, key, n.key_len, t.version_no, v.flags,
                                amdb_version_value(v), v.value_len)
        if recomputed != t.hash:
            add_break(r, node_off, t.version_no, BREAK_HASH, recomputed, t.hash)
        after_node = node_off + <uint64_t>n.block.words * 8
        if amdb_version_stored_node(v) != NULL:
            if amdb_version_stored_node(v)[0] != node_off:
                add_break(r, node_off, t.version_no, BREAK_NODE, node_off, amdb_version_stored_node(v)[0])
        elif off != after_node:          # AFTER_NODE: its node is the block right before it
            add_break(r, node_off, t.version_no, BREAK_NODE, after_node, off)
        if expect_no != 0 and t.version_no != expect_no:
            add_break(r, node_off, t.version_no, BREAK_VERSION_NO, expect_no, t.version_no)
        expect_no = t.version_no - 1 if t.version_no > 1 else 0
        off = v.prev
        if off != 0:
            if stored != NULL and version_readable(p, off):
                pt = amdb_version_tail_of(version_at(p.arena, off))
                if pt.hash != prev_hash:
                    add_break(r, node_off, t.version_no, BREAK_LINK, pt.hash, prev_hash)
        elif t.version_no == 1:
            if prev_hash != 0:
                add_break(r, node_off, t.version_no, BREAK_FIRST, 0, prev_hash)
        elif stored == NULL or not (base_block != 0 and off_of(p, v) < base_block
                                    and off_of(p, v) == after_node):
            # Older versions exist (version_no > 1) but are not linked, and
            # compaction did not cut the chain here: it writes a key's oldest
            # kept version right after the key's node.
            add_break(r, node_off, t.version_no, BREAK_FIRST, 1, t.version_no)


cdef void verify_partition(const PartitionView *p, VerifyResult *r) noexcept nogil:
    """Walk the skip list in key order and verify every key; then check that
    the walk met every node the worker created and every version it counts (a
    corrupted link that skips nodes or cuts a chain short shows up here).
    REQUIRES: no batch or compaction in flight (the counters are exact then)."""
    cdef uint64_t head = arena_skiplist_head(p.arena)
    cdef uint64_t versions_before = r.versions
    cdef uint64_t off, prev = 0, walked = 0, created
    cdef uint64_t max_steps = amdb_load_relaxed(&p.ctrl.arena_used) // sizeof(amdb_node) + 1
    cdef amdb_node *n
    cdef amdb_node *pn
    if not block_readable(p, head, AMDB_BLOCK_NODE):
        add_break(r, 0, 0, BREAK_BOUNDS, 0, head)
        return
    off = amdb_node_next_acquire(node_at(p.arena, head), 0)
    while off != 0:
        if walked > max_steps or not node_readable(p, off):
            add_break(r, prev, 0, BREAK_BOUNDS, 0, off)
            return
        n = node_at(p.arena, off)
        if prev != 0:
            pn = node_at(p.arena, prev)
            if compare_key_to_node(pn.key_prefix, amdb_node_key(pn), pn.key_len, n) >= 0:
                add_break(r, off, 0, BREAK_ORDER, prev, off)
                return                    # a loop or a wrong link: the rest cannot be trusted
        verify_node(p, off, r)
        walked += 1
        prev = off
        off = amdb_node_next_acquire(n, 0)
    created = amdb_load_relaxed(&p.ctrl.node_count)
    if walked < created:
        add_break(r, 0, 0, BREAK_COUNT, created, walked)
    created = amdb_load_relaxed(&p.ctrl.version_count)
    if r.versions - versions_before != created:
        add_break(r, 0, 0, BREAK_COUNT, created, r.versions - versions_before)


cdef inline uint64_t head_word(const uint8_t *head) noexcept nogil:
    """The first 8 bytes of a ledger head, big-endian, to report in a Break."""
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | head[i]
    return v


cdef void verify_ledger(const PartitionView *p, VerifyResult *r) noexcept nogil:
    """Recompute the partition's SHA-256 ledger from the arena: walk every
    block in allocation (= apply) order, fold the hashes of the versions
    between two LEDGER blocks, compare with the head each LEDGER block and
    finally the control block stored. In a generation compaction wrote, the
    walk first meets the versions it kept and their LEDGER_BASE block: their
    seal is recomputed, and the ledger goes on from the head the base block
    holds (the chunks before it are gone with the versions they folded).
    REQUIRES: no batch or compaction in flight."""
    cdef uint64_t used = amdb_load_relaxed(&p.ctrl.arena_used)
    cdef uint64_t base_block = amdb_load_relaxed(&amdb_arena_header_of(p.arena).base_block)
    cdef bint base_seen = False
    cdef const amdb_ledger_base_block *bb
    cdef uint64_t off = AMDB_ARENA_FIRST_BLOCK, collected = 0, capacity = 1024
    cdef uint64_t *hashes = <uint64_t *>malloc(capacity * sizeof(uint64_t))
    cdef uint64_t *grown
    cdef uint64_t words[2]
    cdef uint8_t head[32]
    cdef uint8_t computed[32]
    cdef const amdb_block *b
    cdef const amdb_ledger_block *lb
    cdef amdb_sha256 state
    if hashes == NULL:
        return
    memset(head, 0, 32)
    while off + sizeof(amdb_block) <= used:
        b = <const amdb_block *>(p.arena + off)
        if b.words == 0 or off + <uint64_t>b.words * 8 > used:
            add_break(r, 0, 0, BREAK_BOUNDS, 0, off)
            break
        if b.kind == AMDB_BLOCK_VERSION:
            if not version_readable(p, off):
                add_break(r, 0, 0, BREAK_BOUNDS, 0, off)
                break
            if collected == capacity:
                grown = <uint64_t *>realloc(hashes, 2 * capacity * sizeof(uint64_t))
                if grown == NULL:
                    break
                hashes = grown
                capacity *= 2
            hashes[collected] = amdb_version_tail_of(version_at(p.arena, off)).hash
            collected += 1
        elif b.kind == AMDB_BLOCK_LEDGER:
            lb = <const amdb_ledger_block *>b
            words[0] = lb.seq
            words[1] = collected
            amdb_sha256_init(&state)
            amdb_sha256_update(&state, head, 32)
            amdb_sha256_update(&state, words, 16)
            if collected:
                amdb_sha256_update(&state, hashes, collected * 8)
            amdb_sha256_final(&state, computed)
            if memcmp(computed, lb.head, 32) != 0 or lb.versions != collected:
                add_break(r, 0, 0, BREAK_LEDGER, head_word(computed), head_word(lb.head))
            memcpy(head, lb.head, 32)          # go on from what was stored: one break per bad chunk
            collected = 0
        elif b.kind == AMDB_BLOCK_LEDGER_BASE:
            if <uint64_t>b.words * 8 != sizeof(amdb_ledger_base_block):
                add_break(r, 0, 0, BREAK_BOUNDS, 0, off)
                break
            bb = <const amdb_ledger_base_block *>b
            words[0] = bb.seq
            amdb_sha256_init(&state)
            amdb_sha256_update(&state, words, 8)
            if collected:
                amdb_sha256_update(&state, hashes, collected * 8)
            amdb_sha256_final(&state, computed)
            if memcmp(computed, bb.kept, 32) != 0 or bb.versions != collected or off != base_block or base_seen:
                add_break(r, 0, 0, BREAK_LEDGER, head_word(computed), head_word(bb.kept))
            base_seen = True
            memcpy(head, bb.head, 32)
            collected = 0
        off += <uint64_t>b.words * 8
    if base_block != 0 and not base_seen:
        add_break(r, 0, 0, BREAK_LEDGER, base_block, 0)
    if memcmp(head, p.ctrl.ledger_head, 32) != 0:
        add_break(r, 0, 0, BREAK_LEDGER, head_word(head), head_word(p.ctrl.ledger_head))
    free(hashes)
