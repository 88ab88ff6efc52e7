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
from libc.string cimport memcmp, memcpy, memset
from posix.unistd cimport getppid, getpid
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping, commit_pages, alloc_block, alloc_block_aligned, arena_init
from amdb.native.hashing cimport amdb_sha256, amdb_sha256_init, amdb_sha256_update, amdb_sha256_final
from amdb.shm.ring cimport ring_wait_data, ring_release, progress_publish, ring_at
from amdb.native.skiplist cimport (SkipFinger, skiplist_insert, skiplist_finger_reset, skiplist_random_height,
                                   skiplist_find_lt)
from amdb.native.hashindex cimport hashindex_find, hashindex_insert, hashindex_growth_bytes
from amdb.native.versions cimport version_append, is_live
from amdb.native.hashing cimport amdb_xxh64, ring_chunk_fingerprint
from amdb.native.wal cimport *
from amdb.native.verify cimport VerifyResult, verify_partition, verify_ledger
from amdb.native.compact cimport CompactResult, compact_prepare, compact_recover, compact_adopt, region_base
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
    char *arena_base             # where region 0 of the arena is mapped (p.arena: the current region)
    SkipFinger finger
    ChunkEntry *entries
    uint64_t entries_capacity
    uint64_t *chunk_hashes       # hashes of the versions the current chunk appended (ledger)
    uint64_t chunk_hashes_len
    uint8_t batch_ledger_head[32]  # ledger head before the open batch (for rollback)
    uint64_t batch_ledger_chunks
    uint64_t batch_live_keys     # live_keys and version_count before the open batch (rollback)
    uint64_t batch_versions
    uint64_t batch_first_seq     # seq of the open batch (set by its first chunk here); 0 = none
    uint64_t batch_start_off     # arena_used when that chunk arrived
    bint refusing                # a chunk of the open batch failed: skip the rest until ABORT
    bint batch_committed         # the open batch's COMMIT was handled (durable databases)
    int parent_pid
    char *records                # where ring positions of records point: the ring, or a log
    uint64_t records_mask        #   segment being replayed (mask ~0: positions are offsets)
    uint64_t wrap_pos            # ring position of the current chunk's WRAP record, 0 = none
    uint64_t chunk_timestamp     # timestamp_ns of the versions of the last applied chunk
    bint check_hashes            # replaying a log: recompute each record's key hash, trust nothing
    uint64_t *poison             # fingerprints of chunks to refuse (poison batches), or NULL
    uint64_t poison_count
    LogWriter log                # the write-ahead log (log.dir_fd < 0: memory-only)


cdef inline amdb_ring_record *record_at(Worker *w, uint64_t pos) noexcept nogil:
    return <amdb_ring_record *>ring_at(w.records, w.records_mask, pos)


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
    w.wrap_pos = 0
    while n < header.count:
        if pos + sizeof(amdb_ring_record) > header.end:
            return AMDB_STATUS_CORRUPT
        rec = record_at(w, pos)
        if rec.op == AMDB_OP_WRAP:
            if w.records_mask != capacity - 1:
                return AMDB_STATUS_CORRUPT      # a replayed log holds no WRAP records
            w.wrap_pos = pos
            pos += capacity - (pos & (capacity - 1))
            continue
        if rec.op != AMDB_OP_PUT and rec.op != AMDB_OP_DELETE:
            return AMDB_STATUS_CORRUPT
        if pos + amdb_record_bytes(rec.key_len, rec.value_len) > header.end:
            return AMDB_STATUS_CORRUPT
        # Ring records come from the owner, who hashed the key; a log read
        # back from disk is checked (found by tests/test_fuzz_logs.py).
        if w.check_hashes and rec.hash != amdb_xxh64(<uint8_t *>(rec + 1), rec.key_len, 0):
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
    cdef uint64_t node_off = hashindex_find(p.arena, amdb_arena_header_of(p.arena).hash_table, rec.hash, key, rec.key_len)
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
    amdb_fault_check_mid_link()
    hashindex_insert(p, rec.hash, node_off)         # publishes (after the skip list: crash_repair relies on it)
    amdb_store_relaxed(&c.live_keys, c.live_keys + 1)
    amdb_store_relaxed(&c.node_count, c.node_count + 1)
    amdb_store_relaxed(&c.version_count, c.version_count + 1)


