# cython: language_level=3
"""The append-only arena of one partition, and shared-memory mappings.

Process safety: only the partition's worker calls commit_pages, alloc_block
and arena_init (single writer). Readers never look past an offset that was
published to them, so they never see a block before it is whole (layout.h,
invariants 2-3), and never touch memory past arena_committed (invariant 6),
which is the only memory guaranteed to exist in /dev/shm.

Memory order: arena_used and arena_committed are written by the worker alone
(arena_committed also by its committer thread, both by an atomic max:
worker/committer.pyx) and read by the owner only for statistics (arena_committed: relaxed;
arena_used: release, for a successor's walk of a crashed worker's arena). Publication of
blocks happens through the structures' own release stores (skip list, hash
index, node.latest, the roots in the arena header), never through arena_used.

Regions: p.arena is the base of one arena region, p.region_offset where that
region starts in the segment file, and p.ctrl's arena_used / arena_committed
count within it. Compaction builds the next generation through a view of the
other region whose control block is a private copy (compact.pyx), so the
functions here serve both.
"""
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset
from libc.errno cimport errno
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport (amdb_load_relaxed, amdb_load_acquire, amdb_store_relaxed, amdb_store_release,
                              amdb_fetch_max_seqcst)
from amdb.shm.check cimport AMDB_ASSERT, AMDB_DEBUG_BUILD

cdef extern from "fcntl.h" nogil:
    int posix_fallocate(int fd, long offset, long length)

cdef extern from "sys/statvfs.h" nogil:
    ctypedef struct statvfs_t "struct statvfs":
        unsigned long f_frsize
        unsigned long f_bavail
    int fstatvfs(int fd, statvfs_t *buf)

cdef extern from "unistd.h" nogil:
    int usleep(unsigned int usec)

cdef enum:
    SHM_RETRY_NS = 200000000                    # 200 ms: a sibling's failing fallocate is over by then
    SHM_RETRY_FIRST_PAUSE_NS = 50000            # 50 us, doubling
    SHM_RETRY_MAX_PAUSE_NS = 10000000           # 10 ms


cdef uint64_t shm_free_bytes(int fd) noexcept nogil:
    """Bytes the file system of `fd` can still give (all of them if it cannot say)."""
    cdef statvfs_t st
    if fstatvfs(fd, &st) != 0:
        return <uint64_t>-1
    return <uint64_t>st.f_bavail * st.f_frsize

cdef extern from "sys/mman.h" nogil:
    int madvise(void *addr, size_t length, int advice)
    enum: MADV_POPULATE_WRITE_OR_ZERO "AMDB_MADV_POPULATE_WRITE"

cdef extern from *:
    """
    #ifdef MADV_POPULATE_WRITE
    #define AMDB_MADV_POPULATE_WRITE MADV_POPULATE_WRITE
    #else
    #define AMDB_MADV_POPULATE_WRITE 23  /* Linux 5.14+; older kernels answer EINVAL, harmlessly */
    #endif
    """


cdef int commit_pages(PartitionView *p, uint64_t nbytes) noexcept nogil:
    """Make sure the next `nbytes` of the arena exist in /dev/shm.

    Returns AMDB_STATUS_OK, AMDB_STATUS_ARENA_FULL (the reservation is used
    up) or AMDB_STATUS_SHM_FULL (posix_fallocate failed: /dev/shm is full).
    Commits in steps of an eighth of what is committed (layout.h,
    AMDB_COMMIT_MIN_STEP .. AMDB_COMMIT_STEP), so that fallocate is rare and
    /dev/shm holds little more than the arena uses; when a full step does
    not fit, retries with just what is needed.
    """
    return commit_pages_by(p, nbytes, commit_step(amdb_load_acquire(&p.ctrl.arena_committed)))


