# cython: language_level=3
"""Arena memory committed ahead, off the apply path (nogil).

Committing arena memory (arena.pyx, commit_pages: posix_fallocate, then
MADV_POPULATE_WRITE) zeroes and maps pages: at 1 MiB a step it costs about
0.7 ms, which a worker that commits while it applies a chunk adds to that
chunk's latency. So while the worker applies, a thread of its own keeps the
next step committed: after each chunk the worker pokes it when less than
half a step is left (committer_poke), and it commits a step ahead of what
the worker uses (so /dev/shm holds at most about an eighth more). It acts
only when poked: an idle database commits nothing more. The
worker still commits itself whatever it lacks (commit_pages), so the thread
only ever saves time; when it lags, both allocate the same pages, which
tmpfs serializes and counts once.

Process safety:
  - arena_committed is raised by both threads, only by an atomic max
    (release: the pages are allocated and mapped before anyone may rely on
    them); arena_used is the worker's, read here relaxed.
  - The thread reads the view's region (p.arena, p.region_offset) and the
    control block's counters only under `lock`. A compaction's region switch
    takes it (committer_hold / committer_release), so the thread never
    commits a step of one region into another's counters; and a poke made
    before a switch is dropped (the new generation was committed by the
    compaction; the worker's next chunk pokes again if it needs more).
  - It never commits past the reservation, nor when /dev/shm has less than
    eight times the step free: a nearly full /dev/shm is left to the data
    (the worker's own exact commits, which report a full /dev/shm).
"""
from libc.stdint cimport uint32_t, uint64_t
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport shm_free_bytes, commit_step, commit_range

cdef extern from "<pthread.h>" nogil:
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef enum:
    IDLE_WAIT_NS = 1000000000     # 1 s: a wait re-checks `stop` this often


cdef bint _short(amdb_control *c) noexcept nogil:
    """Less than half a step is committed ahead of what the worker uses."""
    cdef uint64_t committed = amdb_load_acquire(&c.arena_committed)
    cdef uint64_t used = amdb_load_relaxed(&c.arena_used)
    return committed < c.arena_capacity and committed - used < commit_step(committed) // 2


cdef void _commit_ahead(Committer *k) noexcept nogil:
    """Commit a step past arena_used. REQUIRES `lock`."""
    cdef PartitionView *p = k.p
    cdef amdb_control *c = p.ctrl
    cdef uint64_t committed = amdb_load_acquire(&c.arena_committed)
    cdef uint64_t used = amdb_load_relaxed(&c.arena_used)
    cdef uint64_t step = commit_step(committed)
    cdef uint64_t target = (used + step + AMDB_PAGE - 1) // AMDB_PAGE * AMDB_PAGE
    if target > c.arena_capacity:
        target = c.arena_capacity
    if target <= committed:
        return
    if shm_free_bytes(p.fd) >= 8 * (target - committed):
        commit_range(p, committed, target)


cdef void *_committer_main(void *arg) noexcept nogil:
    cdef Committer *k = <Committer *>arg
    cdef uint32_t seen = amdb_load32_seqcst(&k.wake)
    cdef uint32_t now
    cdef uint64_t switches = 0
    while True:
        amdb_futex_wait(&k.wake, seen, IDLE_WAIT_NS)
        if amdb_load32_seqcst(&k.stop):
            return NULL
        now = amdb_load32_seqcst(&k.wake)
        if now == seen:
            continue                       # the wait timed out: nobody asked
        seen = now
        pthread_mutex_lock(&k.lock)
        if k.switches == switches:
            _commit_ahead(k)
        switches = k.switches
        pthread_mutex_unlock(&k.lock)


cdef void committer_start(Committer *k, PartitionView *p) noexcept nogil:
    """Start the thread for the worker's view `p` (its address stays valid
    while the thread runs). Without a thread, the worker commits alone."""
    k.p = p
    k.wake = 0
    k.stop = 0
    k.switches = 0
    k.running = False
    if pthread_mutex_init(&k.lock, NULL) != 0:
        return
    k.running = pthread_create(&k.thread, NULL, _committer_main, k) == 0
    if not k.running:
        pthread_mutex_destroy(&k.lock)


cdef void committer_poke(Committer *k) noexcept nogil:
    """The worker, after a chunk: wake the thread when less than a step is
    left committed ahead (two loads when there is enough)."""
    if k.running and _short(k.p.ctrl):
        amdb_fetch_add32_seqcst(&k.wake, 1)
        amdb_futex_wake_all(&k.wake)


cdef void committer_hold(Committer *k) noexcept nogil:
    """Before the worker switches its view to another region: wait for a
    commit in progress, and keep the thread out until committer_release."""
    if k.running:
        pthread_mutex_lock(&k.lock)


cdef void committer_release(Committer *k) noexcept nogil:
    if k.running:
        k.switches += 1
        pthread_mutex_unlock(&k.lock)


cdef void committer_stop(Committer *k) noexcept nogil:
    if not k.running:
        return
    amdb_store32_seqcst(&k.stop, 1)
    amdb_fetch_add32_seqcst(&k.wake, 1)
    amdb_futex_wake_all(&k.wake)
    pthread_join(k.thread, NULL)
    pthread_mutex_destroy(&k.lock)
    k.running = False
