# cython: language_level=3
"""The attachment: one process's view of an open database's shared memory,
shared by its reader (reader.pyx) and its writer (writer.pyx).

Who calls it: amdb.db.ParallelDB creates it, amdb.supervisor.Supervisor
attaches it to the segments it made and closes it; the reader and the
writer read its pointers.

Shared memory it touches: it maps every partition's control block and ring
(read-write: the writer produces into the rings) and arena regions (read-
only), and the database control block. It writes only the reader slot of a
forked child (layout.h, "Reader slots") and, in the owner, the shared read
epoch.

Process safety:
  - Reads: any number of threads, without locks. Each read loads visible_seq
    (acquire) FIRST, then the roots it follows (acquire), so everything of a
    batch at or below visible_seq is visible to it and nothing above is.
  - close() vs reads: reads that hold the GIL cannot overlap the unmap
    (which also runs under the GIL). Reads that release the GIL register in
    `readers` (seq_cst) and re-check `closed`; close sets closed and drops
    the mappings at once when no reader is registered, else the last
    registered reader to leave drops them (release_memory): close never waits
    for a reader, so a finalizer that closes the database in the middle of a
    read of its own thread cannot wait for itself. No shutdown path unmaps
    memory a call in another thread can still touch: writers hold the write
    lock, which close takes (and the exit handler unmaps only when it got it).
    Code of the caller can run in the middle of a read (a generator of keys,
    an int subclass's comparisons, another thread meanwhile): reads check
    `closed` after the last point where the caller's code can run and before
    they touch shared memory.
  - Compaction vs reads (layout.h, "Arena regions", invariant 8): every read
    takes a partition's base pointer (parts[w].arena) ONCE, with the GIL, and
    follows only offsets and roots read through that same base. The owner
    switches a base only under the GIL (adopt_regions), and bumps read_epoch
    with it; so a read sees one generation, old or new, never a mix. The old
    region's memory is given back only once every registered reader that
    could hold its base has left: readers that release the GIL, or that may
    run Python code (a garbage collection) in the middle of a walk, register
    in readers[read_epoch & 1]; after a switch the old parity's count can
    only fall (new readers count in the other one), and the supervisor waits
    for it to reach zero (bounded) before it punches the old region out.
    Reads that hold the GIL and run no Python code between taking the base
    and their last arena access need no registration (get, `in`, a scan
    step). A scan keeps offsets from one step to the next: it notes
    read_epoch and re-seeks after its last key when it changed.
  - A forked child (os.register_at_fork, became_foreign) may only read and
    close its handle: the writer's guard refuses everything else before any
    lock or epoch. Its reads take a reader slot in the database control block
    (layout.h, "Reader slots"), so that the owner does not retire a region
    such a read is in; they adopt the regions the control blocks name
    whenever the shared read epoch moved.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from posix.unistd cimport usleep, getpid
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping
from amdb.native.seek_index cimport seek_index_free

from amdb.errors import ClosedError, Error, InvalidArgumentError

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1

cdef enum:
    WAIT_SLICE_NS = 50000000      # 50 ms: waits wake up this often to check Ctrl-C

# A forked child's first read waits at most this long for the parent's async writes.
cdef uint64_t PARENT_WRITES_WAIT_NS = 2000000000


# Every attached Attachment of this process, so that a forked child can turn
# each into a read-only view of its parent's database (became_foreign).
import os as _os
import weakref as _weakref
_attached = _weakref.WeakSet()


def release_reader_slot(Mapping db_mapping, int slot, uint64_t pid):
    """Free reader slot `slot` if process `pid` still holds it (a client
    collected without close(): its finalizer). The Mapping keeps the control
    block mapped for the call."""
    cdef amdb_db_control *dbc = <amdb_db_control *>db_mapping.base
    if dbc == NULL or not 0 <= slot < reader_slots_within(db_mapping):
        return False
    return bool(amdb_cas_seqcst(&dbc.readers[slot].pid, pid, 0))


cdef uint64_t reader_slots_within(Mapping db_mapping):
    """The reader slots of the control block db_mapping maps, as many as its
    owner made and the mapping covers (a client trusts its owner's count only
    that far)."""
    cdef amdb_db_control *dbc = <amdb_db_control *>db_mapping.base
    return min(dbc.reader_slot_count, <uint64_t>AMDB_MAX_READER_SLOTS,
               amdb_db_control_slots_within(db_mapping.length))


def _after_fork_in_child():
    for attachment in list(_attached):
        attachment.became_foreign()


_os.register_at_fork(after_in_child=_after_fork_in_child)


cdef class Attachment:
    """One process's view of an open database (see the module docstring)."""

    def __cinit__(self):
        self.parts = NULL
        self.arena_base = NULL
        self.region = NULL
        self.async_chunk = NULL
        self.pending_key_chunk = NULL
        self.seek_index = NULL
        self.dbc = NULL
        self.closed = True
        self.attached = False
        self.mappings = []
        self.reader_slot = -1

    def __dealloc__(self):
        free(self.parts)
        free(self.arena_base)
        free(self.region)
        free(self.async_chunk)
        free(self.pending_key_chunk)
        self._free_seek_indexes()

    cdef void _free_seek_indexes(self) noexcept:
        cdef int i
        if self.seek_index != NULL:
            for i in range(self.nworkers):
                seek_index_free(&self.seek_index[i])
            free(self.seek_index)
            self.seek_index = NULL

    # ---- lifecycle ---------------------------------------------------------

    def attach(self, Mapping db_mapping, list controls, list arenas):
        """Take this process's view of the segments: `controls[i]` maps
        partition i's control block and ring read-write, `arenas[i]` its arena
        regions (AMDB_ARENA_REGIONS of them, back to back) read-only."""
        cdef int i
        cdef Mapping cm, am
        cdef amdb_control *c
        self.nworkers = len(controls)
        self.parts = <PartitionView *>calloc(self.nworkers, sizeof(PartitionView))
        self.arena_base = <char **>calloc(self.nworkers, sizeof(char *))
        self.region = <uint64_t *>calloc(self.nworkers, sizeof(uint64_t))
        self.async_chunk = <uint64_t *>calloc(self.nworkers, sizeof(uint64_t))
        self.pending_key_chunk = <uint64_t *>calloc(self.nworkers * PENDING_KEY_SLOTS, sizeof(uint64_t))
        self.seek_index = <SeekIndex *>calloc(self.nworkers, sizeof(SeekIndex))
        if (self.parts == NULL or self.arena_base == NULL or self.region == NULL or self.async_chunk == NULL
                or self.pending_key_chunk == NULL or self.seek_index == NULL):
            raise MemoryError()
        self.dbc = <amdb_db_control *>db_mapping.base
        self.reader_slots = reader_slots_within(db_mapping)
        for i in range(self.nworkers):
            cm = controls[i]
            am = arenas[i]
            c = <amdb_control *>cm.base
            self.parts[i].ctrl = c
            self.parts[i].ring = cm.base + c.ring_offset
            if am.length < AMDB_ARENA_REGIONS * c.arena_capacity:
                raise InvalidArgumentError("an arena mapping must cover every region")
            self.arena_base[i] = am.base
            # The generation the worker published (a new segment: region 0).
            self.region[i] = amdb_load_acquire(&c.arena_region)
            self.parts[i].arena = am.base + self.region[i] * c.arena_capacity
            self.parts[i].region_offset = c.arena_offset + self.region[i] * c.arena_capacity
            self.parts[i].fd = -1
        self.mappings = [db_mapping] + controls + arenas
        self.refresh_len()               # a recovered database starts with keys
        self.attached = True
        self.closed = False
        _attached.add(self)

    cdef int check_open(self) except -1:
        if self.closed:
            raise self.closed_error()
        return 0

    cpdef object closed_error(self):
        """The exception a call on this closed attachment raises: OwnerGoneError
        when a client's owner went, else ClosedError."""
        if self.gone_reason is not None:
            from amdb.attach import owner_gone_error
            return owner_gone_error(self.gone_path, self.gone_reason)
        return ClosedError("the database is closed")

    def mark_closed(self):
        """Refuse new operations. Never waits: readers inside keep the memory
        (release_memory)."""
        self.closed = True

    def release_memory(self):
        """Drop the mappings now if no registered reader is inside, else when
        the last one leaves. REQUIRES closed and no write in flight (the
        write lock held, or the process exiting without it: then this is not
        called)."""
        if self.readers[0] == 0 and self.readers[1] == 0 and self.foreign_inside == 0:
            self.detach()
        else:
            self.detach_pending = True

    def detach(self):
        """Forget every pointer and drop our references to the mappings."""
        self.detach_pending = False
        if self.foreign and self.reader_slot >= 0 and self.dbc != NULL:
            amdb_store_release(&self.dbc.readers[self.reader_slot].pid, 0)
            self.reader_slot = -1
        self.attached = False
        self._free_seek_indexes()
        self.closed = True
        self.dbc = NULL
        self.nworkers = 0
        free(self.parts)
        free(self.arena_base)
        free(self.region)
        free(self.async_chunk)
        free(self.pending_key_chunk)
        self.parts = NULL
        self.arena_base = NULL
        self.region = NULL
        self.async_chunk = NULL
        self.pending_key_chunk = NULL
        self.async_pending = False
        self.mappings = []
        _attached.discard(self)

    def became_foreign(self):
        """Called in a forked child (os.register_at_fork): from now on this
        handle only reads, through a reader slot, and closes. The threads that
        were reading in the parent do not exist here: their registrations
        (readers) never leave, so this process's memory is dropped only when
        it exits (the mappings are private to it), never too early."""
        cdef int w
        cdef bint parent_pending = False
        cdef uint64_t head, deadline
        self.foreign = True
        self.reader_slot = -1
        self.foreign_inside = 0
        self.foreign_epoch = 0           # no epoch: the first read adopts the current regions
        self.async_pending = False       # the parent's writes: not this process's to send or flush
        if self.async_chunk != NULL:
            # But they were acknowledged before the fork: wait until their
            # workers applied them (wait_parent_writes), so that the child
            # sees every write the parent made before it forked. Here, before
            # any read can take its visible_seq.
            for w in range(self.nworkers):
                if self.async_chunk[w]:
                    parent_pending = True
            memset(self.pending_key_chunk, 0, self.nworkers * PENDING_KEY_SLOTS * sizeof(uint64_t))
            if parent_pending and self.attached and not self.closed:
                self.wait_parent_writes()
        # The parent's open snapshots and iterators are this child's copies
        # now: what they read is held for the child, through its reader slot.
        if self.pins and self.attached and not self.closed:
            self.publish_pin()
        if self.channel != NULL:
            # A writing client's child: the channel stays the parent's (one
            # producer). What the parent published before the fork is waited
            # for (PARENT_WRITES_WAIT_NS at most), so the child's reads see it.
            deadline = amdb_monotonic_ns() + PARENT_WRITES_WAIT_NS
            head = amdb_load_relaxed(&self.channel.head)
            with nogil:
                while amdb_load_acquire(&self.channel.tail) < head and amdb_monotonic_ns() < deadline:
                    usleep(20)
            self.channel = NULL

    def became_client(self, path):
        """This attachment was made from descriptors the owner handed over
        (amdb/attach.py): a foreign view from the start, with its reader slot
        taken now. Returns the slot (the client's finalizer frees it)."""
        self.foreign = True
        self.client = True
        self.gone_path = path
        self.reader_slot = -1
        self.foreign_inside = 0
        self.foreign_epoch = 0
        self.claim_reader_slot()
        return self.reader_slot

    def owner_gone(self, str reason):
        """A client's owner closed the database or exited (the watcher thread
        saw it): from now on every call raises OwnerGoneError; the memory goes
        once no read of this process is inside."""
        if self.gone_reason is None and not self.closed:
            self.gone_reason = reason
            self.close_foreign()

    def close_foreign(self):
        """close() in a forked child: its handle only. The owner's workers,
        locks, logs and audit log are not this process's to touch."""
        if self.attached and not self.closed and self.reader_slot >= 0:
            amdb_store_seqcst(&self.dbc.readers[self.reader_slot].pin_seq, 0)
        self.closed = True
        if self.attached:
            if self.foreign_inside == 0:
                self.detach()
            else:
                self.detach_pending = True

    # ---- reader registration -------------------------------------------------

    cdef int enter_read(self) except -1:
        """Register a reader (see "Process safety"); returns the slot to pass
        to leave_read (2: a forked child's reader slot). Take base pointers
        only after this. REQUIRES the GIL."""
        cdef int slot
        if self.foreign:
            self.enter_foreign()
            return 2
        slot = <int>(self.read_epoch & 1)
        amdb_fetch_add_seqcst(&self.readers[slot], 1)
        if self.closed:
            amdb_fetch_sub_seqcst(&self.readers[slot], 1)
            raise self.closed_error()
        return slot

    cdef int leave_read(self, int slot) except -1:
        if slot == 2:
            return self.leave_foreign()
        amdb_fetch_sub_seqcst(&self.readers[slot], 1)
        if self.detach_pending and self.readers[0] == 0 and self.readers[1] == 0:
            self.detach()
        return 0

    cdef int claim_reader_slot(self) except -1:
        """Take a free reader slot, or one whose process is gone."""
        from amdb.shm.segment import pid_alive
        cdef int i
        cdef uint64_t me = <uint64_t>getpid()
        cdef uint64_t holder
        for i in range(self.reader_slots):
            holder = amdb_load_seqcst(&self.dbc.readers[i].pid)
            if holder != 0 and (holder == me or pid_alive(<long>holder)):
                continue
            if amdb_cas_seqcst(&self.dbc.readers[i].pid, holder, me):
                amdb_store_seqcst(&self.dbc.readers[i].epoch, 0)
                amdb_store_seqcst(&self.dbc.readers[i].pin_seq, 0)
                self.reader_slot = i
                return 0
        raise Error(f"more than {self.reader_slots} processes read this database at once",
                    code="too_many_readers",
                    hint="close the database in processes that no longer use it, or open the owner "
                         f"with a larger max_clients= (at most {AMDB_MAX_READER_SLOTS})")

    cdef int enter_foreign(self, int catch_up=-2) except -1:
        """Begin a read in a forked child or a client: pin the read epoch in
        our slot (layout.h, "Reader slots"), then point parts[] at the regions
        current in it if the epoch moved. Nested and concurrent reads of this
        process share the pin. A client then catches up with its owner's
        async writes (client_catch_up): on worker `catch_up` (>= 0), on every
        worker (-1), or not (-2). REQUIRES the GIL."""
        cdef amdb_reader_slot *slot
        cdef uint64_t epoch, again
        if self.closed:
            raise self.closed_error()
        if (self.foreign_inside == 0 and self.channel != NULL and catch_up != -2
                and amdb_load_acquire(&self.channel.tail) != amdb_load_relaxed(&self.channel.head)):
            # Read-your-writes: what we published is in the rings first. Never
            # with our epoch pinned: the owner's forwarder waits while the
            # owner holds its write lock, and a compaction holding it waits
            # for pinned readers to leave. (A read nested in another read of
            # this process comes after that one's wait.)
            self.drain_channel()
        if self.foreign_inside == 0:
            if self.reader_slot < 0:
                self.claim_reader_slot()
            slot = &self.dbc.readers[self.reader_slot]
            epoch = amdb_load_seqcst(&self.dbc.read_epoch)
            while True:
                amdb_store_seqcst(&slot.epoch, epoch)
                again = amdb_load_seqcst(&self.dbc.read_epoch)
                if again == epoch:
                    break
                epoch = again
            if epoch != self.foreign_epoch:
                self.adopt_regions(False)
                self.foreign_epoch = epoch
                self.refresh_len()
        self.foreign_inside += 1
        if self.client and catch_up != -2:
            # The common case of a read of one key: nothing of its worker's
            # left to wait for (client_catch_up says why it may wait).
            if (catch_up >= 0 and amdb_load_acquire(&self.parts[catch_up].ctrl.applied_chunk)
                    >= amdb_load_acquire(&self.dbc.solo_chunk[catch_up])):
                return 0
            try:
                self.client_catch_up(catch_up)
            except BaseException:
                self.leave_foreign()
                raise
        return 0

    def set_channel(self, Mapping mapping):
        """A writing client: its channel (ClientWriter writes it)."""
        self.channel_mapping = mapping
        self.channel = <amdb_channel *>mapping.base

    cdef int drain_channel(self) except -1:
        """Wait until the owner's forwarder sent on every record this client
        published in its channel (layout.h, "Client channels", point 2).
        Raises OwnerGoneError (or ClosedError) when the owner goes meanwhile."""
        cdef amdb_channel *ch = self.channel
        cdef uint64_t head
        cdef uint32_t seen
        cdef int i
        cdef bint done = False
        if ch == NULL:
            return 0
        head = amdb_load_relaxed(&ch.head)
        while True:
            with nogil:
                for i in range(AMDB_SPIN_STEPS + 1):
                    if amdb_load_acquire(&ch.tail) >= head:
                        done = True
                        break
                    if i == AMDB_SPIN_STEPS:
                        seen = amdb_load32_seqcst(&ch.tail_event)
                        amdb_store32_seqcst(&ch.client_waiting, 1)
                        if amdb_load_acquire(&ch.tail) < head:
                            amdb_futex_wait(&ch.tail_event, seen, 50000000)
                        amdb_store32_seqcst(&ch.client_waiting, 0)
                    else:
                        amdb_spin_step(i)
            if done:
                return 0
            PyErr_CheckSignals()
            if self.closed:
                raise self.closed_error()
            if amdb_load32_seqcst(&ch.broken):
                raise Error("the owner found a malformed record in this client's channel and stopped "
                            "forwarding it", code="corrupt", hint="report this bug; reattach to write again")

    cdef int client_catch_up(self, int worker) except -1:
        """A client, inside a read (enter_foreign): wait until worker `worker`
        (-1: every worker) applied every async write its owner acknowledged
        so far (layout.h, solo_seq); for every worker, raise visible_seq over
        them too. A worker that never gets there (dead, not replaced) is
        waited for PARENT_WRITES_WAIT_NS at most."""
        cdef uint64_t seq = amdb_load_acquire(&self.dbc.solo_seq)
        cdef int w
        cdef int first = worker if worker >= 0 else 0
        cdef int last = worker + 1 if worker >= 0 else self.nworkers
        cdef uint64_t target, deadline = 0
        cdef amdb_control *c
        for w in range(first, last):
            target = amdb_load_acquire(&self.dbc.solo_chunk[w])
            c = self.parts[w].ctrl
            if amdb_load_acquire(&c.applied_chunk) >= target or amdb_load_acquire(&c.failed_chunk) >= target:
                continue
            if deadline == 0:
                deadline = amdb_monotonic_ns() + PARENT_WRITES_WAIT_NS
            with nogil:
                while (amdb_load_acquire(&c.applied_chunk) < target
                       and amdb_load_acquire(&c.failed_chunk) < target
                       and amdb_monotonic_ns() < deadline):
                    usleep(5)
        if worker < 0 and seq != 0:
            amdb_fetch_max_seqcst(&self.dbc.visible_seq, seq)
        return 0

    cdef int wait_parent_writes(self) except -1:
        """In a forked child, at the fork (became_foreign): wait until the workers
        applied (or refused) the async writes the parent had sent when it
        forked (async_chunk, inherited). The workers go on applying the
        parent's rings whatever happens to it; a worker that never gets
        there (dead, not replaced) is waited for PARENT_WRITES_WAIT_NS at most."""
        cdef int w
        cdef uint64_t target, deadline = amdb_monotonic_ns() + PARENT_WRITES_WAIT_NS
        cdef amdb_control *c
        for w in range(self.nworkers):
            target = self.async_chunk[w]
            if target == 0:
                continue
            c = self.parts[w].ctrl
            with nogil:
                while (amdb_load_acquire(&c.applied_chunk) < target
                       and amdb_load_acquire(&c.failed_chunk) < target
                       and amdb_monotonic_ns() < deadline):
                    usleep(20)
            self.async_chunk[w] = 0
        # Every seq up to the parent's last async write is whole now (a SOLO
        # chunk goes out only between batches): make them visible to reads of
        # more than one key too, as the parent's own reads would (a CAS-max).
        amdb_fetch_max_seqcst(&self.dbc.visible_seq, self.last_async_seq)
        return 0

    cdef int leave_foreign(self) except -1:
        self.foreign_inside -= 1
        if self.foreign_inside == 0:
            if self.reader_slot >= 0:
                amdb_store_release(&self.dbc.readers[self.reader_slot].epoch, 0)
            if self.detach_pending:
                self.detach()
        return 0

    def debug_enter_read(self):
        """Test hook: register as a reader, as a GIL-free read does (returns
        the slot for debug_leave_read)."""
        return self.enter_read()

    def debug_leave_read(self, int slot):
        if slot not in (0, 1, 2):
            raise InvalidArgumentError("a reader slot is 0, 1 or 2")
        self.leave_read(slot)

    # ---- generations (compaction) --------------------------------------------

    def adopt_regions(self, bint publish=True):
        """Point parts[w].arena at the region each worker's control block names
        as current (after a compaction, or a worker that attached again), and
        bump read_epoch once if any base changed. Runs with the GIL, so no
        GIL-holding read step sees half of it. The owner (publish) also bumps
        the shared read epoch, after the switch it saw (layout.h, "Reader
        slots"); a forked child adopts without publishing. Returns
        [(worker, region it left)]."""
        cdef int i
        cdef uint64_t region
        cdef amdb_control *c
        retired = []
        for i in range(self.nworkers):
            c = self.parts[i].ctrl
            # Acquire: the worker wrote the generation (and its header) before
            # publishing the region; we read them through the new base next.
            region = amdb_load_acquire(&c.arena_region)
            if region != self.region[i] and region < AMDB_ARENA_REGIONS:
                retired.append((i, self.region[i]))
                self.region[i] = region
                self.parts[i].arena = self.arena_base[i] + region * c.arena_capacity
                self.parts[i].region_offset = c.arena_offset + region * c.arena_capacity
        if retired:
            self.read_epoch += 1
            if publish:
                amdb_fetch_add_seqcst(&self.dbc.read_epoch, 1)
        return retired

    def shared_read_epoch(self):
        """The shared read epoch now (layout.h, "Reader slots")."""
        return amdb_load_seqcst(&self.dbc.read_epoch)

    def readers_idle(self):
        """No registered reader of this process is inside the arenas now
        (both parities). With the GIL held, a reader that did not register
        is not in the middle of a walk either, so every read of this process
        that could hold an offset or a root loaded before now is over."""
        return amdb_load_seqcst(&self.readers[0]) == 0 and amdb_load_seqcst(&self.readers[1]) == 0

    def outgrown_tables(self):
        """[(worker, tables_retired)] of the partitions with outgrown hash
        tables no drain covers yet (layout.h, "Outgrown hash tables", 2), or
        None: one loop in C, asked before every write. Acquire: the grown
        tables' roots are published before the count."""
        cdef int i
        cdef uint64_t retired
        cdef amdb_control *c
        out = None
        for i in range(self.nworkers):
            c = self.parts[i].ctrl
            retired = amdb_load_acquire(&c.tables_retired)
            if retired > amdb_load_relaxed(&c.tables_drained):
                if out is None:
                    out = []
                out.append((i, retired))
        return out

    def bump_shared_read_epoch(self):
        """Move the shared read epoch on (seq_cst) and return it: a reader
        slot that holds it or a later one entered after the bump (layout.h,
        "Reader slots"). Forked children and clients then re-adopt the regions,
        which have not changed."""
        return amdb_fetch_add_seqcst(&self.dbc.read_epoch, 1) + 1

    def reader_slots_held(self):
        """Reader slots a live process holds (of reader_slots: max_clients)."""
        from amdb.shm.segment import pid_alive
        cdef uint64_t i, pid
        held = 0
        for i in range(self.reader_slots):
            pid = amdb_load_seqcst(&self.dbc.readers[i].pid)
            if pid != 0 and pid_alive(<long>pid):
                held += 1
        return held

    def foreign_readers_before(self, uint64_t epoch):
        """[pid] of live processes whose reader slot holds a read epoch below
        `epoch`: they may still read a region retired before it."""
        from amdb.shm.segment import pid_alive
        cdef int i
        cdef uint64_t pid, held
        out = []
        for i in range(self.reader_slots):
            pid = amdb_load_seqcst(&self.dbc.readers[i].pid)
            held = amdb_load_seqcst(&self.dbc.readers[i].epoch)
            if pid != 0 and 0 < held < epoch and pid_alive(<long>pid):
                out.append(pid)
        return out

    def wait_readers(self, int slot, double timeout, uint64_t epoch=0):
        """Wait until no registered reader of `slot` (0 or 1; -1: none) is left
        (readers that entered before the read epoch moved on) and, with
        `epoch`, no live forked child reads in a shared read epoch below it;
        at most `timeout` seconds (negative: until they are gone; Ctrl-C
        works). True when none is left."""
        cdef uint64_t deadline_ns = amdb_monotonic_ns() + <uint64_t>(max(timeout, 0.0) * 1e9)
        cdef uint64_t slice_end
        cdef bint gone
        while True:
            slice_end = amdb_monotonic_ns() + WAIT_SLICE_NS
            gone = slot < 0 or slot > 1
            with nogil:
                while not gone:
                    if amdb_load_seqcst(&self.readers[slot]) == 0:
                        gone = True
                    elif amdb_monotonic_ns() >= slice_end:
                        break
                    else:
                        usleep(50)
            if gone and (epoch == 0 or not self.foreign_readers_before(epoch)):
                return True
            if timeout >= 0 and amdb_monotonic_ns() >= deadline_ns:
                return False
            if gone:
                with nogil:
                    usleep(1000)        # a forked child's read: they are short
            PyErr_CheckSignals()

    def regions(self):
        """[(region, generation)] of every partition as this process reads it."""
        cdef int i
        out = []
        for i in range(self.nworkers):
            out.append((self.region[i], amdb_arena_header_of(self.parts[i].arena).generation))
        return out

    # ---- counters --------------------------------------------------------------

    cdef void refresh_len(self) noexcept:
        cdef uint64_t total = 0
        cdef int i
        for i in range(self.nworkers):
            total += amdb_load_relaxed(&self.parts[i].ctrl.live_keys)
        self.committed_len = total

    def version_counts(self):
        """(versions, nodes) stored in every partition together (relaxed: statistics,
        and the automatic compaction's trigger)."""
        cdef int i
        cdef uint64_t versions = 0, nodes = 0
        for i in range(self.nworkers):
            versions += amdb_load_relaxed(&self.parts[i].ctrl.version_count)
            nodes += amdb_load_relaxed(&self.parts[i].ctrl.node_count)
        return versions, nodes

    def visible_seq(self):
        return amdb_load_acquire(&self.dbc.visible_seq) if self.dbc != NULL else 0

    # ---- pins: what compaction must keep for this process's open reads ------------

    cpdef int pin(self, uint64_t seq) except -1:
        """A snapshot or iterator reads as of `seq` from now until unpin. In
        a forked child, published in its reader slot for the owner to see."""
        if self.pins is None:
            self.pins = {}
        self.pins[seq] = self.pins.get(seq, 0) + 1
        if self.foreign and not self.closed:
            self.publish_pin()
        return 0

    cdef int publish_pin(self) except -1:
        """A forked child: its oldest pinned seq (0: none) into its reader slot
        (seq_cst, as the slot's epoch)."""
        if self.reader_slot < 0:
            if not self.pins:
                return 0
            self.claim_reader_slot()
        amdb_store_seqcst(&self.dbc.readers[self.reader_slot].pin_seq, min(self.pins) if self.pins else 0)
        return 0

    cpdef int unpin(self, uint64_t seq) except -1:
        cdef object count
        if self.pins is None:
            return 0
        count = self.pins.get(seq)
        if count is None:
            return 0
        if count == 1:
            del self.pins[seq]
        else:
            self.pins[seq] = count - 1
        if self.foreign and not self.closed:
            self.publish_pin()
        return 0

    cpdef uint64_t pin_visible(self) except? 0:
        """Pin the newest visible seq for a read that will last (a snapshot, an
        iterator) and return it; the caller owns that pin. The pin goes out
        first (a lower bound), then visible_seq is read again and used: a
        compaction that did not see the pin read visible_seq before it looked
        (compact_horizon), so it kept every version a read as of the seq read
        after the pin needs. (Taking the seq first and pinning it after lets a
        compaction in between reclaim what the read needs.)"""
        cdef uint64_t lower = amdb_load_seqcst(&self.dbc.visible_seq)
        cdef uint64_t seq
        self.pin(lower)
        seq = amdb_load_seqcst(&self.dbc.visible_seq)
        if seq != lower:
            self.pin(seq)
            self.unpin(lower)
        return seq

    def compact_horizon(self):
        """The oldest seq an open snapshot or iterator reads as of, of this
        process or of a live forked child (its reader slot), else
        visible_seq: compaction keeps every version reads as of it need."""
        from amdb.shm.segment import pid_alive
        cdef int i
        cdef uint64_t pinned, holder
        # visible_seq first (seq_cst), then the pins: see pin_visible.
        horizon = amdb_load_seqcst(&self.dbc.visible_seq)
        if self.pins:
            horizon = min(horizon, min(self.pins))
        for i in range(self.reader_slots):
            pinned = amdb_load_seqcst(&self.dbc.readers[i].pin_seq)
            if pinned != 0 and pinned < horizon:
                holder = amdb_load_seqcst(&self.dbc.readers[i].pid)
                if holder != 0 and pid_alive(<long>holder):
                    horizon = pinned
        return horizon
