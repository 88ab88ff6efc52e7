# cython: language_level=3
"""Iterators: the workers' ordered lists merged into one ordered stream, with
seek (db.iterator(), and db.scan() / keys() / items() / values() on top).

Who calls it: Reader.iterator / scan (reader.pyx).
Shared memory: reads only, by the rules of attachment.pyx ("Process
safety"). Between two calls an iterator keeps offsets into the generations
it read; when a compaction switched a partition's generation meanwhile (the
read epoch moved), it re-seeks every partition next to the last key it
handed out, in the new generations, as LevelDB iterators re-seek after a
change of version. It reads a snapshot: versions newer than visible_seq at
its creation are skipped. A key whose value as of the snapshot was
reclaimed raises VersionReclaimedError when the iterator reaches it.

The cursor (plyvel's model): the iterator stands before one item, the one
`key` / `value` describe and next() returns, then it moves one item on in
its direction (descending keys when reverse). prev() moves one item back
and returns it, so next() after prev() returns the same item again.

Per worker, a cursor on the next node in the iterator's direction. Forward
steps follow next[0]. Backward steps pop a small buffer filled by one coarse
descent (skiplist_find_lt_coarse) and a level-0 walk, so that reverse
iteration costs O(1) per item amortised, as forward does, not a descent each.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, malloc, free
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.native.seek_index cimport seek_index_start
from amdb.native.skiplist cimport (skiplist_find_ge_from, skiplist_find_ge_many, skiplist_find_lt_coarse,
                                   compare_key_to_node)
from amdb.native.versions cimport visible_version, is_live, VERSION_RECLAIMED
from amdb.native.client.attachment cimport Attachment
from amdb.native.client.keys cimport as_key

from amdb.errors import ClosedError, InvalidArgumentError, VersionReclaimedError

cdef enum:
    BACK_LEVEL = 3                # backward buffers are filled from a node of height > 3: ~64 nodes
    BACK_CAPACITY = 512           # nodes a backward buffer keeps (the ones nearest the cursor)


cdef inline int compare_key(bytes a, amdb_node *n) noexcept:
    """memcmp order of the key `a` and node n's key."""
    cdef const uint8_t *k = <const uint8_t *>PyBytes_AS_STRING(a)
    cdef uint32_t length = <uint32_t>PyBytes_GET_SIZE(a)
    return compare_key_to_node(amdb_key_prefix(k, length), k, length, n)


