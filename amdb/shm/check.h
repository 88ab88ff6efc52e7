/* check.h — AMDB_ASSERT: preconditions of native code that abort the debug build.
 *
 * A Cython `assert` inside a `noexcept nogil` function cannot raise: it
 * prints the exception and returns 0, and the caller goes on with a broken
 * precondition (writing over the arena header, say). AMDB_ASSERT instead
 * prints where it failed and aborts the process, so a violated invariant
 * stops the debug and sanitizer builds (make debug, make asan-test) at the
 * first wrong step. In release builds it compiles to nothing: the
 * conditions are the callers' documented REQUIRES, not input checks.
 *
 * Cython: `AMDB_ASSERT(condition, "what must hold")` (check.pxd).
 * AMDB_DEBUG is defined (to 1) by setup.py for AMDB_BUILD=debug and asan.
 */
#ifndef AMDB_CHECK_H
#define AMDB_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#ifdef AMDB_DEBUG
#define AMDB_DEBUG_BUILD 1
static inline void amdb_assert_failed(const char *what, const char *condition, const char *file, int line) {
    fprintf(stderr, "amdb: assertion failed: %s [%s] (%s:%d)\n", what, condition, file, line);
    fflush(stderr);
    abort();
}
#define AMDB_ASSERT(cond, what) ((cond) ? (void)0 : amdb_assert_failed((what), #cond, __FILE__, __LINE__))
#else
#define AMDB_DEBUG_BUILD 0
#define AMDB_ASSERT(cond, what) ((void)0)
#endif

#endif /* AMDB_CHECK_H */
