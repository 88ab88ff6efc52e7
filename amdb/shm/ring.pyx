# cython: language_level=3
"""The single-producer / single-consumer byte ring from the owner to one worker.

Process safety:
  - Producer: the owner (one thread at a time, under its write lock). Writes
    record bytes, then ring_head. Consumer: the partition's worker. Reads
    records up to ring_head, then writes ring_tail.
  - head and tail are byte counters that only grow; a position in the ring is
    counter & (capacity - 1). They sit on separate cache lines (layout.h).

Invariants:
  1. tail <= head <= tail + capacity.
  2. Bytes in [tail, head) are whole records, written before head was
     published; the producer never writes there.
  3. A record never straddles the end of the ring: the producer writes an
     AMDB_OP_WRAP marker and continues at the start (records are 8-aligned
     and at least 8 bytes, so a marker always fits).
  4. The producer writes only ring memory it committed: the segment is
     created with the first AMDB_RING_COMMIT_STEP of the ring backed, records
     go below wrap_at (a WRAP marker sends the rest to the ring's start, as
     at its end), and ring_commit_ahead commits more when the bytes in
     flight need it. The consumer reads only bytes the producer wrote. An
     unpublished chunk stays under a quarter of the committed part (the
     Writer closes it there), so after an early wrap it never waits for
     room that only its own publication would free.

Memory order:
  - Producer: record bytes, then head by seq_cst store (a release store would
    do for the data; seq_cst also orders it before the sleeping-flag load of
    the wake handshake). Consumer: acquire/seq_cst load of head, then reads.
  - Consumer: finishes reading, then tail by release store; the producer
    acquire-loads tail before it reuses that space.

Sleeping (no busy-wait while idle): each side spins briefly (pausing, then
yielding the core: amdb_spin_step), then announces
`*_sleeping = 1` (seq_cst), re-checks its condition, and futex-waits on an
event counter whose value it read BEFORE announcing. The other side bumps the
counter (seq_cst RMW) after publishing and wakes only if the flag is set. A
wake-up cannot be lost: if the waker missed the flag, its counter bump came
first in the seq_cst order, so the futex value no longer matches and
futex_wait returns at once. Every wait also has a timeout, so that the
caller can check the other process is still alive.
"""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from amdb.shm.layout cimport *

cdef extern from "fcntl.h" nogil:
    int posix_fallocate(int fd, long offset, long length)

from amdb.shm.arena cimport shm_free_bytes
from amdb.shm.atomic cimport *

cdef int ring_wait_space(RingProducer *r, uint64_t nbytes, int64_t timeout_ns) noexcept nogil:
    """Wait until `nbytes` past r.head are free. AMDB_STATUS_OK or _TIMEOUT."""
    cdef amdb_control *c = r.ctrl
    cdef uint32_t seen
    cdef int i
    if r.capacity - (r.head - r.cached_tail) >= nbytes:
        return AMDB_STATUS_OK
    for i in range(AMDB_SPIN_STEPS):
        # Acquire: the worker is done with every byte before tail.
        r.cached_tail = amdb_load_acquire(&c.ring_tail)
        if r.capacity - (r.head - r.cached_tail) >= nbytes:
            return AMDB_STATUS_OK
        amdb_spin_step(i)
    seen = amdb_load32_seqcst(&c.ring_space_event)
    amdb_store32_seqcst(&c.producer_sleeping, 1)
    r.cached_tail = amdb_load_seqcst(&c.ring_tail)
    if r.capacity - (r.head - r.cached_tail) < nbytes:
        amdb_futex_wait(&c.ring_space_event, seen, timeout_ns)
        r.cached_tail = amdb_load_acquire(&c.ring_tail)
    amdb_store32_seqcst(&c.producer_sleeping, 0)
    if r.capacity - (r.head - r.cached_tail) >= nbytes:
        return AMDB_STATUS_OK
    return AMDB_STATUS_TIMEOUT


cdef void ring_set_committed(RingProducer *r, uint64_t committed) noexcept nogil:
    r.committed = committed if committed < r.capacity else r.capacity
    r.wrap_at = r.capacity if r.committed >= r.capacity else r.committed - 8


