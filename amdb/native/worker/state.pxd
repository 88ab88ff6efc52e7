# cython: language_level=3
"""A worker's private state (the Worker struct every worker module works on)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from amdb.shm.layout cimport PartitionView, amdb_ring_record
from amdb.native.skiplist cimport SkipFinger
from amdb.native.wal cimport LogWriter, BackgroundCheckpoint
from amdb.native.hashindex cimport RetiredTables
from amdb.native.worker.committer cimport Committer
from amdb.shm.ring cimport ring_at


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
    bint may_grow                # the chunk being applied may grow the hash table (apply_chunk)
    uint32_t version_flags       # flags the chunk's versions get besides their own (AMDB_VERSION_SOLO)
    int parent_pid
    char *records                # where ring positions of records point: the ring, or a log
    uint64_t records_mask        #   segment being replayed (mask ~0: positions are offsets)
    uint64_t wrap_pos            # ring position of the current chunk's WRAP record, 0 = none
    uint64_t chunk_timestamp     # timestamp_ns of the versions of the last applied chunk
    bint check_hashes            # replaying a log: recompute each record's key hash, trust nothing
    uint64_t *poison             # fingerprints of chunks to refuse (poison batches), or NULL
    uint64_t poison_count
    LogWriter log                # the write-ahead log (log.dir_fd < 0: memory-only)
    BackgroundCheckpoint *bg     # the checkpoint being written (wal.pyx), or NULL
    RetiredTables retired        # outgrown hash tables not given back yet (p.retired points here)
    Committer committer          # commits arena memory ahead in a thread of its own (committer.pyx)
    bint compacted               # a compaction rewrote the arena since the last checkpoint began


cdef inline amdb_ring_record *record_at(Worker *w, uint64_t pos) noexcept nogil:
    return <amdb_ring_record *>ring_at(w.records, w.records_mask, pos)


