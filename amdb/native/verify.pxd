# cython: language_level=3
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from amdb.shm.layout cimport PartitionView

cdef enum BreakKind:
    BREAK_HASH = 1          # recomputed chain hash != stored hash
    BREAK_LINK = 2          # stored prev_hash != the previous version's hash
    BREAK_VERSION_NO = 3    # version numbers do not count down by one
    BREAK_NODE = 4          # a version names another node than the one it hangs from
    BREAK_KEY_HASH = 5      # node.hash or node.key_prefix do not match its key
    BREAK_ORDER = 6         # the skip list is out of key order (or loops)
    BREAK_FIRST = 7         # the oldest version is not version 1 with prev_hash 0 (nor the oldest
                            # one compaction kept: right after its node, below the base block)
    BREAK_BOUNDS = 8        # an offset leads outside the arena or to a malformed block
    BREAK_COUNT = 9         # the skip list holds fewer nodes than the worker created, or the
                            # chains hold another number of versions than it counts
    BREAK_LEDGER = 10       # a chunk's recomputed ledger head differs from the stored one, or a
                            # LEDGER_BASE block's seal from the kept versions' hashes

ctypedef struct BreakRecord:
    uint64_t node_off       # 0 when no node could be read
    uint64_t version_no
    uint32_t kind
    uint64_t expected
    uint64_t stored

ctypedef struct VerifyResult:
    uint64_t keys
    uint64_t versions
    uint64_t breaks_total
    BreakRecord *breaks     # the first `breaks_capacity` breaks (malloc'd; caller frees)
    uint64_t breaks_len
    uint64_t breaks_capacity

cdef void verify_partition(const PartitionView *p, VerifyResult *result) noexcept nogil
cdef void verify_node(const PartitionView *p, uint64_t node_off, VerifyResult *result) noexcept nogil
cdef void verify_ledger(const PartitionView *p, VerifyResult *result) noexcept nogil
cdef bint node_readable(const PartitionView *p, uint64_t off) noexcept nogil
