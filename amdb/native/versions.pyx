# cython: language_level=3
"""Version records and their hash chain (nogil).

Every put or delete appends a version; a key's versions form a list, newest
first, through `prev`, and a hash chain:

    hash = xxh64(prev_hash | key | version_no | flags | value)

(prev_hash, version_no: 8 bytes little-endian; flags: 4 bytes little-endian;
prev_hash = 0 for a key's first version). The chain is computed for every
version, whatever the batch size. A version's tail stores prev_hash and its
node only where they cannot be found otherwise (layout.h, amdb_version_tail):
version_append writes neither prev_hash (it is `prev`'s hash) nor, right
after a new node, the node.

Process safety: written only by the partition's worker, published through
node.latest (release store, by the caller); immutable afterwards.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport amdb_load_relaxed
from amdb.shm.arena cimport alloc_block
from amdb.native.hashing cimport amdb_xxh64, amdb_xxh64_state, amdb_xxh64_reset, amdb_xxh64_update, amdb_xxh64_digest

cdef enum:
    SMALL_RECORD = 512   # chain input up to this size is hashed in one shot from the stack

# Tests only (debug_full_tails): write every field of every tail, as versions
# written before LINKED and AFTER_NODE existed (an old arena, in a test).
cdef bint full_tails = False


def debug_full_tails(bint on):
    """Tests: make this process's version_append write full tails (the
    worker sets it from AMDB_DEBUG_FULL_TAILS)."""
    global full_tails
    full_tails = on


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* One 8-byte store: a later 8-byte load of the hash input can then be
     * forwarded from it (byte-wise stores made every such load stall). */
    static inline void amdb_put_le64(uint8_t *out, uint64_t v) {
    #if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        memcpy(out, &v, 8);
    }
    """
    void amdb_put_le64(uint8_t *out, uint64_t v) noexcept nogil


cdef inline void _put_le64(uint8_t *out, uint64_t v) noexcept nogil:
    amdb_put_le64(out, v)


cdef uint64_t chain_hash(uint64_t prev_hash, const uint8_t *key, uint32_t key_len,
                         uint64_t version_no, uint32_t flags,
                         const uint8_t *value, uint32_t value_len) noexcept nogil:
    cdef uint8_t buffer[SMALL_RECORD]
    cdef uint8_t word[8]
    cdef amdb_xxh64_state state
    cdef uint64_t total = 20 + <uint64_t>key_len + value_len
    cdef uint8_t *out
    flags &= AMDB_VERSION_HASHED_FLAGS   # how a version was applied (SOLO) is not data
    if total <= SMALL_RECORD:
        out = buffer
        _put_le64(out, prev_hash)
        if key_len:
            memcpy(out + 8, key, key_len)
        out += 8 + key_len
        _put_le64(out, version_no)
        _put_le64(word, flags)
        memcpy(out + 8, word, 4)
        if value_len:                # value may be NULL for a tombstone
            memcpy(out + 12, value, value_len)
        return amdb_xxh64(buffer, total, 0)
    amdb_xxh64_reset(&state, 0)
    _put_le64(word, prev_hash)
    amdb_xxh64_update(&state, word, 8)
    amdb_xxh64_update(&state, key, key_len)
    _put_le64(word, version_no)
    amdb_xxh64_update(&state, word, 8)
    _put_le64(word, flags)
    amdb_xxh64_update(&state, word, 4)
    amdb_xxh64_update(&state, value, value_len)
    return amdb_xxh64_digest(&state)


cdef uint64_t version_append(PartitionView *p, uint64_t node_off, uint32_t flags,
                             const uint8_t *value, uint32_t value_len,
                             uint64_t seq, uint64_t timestamp_ns) noexcept nogil:
    """Write a new version of `node_off` on top of its latest one and return
    its offset. The caller publishes it with a release store to node.latest.

    REQUIRES: room committed (commit_pages) for amdb_version_bytes(value_len).
    """
    cdef amdb_node *node = node_at(p.arena, node_off)
    # Relaxed: the worker is the only writer of node.latest.
    cdef uint64_t prev_off = amdb_node_latest_relaxed(node)
    cdef amdb_version_tail *prev_tail
    cdef uint64_t off, prev_hash
    cdef amdb_version *v
    cdef amdb_version_tail *tail
    cdef uint8_t *value_out
    if not full_tails:
        # prev_hash is prev's hash (or 0: version 1); a version right after
        # its node (a new key's first) finds its node there.
        flags |= AMDB_VERSION_LINKED
        if p.ctrl.arena_used == node_off + <uint64_t>node.block.words * 8:
            flags |= AMDB_VERSION_AFTER_NODE
    off = alloc_block(p, AMDB_BLOCK_VERSION, amdb_version_block_bytes(value_len, flags))
    v = version_at(p.arena, off)
    v.prev = prev_off
    v.seq = seq
    v.flags = flags
    v.value_len = value_len
    value_out = <uint8_t *>amdb_version_value(v)
    if value_len:
        memcpy(value_out, value, value_len)
    memset(value_out + value_len, 0, amdb_round8(value_len) - value_len)
    tail = amdb_version_tail_of(v)
    tail.timestamp_ns = timestamp_ns
    if prev_off != 0:
        prev_tail = amdb_version_tail_of(version_at(p.arena, prev_off))
        tail.version_no = prev_tail.version_no + 1
        prev_hash = prev_tail.hash
    else:
        tail.version_no = 1
        prev_hash = 0
    if amdb_version_stored_prev_hash(v) != NULL:
        amdb_version_stored_prev_hash(v)[0] = prev_hash
    if amdb_version_stored_node(v) != NULL:
        amdb_version_stored_node(v)[0] = node_off
    tail.hash = chain_hash(prev_hash, amdb_node_key(node), node.key_len, tail.version_no,
                           flags, value, value_len)
    return off
