# cython: language_level=3
"""Undoing (nogil): the rollback of a batch (an ABORT record, or a batch a
replayed log never committed) and the repair of an arena whose worker died
at any instruction (crash_repair, run by its successor).

Who calls it: the worker loop (loop.pyx) and log replay (replay.pyx).

Process safety: run only by the partition's worker (single writer). Versions
of the batch being undone were never visible (seq > visible_seq), so readers
cannot tell; every walk trusts nothing a crashed predecessor may have left
half written (layout.h, invariant 4).
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy
from amdb.native.undo cimport note_arena_write
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport commit_pages
from amdb.shm.ring cimport progress_publish
from amdb.native.skiplist cimport skiplist_find_lt
from amdb.native.hashindex cimport hashindex_find, hashindex_insert, hashindex_growth_bytes
from amdb.native.worker.state cimport Worker


cdef bint node_plausible(PartitionView *p, uint64_t off, uint64_t used) noexcept nogil:
    """`off` is the start of a whole node block below `used`. Only a crashed
    predecessor's last block can fail this (crash_repair); the check keeps
    undo_open_batch from following a field it never finished writing."""
    cdef amdb_node *n
    if off < AMDB_ARENA_FIRST_BLOCK or off & 7 or off + sizeof(amdb_node) > used:
        return False
    n = node_at(p.arena, off)
    return (n.block.kind == AMDB_BLOCK_NODE and 1 <= n.height <= AMDB_MAX_HEIGHT
            and off + amdb_node_bytes(n.height, n.key_len) <= used)


cdef bint version_plausible(PartitionView *p, uint64_t off, uint64_t used) noexcept nogil:
    cdef amdb_version *v
    if off < AMDB_ARENA_FIRST_BLOCK or off & 7 or off + sizeof(amdb_version) > used:
        return False
    v = version_at(p.arena, off)
    return v.block.kind == AMDB_BLOCK_VERSION and off + amdb_version_block_bytes(v.value_len, v.flags) <= used


cdef void undo_open_batch(Worker *w) noexcept nogil:
    """Undo everything the open batch (begun at w.batch_start_off) changed:
    point every node whose latest version lies in the batch back at its
    newest version from before it, retag the batch's versions and ledger
    blocks as garbage, and restore the ledger head and the counters as they
    were when it began. Versions of the batch were never visible (seq >
    visible_seq), so readers cannot tell.

    Also correct after a crash at any instruction (crash_repair): the walk
    stops at a block whose header is not whole, a version is trusted only
    for the node it names, and a node is followed only when it is a whole
    node block whose published latest version lies in the batch. Published
    versions are whole (layout.h, invariant 3), so their chains can be
    walked down past the batch. Idempotent: a node already restored points
    below the batch and is left alone."""
    cdef PartitionView *p = &w.p
    cdef amdb_control *c = p.ctrl
    cdef uint64_t start = w.batch_start_off
    cdef uint64_t off = start
    cdef uint64_t end = c.arena_used
    cdef uint64_t before = 0               # the block before `off` (a version's node: AFTER_NODE)
    cdef uint64_t latest, restored, bytes_left, node_off
    cdef amdb_block *block
    cdef amdb_version *v
    cdef amdb_node *node
    while off < end:
        block = <amdb_block *>(p.arena + off)
        bytes_left = end - off
        if bytes_left < sizeof(amdb_block) or block.words == 0 or <uint64_t>block.words * 8 > bytes_left:
            break                      # the header a crashed predecessor was writing
        if block.kind == AMDB_BLOCK_VERSION and version_plausible(p, off, end):
            v = version_at(p.arena, off)
            node_off = amdb_version_node_after(v, before)
            if node_plausible(p, node_off, end):
                node = node_at(p.arena, node_off)
                latest = amdb_node_latest_relaxed(node)
                if latest >= start:
                    # Down the chain to the newest version from before the
                    # batch (0 for a key the batch created).
                    restored = latest
                    while restored >= start and version_plausible(p, restored, end) \
                            and version_at(p.arena, restored).prev < restored:
                        restored = version_at(p.arena, restored).prev
                    if restored >= start:
                        restored = 0           # cannot happen: chains only go down
                    note_arena_write(p, &node.latest)
                    amdb_node_publish_latest(node, restored)
        # Unreachable from here on (or once its node is restored, above):
        # retag it so that a walk of the arena (ledger verification) skips
        # it. Readers never look at block kinds.
        if block.kind == AMDB_BLOCK_VERSION or block.kind == AMDB_BLOCK_LEDGER:
            note_arena_write(p, block)
            block.kind = AMDB_BLOCK_GARBAGE
        before = off
        off += <uint64_t>block.words * 8
    memcpy(c.ledger_head, w.batch_ledger_head, 32)
    amdb_store_relaxed(&c.ledger_chunks, w.batch_ledger_chunks)
    amdb_store_relaxed(&c.live_keys, w.batch_live_keys)
    amdb_store_relaxed(&c.version_count, w.batch_versions)
    w.batch_first_seq = 0
    w.refusing = False
    # Last, by a release store: a successor that finds no open batch finds
    # the counters and the ledger head restored (a crash before this store
    # repeats the undo, which is idempotent).
    amdb_store_release(&c.open_batch_seq, 0)


cdef void rollback_batch(Worker *w, uint64_t abort_seq, uint64_t abort_no) noexcept nogil:
    """Undo this worker's part of batch `abort_seq` (if it has one) and
    acknowledge ABORT number `abort_no`."""
    cdef amdb_control *c = w.p.ctrl
    if w.batch_first_seq != 0 and w.batch_first_seq >= abort_seq:
        undo_open_batch(w)
    w.batch_first_seq = 0
    w.refusing = False
    amdb_store_release(&c.aborts_done, abort_no)
    progress_publish(c)


cdef int relink_crashed_nodes(Worker *w) noexcept nogil:
    """A predecessor that died inside apply_record may have linked a new
    node into the skip list but not yet into the hash index (apply_record
    links the skip list first). Index every such node of the open batch, so
    that the key keeps one node: lookups would otherwise miss it and a later
    put would link a second node with the same key."""
    cdef PartitionView *p = &w.p
    cdef amdb_control *c = p.ctrl
    cdef uint64_t off = w.batch_start_off
    cdef uint64_t end = c.arena_used
    cdef uint64_t pred, bytes_left
    cdef amdb_block *block
    cdef amdb_node *n
    cdef int status
    while off < end:
        block = <amdb_block *>(p.arena + off)
        bytes_left = end - off
        if bytes_left < sizeof(amdb_block) or block.words == 0 or <uint64_t>block.words * 8 > bytes_left:
            break
        if block.kind == AMDB_BLOCK_NODE and node_plausible(p, off, end):
            n = node_at(p.arena, off)
            if hashindex_find(p.arena, amdb_arena_header_of(p.arena).hash_table, n.hash, amdb_node_key(n),
                              n.key_len) == 0:
                pred = skiplist_find_lt(p.arena, amdb_arena_header_of(p.arena).skiplist_head, n.key_prefix,
                                        amdb_node_key(n),
                                        n.key_len, False)
                if amdb_node_next_acquire(node_at(p.arena, pred), 0) == off:
                    status = commit_pages(p, hashindex_growth_bytes(p, 1))
                    if status != AMDB_STATUS_OK:
                        return status
                    hashindex_insert(p, n.hash, off, True)
        off += <uint64_t>block.words * 8
    return AMDB_STATUS_OK


cdef void load_open_batch(Worker *w) noexcept nogil:
    """The open batch as a dead predecessor recorded it (begin_batch, line 7).
    REQUIRES: open_batch_seq loaded with acquire first (it is stored last)."""
    cdef amdb_control *c = w.p.ctrl
    w.batch_first_seq = amdb_load_relaxed(&c.open_batch_seq)
    w.batch_start_off = amdb_load_relaxed(&c.open_batch_start)
    memcpy(w.batch_ledger_head, c.open_batch_ledger_head, 32)
    w.batch_ledger_chunks = amdb_load_relaxed(&c.open_batch_ledger_chunks)
    w.batch_live_keys = amdb_load_relaxed(&c.open_batch_live_keys)
    w.batch_versions = amdb_load_relaxed(&c.open_batch_versions)


cdef int crash_repair(Worker *w, uint64_t visible_seq, uint64_t undo_seq, uint64_t *undone_seq) noexcept nogil:
    """Take over a partition whose worker died (rule 4 of layout.h: what it
    left is usable, at worst with unlinked garbage).

    undo_seq == 0 (it died between records, handling_pos == 0): every record
    it took is whole in the arena, so its open batch, if any, goes on here:
    the rest of it, its COMMIT or its ABORT are still in the ring.
    undo_seq != 0 (it died handling a record of batch undo_seq): if that batch
    is the one it began last and was never made visible, undo it, as an ABORT
    would have. An older open batch is whole (a SOLO write that visible_seq
    does not cover yet, say) and is left as it is."""
    cdef amdb_control *c = w.p.ctrl
    # Acquire: begin_batch stores the seq last, with release.
    cdef uint64_t seq = amdb_load_acquire(&c.open_batch_seq)
    cdef int status
    undone_seq[0] = 0
    if seq == 0 or seq <= visible_seq or (undo_seq != 0 and seq != undo_seq):
        return AMDB_STATUS_OK
    load_open_batch(w)
    if w.batch_start_off < AMDB_ARENA_FIRST_BLOCK or w.batch_start_off > c.arena_used:
        return AMDB_STATUS_CORRUPT
    if undo_seq == 0:
        return AMDB_STATUS_OK
    status = relink_crashed_nodes(w)
    if status != AMDB_STATUS_OK:
        return status
    undo_open_batch(w)
    undone_seq[0] = seq
    return AMDB_STATUS_OK