@cython.no_gc_clear          # __dealloc__ needs self.att to unpin (a cycle must not clear it first)
cdef class Iterator:
    """An ordered cursor over the database (see the module docstring and
    docs/API.md, "Iterators")."""

    def __cinit__(self, Attachment att, lo, hi, bint lo_inclusive, bint hi_inclusive, bint reverse, int mode,
                  uint64_t visible, int64_t limit=-1, bytes key_prefix=None):
        cdef int w
        self.att = att
        self.key_prefix = key_prefix       # every key in [lo, hi] starts with it (Reader.iterator)
        self.strip = len(key_prefix) if key_prefix is not None else 0
        self.nworkers = att.nworkers
        self.lo = lo
        self.hi = hi
        self.lo_inclusive = lo_inclusive
        self.hi_inclusive = hi_inclusive
        self.reverse = reverse
        self.mode = mode
        self.visible = visible
        self.remaining = limit             # items next() may still hand out (-1: no limit)
        self.anchor = None
        self.cursor = <uint64_t *>calloc(max(self.nworkers, 1), sizeof(uint64_t))
        self.cursor_version = <uint64_t *>calloc(max(self.nworkers, 1), sizeof(uint64_t))
        self.back = NULL                     # the backward buffers: on the first step back
        self.back_len = <uint32_t *>calloc(max(self.nworkers, 1), sizeof(uint32_t))
        if self.cursor == NULL or self.cursor_version == NULL or self.back_len == NULL:
            raise MemoryError()
        att.pin(visible)                  # compaction keeps what this iterator reads: before it reads
        self.pinned = True
        self._enter()
        try:
            self.epoch = att.read_epoch
            self._seek_end(not reverse)
        finally:
            self._leave()

    def __dealloc__(self):
        # The cyclic garbage collector may have cleared self.att (tp_clear
        # sets it to None) before this runs: a cdef call on None would crash.
        if self.pinned and self.att is not None:
            self.pinned = False
            self.att.unpin(self.visible)
        free(self.cursor)
        free(self.cursor_version)
        free(self.back)
        free(self.back_len)

    # ---- registration and bounds ---------------------------------------------------

    cdef int _enter(self) except -1:
        """Every call that touches the arenas: open, a forked child's reader
        slot, and the cursors re-seeked if a compaction moved the epoch."""
        if self.closed:
            raise InvalidArgumentError("the iterator is closed")
        if self.att.closed:
            if self.att.gone_reason is not None:
                raise self.att.closed_error()
            raise ClosedError("the database was closed while an iterator was open")
        if self.att.foreign:
            self.att.enter_foreign()         # may adopt new regions: compared below
        if self.epoch != self.att.read_epoch:
            self._reseek()
        return 0

    cdef int _leave(self) except -1:
        if self.att.foreign:
            self.att.leave_foreign()
        return 0

    cdef bint _below_hi(self, amdb_node *n) noexcept:
        """n's key is not past the upper bound."""
        cdef int c
        if self.hi is None:
            return True
        c = compare_key(self.hi, n)
        return c > 0 or (c == 0 and self.hi_inclusive)

    cdef bint _above_lo(self, amdb_node *n) noexcept:
        cdef int c
        if self.lo is None:
            return True
        c = compare_key(self.lo, n)
        return c < 0 or (c == 0 and self.lo_inclusive)

    # ---- one worker's cursor ---------------------------------------------------------

    cdef bint _usable(self, int w, uint64_t off) noexcept:
        """off holds an item of the snapshot (or one whose value was
        reclaimed: the iterator raises when it gets there); note its version."""
        cdef const char *arena = self.att.parts[w].arena
        cdef uint64_t version_off = visible_version(arena, node_at(arena, off), self.visible)
        if version_off == VERSION_RECLAIMED or is_live(arena, version_off):
            self.cursor_version[w] = version_off
            return True
        return False

    cdef void _settle_up(self, int w, uint64_t off) noexcept:
        """Worker w's cursor: the first usable node from `off` on, ascending,
        within the upper bound (0: none)."""
        cdef const char *arena = self.att.parts[w].arena
        cdef uint64_t nxt
        while off != 0:
            if not self._below_hi(node_at(arena, off)):
                off = 0
                break
            if self._usable(w, off):
                # The node the next step reads: on its way while the caller
                # handles this item (a seek and a scan are cache misses).
                nxt = amdb_node_next_relaxed(node_at(arena, off), 0)
                if nxt != 0:
                    amdb_prefetch(arena + nxt)
                break
            off = amdb_node_next_acquire(node_at(arena, off), 0)
        self.cursor[w] = off

    cdef void _fill_back(self, int w, amdb_node *limit) noexcept:
        """Worker w's backward buffer: the nodes just below `limit` (a node, or
        NULL: the end of the list), ascending, nearest last."""
        cdef const char *arena = self.att.parts[w].arena
        cdef uint64_t head = arena_skiplist_head(arena)
        cdef uint64_t *buf
        cdef uint64_t off
        cdef uint32_t n = 0
        if self.back == NULL:
            self.back = <uint64_t *>malloc(self.nworkers * BACK_CAPACITY * sizeof(uint64_t))
            if self.back == NULL:             # no memory for a buffer: nothing behind, safely
                self.back_len[w] = 0
                return
        buf = self.back + w * BACK_CAPACITY
        if limit == NULL:
            off = skiplist_find_lt_coarse(arena, head, 0, NULL, 0, True, BACK_LEVEL)
        else:
            off = skiplist_find_lt_coarse(arena, head, limit.key_prefix, amdb_node_key(limit), limit.key_len,
                                          False, BACK_LEVEL)
        if off == head:
            off = amdb_node_next_acquire(node_at(arena, head), 0)
        while off != 0 and (limit == NULL or compare_key_to_node(limit.key_prefix, amdb_node_key(limit),
                                                                 limit.key_len, node_at(arena, off)) > 0):
            if n == BACK_CAPACITY:           # keep the nearest: shift the oldest out
                n = BACK_CAPACITY // 2
                for i in range(n):
                    buf[i] = buf[i + BACK_CAPACITY // 2]
            buf[n] = off
            n += 1
            off = amdb_node_next_acquire(node_at(arena, off), 0)
        self.back_len[w] = n

    cdef void _settle_down(self, int w, amdb_node *limit) noexcept:
        """Worker w's cursor: the last usable node below `limit` (NULL: below
        the end), descending, within the lower bound (0: none)."""
        cdef const char *arena = self.att.parts[w].arena
        cdef uint64_t off = 0
        cdef amdb_node *n
        while True:
            if self.back_len[w] == 0:
                self._fill_back(w, limit)
                if self.back_len[w] == 0:
                    off = 0
                    break
            self.back_len[w] -= 1
            off = self.back[w * BACK_CAPACITY + self.back_len[w]]
            n = node_at(arena, off)
            if not self._above_lo(n):
                off = 0
                break
            if self._below_hi(n) and self._usable(w, off):
                break
            limit = n
        self.cursor[w] = off

    cdef void _step(self, int w) noexcept:
        """Move worker w's cursor one usable node on in the iterator's direction."""
        cdef const char *arena = self.att.parts[w].arena
        cdef amdb_node *n = node_at(arena, self.cursor[w])
        if self.reverse:
            self._settle_down(w, n)
        else:
            self._settle_up(w, amdb_node_next_acquire(n, 0))

    cdef void _seek_worker(self, int w, bytes key, bint inclusive, bint upward) noexcept:
        """Worker w's cursor: upward, the first usable node >= key (> key if
        not inclusive); downward, the last usable one <= key (< key)."""
        cdef const char *arena = self.att.parts[w].arena
        cdef uint64_t head = arena_skiplist_head(arena)
        cdef const uint8_t *k
        cdef uint32_t length
        cdef uint64_t prefix, off, start
        cdef int level
        self.back_len[w] = 0
        if key is None:
            if upward:
                self._settle_up(w, amdb_node_next_acquire(node_at(arena, head), 0))
            else:
                self._settle_down(w, NULL)
            return
        k = <const uint8_t *>PyBytes_AS_STRING(key)
        length = <uint32_t>PyBytes_GET_SIZE(key)
        prefix = amdb_key_prefix(k, length)
        seek_index_start(&self.att.seek_index[w], arena, amdb_load_relaxed(&self.att.parts[w].ctrl.node_count),
                         prefix, k, length, &start, &level)
        off = skiplist_find_ge_from(arena, start, level, prefix, k, length)
        if upward:
            if off != 0 and not inclusive and compare_key_to_node(prefix, k, length, node_at(arena, off)) == 0:
                off = amdb_node_next_acquire(node_at(arena, off), 0)
            self._settle_up(w, off)
        elif off != 0 and inclusive and compare_key_to_node(prefix, k, length, node_at(arena, off)) == 0:
            # The key itself may do; else below it.
            if self._above_lo(node_at(arena, off)) and self._below_hi(node_at(arena, off)) and self._usable(w, off):
                self.cursor[w] = off
            else:
                self._settle_down(w, node_at(arena, off))
        else:
            self._settle_down(w, node_at(arena, off) if off != 0 else NULL)

    # ---- the merged cursor -----------------------------------------------------------

    cdef void _seek_end(self, bint first) noexcept:
        """Stand before the smallest item in bounds (first) or the largest."""
        cdef int w, best
        if first and self.lo is not None:
            self._seek_up_all(self.lo, self.lo_inclusive)
        else:
            for w in range(self.nworkers):
                if first:
                    self._seek_worker(w, self.lo, self.lo_inclusive, True)
                else:
                    self._seek_worker(w, self.hi, self.hi_inclusive, False)
        self._turn(first)
        best = self._best(not self.reverse)
        self.anchor = self._key_of(best) if best >= 0 else None
        self.anchor_inclusive = True

    cdef void _turn(self, bint upward) noexcept:
        """The cursors were placed `upward` (ascending): make the iterator's
        direction theirs again (a reverse iterator placed upward stands
        before its smallest item, and the other way round)."""
        cdef int w, best
        if upward == (not self.reverse):
            return
        # The extreme item is the merged head: re-place every worker from it.
        best = self._best(upward)
        if best < 0:
            return
        key = self._key_of(best)
        for w in range(self.nworkers):
            self._seek_worker(w, key, True, not self.reverse)

    cdef int _best(self, bint ascending) noexcept:
        """The worker whose cursor holds the next item (ascending: the
        smallest key), -1 when every cursor is exhausted."""
        cdef int w, best = -1, c
        cdef amdb_node *n
        cdef amdb_node *b
        for w in range(self.nworkers):
            if self.cursor[w] == 0:
                continue
            if best < 0:
                best = w
                continue
            n = node_at(self.att.parts[w].arena, self.cursor[w])
            b = node_at(self.att.parts[best].arena, self.cursor[best])
            c = compare_key_to_node(n.key_prefix, amdb_node_key(n), n.key_len, b)
            if (c < 0) == ascending and c != 0:
                best = w
        return best

    cdef bytes _key_of(self, int w):
        cdef amdb_node *n = node_at(self.att.parts[w].arena, self.cursor[w])
        return PyBytes_FromStringAndSize(<char *>amdb_node_key(n), n.key_len)

    cdef void _reseek(self) noexcept:
        """A compaction switched generations: stand where the iterator stood
        (its anchor: next to the last key it handed out, or where it was
        placed), in the new generations."""
        cdef int w
        self.epoch = self.att.read_epoch
        for w in range(self.nworkers):
            self.back_len[w] = 0
            self.cursor[w] = 0
        if self.anchor is None:
            self._seek_end(not self.reverse)
        else:
            for w in range(self.nworkers):
                self._seek_worker(w, self.anchor, self.anchor_inclusive, not self.reverse)

    cdef void _place(self, bytes key, bint inclusive) noexcept:
        """Stand before the first item from `key` on in the iterator's
        direction (inclusive or not); the anchor for a later re-seek.
        Forward, the workers' descents run interleaved (skiplist_find_ge_many)."""
        cdef int w
        self.anchor = key
        self.anchor_inclusive = inclusive
        if self.reverse:
            for w in range(self.nworkers):
                self._seek_worker(w, key, inclusive, False)
        else:
            self._seek_up_all(key, inclusive)

    cdef void _seek_up_all(self, bytes key, bint inclusive) noexcept:
        """Every worker's cursor: the first usable node >= key (> key if not
        inclusive), the descents interleaved (skiplist_find_ge_many)."""
        cdef int w
        cdef const char *arenas[AMDB_MAX_WORKERS]
        cdef uint64_t starts[AMDB_MAX_WORKERS]
        cdef int levels[AMDB_MAX_WORKERS]
        cdef uint64_t found[AMDB_MAX_WORKERS]
        cdef const uint8_t *k = <const uint8_t *>PyBytes_AS_STRING(key)
        cdef uint32_t length = <uint32_t>PyBytes_GET_SIZE(key)
        cdef uint64_t prefix = amdb_key_prefix(k, length)
        cdef uint64_t off
        for w in range(self.nworkers):
            arenas[w] = self.att.parts[w].arena
            seek_index_start(&self.att.seek_index[w], arenas[w], amdb_load_relaxed(&self.att.parts[w].ctrl.node_count),
                             prefix, k, length, &starts[w], &levels[w])
        skiplist_find_ge_many(self.nworkers, arenas, starts, levels, prefix, k, length, found)
        for w in range(self.nworkers):
            self.back_len[w] = 0
            off = found[w]
            if off != 0 and not inclusive and compare_key_to_node(prefix, k, length, node_at(arenas[w], off)) == 0:
                off = amdb_node_next_acquire(node_at(arenas[w], off), 0)
            self._settle_up(w, off)

    cdef object _item(self, int w):
        """The item worker w's cursor holds, in the iterator's mode; its key
        becomes the anchor (a re-seek after a compaction starts past it)."""
        cdef const char *arena = self.att.parts[w].arena
        cdef amdb_node *n = node_at(arena, self.cursor[w])
        cdef amdb_version *v
        key = PyBytes_FromStringAndSize(<char *>amdb_node_key(n), n.key_len)
        if self.cursor_version[w] == VERSION_RECLAIMED:
            raise VersionReclaimedError(
                f"the value of key {key!r} as of seq {self.visible} (this iterator's snapshot) was reclaimed "
                f"by compaction", key=key, at_seq=self.visible)
        self.anchor = key
        if self.strip:
            key = PyBytes_FromStringAndSize(<char *>amdb_node_key(n) + self.strip, n.key_len - self.strip)
        if self.mode == MODE_KEYS:
            return key
        v = version_at(arena, self.cursor_version[w])
        value = PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
        if self.mode == MODE_VALUES:
            return value
        return (key, value)

    # ---- the Python API --------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self):
        cdef int best
        if self.remaining == 0:
            raise StopIteration
        self._enter()
        try:
            best = self._best(not self.reverse)
            if best < 0:
                raise StopIteration
            if self.remaining > 0:
                self.remaining -= 1
            item = self._item(best)          # sets the anchor to its key
            self.anchor_inclusive = False
            self._step(best)
            return item
        finally:
            self._leave()

    def next(self):
        """The item the iterator stands before; it moves one on (StopIteration at the end)."""
        return self.__next__()

    def prev(self):
        """Move one item back and return it (StopIteration before the first)."""
        cdef int best, w
        self._enter()
        try:
            # The item just before the cursor: the nearest one against the
            # direction, among every worker's.
            best = self._best(not self.reverse)
            ahead = self._key_of(best) if best >= 0 else None
            for w in range(self.nworkers):
                if ahead is None:                # past the end: from the end bound
                    if self.reverse:
                        self._seek_worker(w, self.lo, self.lo_inclusive, True)
                    else:
                        self._seek_worker(w, self.hi, self.hi_inclusive, False)
                else:
                    self._seek_worker(w, ahead, False, self.reverse)
            best = self._best(self.reverse)
            if best < 0:                         # nothing before: stand where we stood
                if ahead is None:
                    for w in range(self.nworkers):
                        self.cursor[w] = 0
                else:
                    self._place(ahead, True)
                raise StopIteration
            item = self._item(best)
            self._place(self._key_of(best), True)
            return item
        finally:
            self._leave()

    def seek(self, key):
        """Stand before the first item >= key (reverse: the last item <= key),
        within the iterator's bounds."""
        key = as_key(key, "key")
        if self.key_prefix is not None:
            key = self.key_prefix + key
        self._enter()
        try:
            if self.reverse and self.hi is not None and key >= self.hi:
                self._seek_end(False)
            elif not self.reverse and self.lo is not None and key <= self.lo:
                self._seek_end(True)
            else:
                self._place(key, True)
        finally:
            self._leave()

    def seek_to_first(self):
        """Stand before the smallest item in bounds."""
        self._enter()
        try:
            self._seek_end(True)
        finally:
            self._leave()

    def seek_to_last(self):
        """Stand before the largest item in bounds."""
        self._enter()
        try:
            self._seek_end(False)
        finally:
            self._leave()

    @property
    def valid(self):
        """True while an item lies ahead (key / value describe it)."""
        self._enter()
        try:
            return self._best(not self.reverse) >= 0
        finally:
            self._leave()

    @property
    def key(self):
        """The key of the item ahead (InvalidArgumentError when none is)."""
        cdef int best
        self._enter()
        try:
            best = self._best(not self.reverse)
            if best < 0:
                raise InvalidArgumentError("the iterator stands past its last item", hint="check it.valid first")
            return self._key_of(best)[self.strip:]
        finally:
            self._leave()

    @property
    def value(self):
        """The value of the item ahead."""
        cdef int best
        cdef amdb_version *v
        self._enter()
        try:
            best = self._best(not self.reverse)
            if best < 0:
                raise InvalidArgumentError("the iterator stands past its last item", hint="check it.valid first")
            if self.cursor_version[best] == VERSION_RECLAIMED:
                self._item(best)                 # raises
            v = version_at(self.att.parts[best].arena, self.cursor_version[best])
            return PyBytes_FromStringAndSize(<char *>amdb_version_value(v), v.value_len)
        finally:
            self._leave()

    @property
    def snapshot_seq(self):
        """The seq the iterator reads as of."""
        return self.visible

    def close(self):
        """Release the iterator (idempotent); any later call raises."""
        self.closed = True
        if self.pinned:
            self.pinned = False
            self.att.unpin(self.visible)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
