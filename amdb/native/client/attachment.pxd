# cython: language_level=3
"""The attachment: one process's view of an open database's shared memory
(see attachment.pyx for who writes what and the reader protocol)."""
from libc.stdint cimport uint64_t
from amdb.shm.layout cimport PartitionView, amdb_db_control, amdb_channel


from amdb.native.seek_index cimport SeekIndex

cdef enum:
    PENDING_KEY_SLOTS = 1024       # per worker: a read whose key's entry is clear never waits


cdef inline uint64_t pending_key_entry(int worker, uint64_t h) noexcept nogil:
    """The pending_key_chunk index of a key of hash h on `worker` (the high
    bits of h: the low ones pick the slot, hence the worker)."""
    return <uint64_t>worker * PENDING_KEY_SLOTS + ((h >> 40) & (PENDING_KEY_SLOTS - 1))


cdef class Attachment:
    cdef readonly int nworkers
    cdef PartitionView *parts          # per worker: control block, ring, current arena region
    cdef amdb_db_control *dbc
    cdef readonly uint64_t reader_slots  # dbc.readers[] entries (the owner's max_clients=)
    cdef list mappings                 # the Mappings parts[] and dbc point into: kept while attached
    cdef readonly bint closed
    cdef readonly bint attached
    cdef uint64_t readers[2]           # registered in-process readers, by parity of the read epoch
    cdef readonly uint64_t read_epoch  # +1 whenever a partition's base pointer changes (compaction)
    cdef char **arena_base             # per worker: where its region 0 is mapped
    cdef uint64_t *region              # per worker: the region parts[w].arena points into
    cdef readonly uint64_t committed_len  # live keys as of the last batch this process saw end
    cdef bint detach_pending           # closed while readers were inside: the last to leave detaches
    # A forked child's view ("Process safety" in attachment.pyx): its reads
    # take reader slot reader_slot (-1: none yet); foreign_inside reads are in
    # flight, all in shared read epoch foreign_epoch, whose regions parts[] name.
    cdef readonly bint foreign
    # Attached through the owner's socket (amdb/attach.py), not forked: a
    # client; gone_reason says why its owner went (then calls raise OwnerGoneError).
    cdef readonly bint client
    cdef readonly object gone_reason
    cdef readonly object gone_path
    # A writing client's channel (layout.h, "Client channels"), or NULL: its
    # reads wait until the owner sent on what it published (drain_channel).
    cdef amdb_channel *channel
    cdef object channel_mapping
    cdef int reader_slot
    cdef uint64_t foreign_inside
    cdef uint64_t foreign_epoch
    cdef object __weakref__            # the fork hook keeps a WeakSet of attachments
    # Async single writes of this process (layout.h): per worker, the chunk_no
    # of the last SOLO chunk sent (0: none pending that a read must wait for);
    # async_pending: some may not be covered by visible_seq yet.
    cdef uint64_t *async_chunk
    cdef bint async_pending
    cdef uint64_t last_async_seq       # seq of the last SOLO chunk this process sent
    # Per worker, PENDING_KEY_SLOTS entries: the chunk_no of the last SOLO
    # chunk sent for a key whose hash falls in the entry (pending_key_entry),
    # so that a read waits only for writes that may be its own key's.
    cdef uint64_t *pending_key_chunk
    # Per worker: where seeks start their descent (seek_index.pyx).
    cdef SeekIndex *seek_index
    # Seqs that open snapshots and iterators of this process read as of, with
    # their counts: compaction keeps what reads as of the oldest need.
    cdef dict pins

    cpdef int pin(self, uint64_t seq) except -1
    cpdef int unpin(self, uint64_t seq) except -1
    cpdef uint64_t pin_visible(self) except? 0
    cdef int publish_pin(self) except -1

    cdef void _free_seek_indexes(self) noexcept
    cdef int check_open(self) except -1
    cpdef object closed_error(self)
    cdef int enter_read(self) except -1
    cdef int leave_read(self, int slot) except -1
    cdef int enter_foreign(self, int catch_up=*) except -1
    cdef int client_catch_up(self, int worker) except -1
    cdef int drain_channel(self) except -1
    cdef int leave_foreign(self) except -1
    cdef int wait_parent_writes(self) except -1
    cdef int claim_reader_slot(self) except -1
    cdef void refresh_len(self) noexcept
