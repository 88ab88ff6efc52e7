# cython: language_level=3
"""The ring producer (writer.pyx)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from amdb.shm.ring cimport RingProducer
from amdb.shm.layout cimport amdb_control, amdb_channel
from amdb.native.client.attachment cimport Attachment

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass

ctypedef struct Forward:             # an attached client's channel, as the forwarder sees it
    amdb_channel *ch                 # NULL: a free entry
    char *ring
    uint64_t capacity
    uint64_t mask
    uint64_t tail                    # what the forwarder sent on so far (ch.tail is its publication)
    bint closing                     # the client is gone: send on what it published, then let go
    bint done                        # closing and drained, or broken: the Python side lets it go


cdef class Writer:
    cdef Attachment att
    cdef RingProducer *producers
    cdef uint64_t next_seq         # seq the next batch will carry
    cdef uint64_t batch_seq        # seq of the batch being written
    cdef bint batch_used_seq       # it has opened a chunk (so its seq is spent)
    cdef uint64_t batch_key_digest # rolling xxh64 digest of the batch's keys (audit log)
    cdef public object audit       # amdb.audit.AuditLog or None
    cdef readonly uint64_t max_batch
    cdef readonly uint64_t max_key_size
    cdef readonly uint64_t max_value_size
    cdef uint64_t chunk_byte_cap
    cdef object write_lock
    cdef readonly bint durable     # a write-ahead log: batches end with COMMIT records
    cdef object supervisor         # check_worker(worker), before_write(): amdb.supervisor.Supervisor
    cdef int forced_worker         # >= 0: records go there (routed batches), not by slot
    cdef uint32_t *rmw_next_ticket # per worker: the last result ticket handed out
    cdef uint8_t *rmw_busy         # per worker, per result slot: 1 while a record in flight holds it
    cdef bint _in_batch            # a batch is being written (between _begin_batch and its end)
    cdef object _batch_reentered   # the Error a re-entrant call of that batch's own code got, or None
    # Async single writes (layout.h): the supervisor turns them on (not for
    # read_only or sync="batch"); `exclusive` counts the batches and admin
    # calls in progress (no SOLO chunk goes out meanwhile); per worker, the
    # bytes and records charged, and the credit as last read; the seq of the
    # last SOLO chunk sent; when the supervisor's checks are due next; the
    # error of an async write that failed after it returned.
    cdef public bint async_enabled
    cdef public int exclusive
    cdef public uint64_t next_check_ns
    cdef uint64_t *charged_bytes
    cdef uint64_t *charged_records
    cdef uint64_t *credit_bytes
    cdef uint64_t *credit_records
    cdef uint64_t last_async_seq
    cdef object _async_error
    # Forwarding (writer.pyx, "Forwarding"; layout.h, "Client channels"):
    # producer_mutex is held by every SOLO send (the owner's and the
    # forwarder's) and by pause_forwarding; `paused` counts the holders of
    # the write lock (the forwarder sends nothing meanwhile).
    cdef pthread_mutex_t producer_mutex
    cdef int paused
    cdef Forward *forwards           # max_forwards entries: one per reader slot (a client holds one)
    cdef readonly int max_forwards
    cdef int forward_count           # entries in use are below it
    cdef int forward_next            # where the next pass starts (fairness)
    cdef uint64_t forward_deadline   # stopping: monotonic ns until which it still drains
    cdef bint forwarder_stop
    cdef object forward_mappings     # entry -> its channel's Mapping (kept mapped while in use)
    cdef object forwarder_thread
    cdef public object on_channel_released  # callable([Mapping]): channels let go (their files may go)
    cdef object checks_thread      # run_forwarder_checks, while the forwarder runs
    cdef object checks_wake        # threading.Event: stop_forwarder sets it
    cdef readonly uint64_t forwarded # records sent on for clients (statistics)

    cdef int _check_writable(self) except -1
    cdef int _refuse_reentrant(self, str what) except -1
    cdef object _write(self, str name, int source, object data)
    cdef bint _write_async(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                           const uint8_t *value, uint64_t value_len, str name, uint32_t ticket) except -1
    cdef int _solo_core(self, uint32_t op, const uint8_t *key, uint64_t key_len, const uint8_t *value,
                        uint64_t value_len, uint64_t h, int w, uint32_t ticket, uint64_t *seq_out,
                        uint64_t *seq_mark) noexcept nogil
    cdef int _forward_pass(self, int *stuck, int *stuck_worker, uint64_t *stuck_bytes) noexcept nogil
    cdef int _forward_until_python(self, int *stuck, int *stuck_worker, uint64_t *stuck_bytes) noexcept nogil
    cdef int _room_state(self, int w, uint64_t key_len, uint64_t value_len) noexcept nogil
    cdef bint _room_within(self, int w, uint64_t nbytes, uint64_t timeout_ns) noexcept nogil
    cdef void _forwarder_sleep(self) noexcept nogil
    cdef int _forward_sync(self, int index) except -1
    cdef int _forward_sync_locked(self, Forward *f, uint32_t op, bytes key, bytes value,
                                  uint64_t *seq_mark) except -1
    cdef int _send_solo(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                        const uint8_t *value, uint64_t value_len, str name, int *worker_out,
                        uint32_t ticket) except -1
    cdef bint _wait_room(self, int w, uint64_t key_len, uint64_t value_len) except -1
    cdef bint _wait_room_registered(self, int w, uint64_t key_len, uint64_t value_len) except -1
    cdef int _sync_async(self) except -1
    cdef int stream_record(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                           const uint8_t *value, uint64_t value_len) except -1
    cdef int _wait_applied(self, int w, amdb_control *c, uint64_t target) except -1
    cdef int _raise_async_error(self) except -1
    cdef object _run_batch(self, int source, object data)
    cdef int _pack_pairs(self, items) except -1
    cdef int _pack_deletes(self, keys) except -1
    cdef int _pack_arrays(self, const uint8_t[::1] keys, Py_ssize_t key_width, bint strip_keys,
                          const uint8_t[::1] values, Py_ssize_t value_width, bint strip_values,
                          Py_ssize_t n) except -1
    cdef int _pack_packed(self, const uint8_t[::1] keys, const int64_t[::1] key_offsets,
                          const uint8_t[::1] values, const int64_t[::1] value_offsets) except -1
    cdef int _pack_routed(self, ops) except -1
    cdef int _pack_rmw(self, uint32_t op, bytes key, bytes argument, uint32_t ticket) except -1
    cdef object _rmw(self, uint32_t op, key, bytes argument, str name)
    cdef int _rmw_nowait(self, uint32_t op, key, bytes argument, str name) except -1
    cdef int _check_rmw_sizes(self, uint32_t op, bytes k, bytes argument, str name) except -1
    cdef uint32_t _take_ticket(self, int w) except 0
    cdef object _rmw_result(self, int w, uint32_t ticket, bytes key, str name)
    cdef int _wait_space(self, int worker, uint64_t nbytes) except -1
    cdef uint64_t _reserve(self, int worker, uint64_t nbytes) except? 0
    cdef int _open_chunk(self, int worker) except -1
    cdef void _close_chunk(self, int worker) noexcept
    cdef int _append_record(self, uint32_t op, const uint8_t *key, uint64_t key_len,
                            const uint8_t *value, uint64_t value_len, uint32_t ticket) except -1
    cdef int _begin_batch(self) except -1
    cdef void _end_batch_seq(self) noexcept
    cdef int _wait_progress(self, int worker, uint64_t applied_target, uint64_t aborted_target) except -1
    cdef int _send_control(self, int worker, uint32_t op, uint64_t seq, uint64_t count) except -1
    cdef tuple _broadcast_control(self, uint32_t op, uint64_t count)
    cdef uint64_t _wait_checkpoint(self, int worker, uint64_t seq) except? 0xffffffffffffffff
    cdef int _check_worker_if_lock_free(self, int w) except -1
    cdef uint64_t _wait_checkpoint_registered(self, int worker, uint64_t seq) except? 0xffffffffffffffff
    cdef object _finish_batch(self)
    cdef int _abort_batch(self) except -1
    cdef bint _send_abort(self, int worker, bint wait) except -1
    cdef int _settle_aborts(self) except -1