cdef int commit_pages_by(PartitionView *p, uint64_t nbytes, uint64_t step) noexcept nogil:
    """commit_pages in steps of `step` bytes (a multiple of AMDB_PAGE).
    Compaction commits the generation it writes in small steps, so that the
    memory it holds is about what it uses.

    Never starves a sibling: on tmpfs a posix_fallocate that fails takes
    every free page for a moment before it gives them back, so a sibling
    worker's commit that would fit fails meanwhile. A full step is tried only
    when the file system has eight times that free (a nearly full /dev/shm
    is left to the data itself: commits are then exact); an exact commit that fails while the
    file system says it fits is retried with backoff (the space was a
    sibling's failing attempt), for SHM_RETRY_NS at most."""
    cdef amdb_control *c = p.ctrl
    cdef uint64_t used = c.arena_used
    cdef uint64_t committed = amdb_load_acquire(&c.arena_committed)
    cdef uint64_t need = used + nbytes
    cdef uint64_t target, exact, waited = 0, pause = SHM_RETRY_FIRST_PAUSE_NS
    if need <= committed:
        return AMDB_STATUS_OK
    if need > c.arena_capacity:
        return AMDB_STATUS_ARENA_FULL
    exact = min((need + AMDB_PAGE - 1) // AMDB_PAGE * AMDB_PAGE, c.arena_capacity)
    target = min((need + step - 1) // step * step, c.arena_capacity)
    if not (target > exact and shm_free_bytes(p.fd) >= 8 * (target - committed)
            and commit_range(p, committed, target) == 0):
        while commit_range(p, committed, exact) != 0:
            if waited >= SHM_RETRY_NS or shm_free_bytes(p.fd) < exact - committed:
                return AMDB_STATUS_SHM_FULL
            usleep(<unsigned int>(pause // 1000))
            waited += pause
            pause = min(pause * 2, SHM_RETRY_MAX_PAUSE_NS)
    return AMDB_STATUS_OK


cdef int commit_range(PartitionView *p, uint64_t committed, uint64_t target) noexcept nogil:
    """Back arena bytes [committed, target) of the region with memory, map
    them into this process, and raise arena_committed to `target`: 0, or the
    errno of a posix_fallocate that failed (nothing raised then)."""
    cdef int err = posix_fallocate(p.fd, <long>(p.region_offset + committed), <long>(target - committed))
    if err != 0:
        return err
    # Map the new pages now, in one call, rather than taking a page fault
    # per 4 KiB page while applying (best effort).
    madvise(p.arena + committed, target - committed, MADV_POPULATE_WRITE_OR_ZERO)
    # A max: the worker and its committer thread both raise it.
    amdb_fetch_max_seqcst(&p.ctrl.arena_committed, target)
    return 0


cdef uint64_t alloc_block(PartitionView *p, uint32_t kind, uint64_t nbytes) noexcept nogil:
    """Bump-allocate a block of `nbytes` (a multiple of 8) and write its header.

    REQUIRES: commit_pages(p, >= nbytes) succeeded since the last allocation
    that used that room. The block is unpublished: nobody else can see it
    until the caller stores its offset with a release store.
    """
    cdef amdb_control *c = p.ctrl
    cdef uint64_t off = c.arena_used
    cdef amdb_block *block = <amdb_block *>(p.arena + off)
    AMDB_ASSERT(nbytes % 8 == 0 and off + nbytes <= c.arena_committed,
                "alloc_block: a multiple of 8 bytes, within committed memory")
    block.kind = kind
    block.words = <uint32_t>(nbytes // 8)
    # Release: the header is written before arena_used covers it, so that a
    # successor of a worker that crashed here can walk the arena (invariant 5).
    amdb_store_release(&c.arena_used, off + nbytes)
    return off


cdef uint64_t region_init_bytes(uint64_t table_capacity) noexcept nogil:
    """Arena bytes region_init allocates."""
    return (amdb_node_bytes(AMDB_MAX_HEIGHT, 0)
            + amdb_round8(sizeof(amdb_hash_table) + table_capacity * sizeof(amdb_hash_slot)))


cdef void region_init(PartitionView *p, uint64_t table_capacity, uint32_t log2_capacity,
                      uint64_t generation) noexcept nogil:
    """Write the arena header, the skip-list head and an empty hash table of
    `table_capacity` (= 2^log2_capacity) slots at the start of the region at
    p.arena, then publish both roots in its header (layout.h, invariant 8).

    REQUIRES: arena_used == AMDB_ARENA_FIRST_BLOCK and region_init_bytes()
    committed."""
    cdef amdb_arena_header *header = amdb_arena_header_of(p.arena)
    cdef uint64_t head_bytes = amdb_node_bytes(AMDB_MAX_HEIGHT, 0)
    cdef uint64_t table_bytes = amdb_round8(sizeof(amdb_hash_table) + table_capacity * sizeof(amdb_hash_slot))
    cdef uint64_t head_off, table_off
    cdef amdb_node *head
    cdef amdb_hash_table *table
    AMDB_ASSERT(p.ctrl.arena_used == AMDB_ARENA_FIRST_BLOCK and (1ULL << log2_capacity) == table_capacity,
                "region_init: an empty region and a power-of-two table")
    header.magic = AMDB_PARTITION_MAGIC
    header.generation = generation
    header.base_block = 0
    header.compact_seq = 0
    header.keep_versions = 0
    header.reserved = 0
    head_off = alloc_block(p, AMDB_BLOCK_NODE, head_bytes)
    head = node_at(p.arena, head_off)
    memset(<char *>head + sizeof(amdb_block), 0, head_bytes - sizeof(amdb_block))
    head.height = AMDB_MAX_HEIGHT
    table_off = alloc_block(p, AMDB_BLOCK_HASH_TABLE, table_bytes)
    table = table_at(p.arena, table_off)
    memset(<char *>table + sizeof(amdb_block), 0, table_bytes - sizeof(amdb_block))
    table.capacity = table_capacity
    table.log2_capacity = log2_capacity
    # Release: the head and the table are whole before anyone can find them.
    amdb_store_release(&header.hash_table, table_off)
    amdb_store_release(&header.skiplist_head, head_off)


cdef int arena_init(PartitionView *p) noexcept nogil:
    """Create the first generation of an empty arena (region_init). Idempotent:
    a worker that finds roots in its region's header keeps them.

    The header is read only once memory is committed (invariant 6): on a full
    /dev/shm even a read of an uncommitted tmpfs page raises SIGBUS. A region
    with nothing committed has never been written, so it holds no roots."""
    cdef amdb_control *c = p.ctrl
    cdef int status
    if amdb_load_relaxed(&c.arena_committed) >= AMDB_ARENA_FIRST_BLOCK \
            and amdb_arena_header_of(p.arena).skiplist_head != 0:
        return AMDB_STATUS_OK
    if c.arena_used == 0:
        amdb_store_relaxed(&c.arena_used, AMDB_ARENA_FIRST_BLOCK)
    status = commit_pages(p, region_init_bytes(AMDB_HASH_INITIAL_CAPACITY))
    if status != AMDB_STATUS_OK:
        return status
    region_init(p, AMDB_HASH_INITIAL_CAPACITY, AMDB_HASH_INITIAL_LOG2, 1)
    return AMDB_STATUS_OK


def debug_build():
    """True in the debug and asan builds (AMDB_DEBUG: AMDB_ASSERT aborts)."""
    return bool(AMDB_DEBUG_BUILD)


def _debug_violate_assertion():
    """Test hook: break an AMDB_ASSERT precondition (alloc_block past committed
    memory, on a private copy). The debug build aborts the process; the
    release build checks nothing and returns."""
    cdef amdb_control ctrl
    cdef PartitionView view
    cdef char scratch[64]
    memset(&ctrl, 0, sizeof(ctrl))
    memset(&view, 0, sizeof(view))
    view.ctrl = &ctrl
    view.arena = scratch
    ctrl.arena_used = 0
    ctrl.arena_committed = 0           # nothing committed: any allocation breaks the precondition
    if AMDB_DEBUG_BUILD:
        alloc_block(&view, AMDB_BLOCK_PAD, 8)


cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <linux/falloc.h>
    /* Give `length` bytes at `offset` of a tmpfs (or any) file back to the
     * system; reading them afterwards gives zeros. 0 or an errno. */
    static int amdb_punch_hole(int fd, long offset, long length) {
        return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : errno;
    }
    """
    int amdb_punch_hole(int fd, long offset, long length) nogil


cdef int punch_arena(PartitionView *p, uint64_t off, uint64_t length) noexcept nogil:
    """Give back the memory of `length` bytes at arena offset `off` of the
    region p.arena (both page aligned): 0 or an errno. The worker's view only
    (p.fd). REQUIRES: no reader can be in those bytes, and nothing reads them
    again but as zeros."""
    return amdb_punch_hole(p.fd, <long>(p.region_offset + off), <long>length)


def punch_hole(int fd, uint64_t offset, uint64_t length):
    """Release the memory behind `length` bytes at `offset` of the shared
    segment `fd` (a retired arena region, layout.h). Raises OSError."""
    cdef int err
    with nogil:
        err = amdb_punch_hole(fd, <long>offset, <long>length)
    if err != 0:
        import os
        raise OSError(err, os.strerror(err))


cdef class Mapping:
    """An mmap of (part of) a shared segment; unmapped when released or collected.

    Whoever holds raw pointers into a Mapping keeps a reference to it, so the
    memory outlives every pointer (ParallelDB drops its references only after
    every reader has left).
    """

    def __cinit__(self, int fd, size_t offset, size_t length, bint writable):
        cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
        cdef void *addr = mmap(NULL, length, prot, MAP_SHARED, fd, <long>offset)
        cdef int err = errno
        if addr == MAP_FAILED:
            import os
            from amdb.errors import Error
            raise Error(f"mmap of {length} bytes failed: {os.strerror(err)}", code="mmap_failed",
                        hint="lower arena_size= or workers=")
        self.base = <char *>addr
        self.length = length
        self.writable = writable

    cdef void release(self) noexcept:
        if self.base != NULL:
            munmap(self.base, self.length)
            self.base = NULL

    def close(self):
        self.release()

    @property
    def address(self):
        return <size_t>self.base

    def __dealloc__(self):
        self.release()
