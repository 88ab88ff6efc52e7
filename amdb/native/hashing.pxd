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