cdef int apply_chunk(Worker *w, amdb_ring_chunk *header, uint64_t header_pos, uint64_t timestamp_ns) noexcept nogil:
    """Apply one chunk whole, or refuse it having changed nothing. The
    versions get `timestamp_ns`, or the time now when it is 0."""
    cdef uint64_t need, new_keys, i, count = header.count
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
    if timestamp_ns == 0:
        timestamp_ns = amdb_now_ns()
    w.chunk_timestamp = timestamp_ns
    w.chunk_hashes_len = 0
    for i in range(count):
        if i + PREFETCH_DISTANCE < count:
            table = table_at(w.p.arena, amdb_arena_header_of(w.p.arena).hash_table)
            ahead = record_at(w, w.entries[i + PREFETCH_DISTANCE].pos)
            amdb_prefetch(&table.slots[amdb_slot_home(ahead.hash, table.log2_capacity)])
        amdb_fault_check_after_records()
        apply_record(w, &w.entries[i], header.seq, timestamp_ns)
    fold_ledger(w, header.seq)
    return AMDB_STATUS_OK


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
    return v.block.kind == AMDB_BLOCK_VERSION and off + amdb_version_bytes(v.value_len) <= used


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
    cdef uint64_t latest, restored, bytes_left
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
            if node_plausible(p, amdb_version_tail_of(v).node, end):
                node = node_at(p.arena, amdb_version_tail_of(v).node)
                latest = amdb_load_relaxed(&node.latest)
                if latest >= start:
                    # Down the chain to the newest version from before the
                    # batch (0 for a key the batch created).
                    restored = latest
                    while restored >= start and version_plausible(p, restored, end) \
                            and version_at(p.arena, restored).prev < restored:
                        restored = version_at(p.arena, restored).prev
                    if restored >= start:
                        restored = 0           # cannot happen: chains only go down
                    amdb_store_release(&node.latest, restored)
        # Unreachable from here on (or once its node is restored, above):
        # retag it so that a walk of the arena (ledger verification) skips
        # it. Readers never look at block kinds.
        if block.kind == AMDB_BLOCK_VERSION or block.kind == AMDB_BLOCK_LEDGER:
            block.kind = AMDB_BLOCK_GARBAGE
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
                if amdb_load_acquire(&node_at(p.arena, pred).next[0]) == off:
                    status = commit_pages(p, hashindex_growth_bytes(p, 1))
                    if status != AMDB_STATUS_OK:
                        return status
                    hashindex_insert(p, n.hash, off)
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


cdef int crash_repair(Worker *w, uint64_t visible_seq, bint resume, uint64_t *undone_seq) noexcept nogil:
    """Take over a partition whose worker died (rule 4 of layout.h: what it
    left is usable, at worst with unlinked garbage).

    resume=False (it died handling a record): if the batch it began last was
    never made visible, undo it, as an ABORT would have.
    resume=True (it died between records, handling_pos == 0): every record
    it took is whole in the arena, so its open batch, if any, goes on here:
    the rest of it, its COMMIT or its ABORT are still in the ring."""
    cdef amdb_control *c = w.p.ctrl
    # Acquire: begin_batch stores the seq last, with release.
    cdef uint64_t seq = amdb_load_acquire(&c.open_batch_seq)
    cdef int status
    undone_seq[0] = 0
    if seq == 0 or seq <= visible_seq:
        return AMDB_STATUS_OK
    load_open_batch(w)
    if w.batch_start_off < AMDB_ARENA_FIRST_BLOCK or w.batch_start_off > c.arena_used:
        return AMDB_STATUS_CORRUPT
    if resume:
        return AMDB_STATUS_OK
    status = relink_crashed_nodes(w)
    if status != AMDB_STATUS_OK:
        return status
    undo_open_batch(w)
    undone_seq[0] = seq
    return AMDB_STATUS_OK


