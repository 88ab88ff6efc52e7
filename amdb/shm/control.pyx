# cython: language_level=3
"""The owner's side of the control blocks (layout.h): filling the headers of
new segments, and reading a worker's state, progress and position (also
after it died), asking it to stop.

Who calls it: amdb.supervisor.Supervisor only.
Shared memory: writes the read-only header line of each control block and
the database control block before any worker starts, shutdown_requested
and tables_drained; everything else it reads.
"""
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int64_t
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping
from amdb.shm.ring cimport progress_prepare_wait, progress_sleep, ring_at
from amdb.native.hashing cimport ring_chunk_fingerprint

from amdb.native.constants import COMPACT_STATES, RECORD_OPS

CONTROL_BYTES = AMDB_CONTROL_BYTES
ARENA_REGIONS = AMDB_ARENA_REGIONS
RING_COMMIT_STEP = AMDB_RING_COMMIT_STEP
MAX_READER_SLOTS = AMDB_MAX_READER_SLOTS


def db_control_bytes(uint64_t reader_slots):
    """Bytes of a database control block with `reader_slots` reader slots."""
    return amdb_db_control_bytes(reader_slots)
RECORD_HEADER_BYTES = sizeof(amdb_ring_record)
CHUNK_HEADER_BYTES = sizeof(amdb_ring_chunk)


def init_db_control(Mapping m, int worker_count, slot_owner, uint64_t reader_slots, uint64_t visible_seq=0):
    """Fill the database control block (a zeroed mapping of
    db_control_bytes(reader_slots)): header, visible_seq, slot table."""
    cdef amdb_db_control *d = <amdb_db_control *>m.base
    cdef int slot
    if len(slot_owner) != AMDB_SLOT_COUNT:
        raise ValueError("slot table must have 16384 entries")
    if not 1 <= reader_slots <= AMDB_MAX_READER_SLOTS or m.length < amdb_db_control_bytes(reader_slots):
        raise ValueError(f"{reader_slots} reader slots do not fit a control block of {m.length} bytes")
    d.magic = AMDB_DATABASE_MAGIC
    d.layout_version = AMDB_LAYOUT_VERSION
    d.worker_count = worker_count
    d.slot_count = AMDB_SLOT_COUNT
    d.reader_slot_count = reader_slots
    for slot in range(AMDB_SLOT_COUNT):
        d.slot_owner[slot] = <uint16_t>slot_owner[slot]
    d.read_epoch = 1                     # 0 in a reader slot means "not reading"
    amdb_store_release(&d.visible_seq, visible_seq)


def init_partition_control(Mapping m, int index, uint64_t segment_size, uint64_t ring_offset,
                           uint64_t ring_capacity, uint64_t arena_offset, uint64_t arena_capacity):
    """Fill the read-only header line of a partition's control block."""
    cdef amdb_control *c = <amdb_control *>m.base
    c.layout_version = AMDB_LAYOUT_VERSION
    c.segment_size = segment_size
    c.ring_offset = ring_offset
    c.ring_capacity = ring_capacity
    c.arena_offset = arena_offset
    c.arena_capacity = arena_capacity
    c.worker_index = index
    # Release: the header is whole before a worker can check the magic.
    amdb_store_release(&c.magic, AMDB_PARTITION_MAGIC)


def worker_state(Mapping m):
    """AMDB_WORKER_* of the partition whose control block `m` maps."""
    return amdb_load_acquire(&(<amdb_control *>m.base).worker_state)


def wait_worker_progress(Mapping m, uint32_t seen, double timeout):
    """Sleep until the worker publishes progress after event value `seen`, or
    `timeout` seconds. Returns the event value to pass next time."""
    cdef amdb_control *c = <amdb_control *>m.base
    cdef int64_t ns = <int64_t>(timeout * 1e9)
    cdef uint32_t now
    with nogil:
        now = progress_prepare_wait(c)
        if now == seen:
            progress_sleep(c, seen, ns)
        else:
            amdb_store32_seqcst(&c.owner_waiting, 0)
        now = amdb_load32_seqcst(&c.progress_event)
    return now


def request_shutdown(Mapping m):
    """Ask the worker to leave its loop once its ring is empty, and wake it."""
    cdef amdb_control *c = <amdb_control *>m.base
    if c == NULL:
        return
    amdb_store_seqcst(&c.shutdown_requested, 1)
    amdb_fetch_add32_seqcst(&c.ring_data_event, 1)
    amdb_futex_wake_all(&c.ring_data_event)


def mark_tables_drained(Mapping m, uint64_t retired):
    """No reader is left in the first `retired` outgrown tables: tell the
    worker (release) and wake it, so that an idle one gives them back now."""
    cdef amdb_control *c = <amdb_control *>m.base
    amdb_store_release(&c.tables_drained, retired)
    amdb_fetch_add32_seqcst(&c.ring_data_event, 1)
    if amdb_load32_seqcst(&c.consumer_sleeping):
        amdb_futex_wake_all(&c.ring_data_event)


