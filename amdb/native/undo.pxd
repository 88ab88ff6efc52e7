# cython: language_level=3
"""The undo log of a background checkpoint (worker/checkpoint.pyx).

While a checkpoint thread copies arena bytes [0, limit), the worker goes on
applying: it changes words below `limit` in place (skip list links, a
node's latest version, hash slots and the table's count, the arena header's
table root, block kinds on rollback). Before each such store the worker
notes the word's offset and old value here (note_arena_write); the
checkpoint file carries the notes, and loading writes them back, last to
first, so the copy becomes the arena exactly as of the checkpoint's seq
(wal.h, AMDB_CHECKPOINT_FORMAT_UNDO). Everything at or above `limit` is
new since and is not in the copy at all.

Process safety: written by the worker's apply thread only, until it hands
the log over to the checkpoint thread (a release store the thread
acquires) and stops noting (PartitionView.undo = NULL). Cost with no
checkpoint running: one load and a branch per store.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport realloc
from amdb.shm.layout cimport PartitionView

ctypedef struct UndoEntry:
    uint64_t offset             # of an 8-byte aligned word, < limit
    uint64_t word               # its value before the store

ctypedef struct UndoLog:
    uint64_t limit              # arena_used when the checkpoint began
    UndoEntry *entries
    uint64_t count
    uint64_t capacity
    bint failed                 # out of memory: the checkpoint is given up


cdef inline void undo_note(UndoLog *u, const char *arena, const void *addr) noexcept nogil:
    cdef uint64_t off = <uint64_t>((<const char *>addr) - arena) & ~<uint64_t>7
    cdef UndoEntry *grown
    cdef uint64_t capacity
    if off >= u.limit or u.failed:
        return
    if u.count == u.capacity:
        capacity = u.capacity * 2 if u.capacity else 65536
        grown = <UndoEntry *>realloc(u.entries, capacity * sizeof(UndoEntry))
        if grown == NULL:
            u.failed = True
            return
        u.entries = grown
        u.capacity = capacity
    u.entries[u.count].offset = off
    u.entries[u.count].word = (<const uint64_t *>(arena + off))[0]
    u.count += 1


cdef inline void note_arena_write(PartitionView *p, const void *addr) noexcept nogil:
    """Call before storing into the arena of `p` at `addr` in place (a word
    that may already be published)."""
    if p.undo != NULL:
        undo_note(<UndoLog *>p.undo, p.arena, addr)
