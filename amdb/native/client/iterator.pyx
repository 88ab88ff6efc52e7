# cython: language_level=3
"""Scans: the workers' ordered lists merged into one ordered stream.

Who calls it: Reader.scan / keys / items / values (reader.pyx).
Shared memory: reads only, by the rules of attachment.pyx ("Process
safety"); between two steps it keeps offsets of the generations it read and
re-seeks when the read epoch moved.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.native.skiplist cimport skiplist_find_ge, skiplist_find_lt, compare_key_to_node
from amdb.native.versions cimport visible_version, is_live, VERSION_RECLAIMED
from amdb.native.client.attachment cimport Attachment

from amdb.errors import ClosedError, VersionReclaimedError


cdef class ScanIterator:
    """Merges the workers' ordered lists into one ordered stream. Reads a
    snapshot: versions newer than visible_seq at creation are skipped.

    Between two steps it keeps offsets into the generations it read; when a
    compaction switched any partition's generation meanwhile (the attachment's
    read epoch moved), it re-seeks every partition just past the last key it
    returned, in the new generations, as LevelDB iterators re-seek after a
    change of version. A key whose value as of the snapshot was reclaimed
    raises VersionReclaimedError when the scan reaches it."""

    def __cinit__(self, Attachment att, start, stop, bint reverse, int mode, uint64_t visible):
        cdef int w
        self.att = att
        self.nworkers = att.nworkers
        self.start = start
        self.stop = stop
        self.reverse = reverse
        self.mode = mode
        self.last_key = None
        self.cursor = <uint64_t *>calloc(max(self.nworkers, 1), sizeof(uint64_t))
        self.cursor_version = <uint64_t *>calloc(max(self.nworkers, 1), sizeof(uint64_t))
        if self.cursor == NULL or self.cursor_version == NULL:
            raise MemoryError()
        self.visible = visible
        if att.foreign:
            att.enter_foreign()      # may adopt new regions: take the epoch after it
            try:
                self.epoch = att.read_epoch
                for w in range(self.nworkers):
                    self._seek_first(w)
            finally:
                att.leave_foreign()
        else:
            self.epoch = att.read_epoch
            for w in range(self.nworkers):
                self._seek_first(w)

    def __dealloc__(self):
        free(self.cursor)
        free(self.cursor_version)

    cdef bint _in_bounds(self, amdb_node *n) noexcept:
        cdef const uint8_t *k
        if self.reverse:
            if self.start is None:
                return True
            k = <const uint8_t *>PyBytes_AS_STRING(self.start)
            return compare_key_to_node(amdb_key_prefix(k, len(self.start)), k, len(self.start), n) <= 0
        if self.stop is None:
            return True
        k = <const uint8_t *>PyBytes_AS_STRING(self.stop)
        return compare_key_to_node(amdb_key_prefix(k, len(self.stop)), k, len(self.stop), n) > 0

    cdef void _settle(self, int w, uint64_t off) noexcept:
        """Move worker w's cursor to the first node from `off` on (in scan
        direction) that is in bounds and has a visible live version (or whose
        visible version was reclaimed: the scan raises when it gets there)."""
        cdef const char *arena = self.att.parts[w].arena
        cdef amdb_node *n
        cdef uint64_t version_off
        while off != 0:
            n = node_at(arena, off)
            if not self._in_bounds(n):
                off = 0
                break
            version_off = visible_version(arena, n, self.visible)
            if version_off == VERSION_RECLAIMED or is_live(arena, version_off):
                self.cursor_version[w] = version_off
                break
            if self.reverse:
                off = skiplist_find_lt(arena, arena_skiplist_head(arena), n.key_prefix, amdb_node_key(n),
                                       n.key_len, False)
            else:
                off = amdb_node_next_acquire(n, 0)
        self.cursor[w] = off

    cdef void _seek_first(self, int w) noexcept:
        cdef const char *arena = self.att.parts[w].arena
        cdef uint64_t head = arena_skiplist_head(arena)
        cdef const uint8_t *k
        cdef uint64_t off
        if self.reverse:
            if self.stop is None:
                off = skiplist_find_lt(arena, head, 0, NULL, 0, True)
            else:
                k = <const uint8_t *>PyBytes_AS_STRING(self.stop)
                off = skiplist_find_lt(arena, head, amdb_key_prefix(k, len(self.stop)), k, len(self.stop), False)
        else:
            if self.start is None:
                off = amdb_node_next_acquire(node_at(arena, head), 0)
            else:
                k = <const uint8_t *>PyBytes_AS_STRING(self.start)
                off = skiplist_find_ge(arena, head, amdb_key_prefix(k, len(self.start)), k, len(self.start))
        self._settle(w, off)

    cdef void _seek_past(self, int w, bytes key) noexcept:
        """Position worker w just past `key` in scan direction."""
        cdef const char *arena = self.att.parts[w].arena
        cdef uint64_t head = arena_skiplist_head(arena)
        cdef const uint8_t *k = <const uint8_t *>PyBytes_AS_STRING(key)
        cdef uint32_t length = <uint32_t>PyBytes_GET_SIZE(key)
        cdef uint64_t prefix = amdb_key_prefix(k, length)
        cdef uint64_t off
        if self.reverse:
            off = skiplist_find_lt(arena, head, prefix, k, length, False)
        else:
            off = skiplist_find_ge(arena, head, prefix, k, length)
            if off != 0 and compare_key_to_node(prefix, k, length, node_at(arena, off)) == 0:
                off = amdb_node_next_acquire(node_at(arena, off), 0)
        self._settle(w, off)

    cdef void _reseek(self) noexcept:
        cdef int w
        self.epoch = self.att.read_epoch
        for w in range(self.nworkers):
            self.cursor[w] = 0
            if self.last_key is None:
                self._seek_first(w)
            else:
                self._seek_past(w, self.last_key)

    def __iter__(self):
        return self

    def __next__(self):
        if self.att.closed:
            raise ClosedError("the database was closed while a scan was open")
        if not self.att.foreign:
            return self._step()
        self.att.enter_foreign()
        try:
            return self._step()
        finally:
            self.att.leave_foreign()

    cdef object _step(self):
        cdef int w, best = -1
        cdef amdb_node *n
        cdef amdb_node *b
        cdef int c
        cdef const char *arena
        cdef amdb_version *v
        if self.epoch != self.att.read_epoch:
            self._reseek()                 # a compaction switched generations since the last step
        for w in range(self.nworkers):
            if self.cursor[w] == 0:
                continue
            if best < 0:
                best = w
                continue
            n = node_at(self.att.parts[w].arena, self.cursor[w])
            b = node_at(self.att.parts[best].arena, self.cursor[best])
            c = compare_key_to_node(n.key_prefix, amdb_node_key(n), n.key_len, b)
            if (c < 0 and not self.reverse) or (c > 0 and self.reverse):
                best = w
        if best < 0:
            raise StopIteration
        arena = self.att.parts[best].arena
        n = node_at(arena, self.cursor[best])
        key = PyBytes_FromStringAndSize(<char *>amdb_node_key(n), n.key_len)
        if self.cursor_version[best] == VERSION_RECLAIMED:
            raise VersionReclaimedError(
                f"the value of key {key!r} as of seq {self.visible} (this scan's snapshot) was reclaimed "
                f"by compaction", key=key, at_seq=self.visible)
        if self.mode != SCAN_KEYS:
            v = version_at(arena, self.cursor_version[best])
            value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
        self.last_key = key
        if self.reverse:
            self._settle(best, skiplist_find_lt(arena, arena_skiplist_head(arena), n.key_prefix,
                                                amdb_node_key(n), n.key_len, False))
        else:
            self._settle(best, amdb_node_next_acquire(n, 0))
        if self.mode == SCAN_KEYS:
            return key
        if self.mode == SCAN_VALUES:
            return value
        return (key, value)