cdef int ring_commit_ahead(RingProducer *r, uint64_t nbytes) noexcept nogil:
    """Size the ring by need, before `nbytes` are reserved at r.head (the
    caller then computes its wrap room from r.wrap_at). While part of the
    ring is not committed, a record that does not fit below wrap_at goes to
    the ring's start (an early WRAP) when the ring is nearly empty (single
    writes and small batches keep a small, cache-warm ring) or /dev/shm is
    short (the data needs it more); otherwise (a stream of batches) the
    committed part doubles (posix_fallocate, AMDB_RING_COMMIT_STEP at least). Returns 0, or the errno of a commit that was needed and failed
    (ENOSPC: /dev/shm is full). Once all is committed: one compare."""
    cdef uint64_t offset, in_flight, end, target
    cdef int err
    if r.committed >= r.capacity:
        return 0
    offset = r.head & r.mask
    if offset + nbytes <= r.wrap_at:
        return 0
    r.cached_tail = amdb_load_acquire(&r.ctrl.ring_tail)
    in_flight = r.head - r.cached_tail
    if nbytes <= r.wrap_at and in_flight + nbytes <= r.wrap_at // 8:
        return 0                           # nearly empty (single writes, small batches): stay small
    end = offset + nbytes + 8
    end = (end + AMDB_RING_COMMIT_STEP - 1) // AMDB_RING_COMMIT_STEP * AMDB_RING_COMMIT_STEP
    target = r.committed * 2 if r.committed * 2 > end else end
    if target > r.capacity:
        target = r.capacity
    if nbytes <= r.wrap_at and shm_free_bytes(r.fd) < 8 * (target - r.committed):
        return 0                           # /dev/shm is short: leave it to the data, wrap early
    err = posix_fallocate(r.fd, <long>(r.file_offset + r.committed), <long>(target - r.committed))
    if err == 0:
        ring_set_committed(r, target)
        return 0
    return 0 if nbytes <= r.wrap_at else err     # no memory to grow: wrap early and wait for room


cdef uint64_t ring_reserve_nowait(RingProducer *r, uint64_t nbytes) noexcept nogil:
    """Reserve `nbytes` contiguous bytes at r.head and return their position.

    REQUIRES: ring_commit_ahead(r, nbytes) and then ring_wait_space(r,
    nbytes + wrap room) succeeded, where wrap room is the bytes from r.head
    to the ring's end when nbytes do not fit below r.wrap_at (see the
    Writer's _reserve). Writes a WRAP marker when needed.
    """
    cdef uint64_t offset = r.head & r.mask
    cdef uint64_t pos
    if offset + nbytes > r.wrap_at:
        (<uint32_t *>(r.ring + offset))[0] = AMDB_OP_WRAP
        r.head += r.capacity - offset
    pos = r.head
    r.head += nbytes
    return pos


cdef void ring_publish(RingProducer *r) noexcept nogil:
    """Make every byte before r.head visible to the worker and wake it if asleep."""
    cdef amdb_control *c = r.ctrl
    amdb_store_seqcst(&c.ring_head, r.head)
    amdb_fetch_add32_seqcst(&c.ring_data_event, 1)
    if amdb_load32_seqcst(&c.consumer_sleeping):
        amdb_futex_wake_all(&c.ring_data_event)


cdef uint64_t ring_wait_data(amdb_control *c, uint64_t tail, int64_t timeout_ns) noexcept nogil:
    """Worker: wait until head moves past `tail`; returns head (== tail on
    timeout or when shutdown was requested — the caller checks which)."""
    cdef uint64_t head
    cdef uint32_t seen
    cdef int i
    for i in range(AMDB_SPIN_STEPS):
        head = amdb_load_acquire(&c.ring_head)
        if head != tail:
            return head
        amdb_spin_step(i)
    seen = amdb_load32_seqcst(&c.ring_data_event)
    amdb_store32_seqcst(&c.consumer_sleeping, 1)
    head = amdb_load_seqcst(&c.ring_head)
    if head == tail and not amdb_load_seqcst(&c.shutdown_requested):
        amdb_futex_wait(&c.ring_data_event, seen, timeout_ns)
        head = amdb_load_acquire(&c.ring_head)
    amdb_store32_seqcst(&c.consumer_sleeping, 0)
    return head


cdef void ring_release(amdb_control *c, uint64_t tail) noexcept nogil:
    """Worker: give every byte before `tail` back to the producer."""
    # Release: our reads of those bytes happen before the producer reuses them.
    amdb_store_release(&c.ring_tail, tail)
    amdb_fetch_add32_seqcst(&c.ring_space_event, 1)
    if amdb_load32_seqcst(&c.producer_sleeping):
        amdb_futex_wake_all(&c.ring_space_event)


cdef void progress_publish(amdb_control *c) noexcept nogil:
    """Worker: after release-storing applied_chunk / failed_chunk / aborts_done."""
    amdb_fetch_add32_seqcst(&c.progress_event, 1)
    if amdb_load32_seqcst(&c.owner_waiting):
        amdb_futex_wake_all(&c.progress_event)


cdef uint32_t progress_prepare_wait(amdb_control *c) noexcept nogil:
    """Owner: read the event counter, then announce that it may sleep. The
    caller re-checks its condition before progress_sleep(seen)."""
    cdef uint32_t seen = amdb_load32_seqcst(&c.progress_event)
    amdb_store32_seqcst(&c.owner_waiting, 1)
    return seen


cdef void progress_sleep(amdb_control *c, uint32_t seen, int64_t timeout_ns) noexcept nogil:
    amdb_futex_wait(&c.progress_event, seen, timeout_ns)
    amdb_store32_seqcst(&c.owner_waiting, 0)
