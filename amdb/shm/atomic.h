/* atomic.h — the memory-ordering vocabulary of AmDb's shared structures.
 *
 * Every cross-process access goes through one of these helpers so that its
 * ordering is visible at the call site:
 *   *_acquire  — load of an offset/counter that we then follow or trust
 *   *_release  — store that publishes bytes written before it
 *   *_seqcst   — the sleep/wake handshakes (Dekker pattern, see ring.pyx)
 *   *_relaxed  — single-writer fields read by their own writer, or
 *                statistics where a stale value is fine.
 * Futexes live in shared memory, so they use the shared (non-PRIVATE) ops.
 */
#ifndef AMDB_ATOMIC_H
#define AMDB_ATOMIC_H

#include <stdint.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sched.h>
#include <linux/futex.h>

static inline uint64_t amdb_load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t amdb_load_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void amdb_store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void amdb_store_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t amdb_fetch_add_seqcst(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t amdb_fetch_sub_seqcst(uint64_t *p, uint64_t v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t amdb_load_seqcst(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void amdb_store_seqcst(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
/* Raise *p to at least v (seq_cst): a watermark that only grows, whoever
 * raises it. Returns the value it ends up at or above. */
static inline uint64_t amdb_fetch_max_seqcst(uint64_t *p, uint64_t v) {
    uint64_t seen = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (seen < v && !__atomic_compare_exchange_n(p, &seen, v, 1, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return seen < v ? v : seen;
}
/* 1 when *p held `expected` and now holds `desired`; 0 when it held something else. */
static inline int amdb_cas_seqcst(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static inline uint32_t amdb_load32_seqcst(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void amdb_store32_seqcst(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t amdb_fetch_add32_seqcst(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }

static inline void amdb_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void amdb_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

/* One step of a bounded busy wait before sleeping on a futex. The first
 * steps pause (the other side is usually a few hundred ns away); later ones
 * yield the core, because when the owner and the workers outnumber the cores
 * a pure spin would hold the very core the process it waits for needs. */
#define AMDB_SPIN_STEPS 256
#define AMDB_SPIN_PAUSES 64
static inline void amdb_spin_step(int step) {
    if (step < AMDB_SPIN_PAUSES) amdb_cpu_relax();
    else sched_yield();
}

/* Sleep while *word == expected, at most timeout_ns. Returns 0 when woken or
 * when *word had already changed, 1 on timeout. EINTR counts as a wake-up:
 * every caller re-checks its condition in a loop. */
static inline int amdb_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
    ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
    if (rc == -1 && errno == ETIMEDOUT) return 1;
    return 0;
}

static inline void amdb_futex_wake_all(uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

static inline uint64_t amdb_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t amdb_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

#endif /* AMDB_ATOMIC_H */
