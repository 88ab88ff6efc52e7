# cython: language_level=3
"""Declarations of check.h: AMDB_ASSERT aborts the debug build on a broken precondition."""

cdef extern from "check.h" nogil:
    enum: AMDB_DEBUG_BUILD          # 1 in the debug and asan builds
    void AMDB_ASSERT(bint condition, const char *what) noexcept