cdef bint chunk_is_poison(Worker *w, amdb_ring_chunk *header, uint64_t header_pos) noexcept nogil:
    """The chunk is one that crashed this partition's workers poison_after
    times (the owner's list, handed to this worker when it started)."""
    cdef uint64_t fingerprint = ring_chunk_fingerprint(w.p.ring, w.p.ctrl.ring_capacity, header_pos, header.end)
    cdef uint64_t i
    for i in range(w.poison_count):
        if w.poison[i] == fingerprint:
            return True
    return False


cdef void begin_batch(Worker *w, uint64_t seq) noexcept nogil:
    """Remember where the batch starts, so that ABORT can roll it back."""
    cdef amdb_control *c = w.p.ctrl
    w.batch_first_seq = seq
    w.batch_start_off = c.arena_used
    memcpy(w.batch_ledger_head, c.ledger_head, 32)
    w.batch_ledger_chunks = c.ledger_chunks
    w.batch_live_keys = c.live_keys
    w.batch_versions = c.version_count
    w.refusing = False
    w.batch_committed = False
    # The same, where a successor finds it should this process die before
    # the batch ends (crash_repair). The seq goes last, by a release store:
    # neither the compiler nor the CPU may move the fields above after it,
    # so a successor that sees the seq (acquire) sees the rest, wherever
    # this process died.
    memcpy(c.open_batch_ledger_head, c.ledger_head, 32)
    amdb_store_relaxed(&c.open_batch_start, w.batch_start_off)
    amdb_store_relaxed(&c.open_batch_live_keys, w.batch_live_keys)
    amdb_store_relaxed(&c.open_batch_versions, w.batch_versions)
    amdb_store_relaxed(&c.open_batch_ledger_chunks, w.batch_ledger_chunks)
    amdb_store_release(&c.open_batch_seq, seq)


cdef int log_chunk(Worker *w, amdb_ring_chunk *header, uint64_t header_pos) noexcept nogil:
    """Append the chunk just applied to the log: its records as they lie in
    the ring, in one piece, or two when they cross the ring's end (with or
    without a WRAP record before it: the record before may end exactly there)."""
    cdef amdb_log_chunk meta
    cdef LogPiece pieces[3]
    cdef uint64_t mask = w.p.ctrl.ring_capacity - 1
    cdef uint64_t start = header_pos + sizeof(amdb_ring_chunk)
    cdef uint64_t boundary = (start & ~mask) + mask + 1    # the ring's next end, in positions
    cdef uint64_t first_end
    meta.timestamp_ns = w.chunk_timestamp
    meta.count = header.count
    meta.flags = header.flags
    meta.reserved = 0
    pieces[0].data = &meta
    pieces[0].length = sizeof(meta)
    pieces[1].data = w.p.ring + (start & mask)
    if header.end <= boundary:
        pieces[1].length = header.end - start
        return log_append(&w.log, AMDB_LOG_CHUNK, header.seq, pieces, 2)
    # Bytes between a WRAP record and the ring's end are not records.
    first_end = w.wrap_pos if start <= w.wrap_pos < boundary else boundary
    pieces[1].length = first_end - start
    pieces[2].data = w.p.ring
    pieces[2].length = header.end - boundary
    return log_append(&w.log, AMDB_LOG_CHUNK, header.seq, pieces, 3)


cdef void handle_commit(Worker *w, amdb_ring_chunk *header) noexcept nogil:
    """A batch is whole on this worker: log COMMIT (synced per sync=), then
    acknowledge it like a chunk. Skipped for a refused batch (ABORT follows)."""
    cdef amdb_control *c = w.p.ctrl
    cdef LogPiece piece
    cdef uint64_t participants = header.count
    cdef int status
    if w.refusing:
        return
    piece.data = &participants
    piece.length = 8
    status = log_append(&w.log, AMDB_LOG_COMMIT, header.seq, &piece, 1)
    if status == AMDB_STATUS_OK:
        status = log_after_commit(&w.log)
    if status != AMDB_STATUS_OK:
        w.refusing = True
        amdb_store_relaxed(&c.failed_status, <uint64_t>status)
        amdb_store_release(&c.failed_chunk, header.chunk_no)
    else:
        w.batch_committed = True
        amdb_store_relaxed(&c.applied_seq, header.seq)
        amdb_store_release(&c.applied_chunk, header.chunk_no)
    progress_publish(c)


