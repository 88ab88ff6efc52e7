# cython: language_level=3
"""Declarations of atomic.h: ordered loads/stores, futexes, clocks."""
from libc.stdint cimport uint32_t, uint64_t, int64_t

cdef extern from "atomic.h" nogil:
    uint64_t amdb_load_acquire(const uint64_t *p) noexcept
    uint64_t amdb_load_relaxed(const uint64_t *p) noexcept
    void amdb_store_release(uint64_t *p, uint64_t v) noexcept
    void amdb_store_relaxed(uint64_t *p, uint64_t v) noexcept
    uint64_t amdb_fetch_add_seqcst(uint64_t *p, uint64_t v) noexcept
    uint64_t amdb_fetch_sub_seqcst(uint64_t *p, uint64_t v) noexcept
    uint64_t amdb_load_seqcst(const uint64_t *p) noexcept
    void amdb_store_seqcst(uint64_t *p, uint64_t v) noexcept
    int amdb_cas_seqcst(uint64_t *p, uint64_t expected, uint64_t desired) noexcept
    uint64_t amdb_fetch_max_seqcst(uint64_t *p, uint64_t v) noexcept
    uint32_t amdb_load32_seqcst(const uint32_t *p) noexcept
    void amdb_store32_seqcst(uint32_t *p, uint32_t v) noexcept
    uint32_t amdb_fetch_add32_seqcst(uint32_t *p, uint32_t v) noexcept
    void amdb_cpu_relax() noexcept
    void amdb_prefetch(const void *p) noexcept
    void amdb_spin_step(int step) noexcept
    enum: AMDB_SPIN_STEPS
    int amdb_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) noexcept
    void amdb_futex_wake_all(uint32_t *word) noexcept
    uint64_t amdb_now_ns() noexcept
    uint64_t amdb_monotonic_ns() noexcept
