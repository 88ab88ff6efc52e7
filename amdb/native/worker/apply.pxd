# cython: language_level=3
"""Applying a chunk (apply.pyx)."""
from libc.stdint cimport uint64_t
from amdb.shm.layout cimport amdb_ring_chunk
from amdb.shm.arena cimport Mapping
from amdb.native.worker.state cimport Worker

cdef int apply_chunk(Worker *w, amdb_ring_chunk *header, uint64_t header_pos, uint64_t timestamp_ns) noexcept nogil
cdef void begin_batch(Worker *w, uint64_t seq) noexcept nogil
cdef void publish_credit(Worker *w) noexcept nogil
cdef void refund_solo(Worker *w, amdb_ring_chunk *header, uint64_t header_pos) noexcept nogil
cdef void worker_init(Worker *w, Mapping mapping, int fd, int parent_pid) noexcept
cdef int arm_fault(object fault, uint64_t worker_index, int owner_pid) except -1
cdef void fault_check_mid_publish() noexcept nogil
cdef void fault_check_mid_compact() noexcept nogil
