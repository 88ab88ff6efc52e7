# cython: language_level=3
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* memcmp's sign for short runs without a libc call: whole 8-byte words
     * compared as big-endian integers, then the last bytes. Keys that tie
     * on their 8-byte prefix usually differ within the next word. */
    static inline int amdb_compare_bytes(const uint8_t *a, const uint8_t *b, uint32_t n) {
        while (n >= 8) {
            uint64_t x, y;
            memcpy(&x, a, 8); memcpy(&y, b, 8);
            if (x != y) {
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                x = __builtin_bswap64(x); y = __builtin_bswap64(y);
    #endif
                return x < y ? -1 : 1;
            }
            a += 8; b += 8; n -= 8;
        }
        while (n--) {
            if (*a != *b) return *a < *b ? -1 : 1;
            a++; b++;
        }
        return 0;
    }
    """
    int amdb_compare_bytes(const uint8_t *a, const uint8_t *b, uint32_t n) noexcept nogil
from amdb.shm.layout cimport amdb_node, PartitionView, AMDB_MAX_HEIGHT, amdb_node_key

# Worker-private search finger: the predecessors of the last inserted key at
# every level. Valid forever (nodes are never removed), so any of them whose
# key is below the next key is a correct place to start searching from.
ctypedef struct SkipFinger:
    uint64_t pred[AMDB_MAX_HEIGHT]
    uint64_t rng_state

cdef uint64_t skiplist_find_ge(const char *arena, uint64_t head, uint64_t prefix,
                               const uint8_t *key, uint32_t key_len) noexcept nogil
cdef uint64_t skiplist_find_lt(const char *arena, uint64_t head, uint64_t prefix,
                               const uint8_t *key, uint32_t key_len, bint unbounded) noexcept nogil
cdef uint64_t skiplist_find_ge_from(const char *arena, uint64_t start, int top_level, uint64_t prefix,
                                    const uint8_t *key, uint32_t key_len) noexcept nogil
cdef void skiplist_find_ge_many(int n, const char **arenas, const uint64_t *starts, const int *top_levels,
                                uint64_t prefix, const uint8_t *key, uint32_t key_len, uint64_t *out) noexcept nogil
cdef uint64_t skiplist_find_lt_coarse(const char *arena, uint64_t head, uint64_t prefix, const uint8_t *key,
                                      uint32_t key_len, bint unbounded, int min_level) noexcept nogil
cdef void skiplist_insert(PartitionView *p, uint64_t node_off, SkipFinger *finger) noexcept nogil
cdef void skiplist_finger_reset(PartitionView *p, SkipFinger *finger) noexcept nogil
cdef uint32_t skiplist_random_height(SkipFinger *finger) noexcept nogil


cdef inline int compare_key_to_node(uint64_t prefix, const uint8_t *key, uint32_t key_len,
                                    const amdb_node *n) noexcept nogil:
    """memcmp order of (key) vs (n's key): <0, 0, >0. The cached big-endian
    prefix decides most comparisons without touching the key bytes."""
    cdef uint32_t common
    cdef int c
    if prefix != n.key_prefix:
        return -1 if prefix < n.key_prefix else 1
    common = key_len if key_len < n.key_len else n.key_len
    if common > 8:
        c = amdb_compare_bytes(key + 8, amdb_node_key(n) + 8, common - 8)
        if c != 0:
            return c
    return (key_len > n.key_len) - (key_len < n.key_len)