def worker_position(Mapping m):
    """Where the worker of control block `m` is, read from shared memory (it
    works for a dead worker, whatever killed it; the crash report of
    ParallelDB._check_worker): what it last applied, and the ring record it
    was working on — the record it had taken off the ring and not finished
    (layout.h, handling_pos) — or None when it died between records.

    Returns {"pid", "compact_state" ("idle" | "building" | "switching": a
    compaction it was writing, compact.pyx), "applied_chunk", "applied_seq", "failed_chunk",
    "aborts_done", "in_flight": None or {"op": "chunk" | "abort" | "commit" | "checkpoint" | "compaction", "seq",
    "chunk_no", "records"}}. Reads racily; use it once the worker is gone."""
    cdef amdb_control *c = <amdb_control *>m.base
    cdef uint64_t mask, tail, head, pos, handling
    cdef amdb_ring_chunk *record
    cdef object in_flight = None
    cdef uint32_t op
    if c == NULL:
        return None
    mask = c.ring_capacity - 1
    head = amdb_load_acquire(&c.ring_head)
    tail = amdb_load_acquire(&c.ring_tail)
    # Acquire: the worker wrote the op, seq and chunk_no before the position.
    handling = amdb_load_acquire(&c.handling_pos)
    if handling != 0:
        pos = handling - 1
        op = c.handling_op
        in_flight = {"op": RECORD_OPS.get(op, f"op {op}"), "seq": amdb_load_relaxed(&c.handling_seq),
                     "chunk_no": amdb_load_relaxed(&c.handling_chunk_no), "records": 0, "fingerprint": None,
                     "solo": False}
        # A chunk's bytes stay the worker's until it releases them: read them
        # only while the ring still holds them (tail <= pos).
        if op == AMDB_OP_CHUNK and c.ring_offset + c.ring_capacity <= m.length and tail <= pos \
                and pos < c.handling_end <= head:
            record = <amdb_ring_chunk *>ring_at(m.base + c.ring_offset, mask, pos)
            in_flight["records"] = record.count
            in_flight["solo"] = bool(record.flags & AMDB_CHUNK_SOLO)
            # Which data it died on, wherever it lies in the ring (poison batches).
            in_flight["fingerprint"] = ring_chunk_fingerprint(m.base + c.ring_offset, c.ring_capacity,
                                                              pos, c.handling_end)
    return {"pid": amdb_load_relaxed(&c.worker_pid),
            "log_segment": amdb_load_relaxed(&c.log_segment),
            "incarnation": amdb_load_relaxed(&c.incarnation),
            "compact_state": COMPACT_STATES.get(amdb_load_acquire(&c.compact_state), "?"),
            "applied_chunk": amdb_load_acquire(&c.applied_chunk),
            "applied_seq": amdb_load_relaxed(&c.applied_seq),
            "failed_chunk": amdb_load_acquire(&c.failed_chunk),
            "aborts_done": amdb_load_acquire(&c.aborts_done),
            "unread_bytes": head - tail,
            "in_flight": in_flight}


def worker_start_status(Mapping m):
    """(AMDB_WORKER_* state, AMDB_STATUS_* it failed to start with, 0 if none)."""
    cdef amdb_control *c = <amdb_control *>m.base
    cdef uint64_t state = amdb_load_acquire(&c.worker_state)
    return state, (amdb_load_relaxed(&c.start_status) if state == AMDB_WORKER_FAILED else 0)


def worker_progress(Mapping m):
    """Everything that moves while the worker of control block `m` works
    (ring, progress counters, heartbeat): the owner compares two readings
    to tell a busy worker from a hung one (ParallelDB hang_timeout=)."""
    cdef amdb_control *c = <amdb_control *>m.base
    return (amdb_load_acquire(&c.ring_tail), amdb_load_acquire(&c.applied_chunk),
            amdb_load_acquire(&c.failed_chunk), amdb_load_acquire(&c.aborts_done),
            amdb_load_relaxed(&c.heartbeat), amdb_load_relaxed(&c.worker_state))


CHECKPOINT_STAGES = {"copying": AMDB_CKPT_STAGE_COPYING, "noted": AMDB_CKPT_STAGE_NOTED,
                     "renamed": AMDB_CKPT_STAGE_RENAMED}


def hold_checkpoints(Mapping m, stage):
    """Tests: make the worker's background checkpoints pause at `stage` (a
    CHECKPOINT_STAGES name), or, with None, go on (layout.h, line 10)."""
    cdef amdb_control *c = <amdb_control *>m.base
    amdb_store32_seqcst(&c.checkpoint_hold, 0 if stage is None else CHECKPOINT_STAGES[stage])
    amdb_futex_wake_all(&c.checkpoint_hold)


def checkpoint_held(Mapping m):
    """Tests: the stage name a background checkpoint of this worker is paused at, or None."""
    cdef uint32_t stage = amdb_load32_seqcst(&(<amdb_control *>m.base).checkpoint_held)
    return next((name for name, value in CHECKPOINT_STAGES.items() if value == stage), None)
