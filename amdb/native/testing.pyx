# cython: language_level=3
"""Test harness of the shared structures alone (tests/test_structures.py):
a private partition on a memfd, written and read in this process by real
threads without the GIL, with the same functions a worker and a reader use.
The database never imports this module.

  - PrivatePartition.run_concurrent: one writer thread inserts and updates
    keys (skip list + hash index + versions, as apply_record does) while
    reader threads check LevelDB's generation-stamped property: a reader
    loads each key's published generation (acquire) BEFORE it looks, and
    must then find the key in order in the skip list, and through the hash
    index, with a version at least that new. Anything else is a lost or
    torn publication.
  - ring_roundtrip: one producer thread and one consumer thread stream
    records of every size through the SPSC ring (wrap markers, waits, sleeps
    on both sides), the consumer checking order and content.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset, memcpy
from amdb.shm.layout cimport *
from amdb.shm.atomic cimport *
from amdb.shm.arena cimport Mapping, commit_pages, alloc_block, arena_init
from amdb.shm.ring cimport (RingProducer, ring_set_committed, ring_commit_ahead, ring_wait_space, ring_reserve_nowait, ring_publish, ring_wait_data,
                            ring_release, ring_at)
from amdb.native.hashing cimport amdb_xxh64
from amdb.native.skiplist cimport (SkipFinger, skiplist_insert, skiplist_finger_reset, skiplist_random_height,
                                   compare_key_to_node)
from amdb.native.hashindex cimport hashindex_find, hashindex_insert, hashindex_growth_bytes
from amdb.native.versions cimport version_append

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)

cdef enum:
    KEY_BYTES = 12                  # "k" + 8-byte big-endian index + padding: keys share prefixes
    MAX_READERS = 8


cdef inline void make_key(uint8_t *out, uint64_t k) noexcept nogil:
    cdef int i
    out[0] = 107                    # b"k"
    for i in range(8):
        out[1 + i] = <uint8_t>(k >> (56 - 8 * i))
    out[9] = 0
    out[10] = <uint8_t>(k & 0xFF)   # a tail past the 8-byte prefix: compares go beyond it
    out[11] = 0


cdef inline uint64_t next_random(uint64_t *state) noexcept nogil:
    state[0] ^= state[0] << 13
    state[0] ^= state[0] >> 7
    state[0] ^= state[0] << 17
    return state[0]


ctypedef struct Shared:
    PartitionView *p
    uint64_t *generation            # per key: newest generation published (release by the writer)
    uint64_t keys
    uint64_t writes
    uint64_t done                   # the writer finished (release)
    uint64_t seed
    uint64_t errors
    uint64_t checks


cdef void writer_body(Shared *s) noexcept nogil:
    """Insert or update random keys; after each publication, publish its
    generation (release). Value of each version: its generation (8 bytes)."""
    cdef PartitionView *p = s.p
    cdef SkipFinger finger
    cdef uint64_t state = s.seed | 1
    cdef uint64_t i, k, gen, h, node_off, version_off, need
    cdef uint8_t key[KEY_BYTES]
    cdef amdb_node *node
    cdef uint32_t height
    skiplist_finger_reset(p, &finger)
    finger.rng_state = s.seed | 1
    for i in range(s.writes):
        k = next_random(&state) % s.keys
        gen = amdb_load_relaxed(&s.generation[k]) + 1
        make_key(key, k)
        h = amdb_xxh64(key, KEY_BYTES, 0)
        height = skiplist_random_height(&finger)
        need = amdb_node_bytes(height, KEY_BYTES) + amdb_version_bytes(8) + hashindex_growth_bytes(p, 1)
        if commit_pages(p, need) != AMDB_STATUS_OK:
            amdb_fetch_add_seqcst(&s.errors, 1)
            break
        node_off = hashindex_find(p.arena, arena_hash_table(p.arena), h, key, KEY_BYTES)
        if node_off != 0:
            version_off = version_append(p, node_off, 0, <uint8_t *>&gen, 8, gen, 0)
            amdb_node_publish_latest(node_at(p.arena, node_off), version_off)
        else:
            node_off = alloc_block(p, AMDB_BLOCK_NODE, amdb_node_bytes(height, KEY_BYTES))
            node = node_at(p.arena, node_off)
            amdb_node_init_latest(node, 0)
            node.key_prefix = amdb_key_prefix(key, KEY_BYTES)
            node.hash = h
            node.key_len = KEY_BYTES
            node.height = <uint16_t>height
            node.reserved = 0
            memcpy(<uint8_t *>amdb_node_key(node), key, KEY_BYTES)
            version_off = version_append(p, node_off, 0, <uint8_t *>&gen, 8, gen, 0)
            amdb_node_init_latest(node, version_off)
            skiplist_insert(p, node_off, &finger)
            hashindex_insert(p, h, node_off, True)
        amdb_store_release(&s.generation[k], gen)
    amdb_store_release(&s.done, 1)


cdef uint64_t value_of(const char *arena, uint64_t node_off) noexcept nogil:
    cdef uint64_t off = amdb_node_latest_acquire(node_at(arena, node_off))
    cdef uint64_t gen = 0
    if off != 0:
        memcpy(&gen, amdb_version_value(version_at(arena, off)), 8)
    return gen


cdef void reader_body(Shared *s) noexcept nogil:
    """Until the writer is done (then once more): snapshot every key's
    generation, then check the skip list in order and the hash index
    against it."""
    cdef PartitionView *p = s.p
    cdef const char *arena = p.arena
    cdef uint64_t *seen = <uint64_t *>calloc(s.keys, sizeof(uint64_t))
    cdef uint64_t k, off, head, expect_k, gen, h, last = 1
    cdef uint8_t key[KEY_BYTES]
    cdef amdb_node *n
    cdef amdb_node *prev
    if seen == NULL:
        amdb_fetch_add_seqcst(&s.errors, 1)
        return
    while True:
        last = amdb_load_acquire(&s.done)
        for k in range(s.keys):
            seen[k] = amdb_load_acquire(&s.generation[k])
        # The skip list, in order: strictly ascending keys; every key whose
        # generation was published is there, at least that new.
        head = arena_skiplist_head(arena)
        off = amdb_node_next_acquire(node_at(arena, head), 0)
        prev = NULL
        expect_k = 0
        while off != 0:
            n = node_at(arena, off)
            if prev != NULL and compare_key_to_node(prev.key_prefix, amdb_node_key(prev), prev.key_len, n) >= 0:
                amdb_fetch_add_seqcst(&s.errors, 1)
            k = 0
            for h in range(8):
                k = (k << 8) | amdb_node_key(n)[1 + h]
            while expect_k < k:              # keys below it must not have been published
                if seen[expect_k] != 0:
                    amdb_fetch_add_seqcst(&s.errors, 1)
                expect_k += 1
            if value_of(arena, off) < seen[k]:
                amdb_fetch_add_seqcst(&s.errors, 1)
            expect_k = k + 1
            prev = n
            off = amdb_node_next_acquire(n, 0)
        while expect_k < s.keys:
            if seen[expect_k] != 0:
                amdb_fetch_add_seqcst(&s.errors, 1)
            expect_k += 1
        # The hash index: the same promise, key by key.
        for k in range(s.keys):
            if seen[k] == 0:
                continue
            make_key(key, k)
            off = hashindex_find(arena, arena_hash_table(arena), amdb_xxh64(key, KEY_BYTES, 0), key, KEY_BYTES)
            if off == 0 or value_of(arena, off) < seen[k]:
                amdb_fetch_add_seqcst(&s.errors, 1)
        amdb_fetch_add_seqcst(&s.checks, 1)
        if last:
            break
    free(seen)


cdef void *writer_thread(void *arg) noexcept nogil:
    writer_body(<Shared *>arg)
    return NULL


cdef void *reader_thread(void *arg) noexcept nogil:
    reader_body(<Shared *>arg)
    return NULL


cdef class PrivatePartition:
    """A partition (control block, ring, one arena region) on a memfd, private
    to this process."""
    cdef Mapping mapping
    cdef PartitionView view
    cdef object fd

    def __cinit__(self, uint64_t arena_size=64 << 20, uint64_t ring_size=1 << 16):
        import os
        from amdb.shm.control import CONTROL_BYTES, init_partition_control
        cdef uint64_t control_bytes = CONTROL_BYTES
        cdef uint64_t arena_offset = control_bytes + ring_size
        self.fd = os.memfd_create("amdb-structures", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, arena_offset + arena_size)
        self.mapping = Mapping(self.fd, 0, arena_offset + arena_size, True)
        init_partition_control(self.mapping, 0, arena_offset + arena_size, CONTROL_BYTES, ring_size,
                               arena_offset, arena_size)
        self.view.ctrl = <amdb_control *>self.mapping.base
        self.view.ring = self.mapping.base + control_bytes
        self.view.arena = self.mapping.base + arena_offset
        self.view.fd = self.fd
        self.view.region_offset = arena_offset
        if arena_init(&self.view) != AMDB_STATUS_OK:
            raise MemoryError("cannot commit the private arena")

    def close(self):
        import os
        if self.fd is not None:
            self.mapping.release()
            os.close(self.fd)
            self.fd = None

    def run_concurrent(self, uint64_t keys, uint64_t writes, int readers, uint64_t seed=1):
        """One writer thread, `readers` reader threads, all without the GIL.
        Returns (errors, reader checks done)."""
        cdef Shared s
        cdef pthread_t writer
        cdef pthread_t reader_ids[MAX_READERS]
        cdef int i, started = 0
        if self.fd is None:
            raise ValueError("closed")
        if not 1 <= readers <= MAX_READERS:
            raise ValueError(f"readers must be 1..{MAX_READERS}")
        memset(&s, 0, sizeof(s))
        s.p = &self.view
        s.keys = keys
        s.writes = writes
        s.seed = seed
        s.generation = <uint64_t *>calloc(keys, sizeof(uint64_t))
        if s.generation == NULL:
            raise MemoryError()
        try:
            with nogil:
                for i in range(readers):
                    if pthread_create(&reader_ids[i], NULL, reader_thread, &s) == 0:
                        started += 1
                if pthread_create(&writer, NULL, writer_thread, &s) == 0:
                    pthread_join(writer, NULL)
                else:
                    amdb_store_release(&s.done, 1)
                    s.errors += 1
                for i in range(started):
                    pthread_join(reader_ids[i], NULL)
            return s.errors, s.checks
        finally:
            free(s.generation)

    def _run_lying_writer(self, uint64_t keys):
        """Publish a generation for every key without writing any, then run
        one reader check: returns the errors it finds (all of them)."""
        cdef Shared s
        cdef uint64_t k
        memset(&s, 0, sizeof(s))
        s.p = &self.view
        s.keys = keys
        s.generation = <uint64_t *>calloc(keys, sizeof(uint64_t))
        if s.generation == NULL:
            raise MemoryError()
        for k in range(keys):
            s.generation[k] = 1
        s.done = 1
        with nogil:
            reader_body(&s)
        free(s.generation)
        return s.errors

    @property
    def ring_capacity(self):
        return self.view.ctrl.ring_capacity

    def ring_roundtrip(self, uint64_t records, uint64_t seed=1, uint64_t committed=0):
        """Stream `records` records of sizes 8..~ring/8 through the ring, one
        producer and one consumer thread. Returns the errors the consumer saw,
        plus records the producer placed past its committed part. With
        `committed` (> ring/8 + 8), the producer acts as if only that much
        of the ring were backed and could not commit more: it wraps early."""
        cdef RingShared r
        cdef pthread_t consumer
        if self.fd is None:
            raise ValueError("closed")
        memset(&r, 0, sizeof(r))
        r.c = self.view.ctrl
        r.producer.ctrl = self.view.ctrl
        r.producer.ring = self.view.ring
        r.producer.capacity = self.view.ctrl.ring_capacity
        r.producer.mask = self.view.ctrl.ring_capacity - 1
        r.producer.head = amdb_load_relaxed(&self.view.ctrl.ring_head)
        r.producer.cached_tail = amdb_load_acquire(&self.view.ctrl.ring_tail)
        r.producer.fd = -1
        # Private memory: all of it backed, unless told otherwise (fd -1: a
        # commit fails, so the producer can only wrap early).
        ring_set_committed(&r.producer, committed if committed else r.producer.capacity)
        r.records = records
        r.seed = seed
        with nogil:
            if pthread_create(&consumer, NULL, consumer_thread, &r) != 0:
                r.errors = 1
            else:
                producer_body(&r)
                pthread_join(consumer, NULL)
        return r.errors


ctypedef struct RingShared:
    amdb_control *c
    RingProducer producer
    uint64_t records
    uint64_t seed
    uint64_t errors


cdef inline uint64_t record_size(uint64_t i, uint64_t seed, uint64_t capacity) noexcept nogil:
    """Bytes of record i (a multiple of 8, at least 16: a header word and a checksum)."""
    cdef uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL ^ seed
    return 16 + ((x >> 17) % (capacity // 64)) * 8


cdef void producer_body(RingShared *r) noexcept nogil:
    cdef uint64_t i, size, pos, need, offset, j
    cdef uint64_t *words
    for i in range(r.records):
        size = record_size(i, r.seed, r.producer.capacity)
        ring_commit_ahead(&r.producer, size)      # settles wrap_at
        offset = r.producer.head & r.producer.mask
        need = size + (r.producer.capacity - offset if offset + size > r.producer.wrap_at else 0)
        while ring_wait_space(&r.producer, need, 10000000) != AMDB_STATUS_OK:
            pass
        pos = ring_reserve_nowait(&r.producer, size)
        if (pos & r.producer.mask) + size > r.producer.wrap_at:
            r.errors += 1                  # placed where no memory was committed
        words = <uint64_t *>ring_at(r.producer.ring, r.producer.mask, pos)
        words[0] = (i << 8) | 1            # low byte 1: a record (WRAP is 5 in the low 32 bits)
        for j in range(1, size // 8):
            words[j] = i * 31 + j
        ring_publish(&r.producer)


cdef void *consumer_thread(void *arg) noexcept nogil:
    cdef RingShared *r = <RingShared *>arg
    cdef amdb_control *c = r.c
    cdef uint64_t capacity = c.ring_capacity
    cdef uint64_t tail = amdb_load_relaxed(&c.ring_tail)
    cdef uint64_t head, i = 0, size, j
    cdef uint64_t *words
    while i < r.records:
        head = ring_wait_data(c, tail, 10000000)
        while tail != head and i < r.records:
            words = <uint64_t *>ring_at(<char *>c + c.ring_offset, capacity - 1, tail)
            if (<uint32_t *>words)[0] == AMDB_OP_WRAP:
                tail += capacity - (tail & (capacity - 1))
                continue
            size = record_size(i, r.seed, capacity)
            if words[0] != ((i << 8) | 1):
                r.errors += 1
            for j in range(1, size // 8):
                if words[j] != i * 31 + j:
                    r.errors += 1
                    break
            tail += size
            i += 1
            ring_release(c, tail)
    return NULL


def hold_gil_until_set(unsigned char[::1] flag, double timeout_s):
    """Keep the GIL (never release it) until another process sets flag[0]
    (a shared mmap), or timeout_s pass: True when it was set. Shows that
    something needs no GIL of this process (tests/test_client_writes.py:
    the owner's forwarder)."""
    cdef volatile unsigned char *p = &flag[0]
    cdef uint64_t deadline = amdb_monotonic_ns() + <uint64_t>(timeout_s * 1e9)
    while p[0] == 0:
        if amdb_monotonic_ns() > deadline:
            return False
    return True