cdef void handle_compact(Worker *w, amdb_ring_chunk *header) noexcept nogil:
    """Write the next arena generation keeping `count` versions per key (0:
    all) and switch to it (compact.pyx); acknowledge it like a chunk. Sent
    between batches only: no batch is open, so there is nothing to roll back
    into the old generation afterwards."""
    cdef amdb_control *c = w.p.ctrl
    cdef CompactResult result
    cdef int status = compact_prepare(&w.p, header.count, header.seq, &w.finger, &result)
    if status != AMDB_STATUS_OK:
        amdb_store_relaxed(&c.failed_status, <uint64_t>status)
        amdb_store_release(&c.failed_chunk, header.chunk_no)
    else:
        amdb_fault_check_mid_compact()      # the new generation whole, the switch not made
        compact_recover(c)                  # the switch: the same code a new worker would replay
        compact_adopt(&w.p, w.arena_base, &w.finger, &result, header.seq)
        w.batch_first_seq = 0
        w.batch_start_off = 0
        w.refusing = False
        amdb_store_release(&c.applied_chunk, header.chunk_no)
    progress_publish(c)


cdef void handle_checkpoint(Worker *w, amdb_ring_chunk *header) noexcept nogil:
    cdef amdb_control *c = w.p.ctrl
    cdef int status = checkpoint_write(&w.p, &w.log, header.seq)
    if status != AMDB_STATUS_OK:
        amdb_store_relaxed(&c.failed_status, <uint64_t>status)
        amdb_store_release(&c.failed_chunk, header.chunk_no)
    else:
        amdb_store_release(&c.applied_chunk, header.chunk_no)
    progress_publish(c)


cdef void handle_abort(Worker *w, amdb_ring_chunk *header) noexcept nogil:
    cdef bint had_part = w.batch_first_seq != 0 and w.batch_first_seq >= header.seq
    if had_part and w.log.dir_fd >= 0 and log_append(&w.log, AMDB_LOG_ABORT, header.seq, NULL, 0) != AMDB_STATUS_OK:
        # Without its ABORT frame the log could show this attempt as
        # committed (wal.h, invariant 3): refuse every later write instead.
        amdb_store_relaxed(&w.p.ctrl.log_broken, 1)
    rollback_batch(w, header.seq, header.chunk_no)


cdef void handle_chunk(Worker *w, amdb_ring_chunk *header, uint64_t header_pos) noexcept nogil:
    """Apply (or skip) one chunk. `header` is the worker's private copy: after
    ring_release the chunk's ring bytes may already hold the owner's next data."""
    cdef amdb_control *c = w.p.ctrl
    cdef int status
    if header.flags & AMDB_CHUNK_FIRST_OF_BATCH:
        begin_batch(w, header.seq)
    elif w.refusing:
        return                    # the rest of a refused batch: the owner sends ABORT
    if w.poison_count and chunk_is_poison(w, header, header_pos):
        status = AMDB_STATUS_POISON      # refused before touching anything
    else:
        status = apply_chunk(w, header, header_pos, 0)
    if status == AMDB_STATUS_OK and w.log.dir_fd >= 0:
        # Logged after applying (the frame carries the versions' timestamp)
        # and before acknowledging (wal.h, invariant 2). A failure refuses the
        # chunk; the owner's ABORT then rolls back what it applied.
        status = log_chunk(w, header, header_pos)
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


cdef int replay_log(Worker *w, char *data, uint64_t length, uint64_t *frames_out) noexcept nogil:
    cdef int status
    w.check_hashes = True
    status = replay_frames(w, data, length, frames_out)
    w.check_hashes = False
    return status


