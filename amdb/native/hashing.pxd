# cython: language_level=3
"""C declarations of xxh64.h (XXH64, one-shot and streaming)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "xxh64.h" nogil:
    ctypedef struct amdb_xxh64_state:
        pass
    uint64_t amdb_xxh64(const void *data, size_t length, uint64_t seed) noexcept
    void amdb_xxh64_reset(amdb_xxh64_state *state, uint64_t seed) noexcept
    void amdb_xxh64_update(amdb_xxh64_state *state, const void *data, size_t length) noexcept
    uint64_t amdb_xxh64_digest(const amdb_xxh64_state *state) noexcept

# Hash slots: a key belongs to slot xxh64(key) % SLOT_COUNT.
cdef enum:
    SLOT_COUNT = 16384
    SLOT_MASK = 16383

cdef extern from "sha256.h" nogil:
    ctypedef struct amdb_sha256:
        pass
    void amdb_sha256_init(amdb_sha256 *s) noexcept
    void amdb_sha256_update(amdb_sha256 *s, const void *data, size_t length) noexcept
    void amdb_sha256_final(amdb_sha256 *s, uint8_t *out) noexcept


from amdb.shm.layout cimport amdb_ring_record, amdb_ring_chunk, amdb_record_bytes, AMDB_OP_WRAP

cdef inline uint64_t ring_chunk_fingerprint(const char *ring, uint64_t capacity, uint64_t header_pos,
                                            uint64_t end) noexcept nogil:
    """xxh64 of the records of the chunk whose header is at ring position
    `header_pos`, as the owner packed them, leaving out WRAP records and the
    bytes they skip: the same records give the same fingerprint wherever
    they lie in the ring (poison batches, amdb/db.py). REQUIRES: a chunk the
    owner wrote (records are not checked beyond staying inside `end`)."""
    cdef amdb_xxh64_state state
    cdef uint64_t mask = capacity - 1
    cdef uint64_t pos = header_pos + sizeof(amdb_ring_chunk)
    cdef const amdb_ring_record *rec
    cdef uint64_t nbytes
    amdb_xxh64_reset(&state, 0)
    while pos < end:
        rec = <const amdb_ring_record *>(ring + (pos & mask))
        if rec.op == AMDB_OP_WRAP:
            pos += capacity - (pos & mask)
            continue
        nbytes = amdb_record_bytes(rec.key_len, rec.value_len)
        if pos + nbytes > end or (pos & mask) + nbytes > capacity:
            break
        amdb_xxh64_update(&state, rec, nbytes)
        pos += nbytes
    return amdb_xxh64_digest(&state)
