# cython: language_level=3
"""The worker's apply loop (nogil): take chunks off the ring, sort them,
insert them into the partition's skip list + hash index, publish progress.

Process safety: this code runs only in worker i and is the single writer of
arena i (layout.h). It never blocks the owner: it releases ring space as soon
as a chunk is applied, and sleeps on a futex when the ring is empty.

Batch atomicity: a chunk is applied whole or not at all — the worker commits
the arena memory the whole chunk may need before it changes anything, and
refuses the chunk (failed_chunk) if it cannot. A batch of several chunks is
undone by an ABORT record: the worker walks the blocks it allocated since the
batch's first chunk (the arena is walkable, layout.h invariant 5) and points
every touched node back at its version from before the batch. Versions of the
batch are never visible meanwhile (seq > visible_seq), so readers cannot tell.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcmp, memcpy
from posix.unistd cimport getppid, getpid
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping, commit_pages, alloc_block, alloc_block_aligned, arena_init
from amdb.native.hashing cimport amdb_sha256, amdb_sha256_init, amdb_sha256_update, amdb_sha256_final
from amdb.shm.ring cimport ring_wait_data, ring_release, progress_publish, ring_at
from amdb.native.skiplist cimport SkipFinger, skiplist_insert, skiplist_finger_reset, skiplist_random_height
from amdb.native.hashindex cimport hashindex_find, hashindex_insert, hashindex_growth_bytes
from amdb.native.versions cimport version_append, is_live
from amdb.native.faults cimport *

cdef enum:
    IDLE_TIMEOUT_NS = 200000000   # 200 ms: how often an idle worker checks its owner is alive
    PREFETCH_DISTANCE = 16         # records ahead whose hash slot we prefetch
    INSERTION_SORT_MAX = 16

cdef enum LoopExit:
    EXIT_SHUTDOWN = 0
    EXIT_OWNER_GONE = 1
    EXIT_CORRUPT = 2


# One record of the chunk being applied, in the worker's private memory.
ctypedef struct ChunkEntry:
    uint64_t prefix      # amdb_key_prefix of the key: decides most comparisons
    uint64_t pos         # ring position of the record
    uint32_t order       # position in the chunk: keeps equal keys in write order
    uint32_t height      # skip-list height drawn for it, should it be a new key


ctypedef struct Worker:
    PartitionView p
    SkipFinger finger
    ChunkEntry *entries
    uint64_t entries_capacity
    uint64_t *chunk_hashes       # hashes of the versions the current chunk appended (ledger)
    uint64_t chunk_hashes_len
    uint8_t batch_ledger_head[32]  # ledger head before the open batch (for rollback)
    uint64_t batch_ledger_chunks
    uint64_t batch_first_seq     # seq of the open batch (set by its first chunk here); 0 = none
    uint64_t batch_start_off     # arena_used when that chunk arrived
    bint refusing                # a chunk of the open batch failed: skip the rest until ABORT
    int parent_pid


cdef inline amdb_ring_record *record_at(Worker *w, uint64_t pos) noexcept nogil:
    return <amdb_ring_record *>ring_at(w.p.ring, w.p.ctrl.ring_capacity - 1, pos)


cdef inline int entry_compare(Worker *w, ChunkEntry *a, ChunkEntry *b) noexcept nogil:
    """Order by (8-byte key prefix, position in the chunk). Equal keys keep
    their write order (they have equal prefixes); keys sharing a prefix stay
    in arrival order. That is all the skip-list finger needs for locality —
    skiplist_insert is correct for any order — and it costs integer compares
    only, never a memcmp of the key bytes."""
    if a.prefix != b.prefix:
        return -1 if a.prefix < b.prefix else 1
    return -1 if a.order < b.order else (1 if a.order > b.order else 0)


cdef void sort_entries(Worker *w, ChunkEntry *e, int64_t n) noexcept nogil:
    """Sort by entry_compare: quicksort, median of three, insertion sort for
    short runs, recursion on the smaller side only (stack depth O(log n))."""
    cdef int64_t i, j, mid
    cdef ChunkEntry pivot, tmp
    while n > INSERTION_SORT_MAX:
        mid = n // 2
        if entry_compare(w, &e[mid], &e[0]) < 0:
            tmp = e[mid]; e[mid] = e[0]; e[0] = tmp
        if entry_compare(w, &e[n - 1], &e[0]) < 0:
            tmp = e[n - 1]; e[n - 1] = e[0]; e[0] = tmp
        if entry_compare(w, &e[n - 1], &e[mid]) < 0:
            tmp = e[n - 1]; e[n - 1] = e[mid]; e[mid] = tmp
        pivot = e[mid]
        i = 0
        j = n - 1
        while i <= j:
            while entry_compare(w, &e[i], &pivot) < 0:
                i += 1
            while entry_compare(w, &e[j], &pivot) > 0:
                j -= 1
            if i <= j:
                tmp = e[i]; e[i] = e[j]; e[j] = tmp
                i += 1
                j -= 1
        # Now e[0..j] <= pivot <= e[i..n-1].
        if j + 1 < n - i:
            sort_entries(w, e, j + 1)
            e = e + i
            n = n - i
        else:
            sort_entries(w, e + i, n - i)
            n = j + 1
    for i in range(1, n):
        tmp = e[i]
        j = i - 1
        while j >= 0 and entry_compare(w, &tmp, &e[j]) < 0:
            e[j + 1] = e[j]
            j -= 1
        e[j + 1] = tmp


cdef int index_chunk(Worker *w, amdb_ring_chunk *header, uint64_t header_pos,
                     uint64_t *need, uint64_t *new_keys) noexcept nogil:
    """Fill w.entries with the chunk's records and add up the arena bytes
    applying them may take. Changes nothing shared."""
    cdef uint64_t capacity = w.p.ctrl.ring_capacity
    cdef uint64_t pos = header_pos + sizeof(amdb_ring_chunk)
    cdef uint64_t n = 0
    cdef amdb_ring_record *rec
    cdef ChunkEntry *entry
    cdef ChunkEntry *grown
    cdef uint64_t *grown_hashes
    if header.count > w.entries_capacity:
        grown = <ChunkEntry *>realloc(w.entries, header.count * sizeof(ChunkEntry))
        if grown == NULL:
            return AMDB_STATUS_NO_MEMORY
        w.entries = grown
        grown_hashes = <uint64_t *>realloc(w.chunk_hashes, header.count * sizeof(uint64_t))
        if grown_hashes == NULL:
            return AMDB_STATUS_NO_MEMORY
        w.chunk_hashes = grown_hashes
        w.entries_capacity = header.count
    need[0] = 0
    new_keys[0] = 0
    while n < header.count:
        if pos >= header.end:
            return AMDB_STATUS_CORRUPT
        rec = record_at(w, pos)
        if rec.op == AMDB_OP_WRAP:
            pos += capacity - (pos & (capacity - 1))
            continue
        if rec.op != AMDB_OP_PUT and rec.op != AMDB_OP_DELETE:
            return AMDB_STATUS_CORRUPT
        entry = &w.entries[n]
        entry.prefix = amdb_key_prefix(<uint8_t *>(rec + 1), rec.key_len)
        entry.pos = pos
        entry.order = <uint32_t>n
        entry.height = skiplist_random_height(&w.finger)
        need[0] += amdb_version_bytes(rec.value_len)
        if rec.op == AMDB_OP_PUT:
            need[0] += amdb_node_bytes_padded(entry.height, rec.key_len)
            new_keys[0] += 1
        pos += amdb_record_bytes(rec.key_len, rec.value_len)
        n += 1
    if pos != header.end:
        return AMDB_STATUS_CORRUPT
    need[0] += sizeof(amdb_ledger_block)
    return AMDB_STATUS_OK


cdef inline void record_for_ledger(Worker *w, uint64_t version_off) noexcept nogil:
    w.chunk_hashes[w.chunk_hashes_len] = amdb_version_tail_of(version_at(w.p.arena, version_off)).hash
    w.chunk_hashes_len += 1


cdef void fold_ledger(Worker *w, uint64_t seq) noexcept nogil:
    """Fold the chunk's version hashes into the ledger and leave a LEDGER
    block in the arena. REQUIRES: room committed (index_chunk counted it)."""
    cdef amdb_control *c = w.p.ctrl
    cdef amdb_sha256 state
    cdef uint64_t words[2]
    cdef uint64_t off
    cdef amdb_ledger_block *block
    words[0] = seq                  # little-endian hosts: the in-memory bytes are LE
    words[1] = w.chunk_hashes_len
    amdb_sha256_init(&state)
    amdb_sha256_update(&state, c.ledger_head, 32)
    amdb_sha256_update(&state, words, 16)
    if w.chunk_hashes_len:
        amdb_sha256_update(&state, w.chunk_hashes, w.chunk_hashes_len * 8)
    off = alloc_block(&w.p, AMDB_BLOCK_LEDGER, sizeof(amdb_ledger_block))
    block = <amdb_ledger_block *>(w.p.arena + off)
    block.seq = seq
    block.versions = w.chunk_hashes_len
    amdb_sha256_final(&state, block.head)
    memcpy(c.ledger_head, block.head, 32)
    amdb_store_relaxed(&c.ledger_chunks, c.ledger_chunks + 1)


cdef void apply_record(Worker *w, ChunkEntry *entry, uint64_t seq, uint64_t timestamp_ns) noexcept nogil:
    cdef PartitionView *p = &w.p
    cdef amdb_control *c = p.ctrl
    cdef amdb_ring_record *rec = record_at(w, entry.pos)
    cdef const uint8_t *key = <uint8_t *>(rec + 1)
    cdef const uint8_t *value = key + rec.key_len
    cdef uint64_t node_off = hashindex_find(p.arena, c.hash_table, rec.hash, key, rec.key_len)
    cdef uint64_t version_off, latest
    cdef amdb_node *node
    cdef uint64_t node_bytes
    if rec.op == AMDB_OP_DELETE:
        if node_off == 0:
            return
        latest = amdb_load_relaxed(&node_at(p.arena, node_off).latest)
        if not is_live(p.arena, latest):
            return                                  # deleting a missing key: nothing to record
        version_off = version_append(p, node_off, AMDB_VERSION_TOMBSTONE, NULL, 0, seq, timestamp_ns)
        record_for_ledger(w, version_off)
        # Release: the tombstone is whole before readers can reach it.
        amdb_store_release(&node_at(p.arena, node_off).latest, version_off)
        amdb_store_relaxed(&c.live_keys, c.live_keys - 1)
        amdb_store_relaxed(&c.version_count, c.version_count + 1)
        return
    if node_off != 0:
        latest = amdb_load_relaxed(&node_at(p.arena, node_off).latest)
        version_off = version_append(p, node_off, 0, value, rec.value_len, seq, timestamp_ns)
        record_for_ledger(w, version_off)
        amdb_store_release(&node_at(p.arena, node_off).latest, version_off)
        if not is_live(p.arena, latest):
            amdb_store_relaxed(&c.live_keys, c.live_keys + 1)
        amdb_store_relaxed(&c.version_count, c.version_count + 1)
        return
    # A new key: build the node and its first version, then link it.
    node_bytes = amdb_node_bytes(entry.height, rec.key_len)
    node_off = alloc_block_aligned(p, AMDB_BLOCK_NODE, node_bytes, AMDB_NODE_ALIGN)
    node = node_at(p.arena, node_off)
    node.latest = 0
    node.key_prefix = entry.prefix
    node.hash = rec.hash
    node.key_len = rec.key_len
    node.height = <uint16_t>entry.height
    node.reserved = 0
    memcpy(<uint8_t *>amdb_node_key(node), key, rec.key_len)
    version_off = version_append(p, node_off, 0, value, rec.value_len, seq, timestamp_ns)
    record_for_ledger(w, version_off)
    node.latest = version_off                       # unpublished node: plain store
    amdb_fault_check_mid_insert()
    skiplist_insert(p, node_off, &w.finger)         # publishes (level 0 = commit point)
    hashindex_insert(p, rec.hash, node_off)         # publishes
    amdb_store_relaxed(&c.live_keys, c.live_keys + 1)
    amdb_store_relaxed(&c.node_count, c.node_count + 1)
    amdb_store_relaxed(&c.version_count, c.version_count + 1)


cdef int apply_chunk(Worker *w, amdb_ring_chunk *header, uint64_t header_pos) noexcept nogil:
    """Apply one chunk whole, or refuse it having changed nothing."""
    cdef uint64_t need, new_keys, i, count = header.count
    cdef uint64_t timestamp_ns
    cdef amdb_hash_table *table
    cdef amdb_ring_record *ahead
    cdef bint sorted_already = True
    cdef int status = index_chunk(w, header, header_pos, &need, &new_keys)
    if status != AMDB_STATUS_OK:
        return status
    need += hashindex_growth_bytes(&w.p, new_keys)
    status = commit_pages(&w.p, need)
    if status != AMDB_STATUS_OK:
        return status
    for i in range(1, count):
        if entry_compare(w, &w.entries[i - 1], &w.entries[i]) > 0:
            sorted_already = False
            break
    if not sorted_already:
        sort_entries(w, w.entries, <int64_t>count)
    timestamp_ns = amdb_now_ns()
    w.chunk_hashes_len = 0
    for i in range(count):
        if i + PREFETCH_DISTANCE < count:
            table = table_at(w.p.arena, w.p.ctrl.hash_table)
            ahead = record_at(w, w.entries[i + PREFETCH_DISTANCE].pos)
            amdb_prefetch(&table.slots[amdb_slot_home(ahead.hash, table.log2_capacity)])
        amdb_fault_check_after_records()
        apply_record(w, &w.entries[i], header.seq, timestamp_ns)
    fold_ledger(w, header.seq)
    return AMDB_STATUS_OK


cdef void rollback_batch(Worker *w, uint64_t abort_seq, uint64_t abort_no) noexcept nogil:
    """Undo this worker's part of batch `abort_seq` (if it has one) and
    acknowledge ABORT number `abort_no`."""
    cdef PartitionView *p = &w.p
    cdef amdb_control *c = p.ctrl
    cdef uint64_t off, end, start, restored
    cdef amdb_block *block
    cdef amdb_version *v
    cdef amdb_node *node
    cdef int64_t live_delta = 0
    cdef uint64_t undone = 0
    if w.batch_first_seq != 0 and w.batch_first_seq >= abort_seq:
        start = w.batch_start_off
        off = start
        end = c.arena_used
        while off < end:
            block = <amdb_block *>(p.arena + off)
            if block.kind == AMDB_BLOCK_VERSION:
                v = version_at(p.arena, off)
                undone += 1
                # The node's first version of this batch points below the
                # batch: that older version becomes the latest again.
                if v.prev < start:
                    node = node_at(p.arena, amdb_version_tail_of(v).node)
                    restored = v.prev
                    live_delta += <int64_t>is_live(p.arena, restored) - <int64_t>is_live(p.arena, node.latest)
                    amdb_store_release(&node.latest, restored)
            # Unreachable from here on (or once its node is restored, above):
            # retag it so that a walk of the arena (ledger verification)
            # skips it. Readers never look at block kinds.
            if block.kind == AMDB_BLOCK_VERSION or block.kind == AMDB_BLOCK_LEDGER:
                block.kind = AMDB_BLOCK_GARBAGE
            off += <uint64_t>block.words * 8
        memcpy(c.ledger_head, w.batch_ledger_head, 32)
        amdb_store_relaxed(&c.ledger_chunks, w.batch_ledger_chunks)
        amdb_store_relaxed(&c.live_keys, <uint64_t>(<int64_t>c.live_keys + live_delta))
        amdb_store_relaxed(&c.version_count, c.version_count - undone)
    w.batch_first_seq = 0
    w.refusing = False
    amdb_store_release(&c.aborts_done, abort_no)
    progress_publish(c)


cdef void handle_chunk(Worker *w, amdb_ring_chunk *header, uint64_t header_pos) noexcept nogil:
    """Apply (or skip) one chunk. `header` is the worker's private copy: after
    ring_release the chunk's ring bytes may already hold the owner's next data."""
    cdef amdb_control *c = w.p.ctrl
    cdef int status
    if header.flags & AMDB_CHUNK_FIRST_OF_BATCH:
        w.batch_first_seq = header.seq
        w.batch_start_off = c.arena_used
        memcpy(w.batch_ledger_head, c.ledger_head, 32)
        w.batch_ledger_chunks = c.ledger_chunks
        w.refusing = False
    elif w.refusing:
        return                    # the rest of a refused batch: the owner sends ABORT
    status = apply_chunk(w, header, header_pos)
    if status != AMDB_STATUS_OK:
        w.refusing = True
        amdb_store_relaxed(&c.failed_status, <uint64_t>status)
        amdb_store_release(&c.failed_chunk, header.chunk_no)
    else:
        amdb_fault_check_mid_publish()
        amdb_store_relaxed(&c.chunks_applied, c.chunks_applied + 1)
        # Give the ring space back first, so that an owner that sees the chunk
        # applied also sees its space free.
        ring_release(c, header.end)
        amdb_store_relaxed(&c.applied_seq, header.seq)
        # Release: every version of the chunk is whole before the owner
        # (and through visible_seq, every reader) may rely on it.
        amdb_store_release(&c.applied_chunk, header.chunk_no)
    progress_publish(c)


cdef int worker_loop(Worker *w) noexcept nogil:
    cdef amdb_control *c = w.p.ctrl
    cdef uint64_t capacity = c.ring_capacity
    cdef uint64_t tail = amdb_load_relaxed(&c.ring_tail)
    cdef uint64_t head
    cdef amdb_ring_chunk header      # a private copy: the ring bytes are the owner's once released
    cdef uint32_t op
    while True:
        head = ring_wait_data(c, tail, IDLE_TIMEOUT_NS)
        if head == tail:
            if amdb_load_acquire(&c.shutdown_requested):
                return EXIT_SHUTDOWN
            if getppid() != w.parent_pid:
                return EXIT_OWNER_GONE
            continue
        while tail != head:
            op = (<uint32_t *>ring_at(w.p.ring, capacity - 1, tail))[0]
            if op == AMDB_OP_WRAP:
                tail += capacity - (tail & (capacity - 1))
            elif op == AMDB_OP_CHUNK:
                header = (<amdb_ring_chunk *>ring_at(w.p.ring, capacity - 1, tail))[0]
                handle_chunk(w, &header, tail)
                tail = header.end
            elif op == AMDB_OP_ABORT:
                header = (<amdb_ring_chunk *>ring_at(w.p.ring, capacity - 1, tail))[0]
                rollback_batch(w, header.seq, header.chunk_no)
                tail += sizeof(amdb_ring_chunk)
            else:
                return EXIT_CORRUPT
            ring_release(c, tail)


def run_worker(int fd, size_t segment_size, int parent_pid, fault=None):
    """Attach to a partition segment and apply what the owner sends until it
    asks us to stop (returns "shutdown") or disappears ("owner_gone")."""
    from amdb.errors import Error, raise_for_status
    cdef Mapping mapping = Mapping(fd, 0, segment_size, True)
    cdef Worker w
    cdef amdb_control *c = <amdb_control *>mapping.base
    cdef int status
    cdef int result
    if c.magic != AMDB_PARTITION_MAGIC or c.layout_version != AMDB_LAYOUT_VERSION:
        raise Error("not an AmDb partition segment (magic or layout version differs)", code="corrupt")
    w.p.ctrl = c
    w.p.ring = mapping.base + c.ring_offset
    w.p.arena = mapping.base + c.arena_offset
    w.p.fd = fd
    w.entries = NULL
    w.chunk_hashes = NULL
    w.chunk_hashes_len = 0
    w.entries_capacity = 0
    w.batch_first_seq = 0
    w.batch_start_off = 0
    w.refusing = False
    w.parent_pid = parent_pid
    w.finger.rng_state = 0x9E3779B97F4A7C15ULL ^ (<uint64_t>c.worker_index * 0xBF58476D1CE4E5B9ULL) ^ amdb_monotonic_ns()
    if w.finger.rng_state == 0:
        w.finger.rng_state = 1
    amdb_store_relaxed(&c.worker_pid, <uint64_t>getpid())
    status = arena_init(&w.p)
    raise_for_status(status, "initialising the arena")
    skiplist_finger_reset(&w.p, &w.finger)
    fault_arm_from_config(fault, c.worker_index, parent_pid)
    amdb_store_release(&c.worker_state, AMDB_WORKER_READY)
    progress_publish(c)
    try:
        with nogil:
            result = worker_loop(&w)
    finally:
        free(w.entries)
        free(w.chunk_hashes)
        amdb_store_release(&c.worker_state, AMDB_WORKER_STOPPED)
        progress_publish(c)
        mapping.release()
    if result == EXIT_CORRUPT:
        raise Error("ring holds a record of unknown kind", code="corrupt")
    return "shutdown" if result == EXIT_SHUTDOWN else "owner_gone"
