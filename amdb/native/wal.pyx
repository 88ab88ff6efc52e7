# cython: language_level=3
"""The worker's write-ahead log and checkpoints (formats and invariants: wal.h).

Process safety: a LogWriter belongs to one worker, which alone appends to its
log segments and writes its checkpoints (wal.h, "who writes what"). The owner
reads the durability line of the control block for statistics only, so every
store to it here is relaxed; log_broken is re-read by the worker itself only.

Failure policy: a failed append is cut back (ftruncate to the last whole
frame) and reported as AMDB_STATUS_IO_ERROR, so the log never holds garbage
between whole frames. If even the cut fails, or an fdatasync fails (the
kernel may have dropped the dirty pages: retrying would lie), the log is
marked broken and every later write is refused until the database is
reopened; reads go on.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.errno cimport errno, EINTR
from libc.stdio cimport snprintf
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.ring cimport progress_publish
from amdb.native.undo cimport UndoLog, UndoEntry
from amdb.shm.arena cimport commit_pages
from amdb.native.hashing cimport amdb_xxh64, amdb_xxh64_state, amdb_xxh64_reset, amdb_xxh64_update, amdb_xxh64_digest

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, ...)
    enum:
        O_WRONLY
        O_RDONLY
        O_CREAT
        O_EXCL
        O_TRUNC
        O_APPEND
        O_CLOEXEC
        AT_FDCWD

cdef extern from "<stdio.h>" nogil:
    int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)

cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void *buf, size_t count)
    ssize_t pread(int fd, void *buf, size_t count, long offset)
    ssize_t read(int fd, void *buf, size_t count)
    int close(int fd)
    int fsync(int fd)
    int fdatasync(int fd)
    int ftruncate(int fd, long length)
    int unlinkat(int dirfd, const char *path, int flags)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef enum:
    MAX_PIECES = 4
    NAME_BYTES = 64


cdef inline void segment_name(char *out, uint64_t worker, uint64_t segment_no) noexcept nogil:
    snprintf(out, NAME_BYTES, "wal-%04llu-%08llu.log", <unsigned long long>worker,
             <unsigned long long>segment_no)


cdef inline void checkpoint_name(char *out, uint64_t worker, uint64_t seq, const char *suffix) noexcept nogil:
    snprintf(out, NAME_BYTES, "ckpt-%04llu-%016llu.%s", <unsigned long long>worker,
             <unsigned long long>seq, suffix)


cdef int write_all(int fd, const void *data, uint64_t length) noexcept nogil:
    cdef const uint8_t *p = <const uint8_t *>data
    cdef ssize_t n
    while length:
        n = write(fd, p, length if length < (1ULL << 30) else (1ULL << 30))
        if n < 0:
            if errno == EINTR:
                continue
            return -1
        p += n
        length -= <uint64_t>n
    return 0


cdef int writev_all(int fd, iovec *iov, int count) noexcept nogil:
    """writev until every byte is out (a short write continues where it stopped)."""
    cdef ssize_t n
    cdef int first = 0
    while first < count:
        n = writev(fd, iov + first, count - first)
        if n < 0:
            if errno == EINTR:
                continue
            return -1
        while first < count and <size_t>n >= iov[first].iov_len:
            n -= iov[first].iov_len
            first += 1
        if first < count:
            iov[first].iov_base = <uint8_t *>iov[first].iov_base + n
            iov[first].iov_len -= n
    return 0


cdef inline void mark_broken(LogWriter *log) noexcept nogil:
    amdb_store_relaxed(&log.ctrl.log_broken, 1)


cdef inline int count_error(LogWriter *log) noexcept nogil:
    amdb_store_relaxed(&log.ctrl.log_errors, log.ctrl.log_errors + 1)
    return AMDB_STATUS_IO_ERROR


cdef int sync_log(LogWriter *log) noexcept nogil:
    if not log.dirty:
        return AMDB_STATUS_OK
    if fdatasync(log.fd) != 0:
        mark_broken(log)           # the kernel may have dropped the pages: never retry
        return count_error(log)
    log.dirty = False
    log.last_sync_ns = amdb_monotonic_ns()
    amdb_store_relaxed(&log.ctrl.log_syncs, log.ctrl.log_syncs + 1)
    return AMDB_STATUS_OK


cdef int log_start_segment(LogWriter *log, uint64_t segment_no) noexcept nogil:
    """Continue the log in a new, empty segment file (the old one is synced
    first unless sync="none"). The new name is made durable (directory fsync)
    before anything is acknowledged from it."""
    cdef char name[NAME_BYTES]
    cdef int fd
    if log.fd >= 0 and log.sync_mode != SYNC_NONE and sync_log(log) != AMDB_STATUS_OK:
        return AMDB_STATUS_IO_ERROR
    segment_name(name, log.ctrl.worker_index, segment_no)
    fd = openat(log.dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0o600)
    if fd < 0:
        mark_broken(log)
        return count_error(log)
    if log.sync_mode != SYNC_NONE and fsync(log.dir_fd) != 0:
        close(fd)
        mark_broken(log)
        return count_error(log)
    if log.fd >= 0:
        close(log.fd)
    log.fd = fd
    log.segment_no = segment_no
    log.offset = 0
    log.dirty = False
    amdb_store_relaxed(&log.ctrl.log_segment, segment_no)
    return AMDB_STATUS_OK


cdef int log_append(LogWriter *log, uint32_t kind, uint64_t seq, LogPiece *pieces, int npieces) noexcept nogil:
    """Append one whole frame (header + the pieces as its payload), or nothing.
    REQUIRES npieces <= MAX_PIECES."""
    cdef amdb_log_frame frame
    cdef amdb_xxh64_state state
    cdef iovec iov[MAX_PIECES + 1]
    cdef int i, count = 1
    cdef uint64_t payload_len = 0
    if amdb_load_relaxed(&log.ctrl.log_broken) or log.fd < 0:
        return AMDB_STATUS_IO_ERROR
    amdb_xxh64_reset(&state, seq)
    for i in range(npieces):
        if pieces[i].length == 0:
            continue
        amdb_xxh64_update(&state, pieces[i].data, pieces[i].length)
        payload_len += pieces[i].length
        iov[count].iov_base = <void *>pieces[i].data
        iov[count].iov_len = pieces[i].length
        count += 1
    frame.magic = AMDB_LOG_MAGIC
    frame.kind = kind
    frame.seq = seq
    frame.payload_len = payload_len
    frame.payload_check = amdb_xxh64_digest(&state)
    frame.header_check = amdb_xxh64(&frame, 32, 0)
    iov[0].iov_base = &frame
    iov[0].iov_len = sizeof(amdb_log_frame)
    if writev_all(log.fd, iov, count) != 0:
        # Cut the torn frame off, so later frames follow whole ones (wal.h, 1).
        if ftruncate(log.fd, <long>log.offset) != 0:
            mark_broken(log)
        return count_error(log)
    log.offset += sizeof(amdb_log_frame) + payload_len
    log.dirty = True
    amdb_store_relaxed(&log.ctrl.log_bytes, log.ctrl.log_bytes + sizeof(amdb_log_frame) + payload_len)
    return AMDB_STATUS_OK


cdef int log_after_commit(LogWriter *log) noexcept nogil:
    """After a COMMIT frame: sync as the mode says, then roll over if the
    segment is full (a batch boundary, so segments end between batches)."""
    cdef int status = AMDB_STATUS_OK
    if log.sync_mode == SYNC_BATCH:
        status = sync_log(log)
    elif log.sync_mode == SYNC_INTERVAL and amdb_monotonic_ns() - log.last_sync_ns >= log.interval_ns:
        status = sync_log(log)
    if status == AMDB_STATUS_OK and log.offset >= log.segment_bytes:
        status = log_start_segment(log, log.segment_no + 1)
    return status


cdef void log_idle(LogWriter *log) noexcept nogil:
    """Called when the worker has nothing to do: sync="interval" syncs here too."""
    if log.fd >= 0 and log.sync_mode == SYNC_INTERVAL and log.dirty \
            and amdb_monotonic_ns() - log.last_sync_ns >= log.interval_ns:
        sync_log(log)


cdef void log_close(LogWriter *log) noexcept nogil:
    if log.fd >= 0:
        if log.sync_mode != SYNC_NONE:
            sync_log(log)
        close(log.fd)
        log.fd = -1


# ---- background checkpoints -----------------------------------------------------------
#
# A checkpoint is taken off the write path: the worker, between batches,
# syncs its log, starts a new log segment (batches after `seq` go there),
# notes arena_used and the counters in the header, and starts a thread that
# copies arena bytes [0, arena_used) to the file while the worker goes on
# applying. What the worker changes meanwhile:
#   - above arena_used: new blocks, not in the copy at all;
#   - below it, in place: links, latest versions, hash slots, the table root
#     and count, block kinds. The worker notes each such word's old value
#     first (undo.pxd); the file carries the notes, and loading writes them
#     back (wal.h, AMDB_CHECKPOINT_FORMAT_UNDO): the arena as of `seq`.
# The handshake: the thread writes the copy and the block checks, sets
# copy_done and wakes the worker; the worker, between records, stops noting
# and sets handed_over (seq_cst: every note happens before); the thread
# writes the notes, fsyncs, renames, and publishes checkpoint_done in the
# control block (release, after checkpoint_status / checkpoint_seq). A
# compaction, a new checkpoint and the worker's exit first wait for the
# running one to end (checkpoint_hand_over with wait, checkpoint_end): the
# region it copies must stay as it is. A worker that dies leaves a .tmp
# file, removed at the next open; its log holds everything.

cdef extern from "<pthread.h>" nogil:
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)

cdef extern from "<unistd.h>" nogil:
    int dup(int fd)
    int getppid()

cdef enum:
    COPY_PIECE = 256 << 10        # bytes copied between hold checks (tests pause halfway)
    WAIT_SLICE_NS = 100000000     # futex waits re-check their word every 100 ms


cdef inline void wait_flag(uint32_t *word) noexcept nogil:
    while amdb_load32_seqcst(word) == 0:
        amdb_futex_wait(word, 0, WAIT_SLICE_NS)


cdef inline void raise_flag(uint32_t *word) noexcept nogil:
    amdb_store32_seqcst(word, 1)
    amdb_futex_wake_all(word)


cdef void hold_if_asked(BackgroundCheckpoint *b, uint32_t stage) noexcept nogil:
    """Tests: pause at `stage` while the owner holds checkpoint_hold at it
    (layout.h, line 10), saying so in checkpoint_held; an owner that is gone
    holds nothing."""
    cdef amdb_control *c = b.p.ctrl
    if amdb_load32_seqcst(&c.checkpoint_hold) != stage:
        return
    amdb_store32_seqcst(&c.checkpoint_held, stage)
    progress_publish(c)
    while amdb_load32_seqcst(&c.checkpoint_hold) == stage and getppid() == b.owner_pid:
        amdb_futex_wait(&c.checkpoint_hold, stage, WAIT_SLICE_NS)
    amdb_store32_seqcst(&c.checkpoint_held, 0)


cdef int copy_arena(BackgroundCheckpoint *b, int fd, uint64_t *checks) noexcept nogil:
    """Write arena bytes [0, used) block by block through a private buffer,
    each block's check computed on the bytes written (the arena may change
    under the copy: the undo notes fix that, not the checks)."""
    cdef amdb_control *c = b.p.ctrl
    cdef uint64_t used = b.header.arena_used
    cdef uint64_t blocks = (used + AMDB_CHECKPOINT_BLOCK - 1) // AMDB_CHECKPOINT_BLOCK
    cdef uint64_t i, start, length, done, piece
    cdef bint held = False
    cdef char *buffer = <char *>malloc(AMDB_CHECKPOINT_BLOCK)
    if buffer == NULL:
        return -1
    for i in range(blocks):
        start = i * AMDB_CHECKPOINT_BLOCK
        length = used - start if used - start < AMDB_CHECKPOINT_BLOCK else AMDB_CHECKPOINT_BLOCK
        done = 0
        while done < length:
            piece = length - done if length - done < COPY_PIECE else COPY_PIECE
            memcpy(buffer + done, b.p.arena + start + done, piece)
            done += piece
            if not held and start + done >= used // 2:
                held = True
                hold_if_asked(b, AMDB_CKPT_STAGE_COPYING)
        checks[i] = amdb_xxh64(buffer, length, i)
        if write_all(fd, buffer, length) != 0:
            free(buffer)
            return -1
    free(buffer)
    return 0


cdef int write_undo(int fd, UndoLog *u) noexcept nogil:
    cdef uint64_t head[2]
    cdef uint64_t check = amdb_xxh64(u.entries, u.count * sizeof(UndoEntry), u.count)
    head[0] = AMDB_CHECKPOINT_UNDO_MAGIC
    head[1] = u.count
    if write_all(fd, head, sizeof(head)) != 0 or write_all(fd, u.entries, u.count * sizeof(UndoEntry)) != 0 \
            or write_all(fd, &check, 8) != 0:
        return -1
    return 0


cdef void *copier_main(void *arg) noexcept nogil:
    """The checkpoint thread (see above)."""
    cdef BackgroundCheckpoint *b = <BackgroundCheckpoint *>arg
    cdef amdb_control *c = b.p.ctrl
    cdef uint64_t used = b.header.arena_used
    cdef uint64_t blocks = (used + AMDB_CHECKPOINT_BLOCK - 1) // AMDB_CHECKPOINT_BLOCK
    cdef char tmp[NAME_BYTES]
    cdef char final[NAME_BYTES]
    cdef int status = AMDB_STATUS_OK
    cdef int fd
    cdef bint written = False
    cdef uint64_t *checks = <uint64_t *>malloc((blocks if blocks else 1) * sizeof(uint64_t))
    checkpoint_name(tmp, c.worker_index, b.seq, "tmp")
    checkpoint_name(final, c.worker_index, b.seq, "ckpt")
    fd = openat(b.dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) if checks != NULL else -1
    if fd >= 0:
        written = (write_all(fd, &b.header, sizeof(b.header)) == 0 and copy_arena(b, fd, checks) == 0
                   and write_all(fd, checks, blocks * sizeof(uint64_t)) == 0)
    raise_flag(&b.copy_done)
    # Wake the worker (a spurious wake for its ring wait): it hands the
    # notes over between records, or when idle.
    amdb_fetch_add32_seqcst(&c.ring_data_event, 1)
    amdb_futex_wake_all(&c.ring_data_event)
    wait_flag(&b.handed_over)
    if checks == NULL or b.undo.failed:
        status = AMDB_STATUS_NO_MEMORY
    elif fd < 0 or not written or write_undo(fd, &b.undo) != 0 or fsync(fd) != 0:
        status = AMDB_STATUS_IO_ERROR
    elif b.log_fd >= 0 and fdatasync(b.log_fd) != 0:
        # The kernel may have dropped the log's pages: never retry (as sync_log).
        amdb_store_relaxed(&c.log_broken, 1)
        status = AMDB_STATUS_IO_ERROR
    if fd >= 0:
        close(fd)
    hold_if_asked(b, AMDB_CKPT_STAGE_NOTED)
    if status == AMDB_STATUS_OK and (renameat(b.dir_fd, tmp, b.dir_fd, final) != 0 or fsync(b.dir_fd) != 0):
        status = AMDB_STATUS_IO_ERROR
    if status == AMDB_STATUS_OK:
        hold_if_asked(b, AMDB_CKPT_STAGE_RENAMED)
    if status != AMDB_STATUS_OK:
        unlinkat(b.dir_fd, tmp, 0)
        if status == AMDB_STATUS_IO_ERROR:
            amdb_fetch_add_seqcst(&c.log_errors, 1)
    else:
        amdb_store_relaxed(&c.checkpoint_seq, b.seq)
    free(checks)
    amdb_store_relaxed(&c.checkpoint_undo_words, b.undo.count)
    amdb_store_relaxed(&c.checkpoint_status, <uint64_t>status)
    b.status = status
    amdb_store_release(&c.checkpoint_done, b.seq)
    progress_publish(c)
    raise_flag(&b.finished)
    return NULL


cdef int checkpoint_begin(PartitionView *p, LogWriter *log, uint64_t seq,
                          BackgroundCheckpoint **out) noexcept nogil:
    """Start a checkpoint of the arena as of batch `seq` (see above);
    *out: the running checkpoint, for checkpoint_hand_over / _end.
    REQUIRES: between batches, no checkpoint running (p.undo == NULL)."""
    cdef amdb_control *c = p.ctrl
    cdef BackgroundCheckpoint *b
    cdef int status
    out[0] = NULL
    if amdb_load_relaxed(&c.log_broken):
        return AMDB_STATUS_IO_ERROR
    b = <BackgroundCheckpoint *>calloc(1, sizeof(BackgroundCheckpoint))
    if b == NULL:
        return AMDB_STATUS_NO_MEMORY
    b.dir_fd = dup(log.dir_fd)
    # The log up to seq must be durable before the checkpoint is: a
    # checkpoint is never more durable than the log frames of the batches
    # before it (wal.h, 3). The thread syncs the segment that ends at seq
    # (its own descriptor of it) before it renames the file, so that the
    # worker never waits for that fdatasync.
    b.log_fd = dup(log.fd) if log.dirty else -1
    if b.dir_fd < 0 or (log.dirty and b.log_fd < 0):
        if b.dir_fd >= 0:
            close(b.dir_fd)
        free(b)
        return count_error(log)
    b.seq = seq
    b.owner_pid = getppid()
    b.header.magic = AMDB_CHECKPOINT_MAGIC
    b.header.format_version = AMDB_CHECKPOINT_FORMAT_UNDO
    b.header.layout_version = AMDB_LAYOUT_VERSION
    b.header.worker_index = c.worker_index
    b.header.seq = seq
    b.header.log_segment = log.segment_no + 1
    b.header.arena_used = c.arena_used
    b.header.skiplist_head = amdb_arena_header_of(p.arena).skiplist_head
    b.header.hash_table = amdb_arena_header_of(p.arena).hash_table
    b.header.live_keys = c.live_keys
    b.header.node_count = c.node_count
    b.header.version_count = c.version_count
    b.header.ledger_chunks = c.ledger_chunks
    memcpy(b.header.ledger_head, c.ledger_head, 32)
    b.header.header_check = amdb_xxh64(&b.header, sizeof(b.header) - 8, 0)
    # Batches after seq go to the next segment: the one the file names.
    status = log_start_segment(log, log.segment_no + 1)
    if status != AMDB_STATUS_OK:
        close(b.dir_fd)
        if b.log_fd >= 0:
            close(b.log_fd)
        free(b)
        return status
    amdb_store_relaxed(&c.log_bytes, 0)
    amdb_store_relaxed(&c.checkpoint_started, seq)
    b.undo.limit = b.header.arena_used
    b.p = p[0]
    b.p.undo = NULL
    b.p.retired = NULL
    p.undo = &b.undo                    # from now on, every in-place store is noted
    if pthread_create(&b.thread, NULL, copier_main, b) != 0:
        # No thread: copy here, nothing changes meanwhile (same code, no notes).
        p.undo = NULL
        b.copy_done = 1
        b.handed_over = 1
        copier_main(b)
        b.thread = 0
    out[0] = b
    return AMDB_STATUS_OK


cdef bint checkpoint_hand_over(BackgroundCheckpoint *b, PartitionView *p, bint wait) noexcept nogil:
    """The worker's side of the handshake: once the copy is out (waiting for
    it with `wait`), stop noting and hand the notes over. True once done."""
    if amdb_load32_seqcst(&b.handed_over):
        return True
    if not wait and amdb_load32_seqcst(&b.copy_done) == 0:
        return False
    wait_flag(&b.copy_done)
    p.undo = NULL
    raise_flag(&b.handed_over)
    return True


cdef int checkpoint_end(BackgroundCheckpoint *b) noexcept nogil:
    """Wait for the thread to finish (REQUIRES handed_over), free the
    checkpoint; returns its status."""
    cdef int status
    wait_flag(&b.finished)
    if b.thread != 0:
        pthread_join(b.thread, NULL)
    status = b.status
    close(b.dir_fd)
    if b.log_fd >= 0:
        close(b.log_fd)
    free(b.undo.entries)
    free(b)
    return status


cdef int read_exact(int fd, void *out, uint64_t length, uint64_t offset) noexcept nogil:
    cdef uint8_t *p = <uint8_t *>out
    cdef ssize_t n
    while length:
        n = pread(fd, p, length if length < (1ULL << 30) else (1ULL << 30), <long>offset)
        if n < 0:
            if errno == EINTR:
                continue
            return -1
        if n == 0:
            return -1               # short file
        p += n
        length -= <uint64_t>n
        offset += <uint64_t>n
    return 0


cdef int apply_undo(int fd, char *arena, uint64_t used, uint64_t at) noexcept nogil:
    """Write a background checkpoint's undo notes (wal.h) back into the
    loaded arena, last to first: each word ends as it was at the seq."""
    cdef uint64_t head[2]
    cdef uint64_t stored, i
    cdef UndoEntry *entries
    if read_exact(fd, head, sizeof(head), at) != 0 or head[0] != AMDB_CHECKPOINT_UNDO_MAGIC \
            or head[1] > (1ULL << 40) // sizeof(UndoEntry):
        return AMDB_STATUS_CORRUPT
    entries = <UndoEntry *>malloc(head[1] * sizeof(UndoEntry) if head[1] else 1)
    if entries == NULL:
        return AMDB_STATUS_NO_MEMORY
    if (read_exact(fd, entries, head[1] * sizeof(UndoEntry), at + sizeof(head)) != 0
            or read_exact(fd, &stored, 8, at + sizeof(head) + head[1] * sizeof(UndoEntry)) != 0
            or stored != amdb_xxh64(entries, head[1] * sizeof(UndoEntry), head[1])):
        free(entries)
        return AMDB_STATUS_CORRUPT
    for i in range(head[1]):
        if entries[i].offset >= used or entries[i].offset % 8:
            free(entries)
            return AMDB_STATUS_CORRUPT
    i = head[1]
    while i > 0:
        i -= 1
        (<uint64_t *>(arena + entries[i].offset))[0] = entries[i].word
    free(entries)
    return AMDB_STATUS_OK


cdef int checkpoint_load(PartitionView *p, int dir_fd, const char *name) noexcept nogil:
    """Fill an empty arena from a checkpoint file and publish its roots.
    Checks everything it reads: AMDB_STATUS_CORRUPT for a damaged file,
    AMDB_STATUS_ARENA_FULL when the arena reservation is too small for it."""
    cdef amdb_control *c = p.ctrl
    cdef amdb_checkpoint_header header
    cdef uint64_t blocks, i, start, length, stored
    cdef int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC)
    cdef int status = AMDB_STATUS_OK
    cdef amdb_arena_header *arena_header
    if fd < 0:
        return AMDB_STATUS_IO_ERROR
    if read_exact(fd, &header, sizeof(header), 0) != 0:
        close(fd)
        return AMDB_STATUS_CORRUPT
    if (header.magic != AMDB_CHECKPOINT_MAGIC
            or not (header.format_version == AMDB_FORMAT_VERSION
                    or header.format_version == AMDB_CHECKPOINT_FORMAT_UNDO)
            or not (1 <= header.layout_version <= AMDB_LAYOUT_VERSION)
            or header.header_check != amdb_xxh64(&header, sizeof(header) - 8, 0)
            or header.arena_used < AMDB_ARENA_FIRST_BLOCK or header.arena_used % 8
            or header.skiplist_head >= header.arena_used or header.hash_table >= header.arena_used):
        close(fd)
        return AMDB_STATUS_CORRUPT
    if header.arena_used > c.arena_capacity:
        close(fd)
        return AMDB_STATUS_ARENA_FULL
    amdb_store_relaxed(&c.arena_used, 0)
    status = commit_pages(p, header.arena_used)
    if status != AMDB_STATUS_OK:
        close(fd)
        return status
    blocks = (header.arena_used + AMDB_CHECKPOINT_BLOCK - 1) // AMDB_CHECKPOINT_BLOCK
    for i in range(blocks):
        start = i * AMDB_CHECKPOINT_BLOCK
        length = header.arena_used - start
        if length > AMDB_CHECKPOINT_BLOCK:
            length = AMDB_CHECKPOINT_BLOCK
        if (read_exact(fd, p.arena + start, length, sizeof(header) + start) != 0
                or read_exact(fd, &stored, 8, sizeof(header) + header.arena_used + i * 8) != 0
                or stored != amdb_xxh64(p.arena + start, length, i)):
            close(fd)
            memset(p.arena, 0, start + length)     # leave no half-loaded arena behind
            return AMDB_STATUS_CORRUPT
    if header.format_version == AMDB_CHECKPOINT_FORMAT_UNDO:
        status = apply_undo(fd, p.arena, header.arena_used, sizeof(header) + header.arena_used + blocks * 8)
        if status != AMDB_STATUS_OK:
            close(fd)
            memset(p.arena, 0, header.arena_used)
            return status
    close(fd)
    arena_header = amdb_arena_header_of(p.arena)
    if header.layout_version == 1:
        # Layout 1 kept the roots in the control block: the arena header held
        # only the magic. Give the loaded generation its header.
        arena_header.generation = 1
        arena_header.base_block = 0
        arena_header.compact_seq = 0
        arena_header.keep_versions = 0
        arena_header.reserved = 0
        amdb_store_release(&arena_header.hash_table, header.hash_table)
        amdb_store_release(&arena_header.skiplist_head, header.skiplist_head)
    if (arena_header.magic != AMDB_PARTITION_MAGIC or arena_header.skiplist_head != header.skiplist_head
            or arena_header.hash_table != header.hash_table or arena_header.base_block >= header.arena_used):
        memset(p.arena, 0, header.arena_used)
        return AMDB_STATUS_CORRUPT
    amdb_store_relaxed(&c.arena_used, header.arena_used)
    amdb_store_relaxed(&c.live_keys, header.live_keys)
    amdb_store_relaxed(&c.node_count, header.node_count)
    amdb_store_relaxed(&c.version_count, header.version_count)
    memcpy(c.ledger_head, header.ledger_head, 32)
    amdb_store_relaxed(&c.ledger_chunks, header.ledger_chunks)
    amdb_store_relaxed(&c.checkpoint_seq, header.seq)
    # The roots came with the arena bytes (its header, layout.h invariant 8);
    # nobody reads this arena before the worker says READY (a release store).
    return AMDB_STATUS_OK
