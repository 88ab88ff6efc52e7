# cython: language_level=3
"""Declarations of wal.h (on-disk formats) and of the worker's log writer."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from amdb.shm.layout cimport PartitionView, amdb_control
from amdb.native.undo cimport UndoLog

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t

cdef extern from "wal.h" nogil:
    enum:
        AMDB_LOG_MAGIC
        AMDB_CHECKPOINT_MAGIC
        AMDB_FORMAT_VERSION
        AMDB_CHECKPOINT_FORMAT_UNDO
        AMDB_CHECKPOINT_UNDO_MAGIC
        AMDB_CHECKPOINT_BLOCK
        AMDB_LOG_MAX_PAYLOAD
        AMDB_LOG_CHUNK
        AMDB_LOG_COMMIT
        AMDB_LOG_ABORT

    ctypedef struct amdb_log_frame:
        uint32_t magic
        uint32_t kind
        uint64_t seq
        uint64_t payload_len
        uint64_t payload_check
        uint64_t header_check

    ctypedef struct amdb_log_chunk:
        uint64_t timestamp_ns
        uint64_t count
        uint32_t flags
        uint32_t reserved

    ctypedef struct amdb_checkpoint_header:
        uint64_t magic
        uint32_t format_version
        uint32_t layout_version
        uint64_t worker_index
        uint64_t seq
        uint64_t log_segment
        uint64_t arena_used
        uint64_t skiplist_head
        uint64_t hash_table
        uint64_t live_keys
        uint64_t node_count
        uint64_t version_count
        uint64_t ledger_chunks
        uint8_t ledger_head[32]
        uint64_t header_check

cdef enum SyncMode:
    SYNC_NONE = 0
    SYNC_BATCH = 1
    SYNC_INTERVAL = 2

ctypedef struct LogPiece:
    const void *data
    uint64_t length

# The worker's write-ahead log. dir_fd < 0: the database is memory-only.
ctypedef struct LogWriter:
    int dir_fd
    int fd                  # current segment, O_APPEND
    uint64_t segment_no
    uint64_t offset         # bytes of whole frames in the current segment
    uint64_t segment_bytes  # roll over to a new segment past this, at a COMMIT
    int sync_mode
    uint64_t interval_ns
    uint64_t last_sync_ns
    bint dirty              # bytes written since the last fdatasync
    amdb_control *ctrl      # statistics and log_broken live in the control block

cdef int log_start_segment(LogWriter *log, uint64_t segment_no) noexcept nogil
cdef int log_append(LogWriter *log, uint32_t kind, uint64_t seq, LogPiece *pieces, int npieces) noexcept nogil
cdef int log_after_commit(LogWriter *log) noexcept nogil
cdef void log_idle(LogWriter *log) noexcept nogil
cdef void log_close(LogWriter *log) noexcept nogil

# A checkpoint written by a thread of the worker while the worker goes on
# applying (wal.pyx, "Background checkpoints"). The futex words go 0 -> 1 once.
ctypedef struct BackgroundCheckpoint:
    PartitionView p            # the generation copied (its region stays until the end)
    int dir_fd                 # the thread's own descriptor of the directory
    int log_fd                 # and of the log segment that ends at seq (-1: synced already)
    uint64_t seq
    amdb_checkpoint_header header
    UndoLog undo               # the worker's notes; the thread's once handed_over
    uint32_t copy_done         # thread -> worker: the arena bytes are written
    uint32_t handed_over       # worker -> thread: the notes are final, noting stopped
    uint32_t finished          # thread: the file is whole, or given up (status)
    int status
    int owner_pid              # a hold (tests) ends when the owner is gone
    pthread_t thread

cdef int checkpoint_begin(PartitionView *p, LogWriter *log, uint64_t seq,
                          BackgroundCheckpoint **out) noexcept nogil
cdef bint checkpoint_hand_over(BackgroundCheckpoint *b, PartitionView *p, bint wait) noexcept nogil
cdef int checkpoint_end(BackgroundCheckpoint *b) noexcept nogil
cdef int checkpoint_load(PartitionView *p, int dir_fd, const char *name) noexcept nogil
