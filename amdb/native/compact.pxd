# cython: language_level=3
from libc.stdint cimport uint64_t
from amdb.shm.layout cimport PartitionView, amdb_control
from amdb.native.skiplist cimport SkipFinger

# What one compaction of one partition did (compact_prepare, compact_adopt).
ctypedef struct CompactResult:
    uint64_t nodes_before        # nodes walked (with a version or not)
    uint64_t nodes_after         # nodes kept: every one with a version
    uint64_t versions_before     # reachable versions before
    uint64_t versions_after      # versions kept
    uint64_t live_keys           # kept keys whose newest version is not a tombstone
    uint64_t bytes_before        # arena_used of the old and of the new generation
    uint64_t bytes_after
    uint64_t ns                  # time it took

cdef int compact_prepare(PartitionView *p, uint64_t keep, uint64_t seq, uint64_t horizon, SkipFinger *finger,
                         CompactResult *res) noexcept nogil
cdef void compact_adopt(PartitionView *p, char *arena_base, SkipFinger *finger,
                        const CompactResult *res, uint64_t seq) noexcept nogil
cdef void compact_recover(amdb_control *c) noexcept nogil
cdef char *region_base(char *arena_base, const amdb_control *c, uint64_t region) noexcept nogil
