# cython: language_level=3
"""The worker: attach to a partition, recover it (checkpoint, log replay,
or a dead predecessor's arena), then loop (nogil): take records off the
ring, apply chunks (apply.pyx), roll back aborted batches (rollback.pyx),
log, checkpoint and compact when asked, publish progress.

Who calls it: amdb._worker (python -m amdb._worker), started by the
supervisor.

Process safety: this code runs only in worker i and is the single writer of
arena i and of the consumer, progress and arena lines of its control block
(layout.h). It never blocks the owner: it releases ring space as soon as a
record is done, and sleeps on a futex when the ring is empty. It says which
record it is handling (handling_pos) so that the owner can tell, after its
death, whether it died between records.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from posix.unistd cimport getppid, getpid
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping, arena_init, commit_pages
from amdb.shm.ring cimport ring_wait_data, ring_release, progress_publish, ring_at
from amdb.native.hashing cimport ring_chunk_fingerprint
from amdb.native.skiplist cimport skiplist_finger_reset
from amdb.native.hashindex cimport hashindex_collect_outgrown, hashindex_release_outgrown
from amdb.native.worker.committer cimport (committer_start, committer_poke, committer_hold, committer_release,
                                           committer_stop)
from amdb.native.wal cimport *
from amdb.native.compact cimport CompactResult, compact_prepare, compact_recover, compact_adopt
from amdb.native.worker.state cimport Worker
from amdb.native.worker.apply cimport (apply_chunk, begin_batch, worker_init, arm_fault, fault_check_mid_publish,
                                       fault_check_mid_compact, publish_credit, refund_solo)
from amdb.native.worker.rollback cimport rollback_batch, crash_repair, undo_open_batch
from amdb.native.worker.replay cimport replay_log

cdef enum:
    IDLE_TIMEOUT_NS = 200000000   # 200 ms: how often an idle worker checks its owner is alive
    COMMIT_AHEAD_LOW = 4 << 20    # bytes an idle worker keeps committed ahead (async write credit)

cdef enum LoopExit:
    EXIT_SHUTDOWN = 0
    EXIT_OWNER_GONE = 1
    EXIT_CORRUPT = 2


cdef bint chunk_is_poison(Worker *w, amdb_ring_chunk *header, uint64_t header_pos) noexcept nogil:
    """The chunk is one that crashed this partition's workers poison_after
    times (the owner's list, handed to this worker when it started)."""
    cdef uint64_t fingerprint = ring_chunk_fingerprint(w.p.ring, w.p.ctrl.ring_capacity, header_pos, header.end)
    cdef uint64_t i
    for i in range(w.poison_count):
        if w.poison[i] == fingerprint:
            return True
    return False


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
    cdef int status
    # The committer stays out until the switch is done: it must not commit
    # into one region's counters for another, nor memory into the region
    # this compaction retires.
    committer_hold(&w.committer)
    finish_checkpoint(w)                # it copies the region this compaction retires
    # The owner wrote the horizon before it published the record (our
    # acquire of ring_head orders it): no seq above header.seq.
    status = compact_prepare(&w.p, header.count, header.seq,
                             min(amdb_load_relaxed(&c.compact_horizon), header.seq), &w.finger, &result)
    if status != AMDB_STATUS_OK:
        amdb_store_relaxed(&c.failed_status, <uint64_t>status)
        amdb_store_release(&c.failed_chunk, header.chunk_no)
    else:
        fault_check_mid_compact()      # the new generation whole, the switch not made
        compact_recover(c)                  # the switch: the same code a new worker would replay
        compact_adopt(&w.p, w.arena_base, &w.finger, &result, header.seq)
        w.compacted = True
        publish_credit(w)
        w.batch_first_seq = 0
        w.batch_start_off = 0
        w.refusing = False
        amdb_store_release(&c.applied_chunk, header.chunk_no)
    committer_release(&w.committer)
    progress_publish(c)


cdef void finish_checkpoint(Worker *w) noexcept nogil:
    """Wait for the running background checkpoint, if any, to end (its
    region must stay as it is: before a compaction, a new checkpoint, exit)."""
    if w.bg != NULL:
        checkpoint_hand_over(w.bg, &w.p, True)
        checkpoint_end(w.bg)
        w.bg = NULL


cdef void poll_checkpoint(Worker *w) noexcept nogil:
    """Between records: hand the notes over once the copy is out, free the
    checkpoint once its thread is done. Never waits."""
    if checkpoint_hand_over(w.bg, &w.p, False) and amdb_load32_seqcst(&w.bg.finished):
        checkpoint_end(w.bg)
        w.bg = NULL


cdef void handle_checkpoint(Worker *w, amdb_ring_chunk *header) noexcept nogil:
    """Begin a background checkpoint as of header.seq (wal.pyx) and
    acknowledge at once: the owner waits for checkpoint_done only when the
    caller asked for a finished checkpoint. One at a time: a running one is
    waited for first. A checkpoint of this very seq already written is not
    written again, unless a compaction rewrote the arena since (without a
    new seq: two compactions in a row, the second keeping fewer versions,
    reopened as the first had left it)."""
    cdef amdb_control *c = w.p.ctrl
    cdef int status = AMDB_STATUS_OK
    finish_checkpoint(w)
    if amdb_load_relaxed(&c.checkpoint_seq) == header.seq and header.seq != 0 and not w.compacted:
        amdb_store_relaxed(&c.checkpoint_status, AMDB_STATUS_OK)
        amdb_store_release(&c.checkpoint_done, header.seq)
    else:
        status = checkpoint_begin(&w.p, &w.log, header.seq, &w.bg)
        if status == AMDB_STATUS_OK:
            w.compacted = False
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
    ring_release the chunk's ring bytes may already hold the owner's next data.

    A SOLO chunk (an async single write, layout.h) is a whole batch: nobody
    sends it an ABORT or a COMMIT, so it commits itself here (in the log too),
    or, refused, is undone here and logged as an empty commit (recovery must
    not stop at its seq); either way its charge goes back to the producer."""
    cdef amdb_control *c = w.p.ctrl
    cdef bint solo = header.flags & AMDB_CHUNK_SOLO
    cdef bint applied = False
    cdef int status
    cdef LogPiece piece
    cdef uint64_t participants = 1
    if header.flags & AMDB_CHUNK_FIRST_OF_BATCH:
        begin_batch(w, header.seq)
    elif w.refusing:
        return                    # the rest of a refused batch: the owner sends ABORT
    if w.poison_count and chunk_is_poison(w, header, header_pos):
        status = AMDB_STATUS_POISON      # refused before touching anything
    else:
        status = apply_chunk(w, header, header_pos, 0)
        applied = status == AMDB_STATUS_OK
    if status == AMDB_STATUS_OK and w.log.dir_fd >= 0:
        # Logged after applying (the frame carries the versions' timestamp)
        # and before acknowledging (wal.h, invariant 2). A failure refuses the
        # chunk; the owner's ABORT then rolls back what it applied.
        status = log_chunk(w, header, header_pos)
        if status == AMDB_STATUS_OK and solo:
            status = log_after_commit(&w.log)     # sync="batch": durable before acknowledged
    if solo:
        if status == AMDB_STATUS_OK:
            w.batch_committed = True
        else:
            if applied:
                undo_open_batch(w)
            if w.log.dir_fd >= 0:
                piece.data = &participants
                piece.length = 8
                if log_append(&w.log, AMDB_LOG_COMMIT, header.seq, &piece, 1) != AMDB_STATUS_OK:
                    amdb_store_relaxed(&c.log_broken, 1)
        refund_solo(w, header, header_pos)
    else:
        publish_credit(w)                 # a batch took room: the producer rereads after it
    if status != AMDB_STATUS_OK:
        w.refusing = not solo
        amdb_store_relaxed(&c.failed_status, <uint64_t>status)
        amdb_store_release(&c.failed_chunk, header.chunk_no)
    else:
        fault_check_mid_publish()
        amdb_store_relaxed(&c.chunks_applied, c.chunks_applied + 1)
        # Give the ring space back first, so that an owner that sees the chunk
        # applied also sees its space free.
        ring_release(c, header.end)
        amdb_store_relaxed(&c.applied_seq, header.seq)
        # Release: every version of the chunk is whole before the owner
        # (and through visible_seq, every reader) may rely on it.
        amdb_store_release(&c.applied_chunk, header.chunk_no)
    progress_publish(c)


cdef void commit_ahead(Worker *w) noexcept nogil:
    """While idle, keep COMMIT_AHEAD_LOW of arena memory committed ahead, so
    that async single writes find credit (layout.h, "Async single writes")."""
    cdef amdb_control *c = w.p.ctrl
    if amdb_load_relaxed(&c.arena_committed) - amdb_load_relaxed(&c.arena_used) >= COMMIT_AHEAD_LOW:
        return
    if commit_pages(&w.p, COMMIT_AHEAD_LOW) == AMDB_STATUS_OK:
        publish_credit(w)


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
        if w.bg != NULL:
            poll_checkpoint(w)
        if w.retired.count:
            hashindex_release_outgrown(&w.p)   # the owner may have woken us for it
        if head == tail:
            log_idle(&w.log)
            commit_ahead(w)
            if amdb_load_acquire(&c.shutdown_requested):
                finish_checkpoint(w)
                return EXIT_SHUTDOWN
            if getppid() != w.parent_pid:
                finish_checkpoint(w)
                return EXIT_OWNER_GONE
            continue
        while tail != head:
            op = (<uint32_t *>ring_at(w.p.ring, capacity - 1, tail))[0]
            if op == AMDB_OP_WRAP:
                tail += capacity - (tail & (capacity - 1))
                continue
            if op != AMDB_OP_CHUNK and op != AMDB_OP_ABORT and op != AMDB_OP_COMMIT \
                    and op != AMDB_OP_CHECKPOINT and op != AMDB_OP_COMPACT:
                finish_checkpoint(w)
                return EXIT_CORRUPT
            header = (<amdb_ring_chunk *>ring_at(w.p.ring, capacity - 1, tail))[0]
            take_record(c, tail, &header)
            if op == AMDB_OP_CHUNK:
                handle_chunk(w, &header, tail)
                committer_poke(&w.committer)
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

    `respawn` ({"visible_seq": int, "undo_seq": int, "poison": [fingerprints]})
    makes it the successor of a worker that died: it keeps the arena as it is
    (layout.h, rule 4). With undo_seq 0 (the predecessor died between
    records) it carries on the predecessor's open batch from the ring;
    otherwise it undoes batch undo_seq if that is the one the predecessor
    began last and the owner never made it visible (crash_repair), logs the
    undo as an ABORT frame in a new log segment, and applies the ring from
    where the owner left it (the same record again, for a SOLO write; past
    the batch, for a batch the owner rolls back). It refuses chunks whose fingerprint is in "poison"
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
    cdef uint64_t frames = 0, replay_length, visible_seq, undo_seq, undone_seq = 0
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
            undo_seq = respawn.get("undo_seq", 0)
            with nogil:
                status = crash_repair(&w, visible_seq, undo_seq, &undone_seq)
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
    # Outgrown tables of a loaded checkpoint go now (no reader yet); a
    # successor's wait for the owner (layout.h, "Outgrown hash tables").
    hashindex_collect_outgrown(&w.p, respawn is not None)
    hashindex_release_outgrown(&w.p)
    arm_fault(fault, c.worker_index, parent_pid)
    committer_start(&w.committer, &w.p)
    publish_credit(&w)
    amdb_store_release(&c.worker_state, AMDB_WORKER_READY)
    progress_publish(c)
    try:
        with nogil:
            result = worker_loop(&w)
    finally:
        committer_stop(&w.committer)
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
