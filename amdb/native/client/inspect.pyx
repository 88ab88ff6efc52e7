# cython: language_level=3
"""Inspection of an attached database: verification of every chain and of
the ledger, ledger heads, per-worker counters, and the layout hooks tests use
to corrupt data on purpose.

Who calls it: amdb.db.ParallelDB (verify, digest, stats) and the tests.
Shared memory: reads only, as a registered reader (attachment.pyx).
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memset
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.native.verify cimport (VerifyResult, BreakRecord, verify_partition as verify_arena, verify_node,
                                 node_readable, verify_ledger)
from amdb.native.client.attachment cimport Attachment
from amdb.native.client.keys cimport as_key
from amdb.native.client.reader cimport find_node
from amdb.native.hashindex cimport table_released_bytes

from amdb.native.constants import BREAK_KINDS, COMPACT_STATES, WORKER_STATES

cdef list breaks_of(PartitionView *view, int worker, VerifyResult *r):
    """Break tuples of `r`, found in the region `view` names (REQUIRES a
    registered reader: it builds tuples)."""
    cdef list out = []
    cdef uint64_t i
    cdef BreakRecord *b
    cdef amdb_node *n
    for i in range(r.breaks_len):
        b = &r.breaks[i]
        key = None
        if b.node_off != 0 and node_readable(view, b.node_off):
            n = node_at(view.arena, b.node_off)
            key = PyBytes_FromStringAndSize(<char *>amdb_node_key(n), n.key_len)
        out.append((worker, key, b.version_no or None, BREAK_KINDS.get(b.kind, str(b.kind)),
                    b.expected, b.stored))
    return out


def verify_partition(Attachment att, int worker):
    """(keys, versions, breaks_total, [break tuples]) of one partition,
    checked with the GIL released (callers run partitions in threads)."""
    cdef VerifyResult r
    cdef PartitionView view
    cdef int slot
    memset(&r, 0, sizeof(r))
    slot = att.enter_read()
    try:
        view = att.parts[worker]            # one base for the whole check
        with nogil:
            verify_arena(&view, &r)
            verify_ledger(&view, &r)
        return (r.keys, r.versions, r.breaks_total, breaks_of(&view, worker, &r))
    finally:
        free(r.breaks)
        att.leave_read(slot)


def verify_key(Attachment att, key):
    """REQUIRES no compaction in flight (ParallelDB.verify holds its lock):
    the bounds come from the control block's line 4, which describes the new
    generation before this process reads it."""
    cdef int worker, slot
    cdef uint64_t node_off
    cdef const char *arena
    cdef VerifyResult r
    cdef PartitionView view
    att.check_open()
    memset(&r, 0, sizeof(r))
    key = as_key(key, "key")
    slot = att.enter_read()
    try:
        node_off = find_node(att, <const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), &worker, &arena)
        view = att.parts[worker]
        view.arena = <char *>arena
        if node_off != 0 and node_readable(&view, node_off):
            verify_node(&view, node_off, &r)
        return (r.keys, r.versions, r.breaks_total, breaks_of(&view, worker, &r))
    finally:
        free(r.breaks)
        att.leave_read(slot)


def ledger_heads(Attachment att):
    """[(head bytes, chunks)] per worker. REQUIRES the write lock and Writer.quiesce()."""
    cdef int i
    cdef amdb_control *c
    att.check_open()
    out = []
    for i in range(att.nworkers):
        c = att.parts[i].ctrl
        amdb_load_acquire(&c.applied_chunk)
        out.append((PyBytes_FromStringAndSize(<char *>c.ledger_head, 32),
                    amdb_load_relaxed(&c.ledger_chunks)))
    return out


def debug_layout(Attachment att, key):
    """Arena offsets (in the current region of its worker) of `key`'s node
    fields and versions (tests corrupt them: ParallelDB._debug_flip_bit)."""
    cdef int worker, slot
    cdef uint64_t node_off, off
    cdef const char *arena
    cdef amdb_node *n
    cdef amdb_version *v
    cdef amdb_version_tail *t
    att.check_open()
    key = as_key(key, "key")
    versions = []
    slot = att.enter_read()
    try:
        node_off = find_node(att, <const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                                   &worker, &arena)
        if node_off == 0:
            return None
        n = node_at(arena, node_off)
        off = amdb_node_latest_acquire(n)
        while off != 0:
            v = version_at(arena, off)
            t = amdb_version_tail_of(v)
            versions.append({
                "version": t.version_no, "off": off,
                "prev_off": off + <size_t>&v.prev - <size_t>v,
                "value_off": off + sizeof(amdb_version), "value_len": v.value_len,
                "hash_off": <size_t>&t.hash - <size_t>arena,
                # None: not stored (LINKED: it is the hash of the version before)
                "prev_hash_off": (None if amdb_version_stored_prev_hash(v) == NULL
                                  else <size_t>amdb_version_stored_prev_hash(v) - <size_t>arena),
            })
            off = v.prev
        return {"worker": worker, "node_off": node_off,
                "region": (<size_t>arena - <size_t>att.arena_base[worker]) // att.parts[worker].ctrl.arena_capacity,
                "latest_off": node_off + <size_t>&n.latest - <size_t>n,
                "next0_off": node_off + <size_t>&n.next[0] - <size_t>n,
                "key_off": node_off + <size_t>amdb_node_key(n) - <size_t>n, "key_len": n.key_len,
                "versions": versions}
    finally:
        att.leave_read(slot)


def debug_arena_header(Attachment att, int worker):
    """The arena header of `worker`'s current generation (layout.h), and
    where its fields lie (tests corrupt them)."""
    cdef amdb_arena_header *h
    att.check_open()
    h = amdb_arena_header_of(att.parts[worker].arena)
    return {"generation": h.generation, "skiplist_head": h.skiplist_head, "hash_table": h.hash_table,
            "base_block": h.base_block, "compact_seq": h.compact_seq, "keep_versions": h.keep_versions,
            "base_block_off": <size_t>&h.base_block - <size_t>h,
            # head and kept are the last 64 bytes of the block (layout.h)
            "base_head_off": h.base_block + sizeof(amdb_ledger_base_block) - 64,
            "base_kept_off": h.base_block + sizeof(amdb_ledger_base_block) - 32}


def stats_of(Attachment att, int worker):
    """Counters of partition `worker` (relaxed: statistics)."""
    cdef amdb_control *c
    att.check_open()
    c = att.parts[worker].ctrl
    return {
        "worker": worker,
        "keys": amdb_load_relaxed(&c.live_keys),
        "nodes": amdb_load_relaxed(&c.node_count),
        "versions": amdb_load_relaxed(&c.version_count),
        "chunks_applied": amdb_load_relaxed(&c.chunks_applied),
        "arena_used": amdb_load_relaxed(&c.arena_used),
        "arena_committed": amdb_load_relaxed(&c.arena_committed),
        "arena_capacity": c.arena_capacity,
        "ring_used": amdb_load_relaxed(&c.ring_head) - amdb_load_acquire(&c.ring_tail),
        "ring_capacity": c.ring_capacity,
        "applied_seq": amdb_load_acquire(&c.applied_seq),
        "state": WORKER_STATES.get(amdb_load_acquire(&c.worker_state), "?"),
        "log_segment": amdb_load_relaxed(&c.log_segment),
        "log_bytes": amdb_load_relaxed(&c.log_bytes),
        "checkpoint_seq": amdb_load_relaxed(&c.checkpoint_seq),
        "checkpoint_running": amdb_load_relaxed(&c.checkpoint_started) > amdb_load_acquire(&c.checkpoint_done),
        "checkpoint_status": amdb_load_relaxed(&c.checkpoint_status),
        "checkpoint_undo_words": amdb_load_relaxed(&c.checkpoint_undo_words),
        "log_syncs": amdb_load_relaxed(&c.log_syncs),
        "log_errors": amdb_load_relaxed(&c.log_errors),
        "log_broken": bool(amdb_load_relaxed(&c.log_broken)),
        "region": att.region[worker],
        "generation": amdb_arena_header_of(att.parts[worker].arena).generation,
        "compact_state": COMPACT_STATES.get(amdb_load_acquire(&c.compact_state), "?"),
        "compactions": amdb_load_relaxed(&c.compactions),
        "versions_reclaimed": amdb_load_relaxed(&c.versions_reclaimed),
        "last_compact_seq": amdb_load_relaxed(&c.last_compact_seq),
        "last_compact_seconds": amdb_load_relaxed(&c.last_compact_ns) / 1e9,
        "last_compact_arena_bytes": (amdb_load_relaxed(&c.last_bytes_before),
                                     amdb_load_relaxed(&c.last_bytes_after)),
    }


def checkpoint_running(Attachment att):
    """Some worker is writing a background checkpoint now (cheap: before writes)."""
    cdef int i
    cdef amdb_control *c
    att.check_open()
    for i in range(att.nworkers):
        c = att.parts[i].ctrl
        if amdb_load_relaxed(&c.checkpoint_started) > amdb_load_acquire(&c.checkpoint_done):
            return True
    return False


def memory_census(Attachment att, int worker):
    """Where partition `worker`'s arena bytes go: a walk of its blocks (a
    registered reader; the blocks below arena_used are whole, layout.h).
    While writes run, a census of a moment, not of one batch."""
    cdef uint64_t counts[8]
    cdef uint64_t sizes[8]
    cdef uint64_t key_bytes = 0, value_bytes = 0, off, used, words, table_bytes = 0, table_off
    cdef uint64_t released = 0, gone
    cdef uint32_t kind
    cdef amdb_block *block
    cdef PartitionView view
    cdef int slot
    memset(counts, 0, sizeof(counts))
    memset(sizes, 0, sizeof(sizes))
    att.check_open()
    slot = att.enter_read()
    try:
        view = att.parts[worker]
        used = amdb_load_acquire(&view.ctrl.arena_used)
        if used > view.ctrl.arena_capacity:
            used = view.ctrl.arena_capacity
        with nogil:
            off = AMDB_ARENA_FIRST_BLOCK
            while off + sizeof(amdb_block) <= used:
                block = <amdb_block *>(view.arena + off)
                words = block.words
                if words == 0 or off + words * 8 > used:
                    break                   # a generation switched under us: stop where it is whole
                kind = block.kind if block.kind < 8 else 0
                counts[kind] += 1
                sizes[kind] += words * 8
                if kind == AMDB_BLOCK_HASH_TABLE and table_at(view.arena, off).flags & AMDB_TABLE_RELEASED:
                    gone = table_released_bytes(off, words * 8)
                    released += gone
                    sizes[kind] -= gone
                if kind == AMDB_BLOCK_NODE:
                    key_bytes += node_at(view.arena, off).key_len
                elif kind == AMDB_BLOCK_VERSION:
                    value_bytes += version_at(view.arena, off).value_len
                off += words * 8
            table_off = arena_hash_table(view.arena)
            if AMDB_ARENA_FIRST_BLOCK <= table_off < used:
                table_bytes = (<amdb_block *>(view.arena + table_off)).words * 8
    finally:
        att.leave_read(slot)
    return {
        "header": AMDB_ARENA_FIRST_BLOCK,
        "nodes": sizes[AMDB_BLOCK_NODE], "node_count": counts[AMDB_BLOCK_NODE],
        "versions": sizes[AMDB_BLOCK_VERSION], "version_count": counts[AMDB_BLOCK_VERSION],
        "hash_index": sizes[AMDB_BLOCK_HASH_TABLE], "hash_index_current": table_bytes,
        "alignment": sizes[AMDB_BLOCK_PAD], "released": released,
        "ledger": sizes[AMDB_BLOCK_LEDGER] + sizes[AMDB_BLOCK_LEDGER_BASE],
        "garbage": sizes[AMDB_BLOCK_GARBAGE],
        "key_bytes": key_bytes, "value_bytes": value_bytes,
        "walked": off,
    }


def log_state(Attachment att, uint64_t checkpoint_bytes):
    """(a checkpoint is due, first worker whose log is broken or -1): cheap
    enough to ask before every write. Due once some worker's log since its
    last checkpoint holds checkpoint_bytes (0: never) and a quarter of its
    arena's size: a checkpoint copies the whole arena, so a growing database
    checkpoints at geometrically spaced sizes and copies O(its size) in all,
    not O(size^2 / checkpoint_bytes)."""
    cdef int i
    cdef uint64_t n, floor
    cdef bint due = False
    cdef int broken = -1
    cdef amdb_control *c
    att.check_open()
    for i in range(att.nworkers):
        c = att.parts[i].ctrl
        n = amdb_load_relaxed(&c.log_bytes)
        floor = amdb_load_relaxed(&c.arena_used) // 4
        if floor < checkpoint_bytes:
            floor = checkpoint_bytes
        if checkpoint_bytes and n >= floor:
            due = True
        if broken < 0 and amdb_load_relaxed(&c.log_broken):
            broken = i
    return due, broken
