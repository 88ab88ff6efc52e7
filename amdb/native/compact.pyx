# cython: language_level=3
"""Compaction: write a partition's next arena generation, keeping the newest
`keep` versions of every key, and switch to it (nogil).

Process safety:
  - Writer: the partition's worker, between batches (the owner sends
    OP_COMPACT under its write lock, after every rollback is settled, so no
    version above visible_seq exists and no batch is open). It is the only
    writer of both regions and of control lines 4 and 8.
  - Readers: the owner's threads keep reading the CURRENT region through the
    owner's base pointer while the worker writes the other one; they never
    look at the other region until the owner switches its pointer, which it
    does only after the worker acknowledged OP_COMPACT (layout.h, "Arena
    regions" and invariant 8).
  - Invariants:
    1. The current generation is not changed by compaction at all: every
       byte the worker writes lies in the other region, or in control lines
       4 and 8 at the switch.
    2. The new generation is whole (nodes, versions, skip list, hash index,
       LEDGER_BASE block, roots in its header) before compact_state becomes
       SWITCHING (release store); the switch record (line 8) is whole before
       that store too.
    3. One release store of control.arena_region makes the new region the
       current one, after line 4 holds its counters; a worker that dies
       between SWITCHING and IDLE leaves the switch record, which
       compact_recover replays (idempotent): a worker that attaches to the
       segment (a respawned one) calls it first, then finds its generation
       at region arena_region. A worker that dies while BUILDING leaves the
       current generation as it was and garbage in the other region, which
       the next compaction overwrites (every block it allocates is written
       whole; the owner punches the garbage out when it can).
    4. A kept version keeps every field but `prev` and its node: its seq,
       version_no, timestamp, value, hash and prev_hash are copied, so the
       chain still recomputes; the oldest kept version of a key gets prev = 0
       (layout.h, invariant 9). Its tail is written anew (layout.h,
       amdb_version_tail): the oldest kept lies right after its node
       (AFTER_NODE) and stores prev_hash only when it is not version 1; the
       others are LINKED and store their node.
  - Memory order: the new region is written with plain stores, except the
    roots in its header (release stores, as at any generation's start);
    nobody reads it before the owner's switch, which follows the owner's
    acquire load of arena_region (engine._adopt_regions), paired with the
    release store in compact_recover (and, before that, with the worker's
    release store of applied_chunk).
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport (amdb_load_relaxed, amdb_load_acquire, amdb_store_relaxed, amdb_store_release,
                              amdb_monotonic_ns, amdb_prefetch)
from amdb.shm.arena cimport Mapping
from amdb.shm.arena cimport commit_pages_by, alloc_block, region_init_bytes, region_init
from amdb.native.skiplist cimport SkipFinger, skiplist_insert, skiplist_finger_reset
from amdb.native.hashindex cimport hashindex_insert, hashindex_growth_bytes
from amdb.native.hashing cimport amdb_sha256, amdb_sha256_init, amdb_sha256_update, amdb_sha256_final

cdef enum:
    COMPACT_COMMIT_STEP = 4 << 20  # bytes of the new generation committed at a time (its memory
                                   # is then about what it uses)
    KEPT_INITIAL = 64              # versions of one key the kept-offsets buffer holds at first
    NODE_PREFETCH = 4              # nodes ahead whose latest version is prefetched


cdef char *region_base(char *arena_base, const amdb_control *c, uint64_t region) noexcept nogil:
    """Base of region `region`, given where region 0 is mapped."""
    return arena_base + region * c.arena_capacity


cdef void compact_recover(amdb_control *c) noexcept nogil:
    """Finish what a worker that died mid-compaction left (invariant 3).
    Idempotent; a no-op when compact_state is IDLE. Called by every worker
    before it takes its view of the partition (apply.worker_init)."""
    # Acquire: pairs with compact_prepare's release of SWITCHING, after
    # which the switch record is whole.
    cdef uint64_t state = amdb_load_acquire(&c.compact_state)
    if state == AMDB_COMPACT_SWITCHING:
        amdb_store_relaxed(&c.arena_used, c.switch_used)
        amdb_store_relaxed(&c.arena_committed, c.switch_committed)
        amdb_store_relaxed(&c.live_keys, c.switch_live_keys)
        amdb_store_relaxed(&c.node_count, c.switch_node_count)
        amdb_store_relaxed(&c.version_count, c.switch_version_count)
        # Release: line 4 describes the new region before it becomes current.
        amdb_store_release(&c.arena_region, c.switch_region)
        amdb_store_release(&c.compact_state, AMDB_COMPACT_IDLE)
    elif state != AMDB_COMPACT_IDLE:
        amdb_store_release(&c.compact_state, AMDB_COMPACT_IDLE)


cdef int _build(PartitionView *src, PartitionView *dst, uint64_t keep, uint64_t seq, uint64_t horizon,
                SkipFinger *finger, CompactResult *res) noexcept nogil:
    """Write the next generation of `src` into the empty region of `dst`
    (whose control block is private). Returns an AMDB_STATUS_*; on failure
    `dst` holds garbage and `src` is untouched."""
    cdef amdb_control *c = src.ctrl
    cdef amdb_arena_header *header
    cdef uint64_t capacity = AMDB_HASH_INITIAL_CAPACITY
    cdef uint32_t log2_capacity = AMDB_HASH_INITIAL_LOG2
    cdef uint64_t nodes = amdb_load_relaxed(&c.node_count)
    cdef uint64_t off, ahead, latest, v_off, need, count, i, node_bytes, last_seq
    cdef uint64_t new_node, new_version, new_prev, base_off
    cdef uint64_t kept_capacity = KEPT_INITIAL
    cdef uint64_t *kept = <uint64_t *>malloc(kept_capacity * sizeof(uint64_t))
    cdef uint64_t *grown
    cdef uint64_t words[1]
    cdef amdb_node *n
    cdef amdb_node *nn
    cdef amdb_version *v
    cdef amdb_version *nv
    cdef uint32_t flags
    cdef amdb_ledger_base_block *base
    cdef amdb_sha256 seal
    cdef int status
    if kept == NULL:
        return AMDB_STATUS_NO_MEMORY
    # A table that holds every node below the load limit: no growth while building.
    while (nodes + 1) * AMDB_HASH_MAX_LOAD_DEN > capacity * AMDB_HASH_MAX_LOAD_NUM:
        capacity *= 2
        log2_capacity += 1
    status = commit_pages_by(dst, region_init_bytes(capacity), COMPACT_COMMIT_STEP)
    if status != AMDB_STATUS_OK:
        free(kept)
        return status
    region_init(dst, capacity, log2_capacity,
                amdb_arena_header_of(src.arena).generation + 1)
    skiplist_finger_reset(dst, finger)
    words[0] = seq                      # little-endian hosts: the in-memory bytes are LE
    amdb_sha256_init(&seal)
    amdb_sha256_update(&seal, words, 8)
    # Relaxed loads throughout: this worker wrote every field it reads here.
    off = amdb_node_next_relaxed(node_at(src.arena, amdb_arena_header_of(src.arena).skiplist_head), 0)
    while off != 0:
        n = node_at(src.arena, off)
        ahead = amdb_node_next_relaxed(n, 0)
        if ahead != 0:
            amdb_prefetch(src.arena + ahead)
        latest = amdb_node_latest_relaxed(n)
        res.nodes_before += 1
        if latest == 0:
            off = ahead          # a node whose only versions were rolled back: left behind
            continue
        # The newest `keep` versions, newest first, and as many more as a read
        # as of `horizon` needs: down to the newest version with seq <= horizon.
        count = 0
        last_seq = 0
        need = amdb_node_bytes(n.height, n.key_len) + hashindex_growth_bytes(dst, 1)
        v_off = latest
        while v_off != 0 and (keep == 0 or count < keep or last_seq > horizon):
            if count == kept_capacity:
                grown = <uint64_t *>realloc(kept, 2 * kept_capacity * sizeof(uint64_t))
                if grown == NULL:
                    free(kept)
                    return AMDB_STATUS_NO_MEMORY
                kept = grown
                kept_capacity *= 2
            kept[count] = v_off
            count += 1
            v = version_at(src.arena, v_off)
            last_seq = v.seq
            need += amdb_version_bytes(v.value_len)
            v_off = v.prev
        while v_off != 0:          # count what is left behind (statistics)
            res.versions_before += 1
            v_off = version_at(src.arena, v_off).prev
        res.versions_before += count
        status = commit_pages_by(dst, need, COMPACT_COMMIT_STEP)
        if status != AMDB_STATUS_OK:
            free(kept)
            return status
        node_bytes = amdb_node_bytes(n.height, n.key_len)
        new_node = alloc_block(dst, AMDB_BLOCK_NODE, node_bytes)
        nn = node_at(dst.arena, new_node)
        amdb_node_init_latest(nn, 0)
        nn.key_prefix = n.key_prefix
        nn.hash = n.hash
        nn.key_len = n.key_len
        nn.height = n.height
        nn.reserved = 0
        memcpy(<uint8_t *>amdb_node_key(nn), amdb_node_key(n), n.key_len)
        # Oldest kept version first, so that each prev names a version
        # already written (invariant 4).
        new_prev = 0
        i = count
        while i > 0:
            i -= 1
            v = version_at(src.arena, kept[i])
            flags = v.flags & ~(<uint32_t>(AMDB_VERSION_LINKED | AMDB_VERSION_AFTER_NODE))
            if new_prev == 0:
                flags |= AMDB_VERSION_AFTER_NODE
                if amdb_version_tail_of(v).version_no == 1:
                    flags |= AMDB_VERSION_LINKED
            else:
                flags |= AMDB_VERSION_LINKED
            new_version = alloc_block(dst, AMDB_BLOCK_VERSION, amdb_version_block_bytes(v.value_len, flags))
            nv = version_at(dst.arena, new_version)
            memcpy(<char *>nv + sizeof(amdb_block), <char *>v + sizeof(amdb_block),
                   sizeof(amdb_version) - sizeof(amdb_block) + amdb_round8(v.value_len) + sizeof(amdb_version_tail))
            nv.prev = new_prev
            nv.flags = flags
            if amdb_version_stored_prev_hash(nv) != NULL:      # a chain that starts above version 1
                amdb_version_stored_prev_hash(nv)[0] = amdb_version_prev_hash(src.arena, v)
            if amdb_version_stored_node(nv) != NULL:
                amdb_version_stored_node(nv)[0] = new_node
            amdb_sha256_update(&seal, &amdb_version_tail_of(nv).hash, 8)
            new_prev = new_version
        amdb_node_init_latest(nn, new_prev)          # unpublished node: plain store
        skiplist_insert(dst, new_node, finger)
        hashindex_insert(dst, nn.hash, new_node, True)
        res.nodes_after += 1
        res.versions_after += count
        if not (version_at(dst.arena, new_prev).flags & AMDB_VERSION_TOMBSTONE):
            res.live_keys += 1
        off = ahead
    free(kept)
    status = commit_pages_by(dst, sizeof(amdb_ledger_base_block), COMPACT_COMMIT_STEP)
    if status != AMDB_STATUS_OK:
        return status
    base_off = alloc_block(dst, AMDB_BLOCK_LEDGER_BASE, sizeof(amdb_ledger_base_block))
    base = <amdb_ledger_base_block *>(dst.arena + base_off)
    base.seq = seq
    base.versions = res.versions_after
    memcpy(base.head, c.ledger_head, 32)
    amdb_sha256_final(&seal, base.kept)
    header = amdb_arena_header_of(dst.arena)
    header.base_block = base_off
    header.compact_seq = seq
    header.keep_versions = keep
    return AMDB_STATUS_OK


cdef int compact_prepare(PartitionView *p, uint64_t keep, uint64_t seq, uint64_t horizon, SkipFinger *finger,
                         CompactResult *res) noexcept nogil:
    """Write the next generation of partition `p` into its other region,
    keeping the newest `keep` versions of every key (0: all), and every
    version a read as of `horizon` (<= seq) needs, then the switch
    record, then compact_state = SWITCHING (invariants 2-3). Nothing the
    current generation's readers or writer use changes: the switch itself is
    compact_recover, then compact_adopt. On any status but AMDB_STATUS_OK,
    compact_state is IDLE again and the other region holds garbage.

    REQUIRES: only the partition's worker calls it, between batches, with
    `seq` = visible_seq."""
    cdef amdb_control *c = p.ctrl
    cdef amdb_control *scratch = <amdb_control *>malloc(sizeof(amdb_control))
    cdef PartitionView dst
    cdef uint64_t current = amdb_load_relaxed(&c.arena_region)
    cdef uint64_t target = 1 - current
    cdef uint64_t started = amdb_monotonic_ns()
    cdef int status
    memset(res, 0, sizeof(CompactResult))
    if scratch == NULL:
        return AMDB_STATUS_NO_MEMORY
    # The new region's own bump pointer and commit mark (arena.pyx, "Regions").
    memset(scratch, 0, sizeof(amdb_control))
    scratch.arena_capacity = c.arena_capacity
    scratch.arena_used = AMDB_ARENA_FIRST_BLOCK
    dst.ctrl = scratch
    dst.undo = NULL                      # a new generation: no checkpoint copies it
    dst.retired = NULL                   # nor reader: a table it outgrows while built is not noted
    dst.ring = p.ring
    dst.arena = p.arena + (<int64_t>target - <int64_t>current) * <int64_t>c.arena_capacity
    dst.fd = p.fd
    dst.region_offset = c.arena_offset + target * c.arena_capacity
    res.bytes_before = c.arena_used
    amdb_store_release(&c.compact_state, AMDB_COMPACT_BUILDING)
    status = _build(p, &dst, keep, seq, horizon, finger, res)
    if status != AMDB_STATUS_OK:
        free(scratch)
        amdb_store_release(&c.compact_state, AMDB_COMPACT_IDLE)
        skiplist_finger_reset(p, finger)
        return status
    res.bytes_after = scratch.arena_used
    c.switch_region = target
    c.switch_used = scratch.arena_used
    c.switch_committed = scratch.arena_committed
    c.switch_live_keys = res.live_keys
    c.switch_node_count = res.nodes_after
    c.switch_version_count = res.versions_after
    free(scratch)
    res.ns = amdb_monotonic_ns() - started
    # Release: the generation and the record are whole before anyone (a
    # worker attaching again) acts on SWITCHING.
    amdb_store_release(&c.compact_state, AMDB_COMPACT_SWITCHING)
    return AMDB_STATUS_OK


cdef void compact_adopt(PartitionView *p, char *arena_base, SkipFinger *finger,
                        const CompactResult *res, uint64_t seq) noexcept nogil:
    """After compact_recover: point the worker's view at the current region
    (`arena_base`: where region 0 is mapped), reset the skip-list finger for
    it and count the compaction (statistics)."""
    cdef amdb_control *c = p.ctrl
    cdef uint64_t region = amdb_load_relaxed(&c.arena_region)
    p.arena = region_base(arena_base, c, region)
    p.region_offset = c.arena_offset + region * c.arena_capacity
    skiplist_finger_reset(p, finger)
    amdb_store_relaxed(&c.compactions, c.compactions + 1)
    amdb_store_relaxed(&c.versions_reclaimed, c.versions_reclaimed + res.versions_before - res.versions_after)
    amdb_store_relaxed(&c.nodes_reclaimed, c.nodes_reclaimed + res.nodes_before - res.nodes_after)
    amdb_store_relaxed(&c.last_compact_seq, seq)
    amdb_store_relaxed(&c.last_compact_ns, res.ns)
    amdb_store_relaxed(&c.last_bytes_before, res.bytes_before)
    amdb_store_relaxed(&c.last_bytes_after, res.bytes_after)


def recover_compaction(Mapping control):
    """Finish a switch that a worker which died mid-compaction left half done
    (compact_recover) on the partition whose control block `control` maps:
    what a worker attaching to the segment again does first. Returns the
    current region afterwards. Tests call it on a dead worker's control block."""
    cdef amdb_control *c = <amdb_control *>control.base
    if c == NULL or c.magic != AMDB_PARTITION_MAGIC:
        from amdb.errors import InvalidArgumentError
        raise InvalidArgumentError("not a partition control block")
    compact_recover(c)
    return amdb_load_acquire(&c.arena_region)