cdef int replay_frames(Worker *w, char *data, uint64_t length, uint64_t *frames_out) noexcept nogil:
    # REQUIRES: data 8-byte aligned. Payloads are multiples of 8 (wal.h), so
    # every frame and record stays aligned; a log that breaks that is refused
    # (UBSan found misaligned frame reads on hostile logs).
    """Re-apply one log segment, as the worker first applied it: chunks with
    their logged timestamps, ABORTs as rollbacks. Every frame is checked
    again (the owner checked the file, but this code trusts no byte it
    reads). The owner has already cut every frame past the recovered seq."""
    cdef uint64_t pos = 0, payload, records
    cdef amdb_log_frame *frame
    cdef amdb_log_chunk *meta
    cdef amdb_ring_chunk header
    cdef int status
    frames_out[0] = 0
    while pos < length:
        if length - pos < sizeof(amdb_log_frame):
            return AMDB_STATUS_CORRUPT
        frame = <amdb_log_frame *>(data + pos)
        payload = pos + sizeof(amdb_log_frame)
        if (frame.magic != AMDB_LOG_MAGIC or frame.header_check != amdb_xxh64(frame, 32, 0)
                or frame.payload_len > length - payload or frame.payload_len % 8 != 0
                or frame.payload_check != amdb_xxh64(data + payload, frame.payload_len, frame.seq)):
            return AMDB_STATUS_CORRUPT
        if frame.kind == AMDB_LOG_CHUNK:
            if frame.payload_len < sizeof(amdb_log_chunk):
                return AMDB_STATUS_CORRUPT
            meta = <amdb_log_chunk *>(data + payload)
            records = payload + sizeof(amdb_log_chunk)
            header.op = AMDB_OP_CHUNK
            header.flags = meta.flags
            header.seq = frame.seq
            header.count = meta.count
            header.end = payload + frame.payload_len
            header.chunk_no = 0
            if header.flags & AMDB_CHUNK_FIRST_OF_BATCH:
                if w.batch_first_seq != 0 and not w.batch_committed:
                    rollback_batch(w, w.batch_first_seq, 0)     # an attempt nobody finished
                begin_batch(w, frame.seq)
            if meta.count > length:        # cannot be: records take 24 bytes or more
                return AMDB_STATUS_CORRUPT
            status = apply_chunk(w, &header, records - sizeof(amdb_ring_chunk), meta.timestamp_ns)
            if status != AMDB_STATUS_OK:
                return status
        elif frame.kind == AMDB_LOG_COMMIT:
            w.batch_committed = True
        elif frame.kind == AMDB_LOG_ABORT:
            rollback_batch(w, frame.seq, 0)
        else:
            return AMDB_STATUS_CORRUPT
        frames_out[0] += 1
        pos = payload + frame.payload_len
    return AMDB_STATUS_OK


cdef inline void take_record(amdb_control *c, uint64_t pos, amdb_ring_chunk *header) noexcept nogil:
    """Say which record this worker is handling, before it changes anything
    for it (layout.h, handling_pos): the op, seq and chunk_no first, the
    position last (release), so that the owner, reading after our death,
    finds them whole whenever it finds the position."""
    c.handling_op = header.op
    amdb_store_relaxed(&c.handling_seq, header.seq)
    amdb_store_relaxed(&c.handling_chunk_no, header.chunk_no)
    amdb_store_relaxed(&c.handling_end, header.end)
    amdb_store_release(&c.handling_pos, pos + 1)


cdef inline void finish_record(amdb_control *c) noexcept nogil:
    """The record taken last is released and acknowledged: a death from here
    on leaves nothing half done (release: after every store it made)."""
    amdb_store_release(&c.handling_pos, 0)


