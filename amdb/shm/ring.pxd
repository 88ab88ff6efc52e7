# cython: language_level=3
from libc.stdint cimport uint32_t, uint64_t, int64_t
from amdb.shm.layout cimport amdb_control

# Owner-side state of one ring (private to the owner; guarded by its write lock).
ctypedef struct RingProducer:
    amdb_control *ctrl
    char *ring
    uint64_t capacity
    uint64_t mask
    uint64_t head            # next byte to write; bytes past ctrl.ring_head are unpublished
    uint64_t cached_tail     # last ring_tail seen (acquire)
    # memory of the ring in /dev/shm: ring offsets [0, committed) are backed
    # (posix_fallocate on fd at file_offset + offset); fd < 0: all of it.
    # Records are placed below wrap_at (capacity once all is committed;
    # else committed - 8, leaving room for a WRAP marker): the producer
    # wraps early rather than touch memory it has not committed.
    int fd
    uint64_t file_offset
    uint64_t committed
    uint64_t wrap_at
    # the open chunk (at most one per ring)
    bint chunk_open
    uint64_t chunk_pos       # ring position of its header
    uint64_t chunk_count
    uint64_t chunk_limit     # records at which this chunk closes (ramps up to max_batch)
    uint64_t chunk_bytes
    uint32_t chunk_flags
    uint64_t chunks_published  # chunk_no of the last chunk published (ever)
    # the batch in flight
    uint64_t batch_chunks    # chunks published in this batch
    uint64_t batch_records
    uint64_t batch_first_chunk # chunk_no of its first chunk on this ring
    uint64_t last_chunk_sent
    # a rolled-back batch this worker still has to hear about (first seq; 0 = none)
    uint64_t abort_to_send   # seq of a batch whose ABORT is not written yet (its ring was full)
    uint64_t abort_to_ack    # abort_no of an ABORT written but not acknowledged yet
    uint64_t aborts_sent     # abort_no of the last ABORT written (1, 2, 3... per ring)

cdef int ring_wait_space(RingProducer *r, uint64_t nbytes, int64_t timeout_ns) noexcept nogil
cdef void ring_set_committed(RingProducer *r, uint64_t committed) noexcept nogil
cdef int ring_commit_ahead(RingProducer *r, uint64_t nbytes) noexcept nogil
cdef uint64_t ring_reserve_nowait(RingProducer *r, uint64_t nbytes) noexcept nogil
cdef void ring_publish(RingProducer *r) noexcept nogil
cdef uint64_t ring_wait_data(amdb_control *ctrl, uint64_t tail, int64_t timeout_ns) noexcept nogil
cdef void ring_release(amdb_control *ctrl, uint64_t tail) noexcept nogil
cdef void progress_publish(amdb_control *ctrl) noexcept nogil
cdef uint32_t progress_prepare_wait(amdb_control *ctrl) noexcept nogil
cdef void progress_sleep(amdb_control *ctrl, uint32_t seen, int64_t timeout_ns) noexcept nogil

cdef inline char *ring_at(char *ring, uint64_t mask, uint64_t pos) noexcept nogil:
    return ring + (pos & mask)
