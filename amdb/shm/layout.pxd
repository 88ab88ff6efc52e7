# cython: language_level=3
"""Declarations of layout.h: the shared-memory layout (see its header comment
for who writes which field and the numbered invariants)."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from "layout.h" nogil:
    enum:
        AMDB_PARTITION_MAGIC
        AMDB_DATABASE_MAGIC
        AMDB_LAYOUT_VERSION
        AMDB_SLOT_COUNT
        AMDB_MAX_WORKERS
        AMDB_CONTROL_BYTES
        AMDB_PAGE
        AMDB_ARENA_FIRST_BLOCK
        AMDB_ARENA_REGIONS
        AMDB_COMPACT_IDLE
        AMDB_COMPACT_BUILDING
        AMDB_COMPACT_SWITCHING
        AMDB_COMMIT_STEP
        AMDB_COMMIT_MIN_STEP
        AMDB_RING_COMMIT_STEP
        AMDB_MAX_ARENA_BYTES
        AMDB_MAX_HEIGHT
        AMDB_CKPT_STAGE_COPYING
        AMDB_CKPT_STAGE_NOTED
        AMDB_CKPT_STAGE_RENAMED
        AMDB_STATUS_OK
        AMDB_STATUS_ARENA_FULL
        AMDB_STATUS_SHM_FULL
        AMDB_STATUS_CORRUPT
        AMDB_STATUS_TIMEOUT
        AMDB_STATUS_NO_MEMORY
        AMDB_STATUS_IO_ERROR
        AMDB_STATUS_POISON
        AMDB_STATUS_CONDITION_FAILED
        AMDB_STATUS_NOT_COUNTER
        AMDB_STATUS_OVERFLOW
        AMDB_RMW_RESULTS
        AMDB_WORKER_STARTING
        AMDB_WORKER_READY
        AMDB_WORKER_STOPPED
        AMDB_WORKER_FAILED
        AMDB_MAX_READER_SLOTS
        AMDB_CHANNEL_MAGIC
        AMDB_CHANNEL_BYTES
        AMDB_OP_PUT
        AMDB_OP_DELETE
        AMDB_OP_CHUNK
        AMDB_OP_ABORT
        AMDB_OP_WRAP
        AMDB_OP_COMMIT
        AMDB_OP_CHECKPOINT
        AMDB_OP_COMPACT
        AMDB_OP_INCREMENT
        AMDB_OP_PUT_IF_ABSENT
        AMDB_OP_COMPARE_AND_SET
        AMDB_CHUNK_FIRST_OF_BATCH
        AMDB_CHUNK_SOLO
        AMDB_ASYNC_WINDOW
        AMDB_ASYNC_CREDIT_BYTES
        AMDB_VERSION_SOLO
        AMDB_VERSION_HASHED_FLAGS
        AMDB_BLOCK_NODE
        AMDB_BLOCK_VERSION
        AMDB_BLOCK_HASH_TABLE
        AMDB_BLOCK_PAD
        AMDB_BLOCK_LEDGER
        AMDB_BLOCK_GARBAGE
        AMDB_BLOCK_LEDGER_BASE
        AMDB_VERSION_TOMBSTONE
        AMDB_VERSION_LINKED
        AMDB_VERSION_AFTER_NODE
        AMDB_HASH_MAX_LOAD_NUM
        AMDB_HASH_MAX_LOAD_DEN
        AMDB_HASH_HARD_LOAD_NUM
        AMDB_HASH_HARD_LOAD_DEN
        AMDB_HASH_INITIAL_CAPACITY
        AMDB_HASH_INITIAL_LOG2
        AMDB_SLOT_TAG_BITS
        AMDB_TABLE_RELEASED

    ctypedef struct amdb_rmw_result:
        int64_t value
        uint32_t status
        uint32_t ticket

    ctypedef struct amdb_control:
        uint64_t magic
        uint64_t layout_version
        uint64_t segment_size
        uint64_t ring_offset
        uint64_t ring_capacity
        uint64_t arena_offset
        uint64_t arena_capacity
        uint64_t worker_index
        uint64_t ring_head
        uint32_t ring_data_event
        uint32_t consumer_sleeping
        uint64_t shutdown_requested
        uint64_t compact_horizon
        uint64_t ring_tail
        uint32_t ring_space_event
        uint32_t producer_sleeping
        uint64_t handling_pos
        uint32_t handling_op
        uint64_t handling_seq
        uint64_t handling_chunk_no
        uint64_t handling_end
        uint64_t applied_chunk
        uint64_t applied_seq
        uint64_t failed_chunk
        uint64_t failed_status
        uint64_t aborts_done
        uint32_t progress_event
        uint32_t owner_waiting
        uint64_t worker_state
        uint64_t worker_pid
        uint64_t start_status
        uint64_t arena_used
        uint64_t arena_committed
        uint64_t live_keys
        uint64_t node_count
        uint64_t version_count
        uint64_t chunks_applied
        uint8_t ledger_head[32]
        uint64_t ledger_chunks
        uint64_t log_segment
        uint64_t log_bytes
        uint64_t checkpoint_seq
        uint64_t log_syncs
        uint64_t log_errors
        uint64_t log_broken
        uint8_t open_batch_ledger_head[32]
        uint64_t open_batch_seq
        uint64_t open_batch_start
        uint64_t open_batch_live_keys
        uint64_t open_batch_versions
        uint64_t open_batch_ledger_chunks
        uint64_t heartbeat
        uint64_t incarnation
        uint64_t arena_region
        uint64_t compact_state
        uint64_t switch_region
        uint64_t switch_used
        uint64_t switch_committed
        uint64_t switch_live_keys
        uint64_t switch_node_count
        uint64_t switch_version_count
        uint64_t compactions
        uint64_t versions_reclaimed
        uint64_t nodes_reclaimed
        uint64_t last_compact_seq
        uint64_t last_compact_ns
        uint64_t last_bytes_before
        uint64_t last_bytes_after
        uint64_t credit_bytes
        uint64_t credit_records
        uint64_t refunded_bytes
        uint64_t refunded_records
        uint64_t checkpoint_started
        uint64_t checkpoint_done
        uint64_t checkpoint_status
        uint64_t checkpoint_undo_words
        uint32_t checkpoint_hold
        uint32_t checkpoint_held
        uint64_t tables_retired
        uint64_t tables_drained
        amdb_rmw_result rmw_results[128]   # AMDB_RMW_RESULTS

    ctypedef struct amdb_reader_slot:
        uint64_t pid
        uint64_t epoch
        uint64_t pin_seq
    ctypedef struct amdb_db_control:
        uint64_t magic
        uint64_t layout_version
        uint64_t worker_count
        uint64_t slot_count
        uint64_t reader_slot_count
        uint64_t visible_seq
        uint64_t read_epoch
        uint64_t solo_seq
        uint64_t solo_chunk[AMDB_MAX_WORKERS]
        uint32_t forward_event
        uint32_t forwarder_sleeping
        uint16_t slot_owner[16384]
        amdb_reader_slot readers[1]     # reader_slot_count of them (a flexible array in C)

    uint64_t amdb_db_control_bytes(uint64_t reader_slots)
    uint64_t amdb_db_control_slots_within(uint64_t length)

    ctypedef struct amdb_channel:
        uint64_t magic
        uint64_t capacity
        uint64_t client_pid
        uint64_t closed
        uint64_t head
        uint32_t client_waiting
        uint64_t tail
        uint32_t tail_event
        uint32_t broken
        uint64_t refused
        uint64_t refused_status
        uint64_t forwarded_chunk[AMDB_MAX_WORKERS]

    ctypedef struct amdb_ring_record:
        uint32_t op
        uint32_t key_len
        uint32_t value_len
        uint32_t reserved
        uint64_t hash

    ctypedef struct amdb_ring_chunk:
        uint32_t op
        uint32_t flags
        uint64_t seq
        uint64_t count
        uint64_t end
        uint64_t chunk_no

    ctypedef struct amdb_block:
        uint32_t kind
        uint32_t words

    ctypedef struct amdb_node:
        amdb_block block
        uint64_t latest
        uint64_t key_prefix
        uint64_t hash
        uint32_t key_len
        uint16_t height
        uint16_t reserved
        uint64_t next[1]

    uint64_t amdb_node_next_acquire(const amdb_node *n, uint32_t level) noexcept
    uint64_t amdb_node_next_relaxed(const amdb_node *n, uint32_t level) noexcept
    void amdb_node_publish_next(amdb_node *n, uint32_t level, uint64_t off) noexcept
    void amdb_node_init_next(amdb_node *n, uint32_t level, uint64_t off) noexcept
    uint64_t amdb_node_latest_acquire(const amdb_node *n) noexcept
    uint64_t amdb_node_latest_relaxed(const amdb_node *n) noexcept
    void amdb_node_publish_latest(amdb_node *n, uint64_t off) noexcept
    void amdb_node_init_latest(amdb_node *n, uint64_t off) noexcept

    ctypedef struct amdb_version:
        amdb_block block
        uint64_t prev
        uint64_t seq
        uint32_t flags
        uint32_t value_len

    ctypedef struct amdb_version_tail:
        uint64_t version_no
        uint64_t timestamp_ns
        uint64_t hash

    ctypedef uint64_t amdb_hash_slot
    uint64_t amdb_slot_tag(uint64_t hash) noexcept
    uint64_t amdb_slot_word(uint64_t hash, uint64_t node_off) noexcept
    uint64_t amdb_slot_node(uint64_t word) noexcept
    uint64_t amdb_slot_word_tag(uint64_t word) noexcept
    uint64_t amdb_slot_home(uint64_t hash, uint32_t log2_capacity) noexcept

    ctypedef struct amdb_ledger_block:
        amdb_block block
        uint64_t seq
        uint64_t versions
        uint8_t head[32]

    ctypedef struct amdb_ledger_base_block:
        amdb_block block
        uint64_t seq
        uint64_t versions
        uint8_t head[32]
        uint8_t kept[32]

    ctypedef struct amdb_arena_header:
        uint64_t magic
        uint64_t generation
        uint64_t skiplist_head
        uint64_t hash_table
        uint64_t base_block
        uint64_t compact_seq
        uint64_t keep_versions
        uint64_t reserved

    amdb_arena_header *amdb_arena_header_of(const char *arena) noexcept
    uint64_t arena_skiplist_head "amdb_arena_skiplist_head" (const char *arena) noexcept
    uint64_t arena_hash_table "amdb_arena_hash_table" (const char *arena) noexcept

    ctypedef struct amdb_hash_table:
        amdb_block block
        uint64_t capacity
        uint64_t count
        uint32_t log2_capacity
        uint32_t flags
        amdb_hash_slot slots[1]

    uint64_t amdb_round8(uint64_t n) noexcept
    uint64_t amdb_node_bytes(uint32_t height, uint32_t key_len) noexcept
    uint64_t amdb_version_bytes(uint32_t value_len) noexcept
    uint64_t amdb_version_block_bytes(uint32_t value_len, uint32_t flags) noexcept
    uint64_t amdb_version_tail_bytes(uint32_t flags) noexcept
    uint64_t amdb_record_bytes(uint32_t key_len, uint32_t value_len) noexcept
    uint64_t amdb_async_charge(uint32_t key_len, uint32_t value_len) noexcept
    const uint8_t *amdb_node_key(const amdb_node *n) noexcept
    const uint8_t *amdb_version_value(const amdb_version *v) noexcept
    amdb_version_tail *amdb_version_tail_of(const amdb_version *v) noexcept
    uint64_t *amdb_version_stored_prev_hash(const amdb_version *v) noexcept
    uint64_t *amdb_version_stored_node(const amdb_version *v) noexcept
    uint64_t amdb_version_prev_hash(const char *arena, const amdb_version *v) noexcept
    uint64_t amdb_version_node_after(const amdb_version *v, uint64_t before) noexcept
    uint64_t amdb_key_prefix(const uint8_t *key, uint32_t length) noexcept
    bint amdb_op_is_rmw(uint32_t op) noexcept
    int64_t amdb_counter_decode(const uint8_t *value) noexcept
    void amdb_counter_encode(int64_t n, uint8_t *out) noexcept
    bint amdb_add_overflows(int64_t a, int64_t b, int64_t *sum) noexcept


# Typed views of arena offsets (invariant 1: offsets, never pointers).
cdef inline amdb_node *node_at(const char *arena, uint64_t off) noexcept nogil:
    return <amdb_node *>(arena + off)

cdef inline amdb_version *version_at(const char *arena, uint64_t off) noexcept nogil:
    return <amdb_version *>(arena + off)

cdef inline amdb_hash_table *table_at(const char *arena, uint64_t off) noexcept nogil:
    return <amdb_hash_table *>(arena + off)


# One partition as a process sees it. The owner maps the arena read-only and
# has fd == -1; the worker maps everything read-write and keeps fd for
# posix_fallocate (commit_pages). `arena` is the base of one arena region (the
# current one, or the one compaction is writing), `region_offset` where that
# region starts in the segment (arena_offset + region * arena_capacity).
# `undo`: an UndoLog (amdb/native/undo.pxd) while a background checkpoint
# copies this arena (the worker's view only), else NULL.
ctypedef struct PartitionView:
    amdb_control *ctrl
    char *ring
    char *arena
    int fd
    uint64_t region_offset
    void *undo
    void *retired