cdef int worker_loop(Worker *w) noexcept nogil:
    cdef amdb_control *c = w.p.ctrl
    cdef uint64_t capacity = c.ring_capacity
    cdef uint64_t tail = amdb_load_relaxed(&c.ring_tail)
    cdef uint64_t head
    cdef amdb_ring_chunk header      # a private copy: the ring bytes are the owner's once released
    cdef uint32_t op
    cdef int64_t idle_ns = IDLE_TIMEOUT_NS
    if w.log.sync_mode == SYNC_INTERVAL and w.log.interval_ns < <uint64_t>idle_ns:
        idle_ns = <int64_t>w.log.interval_ns
    while True:
        head = ring_wait_data(c, tail, idle_ns)
        if head == tail:
            log_idle(&w.log)
            if amdb_load_acquire(&c.shutdown_requested):
                return EXIT_SHUTDOWN
            if getppid() != w.parent_pid:
                return EXIT_OWNER_GONE
            continue
        while tail != head:
            op = (<uint32_t *>ring_at(w.p.ring, capacity - 1, tail))[0]
            if op == AMDB_OP_WRAP:
                tail += capacity - (tail & (capacity - 1))
                continue
            if op != AMDB_OP_CHUNK and op != AMDB_OP_ABORT and op != AMDB_OP_COMMIT \
                    and op != AMDB_OP_CHECKPOINT and op != AMDB_OP_COMPACT:
                return EXIT_CORRUPT
            header = (<amdb_ring_chunk *>ring_at(w.p.ring, capacity - 1, tail))[0]
            take_record(c, tail, &header)
            if op == AMDB_OP_CHUNK:
                handle_chunk(w, &header, tail)
                tail = header.end
            elif op == AMDB_OP_ABORT:
                handle_abort(w, &header)
                tail += sizeof(amdb_ring_chunk)
            else:
                tail += sizeof(amdb_ring_chunk)
                # Space back first: an owner that sees the acknowledgement
                # also sees the ring space free.
                ring_release(c, tail)
                if op == AMDB_OP_COMMIT:
                    handle_commit(w, &header)
                elif op == AMDB_OP_CHECKPOINT:
                    handle_checkpoint(w, &header)
                else:
                    handle_compact(w, &header)
            ring_release(c, tail)
            finish_record(c)


cdef void worker_init(Worker *w, Mapping mapping, int fd, int parent_pid) noexcept:
    """A worker's private state for the partition segment `mapping` maps.
    Its generation is in region control.arena_region, once compact_recover
    has finished a switch a dead worker may have left half done."""
    cdef amdb_control *c = <amdb_control *>mapping.base
    compact_recover(c)
    w.p.ctrl = c
    w.p.ring = mapping.base + c.ring_offset
    w.arena_base = mapping.base + c.arena_offset
    w.p.arena = region_base(w.arena_base, c, c.arena_region)
    w.p.region_offset = c.arena_offset + c.arena_region * c.arena_capacity
    w.p.fd = fd
    w.records = w.p.ring
    w.records_mask = c.ring_capacity - 1
    w.wrap_pos = 0
    w.check_hashes = False
    w.poison = NULL
    w.poison_count = 0
    w.entries = NULL
    w.chunk_hashes = NULL
    w.chunk_hashes_len = 0
    w.entries_capacity = 0
    w.batch_first_seq = 0
    w.batch_start_off = 0
    w.refusing = False
    w.batch_committed = False
    w.parent_pid = parent_pid
    w.log.dir_fd = -1
    w.log.fd = -1
    w.log.ctrl = c
    w.log.sync_mode = SYNC_NONE
    w.log.dirty = False
    w.log.offset = 0
    w.log.segment_no = 0
    w.log.interval_ns = 0
    w.log.last_sync_ns = amdb_monotonic_ns()
    w.log.segment_bytes = 1ULL << 62
    w.finger.rng_state = 0x9E3779B97F4A7C15ULL ^ (<uint64_t>c.worker_index * 0xBF58476D1CE4E5B9ULL) ^ amdb_monotonic_ns()
    if w.finger.rng_state == 0:
        w.finger.rng_state = 1


