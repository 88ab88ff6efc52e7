# cython: language_level=3
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from amdb.shm.layout cimport PartitionView, amdb_node, amdb_version, version_at, AMDB_VERSION_TOMBSTONE
from amdb.shm.atomic cimport amdb_load_acquire

cdef uint64_t version_append(PartitionView *p, uint64_t node_off, uint32_t flags,
                             const uint8_t *value, uint32_t value_len,
                             uint64_t seq, uint64_t timestamp_ns) noexcept nogil
cdef uint64_t chain_hash(uint64_t prev_hash, const uint8_t *key, uint32_t key_len,
                         uint64_t version_no, uint32_t flags,
                         const uint8_t *value, uint32_t value_len) noexcept nogil


cdef inline uint64_t visible_version(const char *arena, amdb_node *node, uint64_t visible_seq) noexcept nogil:
    """Newest version of `node` with seq <= visible_seq, or 0 (layout.h, invariant 7).

    Acquire on node.latest: the version it names is whole. `prev` links are
    immutable once published, so following them needs no ordering.
    """
    cdef uint64_t off = amdb_load_acquire(&node.latest)
    cdef amdb_version *v
    while off != 0:
        v = version_at(arena, off)
        if v.seq <= visible_seq:
            return off
        off = v.prev
    return 0


cdef inline bint is_live(const char *arena, uint64_t version_off) noexcept nogil:
    return version_off != 0 and not (version_at(arena, version_off).flags & AMDB_VERSION_TOMBSTONE)
