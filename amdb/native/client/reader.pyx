# cython: language_level=3
"""The arena readers: every read of an open database, straight from shared
memory, in any process attached to it (get, `in`, batch_get, get_array,
history, versioned reads, scans).

Who calls it: amdb.db.ParallelDB (its read methods are this class's own,
bound at open), amdb.history.Snapshot, and the supervisor (partition_items,
to move keys between workers).

Shared memory: reads only. It follows the rules of attachment.pyx ("Process
safety"): visible_seq first (acquire), then roots and offsets (acquire), one
base pointer per partition per read, registration for reads that release the
GIL or may run Python code mid-walk, `closed` checked after the caller's
last chance to run code.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.buffer cimport PyBuffer_Release, PyObject_CheckBuffer
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.native.hashing cimport amdb_xxh64, SLOT_MASK
from amdb.native.skiplist cimport skiplist_find_ge, skiplist_find_lt, compare_key_to_node
from amdb.native.hashindex cimport hashindex_find
from amdb.native.versions cimport visible_version, visible_version_now, is_live, VERSION_RECLAIMED
from amdb.native.client.attachment cimport Attachment, pending_key_entry
from amdb.native.client.keys cimport bytes_view, raise_not_bytes, as_key, prefix_successor
from amdb.native.client.iterator cimport Iterator, MODE_ITEMS, MODE_KEYS, MODE_VALUES

from amdb.errors import (ClosedError, InvalidArgumentError, InvalidTypeError, ValueTooLargeError,
                         VersionReclaimedError)

cdef enum:
    LOOKUP_GROUP = 32             # batch reads: keys whose cache misses overlap (prefetch)
    BATCH_GET_BLOCK = 512         # batch_get: keys looked up per GIL release

cdef int _raise_reclaimed(bytes key, version, at_seq, uint64_t oldest, uint64_t oldest_seq) except -1:
    """Raise VersionReclaimedError: what was asked for lies below the oldest
    version of `key` that compaction kept (version `oldest`, seq `oldest_seq`)."""
    if version is not None:
        what = f"version {version}"
    else:
        what = f"its value as of seq {at_seq}"
    raise VersionReclaimedError(
        f"{what} of key {key!r} was reclaimed by compaction: the oldest version kept is "
        f"version {oldest} (seq {oldest_seq})",
        key=key, version=version, at_seq=at_seq, oldest_version=oldest)


cdef int _raise_reclaimed_now(key) except -1:
    """A read as of now met a reclaimed version: compaction keeps at least the
    newest version of every key, so this cannot happen; if it ever did, the
    read raises rather than answer with other data."""
    raise VersionReclaimedError("the visible version of " + ("a key" if key is None else f"key {key!r}")
                                + " was reclaimed by compaction", key=key)


cdef uint64_t find_node(Attachment att, const uint8_t *key, uint64_t key_len, int *worker_out,
                        const char **arena_out) noexcept nogil:
    """Node offset of `key` (0 when absent), its worker and the base of the
    region it lies in (taken once: see attachment.pyx)."""
    cdef uint64_t h = amdb_xxh64(key, key_len, 0)
    cdef int worker = att.dbc.slot_owner[h & SLOT_MASK]
    cdef const char *arena = att.parts[worker].arena
    worker_out[0] = worker
    arena_out[0] = arena
    return hashindex_find(arena, arena_hash_table(arena), h, key, <uint32_t>key_len)


cdef class Reader:
    """Every read of the database (see the module docstring)."""

    def __cinit__(self, Attachment att, Writer writer=None):
        self.att = att
        self.writer = writer              # waits for this process's async writes (None: reads only)

    cdef uint64_t _lookup(self, const uint8_t *key, uint64_t key_len, uint64_t h, int worker, uint64_t visible,
                          const char **arena_out) noexcept nogil:
        """Live version offset of `key` (hash h, on `worker`) as of now, 0, or
        VERSION_RECLAIMED; the base of the region it lies in goes to
        *arena_out (taken once: see attachment.pyx, "Process safety")."""
        cdef const char *arena = self.att.parts[worker].arena
        cdef uint64_t node_off, version_off
        arena_out[0] = arena
        node_off = hashindex_find(arena, arena_hash_table(arena), h, key, <uint32_t>key_len)
        if node_off == 0:
            return 0
        version_off = visible_version_now(arena, node_at(arena, node_off), visible)
        if version_off == VERSION_RECLAIMED:
            return version_off
        return version_off if is_live(arena, version_off) else 0

    def get(self, key, default=None, *, version=None, at_seq=None):
        """The value of `key` as bytes, or `default` when it is absent.

        version=n: the key's n-th version (1 = first); at_seq=s: the value as
        of sequence number s. Either gives `default` when that version does
        not exist or is a deletion, and raises VersionReclaimedError when
        compaction reclaimed it (see docs/API.md)."""
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer view
        cdef bint held = False
        cdef uint64_t visible, version_off, h
        cdef int worker
        cdef const char *arena
        cdef amdb_version *v
        if self.att.closed:
            raise self.att.closed_error()
        if version is not None or at_seq is not None:
            return self._get_versioned(key, default, version, at_seq)
        bytes_view(key, &kp, &kl, &view, &held, "key")
        if self.att.closed:                  # the key's export may have run the caller's code
            if held:
                PyBuffer_Release(&view)
            raise self.att.closed_error()
        if self.att.foreign:
            return self._get_foreign(key, kp, kl, &view, held, default)
        h = amdb_xxh64(kp, kl, 0)
        worker = self.att.dbc.slot_owner[h & SLOT_MASK]
        if self._key_pending(worker, h):
            self._wait_own_writes(worker, &view, held)
            if self.att.closed:          # the wait let other threads run, close() among them
                if held:
                    PyBuffer_Release(&view)
                raise self.att.closed_error()
        # Acquire first: roots loaded after it are at least as new as the batch.
        visible = amdb_load_acquire(&self.att.dbc.visible_seq)
        version_off = self._lookup(kp, kl, h, worker, visible, &arena)
        if held:
            return self._get_held(&view, version_off, arena, default)
        if version_off == 0:
            return default
        if version_off == VERSION_RECLAIMED:    # cannot happen for a read as of now; never a wrong answer
            _raise_reclaimed_now(key)
        v = version_at(arena, version_off)
        return PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)

    cdef object _get_foreign(self, key, const uint8_t *kp, Py_ssize_t kl, Py_buffer *view, bint held, default):
        """get() in a forked child or an attached client: the same lookup inside a reader slot."""
        cdef uint64_t version_off = 0, h
        cdef int worker
        cdef const char *arena
        cdef amdb_version *v
        value = default
        try:
            h = amdb_xxh64(kp, kl, 0)
            worker = self.att.dbc.slot_owner[h & SLOT_MASK]
            self.att.enter_foreign(worker)
            try:
                version_off = self._lookup(kp, kl, h, worker,
                                           amdb_load_acquire(&self.att.dbc.visible_seq), &arena)
                if version_off != 0 and version_off != VERSION_RECLAIMED:
                    v = version_at(arena, version_off)
                    value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
            finally:
                self.att.leave_foreign()
        finally:
            if held:
                PyBuffer_Release(view)
        if version_off == VERSION_RECLAIMED:
            _raise_reclaimed_now(key)
        return value

    cdef object _get_held(self, Py_buffer *view, uint64_t version_off, const char *arena, default):
        """get()'s end for a key whose buffer we hold: the value is copied
        before the buffer is released, since releasing it may run the
        caller's code, and with it a compaction."""
        cdef amdb_version *v
        if version_off == 0 or version_off == VERSION_RECLAIMED:
            value = default
        else:
            v = version_at(arena, version_off)
            value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
        PyBuffer_Release(view)
        if version_off == VERSION_RECLAIMED:
            _raise_reclaimed_now(None)
        return value

    cdef uint64_t _limit_seq(self, at_seq) except? 0:
        """The newest seq a read may see: visible_seq, or at_seq (validated).
        Checks `closed` last: the checks of an int subclass run its code."""
        cdef uint64_t visible, seq = 0xFFFFFFFFFFFFFFFF
        if at_seq is not None:
            if isinstance(at_seq, bool) or not isinstance(at_seq, int):
                raise InvalidTypeError(f"at_seq= must be an int, not {type(at_seq).__name__}",
                                       hint="pass a sequence number from BatchResult.last_seq or snapshot().seq")
            if at_seq < 0:
                raise InvalidArgumentError(f"at_seq={at_seq} is negative", hint="sequence numbers start at 0")
            if at_seq <= 0xFFFFFFFFFFFFFFFF:
                seq = at_seq             # above: in the future whatever visible_seq is
        self._sync_own_writes()         # reads as of a seq see every write this process made
        self.att.check_open()
        visible = amdb_load_acquire(&self.att.dbc.visible_seq)
        if at_seq is None:
            return visible
        if seq > visible:
            raise InvalidArgumentError(f"at_seq={at_seq} is in the future: the newest visible sequence "
                                       f"number is {visible}", hint="use db.snapshot().seq for 'now'")
        return seq

    cdef uint64_t _find_node(self, const uint8_t *key, uint64_t key_len, int *worker_out,
                             const char **arena_out) noexcept nogil:
        return find_node(self.att, key, key_len, worker_out, arena_out)

    cdef uint64_t _chain_of(self, bytes key, int *worker, const char **arena) except? 0:
        """Newest version offset of `key` (0: never written), its worker and
        the base of its region. No code of the caller runs in here: the
        caller validated everything first."""
        cdef uint64_t node_off
        self.att.check_open()
        node_off = self._find_node(<const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                                   worker, arena)
        if node_off == 0:
            return 0
        return amdb_node_latest_acquire(node_at(arena[0], node_off))

    def _get_versioned(self, key, default, version, at_seq):
        cdef uint64_t limit, wanted = 0
        cdef int slot
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise InvalidTypeError(f"version= must be an int, not {type(version).__name__}",
                                       hint="versions count 1, 2, 3... per key (see db.history(key))")
            if version < 1:
                raise InvalidArgumentError(f"version={version}: versions count from 1",
                                           hint="version=1 is a key's first version; see db.history(key)")
            # No key has 2**64 - 1 versions: a larger number finds none either.
            wanted = version if version <= 0xFFFFFFFFFFFFFFFF else 0xFFFFFFFFFFFFFFFF
        limit = self._limit_seq(at_seq)
        key = as_key(key, "key")        # the caller's code runs here, if at all; not below
        if self.att.foreign:
            slot = self.att.enter_read()
            try:
                return self._versioned_walk(key, default, version, at_seq, wanted, limit)
            finally:
                self.att.leave_read(slot)
        return self._versioned_walk(key, default, version, at_seq, wanted, limit)

    cdef object _versioned_walk(self, bytes key, default, version, at_seq, uint64_t wanted, uint64_t limit):
        """_get_versioned's walk down the key's chain. No code of the caller runs in here."""
        cdef int worker
        cdef uint64_t off, number
        cdef const char *arena
        cdef amdb_version *v
        cdef amdb_version_tail *tail
        off = self._chain_of(key, &worker, &arena)
        while off != 0:
            v = version_at(arena, off)
            tail = amdb_version_tail_of(v)
            number = tail.version_no
            if v.seq <= limit:
                if wanted == 0 or number == wanted:
                    if v.flags & AMDB_VERSION_TOMBSTONE:
                        return default
                    return PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
                if number < wanted:
                    return default
            if v.prev == 0 and number > 1 and (wanted == 0 or wanted < number):
                # The answer lies below the oldest kept version (layout.h, invariant 9).
                _raise_reclaimed(key, version, at_seq, number, v.seq)
            off = v.prev
        return default

    def history_records(self, key, at_seq):
        """[(version_no, seq, timestamp_ns, value or None, deleted, hash, prev_hash)],
        newest first, of the versions visible as of at_seq (None: now). After
        compaction: the kept ones; VersionReclaimedError when none of them is
        visible at at_seq but older, reclaimed ones were."""
        cdef int worker, slot
        cdef uint64_t limit, off, oldest = 0, oldest_seq = 0
        cdef const char *arena
        cdef amdb_version *v
        cdef amdb_version_tail *tail
        cdef list out = []
        if self.att.closed:
            raise self.att.closed_error()
        limit = self._limit_seq(at_seq)
        key = as_key(key, "key")
        # Registered: building the tuples may collect garbage, and run other
        # threads, in the middle of the walk.
        slot = self.att.enter_read()
        try:
            off = self._chain_of(key, &worker, &arena)
            while off != 0:
                v = version_at(arena, off)
                tail = amdb_version_tail_of(v)
                if v.seq <= limit:
                    deleted = bool(v.flags & AMDB_VERSION_TOMBSTONE)
                    out.append((tail.version_no, v.seq, tail.timestamp_ns,
                                None if deleted else PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len),
                                deleted, tail.hash, amdb_version_prev_hash(arena, v)))
                if v.prev == 0 and tail.version_no > 1:
                    oldest = tail.version_no
                    oldest_seq = v.seq
                off = v.prev
        finally:
            self.att.leave_read(slot)
        if not out and oldest:
            _raise_reclaimed(key, None, at_seq, oldest, oldest_seq)
        return out

    def contains(self, key):
        cdef const uint8_t *kp
        cdef Py_ssize_t kl
        cdef Py_buffer view
        cdef bint held = False
        cdef int worker
        cdef const char *arena
        cdef uint64_t found, h
        if self.att.closed:
            raise self.att.closed_error()
        bytes_view(key, &kp, &kl, &view, &held, "key")
        if self.att.closed:                  # the key's export may have run the caller's code
            if held:
                PyBuffer_Release(&view)
            raise self.att.closed_error()
        h = amdb_xxh64(kp, kl, 0)
        worker = self.att.dbc.slot_owner[h & SLOT_MASK]
        if self.att.foreign:
            try:
                self.att.enter_foreign(worker)
                try:
                    found = self._lookup(kp, kl, h, worker, amdb_load_acquire(&self.att.dbc.visible_seq), &arena)
                finally:
                    self.att.leave_foreign()
            finally:
                if held:
                    PyBuffer_Release(&view)
        else:
            if self._key_pending(worker, h):
                self._wait_own_writes(worker, &view, held)
                if self.att.closed:
                    if held:
                        PyBuffer_Release(&view)
                    raise self.att.closed_error()
            found = self._lookup(kp, kl, h, worker, amdb_load_acquire(&self.att.dbc.visible_seq), &arena)
            if held:
                PyBuffer_Release(&view)
        if found == VERSION_RECLAIMED:
            _raise_reclaimed_now(key)
        return found != 0

    cdef inline bint _key_pending(self, int worker, uint64_t h) noexcept:
        """This process sent `worker` an async write, not applied yet, that
        may be of the key of hash h (its pending_key_chunk entry is newer
        than what the worker applied). Writes of other keys never make a
        read of this one wait; when one may, the read waits for them all
        (_wait_own_writes), as before."""
        cdef uint64_t target = self.att.pending_key_chunk[pending_key_entry(worker, h)]
        return (target != 0 and self.att.async_chunk[worker] != 0
                and target > amdb_load_acquire(&self.att.parts[worker].ctrl.applied_chunk))

    cdef int _wait_own_writes(self, int worker, Py_buffer *view, bint held) except -1:
        """Read-your-writes (layout.h, "Async single writes", point 4): wait
        until `worker` applied every async write this process sent it. On an
        error (Ctrl-C, say), the caller's key buffer is released first."""
        try:
            self.writer.wait_async(worker, self.att.async_chunk[worker])
        except BaseException:
            if held:
                PyBuffer_Release(view)
            raise
        return 0

    cdef int _sync_own_writes(self) except -1:
        """Before a read of more than one key (or as of a seq): every async
        write this process sent is applied and visible_seq covers it."""
        if self.att.async_pending and self.writer is not None and not self.att.closed:
            self.writer.sync_async()
        elif self.att.client and not self.att.closed:
            self.att.enter_foreign(-1)      # and its owner's, as far as it acknowledged them
            self.att.leave_foreign()
        return 0

    def sync_reads(self):
        """Before a read as of now that lasts (db.snapshot()): every async write
        of this process applied and visible, and, in a client, its owner's."""
        self._sync_own_writes()

    def count(self):
        if self.att.closed:
            raise self.att.closed_error()
        self._sync_own_writes()
        if self.att.foreign:                # the owner's writes do not refresh this process's count
            self.att.refresh_len()
        return self.att.committed_len

    cdef void _lookup_many(self, Py_ssize_t n, const uint8_t **keys, uint64_t *lengths,
                           uint64_t *found, int *workers, uint64_t visible, const char **bases) noexcept nogil:
        """Batch lookup with overlapping cache misses: each group of keys goes
        through hash -> slot -> node -> version in stages, prefetching the
        next stage for the whole group before touching any of it. Reads as of
        `visible` (loaded by the caller before this call: acquire first), in
        the regions at bases[w] (taken by the caller once, as a registered
        reader). found[i]: a live version offset, 0, or VERSION_RECLAIMED."""
        cdef uint64_t hashes[LOOKUP_GROUP]
        cdef amdb_hash_slot *slots[LOOKUP_GROUP]
        cdef amdb_hash_table *tables[AMDB_MAX_WORKERS]   # nworkers <= AMDB_MAX_WORKERS (options.py)
        cdef amdb_hash_table *t
        cdef const char *arena
        cdef Py_ssize_t base, j, m, i
        cdef uint64_t node_off, off
        cdef int w
        for w in range(self.att.nworkers):
            tables[w] = table_at(bases[w], arena_hash_table(bases[w]))
        base = 0
        while base < n:
            m = n - base if n - base < LOOKUP_GROUP else LOOKUP_GROUP
            for j in range(m):
                i = base + j
                hashes[j] = amdb_xxh64(keys[i], lengths[i], 0)
                w = self.att.dbc.slot_owner[hashes[j] & SLOT_MASK]
                workers[i] = w
                t = tables[w]
                slots[j] = &t.slots[amdb_slot_home(hashes[j], t.log2_capacity)]
                amdb_prefetch(slots[j])
            for j in range(m):
                node_off = amdb_load_acquire(slots[j])
                if node_off != 0 and amdb_slot_word_tag(node_off) == amdb_slot_tag(hashes[j]):
                    amdb_prefetch(bases[workers[base + j]] + amdb_slot_node(node_off))
            for j in range(m):
                i = base + j
                arena = bases[workers[i]]
                node_off = hashindex_find(arena, <uint64_t>(<char *>tables[workers[i]] - arena),
                                          hashes[j], keys[i], <uint32_t>lengths[i])
                found[i] = node_off
                if node_off != 0:
                    amdb_prefetch(arena + amdb_node_latest_acquire(node_at(arena, node_off)))
            for j in range(m):
                i = base + j
                if found[i] != 0:
                    arena = bases[workers[i]]
                    off = visible_version(arena, node_at(arena, found[i]), visible)
                    found[i] = off if off == VERSION_RECLAIMED or is_live(arena, off) else 0
            base += m

    def batch_get(self, keys, *, at_seq=None):
        """Values of `keys` (None where absent), looked up with the GIL released;
        as of sequence number at_seq when given."""
        cdef tuple held_keys
        cdef Py_ssize_t n, i
        cdef const uint8_t **ptrs = NULL
        cdef uint64_t *lengths = NULL
        cdef uint64_t *found = NULL
        cdef int *workers = NULL
        cdef list result, converted
        cdef Py_ssize_t block, m
        cdef uint64_t limit
        cdef amdb_version *v
        cdef object key, value
        cdef const char *bases[AMDB_MAX_WORKERS]
        cdef int slot, w
        if self.att.closed:
            raise self.att.closed_error()
        if isinstance(keys, (bytes, bytearray, str)):
            raise InvalidTypeError("batch_get takes an iterable of keys, not a single key",
                                   hint="wrap it in a list: [key]")
        try:
            held_keys = tuple(keys)        # our own references: safe to read without the GIL
        except TypeError:
            raise InvalidTypeError(f"batch_get takes an iterable of keys, not {type(keys).__name__}",
                                   hint="pass a list of bytes keys") from None        # our own references: safe to read without the GIL
        n = len(held_keys)
        converted = None
        ptrs = <const uint8_t **>malloc(max(n, 1) * sizeof(uint8_t *))
        lengths = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        found = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        workers = <int *>malloc(max(n, 1) * sizeof(int))
        try:
            if ptrs == NULL or lengths == NULL or found == NULL or workers == NULL:
                raise MemoryError()
            for i in range(n):
                key = held_keys[i]
                if not PyBytes_Check(key):
                    if isinstance(key, str) or not PyObject_CheckBuffer(key):
                        raise_not_bytes(key, "key")
                    key = as_key(key, "key")
                    if converted is None:
                        converted = []
                    converted.append(key)
                ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(key)
                lengths[i] = <uint64_t>PyBytes_GET_SIZE(key)
            result = PyList_New(n)
            limit = self._limit_seq(at_seq)
            slot = self.att.enter_read()
            try:
                # One base per partition for the whole call: every block reads
                # the same generations (we are registered, so they stay).
                for w in range(self.att.nworkers):
                    bases[w] = self.att.parts[w].arena
                # Blocks small enough that a block's versions are still in
                # cache when their bytes objects are built.
                block = 0
                while block < n:
                    m = min(n - block, BATCH_GET_BLOCK)
                    with nogil:
                        self._lookup_many(m, ptrs + block, lengths + block, found + block, workers + block,
                                          limit, bases)
                    for i in range(block, block + m):
                        if found[i] == VERSION_RECLAIMED:
                            value = None
                        elif found[i] != 0:
                            v = version_at(bases[workers[i]], found[i])
                            value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
                        else:
                            value = None
                        Py_INCREF(value)
                        PyList_SET_ITEM(result, i, value)
                    for i in range(block, block + m):
                        if found[i] == VERSION_RECLAIMED:
                            raise VersionReclaimedError(
                                f"the value of key {held_keys[i]!r} as of seq {limit} was reclaimed by compaction",
                                key=PyBytes_FromStringAndSize(<char *>ptrs[i], lengths[i]), at_seq=limit)
                    block += m
            finally:
                self.att.leave_read(slot)
            return result
        finally:
            free(ptrs)
            free(lengths)
            free(found)
            free(workers)

    def get_arrays(self, const uint8_t[::1] keys, Py_ssize_t key_width, bint strip_keys,
                    Py_ssize_t n, Py_ssize_t value_width, bint exact):
        """Look up n fixed-width keys and copy their values into one zero-padded
        buffer of n * width bytes. width = value_width, or the longest value
        found when value_width < 0. Returns (buffer, width, found, lengths)."""
        import numpy as np
        cdef const uint8_t **ptrs = <const uint8_t **>malloc(max(n, 1) * sizeof(uint8_t *))
        cdef uint64_t *lengths = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        cdef uint64_t *found = <uint64_t *>malloc(max(n, 1) * sizeof(uint64_t))
        cdef int *workers = <int *>malloc(max(n, 1) * sizeof(int))
        cdef Py_ssize_t i, kl, width, longest = 0
        cdef uint64_t limit
        cdef amdb_version *v
        cdef uint8_t[::1] out
        cdef uint8_t[::1] found_view
        cdef int64_t[::1] length_view
        cdef const char *bases[AMDB_MAX_WORKERS]
        cdef int slot, w
        try:
            if ptrs == NULL or lengths == NULL or found == NULL or workers == NULL:
                raise MemoryError()
            for i in range(n):
                ptrs[i] = &keys[i * key_width] if key_width else <const uint8_t *>""
                kl = key_width
                if strip_keys:
                    while kl > 0 and ptrs[i][kl - 1] == 0:
                        kl -= 1
                lengths[i] = kl
            self._sync_own_writes()
            slot = self.att.enter_read()
            try:
                for w in range(self.att.nworkers):
                    bases[w] = self.att.parts[w].arena
                limit = amdb_load_acquire(&self.att.dbc.visible_seq)
                with nogil:
                    self._lookup_many(n, ptrs, lengths, found, workers, limit, bases)
                for i in range(n):
                    if found[i] == VERSION_RECLAIMED:   # cannot happen as of now; never a wrong answer
                        raise VersionReclaimedError(f"the visible version of key #{i} was reclaimed by compaction")
                    if found[i] != 0:
                        v = version_at(bases[workers[i]], found[i])
                        if v.value_len > longest:
                            longest = v.value_len
                        if exact and value_width >= 0 and v.value_len != value_width:
                            raise InvalidArgumentError(
                                f"the value of key #{i} has {v.value_len} bytes; the requested unsigned "
                                f"dtype needs exactly {value_width}",
                                hint="store integers with put_array and the same dtype, or read bytes with dtype=None")
                        if value_width >= 0 and v.value_len > value_width:
                            raise ValueTooLargeError(
                                f"the value of key #{i} has {v.value_len} bytes, which does not fit "
                                f"the requested dtype ({value_width} bytes)",
                                hint="pass dtype=None to size the result to the longest value")
                width = value_width if value_width >= 0 else max(longest, 1)
                out_arr = np.zeros(n * width, dtype=np.uint8)
                found_arr = np.zeros(n, dtype=np.uint8)
                lengths_arr = np.zeros(n, dtype=np.int64)
                out = out_arr
                found_view = found_arr
                length_view = lengths_arr
                for i in range(n):
                    if found[i] != 0:
                        found_view[i] = 1
                        v = version_at(bases[workers[i]], found[i])
                        length_view[i] = v.value_len
                        if v.value_len:
                            memcpy(&out[i * width], amdb_version_value(v), v.value_len)
            finally:
                self.att.leave_read(slot)
            return out_arr, width, found_arr.view(np.bool_), lengths_arr
        finally:
            free(ptrs)
            free(lengths)
            free(found)
            free(workers)

    def partition_items(self, int worker):
        """[(key, value)] of the live keys stored in partition `worker`, in key
        order, as of now (whoever the slot table says owns them)."""
        cdef const char *arena
        cdef uint64_t off, version_off, visible
        cdef amdb_node *n
        cdef amdb_version *v
        cdef int slot
        self.att.check_open()
        if not 0 <= worker < self.att.nworkers:
            raise InvalidArgumentError(f"no worker {worker}")
        out = []
        slot = self.att.enter_read()      # building tuples may collect garbage mid-walk
        try:
            arena = self.att.parts[worker].arena
            visible = amdb_load_acquire(&self.att.dbc.visible_seq)
            off = amdb_node_next_acquire(node_at(arena, arena_skiplist_head(arena)), 0)
            while off != 0:
                n = node_at(arena, off)
                version_off = visible_version(arena, n, visible)
                if is_live(arena, version_off):
                    v = version_at(arena, version_off)
                    out.append((PyBytes_FromStringAndSize(<char *>amdb_node_key(n), n.key_len),
                                PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)))
                off = amdb_node_next_acquire(n, 0)
        finally:
            self.att.leave_read(slot)
        return out

    def iterator(self, start=None, stop=None, *, prefix=None, bint reverse=False, bint include_start=True,
                 bint include_stop=False, bint keys_only=False, bint values_only=False, at_seq=None, limit=None,
                 namespace=None):
        """An Iterator over the keys from `start` to `stop` (and starting with
        `prefix`), in key order or reversed, reading the snapshot of now (or
        of at_seq); see iterator.pyx and docs/API.md, "Iterators". With a
        `namespace` (db.prefixed()), every key argument is relative to it and
        the keys handed out are shown without it."""
        cdef uint64_t snapshot
        cdef int mode
        if keys_only and values_only:
            raise InvalidArgumentError("iterator: keys_only and values_only exclude each other")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidArgumentError(f"limit={limit!r} must be an int >= 0 or None")
        self.att.check_open()
        snapshot = self._limit_seq(at_seq)
        lo = None if start is None else as_key(start, "start")
        hi = None if stop is None else as_key(stop, "stop")
        if namespace is not None:
            namespace = as_key(namespace, "namespace")
            lo = None if lo is None else namespace + lo
            hi = None if hi is None else namespace + hi
            prefix = namespace if prefix is None else namespace + as_key(prefix, "prefix")
        if prefix is not None:
            prefix = as_key(prefix, "prefix")
            end = prefix_successor(prefix)
            if lo is None or lo < prefix:
                lo, include_start = prefix, True
            if end is not None and (hi is None or hi > end or (hi == end and include_stop)):
                hi, include_stop = end, False
        self.att.check_open()               # the bounds' conversion may have run the caller's code
        mode = MODE_KEYS if keys_only else (MODE_VALUES if values_only else MODE_ITEMS)
        if at_seq is not None:
            return Iterator(self.att, lo, hi, include_start, include_stop, reverse, mode, snapshot,
                            -1 if limit is None else limit, namespace or None)
        # As of now: pinned before the seq is taken (Attachment.pin_visible);
        # the iterator holds a pin of its own from its start.
        snapshot = self.att.pin_visible()
        try:
            return Iterator(self.att, lo, hi, include_start, include_stop, reverse, mode, snapshot,
                            -1 if limit is None else limit, namespace or None)
        finally:
            self.att.unpin(snapshot)

    def scan(self, start=None, stop=None, *, prefix=None, bint reverse=False, bint keys_only=False,
             at_seq=None, limit=None):
        """Iterate (key, value) pairs (or keys) in bytewise key order across all
        workers, from `start` (inclusive) to `stop` (exclusive), within
        `prefix`, at most `limit` of them, as of now (or as of at_seq)."""
        return self.iterator(start, stop, prefix=prefix, reverse=reverse, keys_only=keys_only, at_seq=at_seq,
                             limit=limit)

    def keys(self):
        """Every key, in key order."""
        return self.iterator(keys_only=True)

    def items(self):
        """Every (key, value) pair, in key order."""
        return self.iterator()

    def values(self):
        """Every value, in key order."""
        return self.iterator(values_only=True)

    def iter_keys(self):
        return self.iterator(keys_only=True)