def fuzz_replay(const uint8_t[::1] data, uint64_t arena_size=4 << 20):
    """Fuzzing hook: replay `data` as a log segment into a fresh, private
    partition (a memfd, not shared) the way a recovering worker would, then
    verify every chain of it. Returns (status, frames replayed, breaks found);
    must never crash, whatever the bytes (tools/fuzz_logs.py)."""
    import os
    from amdb.native.engine import init_partition_control, CONTROL_BYTES
    cdef uint64_t ring_bytes = 1 << 16
    cdef uint64_t arena_offset = CONTROL_BYTES + ring_bytes
    cdef Worker w
    cdef uint64_t frames = 0
    cdef int status
    cdef uint64_t length = data.shape[0]
    cdef VerifyResult check
    memset(&check, 0, sizeof(check))
    fd = os.memfd_create("amdb-fuzz", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, arena_offset + arena_size)
        mapping = Mapping(fd, 0, arena_offset + arena_size, True)
        init_partition_control(mapping, 0, arena_offset + arena_size, CONTROL_BYTES, ring_bytes,
                               arena_offset, arena_size)
        worker_init(&w, mapping, fd, 0)
        status = arena_init(&w.p)
        if status == AMDB_STATUS_OK:
            skiplist_finger_reset(&w.p, &w.finger)
            w.records = <char *>&data[0] if length else w.p.ring
            w.records_mask = <uint64_t>-1
            with nogil:
                status = replay_log(&w, w.records, length, &frames)
            if w.batch_first_seq != 0 and not w.batch_committed:
                rollback_batch(&w, w.batch_first_seq, 0)
        free(w.entries)
        free(w.chunk_hashes)
        breaks = None
        if status == AMDB_STATUS_OK:     # what replay built must verify clean
            verify_partition(&w.p, &check)
            verify_ledger(&w.p, &check)
            breaks = check.breaks_total
            free(check.breaks)
        mapping.release()
    finally:
        os.close(fd)
    return status, frames, breaks


cdef int check_start(amdb_control *c, int status, str context) except -1:
    """Raise for a failed start step, having said why in the control block
    (start_status, state FAILED): the owner reports it with the exception it
    stands for (ArenaFullError for a full /dev/shm, say), not as a worker
    that merely exited."""
    from amdb.errors import raise_for_status
    if status != AMDB_STATUS_OK:
        amdb_store_relaxed(&c.start_status, <uint64_t>status)
        amdb_store_release(&c.worker_state, AMDB_WORKER_FAILED)
        progress_publish(c)
    raise_for_status(status, context)
    return 0


