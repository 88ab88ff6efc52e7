# cython: language_level=3
"""Log replay (nogil): re-apply a write-ahead log segment, as the worker
first applied it, when a durable database opens; and the fuzzing hook that
replays arbitrary bytes into a private partition.

Who calls it: the worker's start (loop.run_worker) and tools/fuzz_logs.py.
It trusts no byte it reads: every frame's checksums and every record's key
hash are checked again (the owner checked the file already).
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memset
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping, arena_init
from amdb.native.hashing cimport amdb_xxh64
from amdb.native.skiplist cimport skiplist_finger_reset
from amdb.native.wal cimport *
from amdb.native.verify cimport VerifyResult, verify_partition, verify_ledger
from amdb.native.worker.state cimport Worker
from amdb.native.worker.apply cimport apply_chunk, begin_batch, worker_init
from amdb.native.worker.rollback cimport rollback_batch


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
            if header.flags & AMDB_CHUNK_SOLO:
                w.batch_committed = True        # a whole batch of one record: it commits itself
        elif frame.kind == AMDB_LOG_COMMIT:
            w.batch_committed = True
        elif frame.kind == AMDB_LOG_ABORT:
            rollback_batch(w, frame.seq, 0)
        else:
            return AMDB_STATUS_CORRUPT
        frames_out[0] += 1
        pos = payload + frame.payload_len
    return AMDB_STATUS_OK


def fuzz_replay(const uint8_t[::1] data, uint64_t arena_size=4 << 20):
    """Fuzzing hook: replay `data` as a log segment into a fresh, private
    partition (a memfd, not shared) the way a recovering worker would, then
    verify every chain of it. Returns (status, frames replayed, breaks found);
    must never crash, whatever the bytes (tools/fuzz_logs.py)."""
    import os
    from amdb.shm.control import init_partition_control, CONTROL_BYTES
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


