# cython: language_level=3
"""Every number that C, Cython and Python share, read from the one place it
is defined (amdb/shm/layout.h, amdb/native/wal.h, amdb/native/faults.h,
amdb/native/verify.pxd)
when this module is compiled. Python code that runs only with the extensions
built imports its numbers from here; the few modules that must import
without them (amdb.errors, amdb/__init__.py) keep a copy that
tests/test_constants.py checks against this module.
"""
from amdb.shm.layout cimport *
from amdb.native.wal cimport SYNC_NONE, SYNC_BATCH, SYNC_INTERVAL
from amdb.native.verify cimport (BREAK_HASH, BREAK_LINK, BREAK_VERSION_NO, BREAK_NODE, BREAK_KEY_HASH, BREAK_ORDER,
                                 BREAK_FIRST, BREAK_BOUNDS, BREAK_COUNT, BREAK_LEDGER)

cdef extern from "wal.h":
    const unsigned long long AMDB_LOG_MAGIC
    const unsigned long long AMDB_CHECKPOINT_MAGIC
    const unsigned long long AMDB_FORMAT_VERSION
    const unsigned long long AMDB_CHECKPOINT_BLOCK
    const unsigned long long AMDB_CHECKPOINT_FORMAT_UNDO
    const unsigned long long AMDB_CHECKPOINT_UNDO_MAGIC
    enum:
        AMDB_LOG_CHUNK
        AMDB_LOG_COMMIT
        AMDB_LOG_ABORT

cdef extern from "faults.h":
    enum:
        AMDB_FAULT_AFTER_RECORDS
        AMDB_FAULT_MID_INSERT
        AMDB_FAULT_MID_PUBLISH
        AMDB_FAULT_MID_LINK
        AMDB_FAULT_MID_COMPACT
        AMDB_FAULT_SEGV
        AMDB_FAULT_ABORT
        AMDB_FAULT_HANG

SLOT_COUNT = AMDB_SLOT_COUNT
MAX_WORKERS = AMDB_MAX_WORKERS
LAYOUT_VERSION = AMDB_LAYOUT_VERSION
MAX_READER_SLOTS = AMDB_MAX_READER_SLOTS   # max_clients= at most
CONTROL_BYTES = AMDB_CONTROL_BYTES
CHANNEL_BYTES = AMDB_CHANNEL_BYTES     # ring bytes of a writing client's channel

# AMDB_STATUS_* by name (amdb.errors maps them to exceptions).
STATUS = {"OK": AMDB_STATUS_OK, "ARENA_FULL": AMDB_STATUS_ARENA_FULL, "SHM_FULL": AMDB_STATUS_SHM_FULL,
          "CORRUPT": AMDB_STATUS_CORRUPT, "TIMEOUT": AMDB_STATUS_TIMEOUT, "NO_MEMORY": AMDB_STATUS_NO_MEMORY,
          "IO_ERROR": AMDB_STATUS_IO_ERROR, "POISON": AMDB_STATUS_POISON,
          "CONDITION_FAILED": AMDB_STATUS_CONDITION_FAILED, "NOT_COUNTER": AMDB_STATUS_NOT_COUNTER,
          "OVERFLOW": AMDB_STATUS_OVERFLOW}

# control.worker_state and control.compact_state, number -> the name stats() shows.
WORKER_STATES = {AMDB_WORKER_STARTING: "starting", AMDB_WORKER_READY: "ready", AMDB_WORKER_STOPPED: "stopped",
                 AMDB_WORKER_FAILED: "failed"}
WORKER_READY = AMDB_WORKER_READY
COMPACT_STATES = {AMDB_COMPACT_IDLE: "idle", AMDB_COMPACT_BUILDING: "building", AMDB_COMPACT_SWITCHING: "switching"}

CHUNK_SOLO = AMDB_CHUNK_SOLO          # amdb_ring_chunk.flags and log chunk flags: an async single write

# Ring records that a worker handles (crash reports name them).
RECORD_OPS = {AMDB_OP_CHUNK: "chunk", AMDB_OP_ABORT: "abort", AMDB_OP_COMMIT: "commit",
              AMDB_OP_CHECKPOINT: "checkpoint", AMDB_OP_COMPACT: "compaction"}

# amdb.Break.kind of each break verify finds.
BREAK_KINDS = {BREAK_HASH: "hash", BREAK_LINK: "link", BREAK_VERSION_NO: "version_no", BREAK_NODE: "node",
               BREAK_KEY_HASH: "key_hash", BREAK_ORDER: "order", BREAK_FIRST: "first", BREAK_BOUNDS: "bounds",
               BREAK_COUNT: "count", BREAK_LEDGER: "ledger"}

# AMDB_FAULT=point=...,action=... (crash tests; amdb._worker parses the spec).
FAULT_POINTS = {"after_records": AMDB_FAULT_AFTER_RECORDS, "mid_insert": AMDB_FAULT_MID_INSERT,
                "mid_publish": AMDB_FAULT_MID_PUBLISH, "mid_link": AMDB_FAULT_MID_LINK,
                "mid_compact": AMDB_FAULT_MID_COMPACT}
FAULT_ACTIONS = {"segv": AMDB_FAULT_SEGV, "abort": AMDB_FAULT_ABORT, "hang": AMDB_FAULT_HANG}

# The on-disk formats (amdb/native/wal.h; amdb.storage reads and checks them).
LOG_MAGIC = AMDB_LOG_MAGIC
CHECKPOINT_MAGIC = AMDB_CHECKPOINT_MAGIC
FORMAT_VERSION = AMDB_FORMAT_VERSION
CHECKPOINT_BLOCK = AMDB_CHECKPOINT_BLOCK
CHECKPOINT_FORMAT_UNDO = AMDB_CHECKPOINT_FORMAT_UNDO    # a background checkpoint: with undo notes
CHECKPOINT_UNDO_MAGIC = AMDB_CHECKPOINT_UNDO_MAGIC
LOG_KINDS = {AMDB_LOG_CHUNK: "chunk", AMDB_LOG_COMMIT: "commit", AMDB_LOG_ABORT: "abort"}
SYNC_MODES = {"none": SYNC_NONE, "batch": SYNC_BATCH, "interval": SYNC_INTERVAL}
