# cython: language_level=3
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from amdb.shm.layout cimport (PartitionView, amdb_node, amdb_version, version_at, AMDB_VERSION_TOMBSTONE,
                              AMDB_VERSION_SOLO, amdb_version_tail_of, amdb_node_latest_acquire)
from amdb.shm.atomic cimport amdb_load_acquire

# What visible_version returns when the version asked for was reclaimed by
# compaction: never an offset (offsets are 8-aligned and >= 64).
cdef enum:
    VERSION_RECLAIMED = 1

cdef uint64_t version_append(PartitionView *p, uint64_t node_off, uint32_t flags,
                             const uint8_t *value, uint32_t value_len,
                             uint64_t seq, uint64_t timestamp_ns) noexcept nogil
cdef uint64_t chain_hash(uint64_t prev_hash, const uint8_t *key, uint32_t key_len,
                         uint64_t version_no, uint32_t flags,
                         const uint8_t *value, uint32_t value_len) noexcept nogil


cdef inline uint64_t visible_version(const char *arena, amdb_node *node, uint64_t visible_seq) noexcept nogil:
    """Newest version of `node` with seq <= visible_seq; 0 when the key had
    none then; VERSION_RECLAIMED when it had one, but compaction reclaimed it
    (every kept version is newer and the oldest kept is not version 1: layout.h,
    invariants 7 and 9).

    Acquire on node.latest: the version it names is whole. `prev` links are
    immutable once published, so following them needs no ordering.
    """
    cdef uint64_t off = amdb_node_latest_acquire(node)
    cdef amdb_version *v
    while off != 0:
        v = version_at(arena, off)
        if v.seq <= visible_seq:
            return off
        if v.prev == 0 and amdb_version_tail_of(v).version_no > 1:
            return VERSION_RECLAIMED
        off = v.prev
    return 0


cdef inline uint64_t visible_version_now(const char *arena, amdb_node *node, uint64_t visible_seq) noexcept nogil:
    """visible_version for a read as of now: a SOLO version (an async single
    write, layout.h) is visible as soon as it is published, whatever
    visible_seq; a version of a bigger batch only once visible_seq covers it."""
    cdef uint64_t off = amdb_node_latest_acquire(node)
    cdef amdb_version *v
    while off != 0:
        v = version_at(arena, off)
        if v.seq <= visible_seq or v.flags & AMDB_VERSION_SOLO:
            return off
        if v.prev == 0 and amdb_version_tail_of(v).version_no > 1:
            return VERSION_RECLAIMED
        off = v.prev
    return 0


cdef inline bint is_live(const char *arena, uint64_t version_off) noexcept nogil:
    """REQUIRES: version_off is 0 or an offset (callers check VERSION_RECLAIMED first)."""
    return version_off > VERSION_RECLAIMED and not (version_at(arena, version_off).flags & AMDB_VERSION_TOMBSTONE)