def run_worker(int fd, size_t segment_size, int parent_pid, durable=None, fault=None, respawn=None):
    """Attach to a partition segment and apply what the owner sends until it
    asks us to stop (returns "shutdown") or disappears ("owner_gone").
    `fault`: crash-test fault injection (amdb._worker.parse_fault_spec).

    `durable` (a dict, see amdb.storage.worker_plan) makes the worker first
    rebuild its arena from a checkpoint and the log segments the owner kept,
    then log everything it applies to a new segment.

    `respawn` ({"visible_seq": int, "resume": bool, "poison": [fingerprints]})
    makes it the successor of a worker that died: it keeps the arena as it is
    (layout.h, rule 4). With resume (the predecessor died between records) it
    carries on the predecessor's open batch from the ring; otherwise it undoes
    that batch unless the owner made it visible (crash_repair), logs the undo
    as an ABORT frame in a new log segment, and applies the ring from where
    the owner reset it. It refuses chunks whose fingerprint is in "poison"
    (AMDB_STATUS_POISON). A worker that cannot start says why in its control
    block (start_status, state FAILED) before it raises."""
    import mmap
    import os
    from amdb.errors import Error, raise_for_status
    cdef Mapping mapping = Mapping(fd, 0, segment_size, True)
    cdef Worker w
    cdef amdb_control *c = <amdb_control *>mapping.base
    cdef int status
    cdef int result
    cdef uint64_t frames = 0, replay_length, visible_seq, undone_seq = 0
    cdef const uint8_t[::1] segment_bytes
    if c.magic != AMDB_PARTITION_MAGIC or c.layout_version != AMDB_LAYOUT_VERSION:
        raise Error("not an AmDb partition segment (magic or layout version differs)", code="corrupt")
    worker_init(&w, mapping, fd, parent_pid)
    amdb_store_relaxed(&c.worker_pid, <uint64_t>getpid())

    try:
        if durable is not None:
            w.log.dir_fd = os.open(durable["dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            w.log.sync_mode = durable["sync"]
            w.log.interval_ns = <uint64_t>durable["interval_ms"] * 1000000
            w.log.segment_bytes = durable["segment_bytes"]
            if durable["checkpoint"] is not None and respawn is None:
                name = os.fsencode(durable["checkpoint"])
                status = checkpoint_load(&w.p, w.log.dir_fd, name)
                check_start(c, status, f"loading checkpoint {durable['checkpoint']}")
        status = arena_init(&w.p)
        check_start(c, status, "initialising the arena")
        skiplist_finger_reset(&w.p, &w.finger)
        if respawn is not None:
            poison = [int(f) for f in respawn.get("poison", ())]
            if poison:
                w.poison = <uint64_t *>malloc(len(poison) * sizeof(uint64_t))
                if w.poison == NULL:
                    raise MemoryError()
                for i, fingerprint in enumerate(poison):
                    w.poison[i] = fingerprint
                w.poison_count = len(poison)
            visible_seq = respawn["visible_seq"]
            resume = bool(respawn.get("resume", False))
            with nogil:
                status = crash_repair(&w, visible_seq, resume, &undone_seq)
            check_start(c, status, "taking over the arena of a crashed worker")
            skiplist_finger_reset(&w.p, &w.finger)
            if durable is not None and not durable["read_only"]:
                status = log_start_segment(&w.log, durable["next_segment"])
                check_start(c, status, "starting a new log segment")
                if undone_seq:
                    # The predecessor may have logged chunks (even a COMMIT)
                    # of the batch it died in: this frame makes recovery
                    # drop them (wal.h, invariant 3).
                    status = log_append(&w.log, AMDB_LOG_ABORT, undone_seq, NULL, 0)
                    check_start(c, status, "logging the rollback of the crashed worker's batch")
        elif durable is not None:
            for name, length in durable["replay"]:
                with open(os.path.join(durable["dir"], name), "rb") as f:
                    if length == 0:
                        continue
                    if os.fstat(f.fileno()).st_size < length:
                        raise Error(f"{name} is shorter than the {length} bytes to replay", code="corrupt")
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                        segment_bytes = view
                        w.records = <char *>&segment_bytes[0]
                        w.records_mask = <uint64_t>-1
                        replay_length = length
                        with nogil:
                            status = replay_log(&w, w.records, replay_length, &frames)
                        w.records = w.p.ring
                        w.records_mask = c.ring_capacity - 1
                        segment_bytes = None
                check_start(c, status, f"replaying {name}")
            if w.batch_first_seq != 0 and not w.batch_committed:
                rollback_batch(&w, w.batch_first_seq, 0)    # its COMMIT is not in this log
            # This session's progress counters start from zero (the owner's
            # chunk and abort numbers do); the ledger and the arena carry on.
            w.batch_first_seq = 0
            w.batch_committed = False
            amdb_store_relaxed(&c.applied_chunk, 0)
            amdb_store_relaxed(&c.failed_chunk, 0)
            amdb_store_relaxed(&c.aborts_done, 0)
            amdb_store_relaxed(&c.chunks_applied, 0)
            amdb_store_relaxed(&c.log_bytes, durable["log_bytes"])
            if not durable["read_only"]:
                status = log_start_segment(&w.log, durable["next_segment"])
                check_start(c, status, "starting a new log segment")
            skiplist_finger_reset(&w.p, &w.finger)
    except BaseException:
        free(w.poison)
        log_close(&w.log)
        if w.log.dir_fd >= 0:
            os.close(w.log.dir_fd)
        mapping.release()
        raise
    fault_arm_from_config(fault, c.worker_index, parent_pid)
    amdb_store_release(&c.worker_state, AMDB_WORKER_READY)
    progress_publish(c)
    try:
        with nogil:
            result = worker_loop(&w)
    finally:
        free(w.entries)
        free(w.chunk_hashes)
        free(w.poison)
        log_close(&w.log)
        if w.log.dir_fd >= 0:
            os.close(w.log.dir_fd)
        amdb_store_release(&c.worker_state, AMDB_WORKER_STOPPED)
        progress_publish(c)
        mapping.release()
    if result == EXIT_CORRUPT:
        raise Error("ring holds a record of unknown kind", code="corrupt")
    return "shutdown" if result == EXIT_SHUTDOWN else "owner_gone"
