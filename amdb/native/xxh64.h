/* xxh64.h — XXH64 (Yann Collet's xxHash, 64-bit), one-shot and streaming.
 *
 * Why hand-written rather than vendoring libxxhash: AmDb needs only XXH64, as
 * static inline functions that the nogil Cython loops can inline; ~120 lines
 * are easier to audit than the 6,000-line upstream header. The test suite
 * checks every length 0..300 and random inputs against the `xxhash` package
 * bit for bit (tests/test_xxh64.py).
 *
 * Pure computation: no shared state, safe from any thread, `noexcept nogil`.
 * Reads are unaligned-safe (memcpy), little-endian as the reference defines.
 */
#ifndef AMDB_XXH64_H
#define AMDB_XXH64_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define AMDB_XXH_P1 0x9E3779B185EBCA87ULL
#define AMDB_XXH_P2 0xC2B2AE3D27D4EB4FULL
#define AMDB_XXH_P3 0x165667B19E3779F9ULL
#define AMDB_XXH_P4 0x85EBCA77C2B2AE63ULL
#define AMDB_XXH_P5 0x27D4EB2F165667C5ULL

static inline uint64_t amdb_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t amdb_read64le(const void *p) {
    uint64_t v; memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t amdb_read32le(const void *p) {
    uint32_t v; memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t amdb_xxh_round(uint64_t acc, uint64_t input) {
    acc += input * AMDB_XXH_P2;
    acc = amdb_rotl64(acc, 31);
    return acc * AMDB_XXH_P1;
}

static inline uint64_t amdb_xxh_merge(uint64_t acc, uint64_t val) {
    acc ^= amdb_xxh_round(0, val);
    return acc * AMDB_XXH_P1 + AMDB_XXH_P4;
}

static inline uint64_t amdb_xxh_finish(uint64_t h, const uint8_t *p, size_t len) {
    while (len >= 8) {
        h ^= amdb_xxh_round(0, amdb_read64le(p));
        h = amdb_rotl64(h, 27) * AMDB_XXH_P1 + AMDB_XXH_P4;
        p += 8; len -= 8;
    }
    if (len >= 4) {
        h ^= (uint64_t)amdb_read32le(p) * AMDB_XXH_P1;
        h = amdb_rotl64(h, 23) * AMDB_XXH_P2 + AMDB_XXH_P3;
        p += 4; len -= 4;
    }
    while (len > 0) {
        h ^= (*p) * AMDB_XXH_P5;
        h = amdb_rotl64(h, 11) * AMDB_XXH_P1;
        p++; len--;
    }
    h ^= h >> 33; h *= AMDB_XXH_P2;
    h ^= h >> 29; h *= AMDB_XXH_P3;
    h ^= h >> 32;
    return h;
}

/* One-shot XXH64 of data[0..len). */
static inline uint64_t amdb_xxh64(const void *data, size_t len, uint64_t seed) {
    const uint8_t *p = (const uint8_t *)data;
    const uint8_t *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + AMDB_XXH_P1 + AMDB_XXH_P2, v2 = seed + AMDB_XXH_P2;
        uint64_t v3 = seed, v4 = seed - AMDB_XXH_P1;
        const uint8_t *limit = end - 32;
        do {
            v1 = amdb_xxh_round(v1, amdb_read64le(p));
            v2 = amdb_xxh_round(v2, amdb_read64le(p + 8));
            v3 = amdb_xxh_round(v3, amdb_read64le(p + 16));
            v4 = amdb_xxh_round(v4, amdb_read64le(p + 24));
            p += 32;
        } while (p <= limit);
        h = amdb_rotl64(v1, 1) + amdb_rotl64(v2, 7) + amdb_rotl64(v3, 12) + amdb_rotl64(v4, 18);
        h = amdb_xxh_merge(h, v1); h = amdb_xxh_merge(h, v2);
        h = amdb_xxh_merge(h, v3); h = amdb_xxh_merge(h, v4);
    } else {
        h = seed + AMDB_XXH_P5;
    }
    h += (uint64_t)len;
    return amdb_xxh_finish(h, p, (size_t)(end - p));
}

/* Streaming state: feed pieces with amdb_xxh64_update, read with _digest.
 * Equal to amdb_xxh64 of the concatenation. */
typedef struct {
    uint64_t total_len;
    uint64_t v1, v2, v3, v4;
    uint8_t buffer[32];
    uint32_t buffered;
} amdb_xxh64_state;

static inline void amdb_xxh64_reset(amdb_xxh64_state *s, uint64_t seed) {
    s->total_len = 0;
    s->v1 = seed + AMDB_XXH_P1 + AMDB_XXH_P2; s->v2 = seed + AMDB_XXH_P2;
    s->v3 = seed; s->v4 = seed - AMDB_XXH_P1;
    s->buffered = 0;
}

static inline void amdb_xxh64_update(amdb_xxh64_state *s, const void *data, size_t len) {
    const uint8_t *p = (const uint8_t *)data;
    const uint8_t *end = p + len;
    s->total_len += len;
    if (s->buffered + len < 32) {
        if (len) memcpy(s->buffer + s->buffered, p, len);
        s->buffered += (uint32_t)len;
        return;
    }
    if (s->buffered) {
        size_t fill = 32 - s->buffered;
        memcpy(s->buffer + s->buffered, p, fill);
        s->v1 = amdb_xxh_round(s->v1, amdb_read64le(s->buffer));
        s->v2 = amdb_xxh_round(s->v2, amdb_read64le(s->buffer + 8));
        s->v3 = amdb_xxh_round(s->v3, amdb_read64le(s->buffer + 16));
        s->v4 = amdb_xxh_round(s->v4, amdb_read64le(s->buffer + 24));
        p += fill;
        s->buffered = 0;
    }
    while (p + 32 <= end) {
        s->v1 = amdb_xxh_round(s->v1, amdb_read64le(p));
        s->v2 = amdb_xxh_round(s->v2, amdb_read64le(p + 8));
        s->v3 = amdb_xxh_round(s->v3, amdb_read64le(p + 16));
        s->v4 = amdb_xxh_round(s->v4, amdb_read64le(p + 24));
        p += 32;
    }
    if (p < end) {
        memcpy(s->buffer, p, (size_t)(end - p));
        s->buffered = (uint32_t)(end - p);
    }
}

static inline uint64_t amdb_xxh64_digest(const amdb_xxh64_state *s) {
    uint64_t h;
    if (s->total_len >= 32) {
        h = amdb_rotl64(s->v1, 1) + amdb_rotl64(s->v2, 7) + amdb_rotl64(s->v3, 12) + amdb_rotl64(s->v4, 18);
        h = amdb_xxh_merge(h, s->v1); h = amdb_xxh_merge(h, s->v2);
        h = amdb_xxh_merge(h, s->v3); h = amdb_xxh_merge(h, s->v4);
    } else {
        h = s->v3 /* = seed */ + AMDB_XXH_P5;
    }
    h += s->total_len;
    return amdb_xxh_finish(h, s->buffer, s->buffered);
}

#endif /* AMDB_XXH64_H */
