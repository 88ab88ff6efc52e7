# cython: language_level=3
"""Applying a chunk (nogil): index its records, sort them by key prefix,
insert them into the partition's skip list + hash index, fold the versions'
hashes into the ledger. Also the bookkeeping of a batch's start (what a
rollback or a successor needs) and the worker's private state.

Who calls it: the worker loop (loop.pyx) and log replay (replay.pyx).

Process safety: this code runs only in worker i and is the single writer of
arena i (layout.h). A chunk is applied whole or not at all: the worker
commits the arena memory the whole chunk may need before it changes
anything, and refuses the chunk if it cannot.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy, memcmp
from amdb.native.undo cimport note_arena_write
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping, commit_pages, alloc_block
from amdb.native.hashing cimport amdb_sha256, amdb_sha256_init, amdb_sha256_update, amdb_sha256_final, amdb_xxh64
from amdb.native.skiplist cimport skiplist_insert, skiplist_random_height
from amdb.native.hashindex cimport hashindex_find, hashindex_insert, hashindex_growth_bytes, hashindex_slots_left
from amdb.native.versions cimport version_append, is_live
from amdb.native.wal cimport SYNC_NONE
from amdb.native.compact cimport compact_recover, region_base
from amdb.native.faults cimport *
from amdb.native.worker.state cimport Worker, ChunkEntry, record_at

cdef enum:
    PREFETCH_DISTANCE = 16         # records ahead whose hash slot we prefetch
    INSERTION_SORT_MAX = 16


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
        if rec.op != AMDB_OP_PUT and rec.op != AMDB_OP_DELETE and not amdb_op_is_rmw(rec.op):
            return AMDB_STATUS_CORRUPT
        if pos + amdb_record_bytes(rec.key_len, rec.value_len) > header.end:
            return AMDB_STATUS_CORRUPT
        if amdb_op_is_rmw(rec.op) and not rmw_record_whole(rec):
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
        if rec.op != AMDB_OP_DELETE:          # a put, or a read-modify-write that may become one
            need[0] += amdb_node_bytes(entry.height, rec.key_len)
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


cdef inline uint64_t load_le64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)                # little-endian hosts (layout.h)
    return v


cdef bint rmw_record_whole(amdb_ring_record *rec) noexcept nogil:
    """The value of a read-modify-write record has the shape its op needs
    (layout.h, "Read-modify-write"); a log read back from disk is checked."""
    cdef const uint8_t *value = <uint8_t *>(rec + 1) + rec.key_len
    if rec.op == AMDB_OP_INCREMENT:
        return rec.value_len == 16
    if rec.op == AMDB_OP_COMPARE_AND_SET:
        return rec.value_len >= 8 and load_le64(value) <= <uint64_t>rec.value_len - 8 + 1
    return True


cdef int resolve_rmw(Worker *w, amdb_ring_record *rec, uint64_t node_off, uint8_t *counter,
                     const uint8_t **value_out, uint32_t *value_len_out, int64_t *result) noexcept nogil:
    """What read-modify-write record `rec` does to its key as it stands now
    (its latest version, the batch's own earlier writes included): OK with
    the value to put in *value_out / *value_len_out (`counter`, 8 bytes, holds
    an increment's sum), or the status that says why it writes nothing.
    *result gets the outcome the producer reads back (layout.h)."""
    cdef const uint8_t *arg = <uint8_t *>(rec + 1) + rec.key_len
    cdef uint64_t latest = amdb_node_latest_relaxed(node_at(w.p.arena, node_off)) if node_off else 0
    cdef bint live = latest != 0 and is_live(w.p.arena, latest)
    cdef amdb_version *v = version_at(w.p.arena, latest) if live else NULL
    cdef int64_t current, total
    cdef uint64_t expected_len
    result[0] = 0
    if rec.op == AMDB_OP_INCREMENT:
        if live:
            if v.value_len != 8:
                return AMDB_STATUS_NOT_COUNTER
            current = amdb_counter_decode(amdb_version_value(v))
        else:
            current = <int64_t>load_le64(arg + 8)          # `initial`
        if amdb_add_overflows(current, <int64_t>load_le64(arg), &total):
            return AMDB_STATUS_OVERFLOW
        amdb_counter_encode(total, counter)
        result[0] = total
        value_out[0] = counter
        value_len_out[0] = 8
        return AMDB_STATUS_OK
    if rec.op == AMDB_OP_PUT_IF_ABSENT:
        if live:
            return AMDB_STATUS_CONDITION_FAILED
        value_out[0] = arg
        value_len_out[0] = rec.value_len
        result[0] = 1
        return AMDB_STATUS_OK
    # COMPARE_AND_SET: header = expected length + 1 (0: expected absent)
    expected_len = load_le64(arg)
    if expected_len == 0:
        if live:
            return AMDB_STATUS_CONDITION_FAILED
    else:
        expected_len -= 1
        if not live or v.value_len != expected_len or \
                (expected_len and memcmp(amdb_version_value(v), arg + 8, expected_len) != 0):
            return AMDB_STATUS_CONDITION_FAILED
    value_out[0] = arg + 8 + expected_len
    value_len_out[0] = <uint32_t>(rec.value_len - 8 - expected_len)
    result[0] = 1
    return AMDB_STATUS_OK


cdef int apply_record(Worker *w, ChunkEntry *entry, uint64_t seq, uint64_t timestamp_ns) noexcept nogil:
    """Apply one record. OK, or (only a read-modify-write of a batch, whose
    condition failed) the status that refuses the chunk: what the chunk
    applied before it is then rolled back with the batch (ABORT)."""
    cdef PartitionView *p = &w.p
    cdef amdb_control *c = p.ctrl
    cdef amdb_ring_record *rec = record_at(w, entry.pos)
    cdef const uint8_t *key = <uint8_t *>(rec + 1)
    cdef const uint8_t *value = key + rec.key_len
    cdef uint32_t value_len = rec.value_len
    cdef uint64_t node_off = hashindex_find(p.arena, amdb_arena_header_of(p.arena).hash_table, rec.hash, key, rec.key_len)
    cdef uint64_t version_off, latest
    cdef amdb_node *node
    cdef uint64_t node_bytes
    cdef uint8_t counter[8]
    cdef int64_t result
    cdef int status
    cdef amdb_rmw_result *slot
    if amdb_op_is_rmw(rec.op):
        status = resolve_rmw(w, rec, node_off, counter, &value, &value_len, &result)
        if rec.reserved == 0:
            if status != AMDB_STATUS_OK:
                return status                       # a batch's condition: the batch is refused
        else:
            # A record by itself: its outcome goes to its result slot, and a
            # failure writes nothing. Plain stores: applied_chunk's release
            # store orders them before the producer reads (layout.h).
            slot = &c.rmw_results[rec.reserved % AMDB_RMW_RESULTS]
            slot.value = result
            slot.status = <uint32_t>(status if status != AMDB_STATUS_CONDITION_FAILED else AMDB_STATUS_OK)
            slot.ticket = rec.reserved
            if status != AMDB_STATUS_OK:
                return AMDB_STATUS_OK
    if rec.op == AMDB_OP_DELETE:
        if node_off == 0:
            return AMDB_STATUS_OK
        latest = amdb_node_latest_relaxed(node_at(p.arena, node_off))
        if not is_live(p.arena, latest):
            return AMDB_STATUS_OK                   # deleting a missing key: nothing to record
        version_off = version_append(p, node_off, AMDB_VERSION_TOMBSTONE | w.version_flags, NULL, 0, seq,
                                     timestamp_ns)
        record_for_ledger(w, version_off)
        # Release: the tombstone is whole before readers can reach it.
        note_arena_write(p, &node_at(p.arena, node_off).latest)
        amdb_node_publish_latest(node_at(p.arena, node_off), version_off)
        amdb_store_relaxed(&c.live_keys, c.live_keys - 1)
        amdb_store_relaxed(&c.version_count, c.version_count + 1)
        return AMDB_STATUS_OK
    if node_off != 0:
        latest = amdb_node_latest_relaxed(node_at(p.arena, node_off))
        version_off = version_append(p, node_off, w.version_flags, value, value_len, seq, timestamp_ns)
        record_for_ledger(w, version_off)
        note_arena_write(p, &node_at(p.arena, node_off).latest)
        amdb_node_publish_latest(node_at(p.arena, node_off), version_off)
        if not is_live(p.arena, latest):
            amdb_store_relaxed(&c.live_keys, c.live_keys + 1)
        amdb_store_relaxed(&c.version_count, c.version_count + 1)
        return AMDB_STATUS_OK
    # A new key: build the node and its first version, then link it.
    node_bytes = amdb_node_bytes(entry.height, rec.key_len)
    node_off = alloc_block(p, AMDB_BLOCK_NODE, node_bytes)
    node = node_at(p.arena, node_off)
    amdb_node_init_latest(node, 0)
    node.key_prefix = entry.prefix
    node.hash = rec.hash
    node.key_len = rec.key_len
    node.height = <uint16_t>entry.height
    node.reserved = 0
    memcpy(<uint8_t *>amdb_node_key(node), key, rec.key_len)
    version_off = version_append(p, node_off, w.version_flags, value, value_len, seq, timestamp_ns)
    record_for_ledger(w, version_off)
    amdb_node_init_latest(node, version_off)                       # unpublished node: plain store
    amdb_fault_check_mid_insert()
    skiplist_insert(p, node_off, &w.finger)         # publishes (level 0 = commit point)
    amdb_fault_check_mid_link()
    hashindex_insert(p, rec.hash, node_off, w.may_grow)   # publishes (after the skip list: crash_repair relies on it)
    amdb_store_relaxed(&c.live_keys, c.live_keys + 1)
    amdb_store_relaxed(&c.node_count, c.node_count + 1)
    amdb_store_relaxed(&c.version_count, c.version_count + 1)
    return AMDB_STATUS_OK


cdef int apply_chunk(Worker *w, amdb_ring_chunk *header, uint64_t header_pos, uint64_t timestamp_ns) noexcept nogil:
    """Apply one chunk whole, or refuse it having changed nothing (for want
    of memory), or, a batch's read-modify-write failing its condition, refuse
    it part applied: the batch's ABORT undoes that part. The versions get
    `timestamp_ns`, or the time now when it is 0."""
    cdef uint64_t need, new_keys, i, count = header.count
    cdef amdb_hash_table *table
    cdef amdb_ring_record *ahead
    cdef bint sorted_already = True
    cdef uint64_t growth
    cdef int status = index_chunk(w, header, header_pos, &need, &new_keys)
    if status != AMDB_STATUS_OK:
        return status
    growth = hashindex_growth_bytes(&w.p, new_keys)
    w.may_grow = True
    w.version_flags = 0
    if header.flags & AMDB_CHUNK_SOLO:
        # An async single write (layout.h, "Async single writes"): its room
        # is committed already; the table grows only with memory beyond what
        # the producer was promised, else it fills up to its hard load.
        w.version_flags = AMDB_VERSION_SOLO
        if growth and commit_pages(&w.p, need + growth + promised_room(w.p.ctrl)) != AMDB_STATUS_OK:
            w.may_grow = False
            growth = 0
    status = commit_pages(&w.p, need + growth)
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
        status = apply_record(w, &w.entries[i], header.seq, timestamp_ns)
        if status != AMDB_STATUS_OK:
            return status               # a batch's failed condition: ABORT undoes the part applied
    fold_ledger(w, header.seq)
    return AMDB_STATUS_OK


cdef inline uint64_t promised_room(amdb_control *c) noexcept nogil:
    """Arena bytes the producer may still charge SOLO records against."""
    return amdb_load_relaxed(&c.credit_bytes) - amdb_load_relaxed(&c.refunded_bytes)


cdef void publish_credit(Worker *w) noexcept nogil:
    """Publish what the producer may charge (layout.h, "Async single writes"):
    the committed room, and the new keys the hash table takes without
    growing, each up to a cap (layout.h). Release: the room is committed before the producer relies on it.
    Never lowers credit_records; credit_bytes goes down only after a batch
    or a compaction took room (the producer rereads it after those)."""
    cdef amdb_control *c = w.p.ctrl
    cdef uint64_t committed = amdb_load_acquire(&c.arena_committed)    # the committer thread raises it too
    cdef uint64_t used = amdb_load_relaxed(&c.arena_used)
    cdef uint64_t room = min(committed - used if committed > used else 0, AMDB_ASYNC_CREDIT_BYTES)
    cdef uint64_t records = amdb_load_relaxed(&c.refunded_records) + min(hashindex_slots_left(&w.p),
                                                                        AMDB_ASYNC_WINDOW)
    if records > amdb_load_relaxed(&c.credit_records):
        amdb_store_release(&c.credit_records, records)
    amdb_store_release(&c.credit_bytes, amdb_load_relaxed(&c.refunded_bytes) + room)


cdef void refund_solo(Worker *w, amdb_ring_chunk *header, uint64_t header_pos) noexcept nogil:
    """Count a SOLO chunk as done (applied or refused): give back what the
    producer charged for it, then publish the credit."""
    cdef amdb_control *c = w.p.ctrl
    cdef uint64_t capacity = c.ring_capacity
    cdef uint64_t pos = header_pos + sizeof(amdb_ring_chunk)
    cdef amdb_ring_record *rec = record_at(w, pos)
    if rec.op == AMDB_OP_WRAP:          # the record lies at the ring's start
        rec = record_at(w, pos + capacity - (pos & (capacity - 1)))
    amdb_store_relaxed(&c.refunded_bytes, c.refunded_bytes + amdb_async_charge(rec.key_len, rec.value_len))
    amdb_store_relaxed(&c.refunded_records, c.refunded_records + 1)
    publish_credit(w)


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
    w.p.undo = NULL
    w.retired.count = 0
    w.p.retired = &w.retired
    w.compacted = False
    w.bg = NULL
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
    w.may_grow = True
    w.version_flags = 0
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


# ---- fault injection (faults.h): its state lives in this module alone ----------

cdef int arm_fault(object fault, uint64_t worker_index, int owner_pid) except -1:
    """Arm this worker's crash-test fault (amdb/_worker.py parsed it)."""
    return fault_arm_from_config(fault, worker_index, owner_pid)


cdef void fault_check_mid_publish() noexcept nogil:
    amdb_fault_check_mid_publish()


cdef void fault_check_mid_compact() noexcept nogil:
    amdb_fault_check_mid_compact()
