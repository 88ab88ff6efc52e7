/* layout.h — the shared-memory layout of an AmDb database.
 *
 * Process safety (who writes what):
 *   - The owner process creates every segment and writes the read-only header
 *     of each control block before any worker starts.
 *   - Worker i is the ONLY writer of partition i's arena (nodes, versions,
 *     hash tables) and of the consumer / progress / arena lines of its control
 *     block. The owner maps the arena read-only.
 *   - The owner is the only writer of the ring bytes, of the producer line and
 *     of the database control block (visible_seq, slot table).
 *   - Arena regions (compaction, line 8): a partition segment reserves
 *     AMDB_ARENA_REGIONS regions of arena_capacity bytes each. One region, the
 *     CURRENT one (control.arena_region), holds the live generation; the worker
 *     writes the other only while compaction builds the next generation in it
 *     (compact_state BUILDING). The owner reads the region its own base pointer
 *     names and switches that pointer after the worker acknowledged the new
 *     generation; it punches the memory of the retired region out (fallocate)
 *     once no reader can be inside it any more — the only change to arena memory
 *     that is not the worker's, and one to memory nobody can reach.
 *
 * Invariants:
 *   1. Everything in an arena is addressed by offsets from the arena base;
 *      offset 0 is null. Every process maps the arena at its own address.
 *   2. A generation is append-only: a block, once published, is never freed
 *      or moved, and its bytes never change, except the link fields named
 *      "published by release store" below. Compaction does not change a
 *      generation; it writes the next one into the other region, and the
 *      retired one's memory goes only when no reader can be in it.
 *   3. A writer fills every byte of a block, then publishes its offset with a
 *      release store. A reader loads any offset it will follow with an acquire
 *      load. Fields a reader reads after such an acquire need no ordering of
 *      their own.
 *   4. A crash of the writer at any instruction leaves structures readers can
 *      use: unlinked garbage at worst, never a dangling offset.
 *   5. Every block starts with amdb_block {kind, words}: the arena can be
 *      walked from AMDB_ARENA_FIRST_BLOCK to arena_used (rollback, checks).
 *   6. Memory past arena_committed is never touched (it may not exist in
 *      /dev/shm: touching it would raise SIGBUS).
 *   7. A version with seq > visible_seq is invisible to every reader: a batch
 *      is seen entirely or not at all. Every version of a batch carries the
 *      batch's seq, so a read as of any seq also sees whole batches only.
 *   8. A region is self-describing: its amdb_arena_header (bytes 0..63) holds
 *      the roots of the generation in it. A reader takes a region's base once
 *      and follows only roots read from that same base, so it never combines
 *      one generation's base with another's offsets.
 *   9. A version whose prev is 0 is its key's oldest version: version 1 (with
 *      prev_hash 0), or, in a generation written by compaction, the oldest
 *      kept one (version_no > 1, its prev_hash kept). Only a version below the
 *      generation's base_block, written right after its key's node (where
 *      compaction puts it), can start a chain above version 1.
 *
 * Implementation details follow.
 */
#ifndef AMDB_LAYOUT_H
#define AMDB_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define AMDB_LINE __attribute__((aligned(64)))

#define AMDB_PARTITION_MAGIC 0x5452415042444d41ULL /* "AMDBPART" little-endian */
#define AMDB_DATABASE_MAGIC  0x4244424442444d41ULL /* "AMDBDBDB" */
#define AMDB_LAYOUT_VERSION  3     /* 2: roots in the arena header, LEDGER_BASE blocks (compaction);
                                    * 3: version tails without prev_hash or node (LINKED, AFTER_NODE),
                                    * outgrown tables given back (AMDB_TABLE_RELEASED). Each reads
                                    * the arenas of the layouts before it as they are */

#define AMDB_SLOT_COUNT 16384        /* hash slots: slot = xxh64(key) % 16384 */
#define AMDB_MAX_WORKERS 256         /* workers of one database (per-worker arrays are sized to it) */
#define AMDB_CONTROL_BYTES 4096      /* control block: one page */
#define AMDB_PAGE 4096
#define AMDB_ARENA_FIRST_BLOCK 64    /* offset 0 is null; bytes 0..63 hold amdb_arena_header */
#define AMDB_ARENA_REGIONS 2         /* current generation + the one compaction builds */
/* Arena memory is committed (posix_fallocate) an eighth of what is committed
 * at a time, within these bounds: fallocate stays rare (about 40 calls from
 * 1 MiB to 1 GiB) and /dev/shm holds at most about 1/8 more than the arena
 * uses. */
#define AMDB_COMMIT_MIN_STEP (1ULL << 20)
#define AMDB_COMMIT_STEP (64ULL << 20)
/* A ring's memory is committed (posix_fallocate) by its producer as it first
 * writes there, this much at a time: a database opens with only the first
 * step of each ring in /dev/shm (a container's 64 MiB holds it). */
#define AMDB_RING_COMMIT_STEP (1ULL << 20)
#define AMDB_MAX_ARENA_BYTES (1ULL << 46) /* node offset / 8 must fit a hash slot's 43 bits */
#define AMDB_MAX_HEIGHT 16           /* skip list: p = 1/4, fine for 4^16 keys */

/* Status numbers; amdb/errors.py maps them to exceptions (raise_for_status). */
enum {
    AMDB_STATUS_OK = 0,
    AMDB_STATUS_ARENA_FULL = 1,   /* arena_capacity reached */
    AMDB_STATUS_SHM_FULL = 2,     /* posix_fallocate failed: /dev/shm full */
    AMDB_STATUS_CORRUPT = 3,      /* a structure failed a consistency check */
    AMDB_STATUS_TIMEOUT = 4,      /* a wait timed out (caller checks liveness) */
    AMDB_STATUS_NO_MEMORY = 5,    /* private malloc failed */
    AMDB_STATUS_IO_ERROR = 6,     /* the write-ahead log or a checkpoint could not be written */
    AMDB_STATUS_POISON = 7,       /* a chunk that crashed workers before: refused (poison batch) */
    /* Read-modify-write records (see "Read-modify-write" below): */
    AMDB_STATUS_CONDITION_FAILED = 8, /* compare_and_set / put_if_absent found another value */
    AMDB_STATUS_NOT_COUNTER = 9,  /* increment: the key's value is not 8 bytes */
    AMDB_STATUS_OVERFLOW = 10,    /* increment: the sum leaves the signed 64-bit range */
};

/* Compaction states (control.compact_state): what a worker that attaches to
 * the segment (a respawned one) must finish first (compact.pyx, compact_recover). */
enum {
    AMDB_COMPACT_IDLE = 0,        /* line 4 and arena_region describe one generation */
    AMDB_COMPACT_BUILDING = 1,    /* the other region is being written: garbage if we die */
    AMDB_COMPACT_SWITCHING = 2,   /* the other region is whole; line 4 is being rewritten from
                                   * the switch record (line 8), which a new worker redoes */
};

/* Worker states (control.worker_state). */
enum {
    AMDB_WORKER_STARTING = 0,
    AMDB_WORKER_READY = 1,        /* arena initialised, roots published */
    AMDB_WORKER_STOPPED = 2,      /* left its apply loop cleanly */
    AMDB_WORKER_FAILED = 3,       /* could not start: start_status says why (then it exits) */
};

/* Read-modify-write (increment, compare_and_set, put_if_absent): a ring
 * record the worker resolves against the key's latest version when it
 * applies it, into a put or into nothing. The worker is the key's only
 * writer and applies its ring in order, so the read and the write are one
 * step: no lock, and linearizable with every other write of the key.
 *   - Record values: INCREMENT: delta, initial (int64 little-endian each);
 *     the version written holds the sum big-endian (amdb_counter_*).
 *     PUT_IF_ABSENT: the value. COMPARE_AND_SET: an 8-byte little-endian
 *     header = expected length + 1 (0: expected absent), the expected
 *     bytes, then the new value.
 *   - record.reserved is the ticket. 0: the record is part of a batch, and a
 *     failed condition (or a value that is no counter, an overflow) refuses
 *     the chunk with that status, so the producer rolls the whole batch back.
 *     Otherwise the record is a whole batch by itself: a failure writes no
 *     version, and the outcome goes to rmw_results[ticket % AMDB_RMW_RESULTS]
 *     (value, status, then the ticket; the release store of applied_chunk
 *     orders them before the producer reads them).
 *   - The producer hands a ticket out only when the result slot it names was
 *     read back (no two records in flight share a slot); tickets are its own
 *     numbers, 1, 2, 3... per ring, wrapping past 0.
 *   - Replaying a log resolves each record again against the same state, so
 *     it writes the same versions: the log keeps the records as sent. */
#define AMDB_RMW_RESULTS 128
typedef struct amdb_rmw_result {
    int64_t value;                  /* increment: the new value; the others: 1 done, 0 not */
    uint32_t status;                /* AMDB_STATUS_OK, NOT_COUNTER or OVERFLOW */
    uint32_t ticket;                /* written last */
} amdb_rmw_result;

/* Per-partition control block, at offset 0 of the partition segment.
 * Each line below is a separate cache line so that the owner's and the
 * worker's hot fields never share one. */
typedef struct amdb_control {
    /* Line 0 — written by the owner before the worker starts; read-only after. */
    uint64_t magic;
    uint64_t layout_version;
    uint64_t segment_size;
    uint64_t ring_offset;         /* from the segment start */
    uint64_t ring_capacity;       /* bytes, a power of two */
    uint64_t arena_offset;        /* from the segment start, page aligned */
    uint64_t arena_capacity;      /* bytes reserved (sparse until committed) */
    uint64_t worker_index;

    /* Line 1 — ring producer: written by the owner, read by the worker. */
    AMDB_LINE uint64_t ring_head;  /* bytes ever published; release store */
    uint32_t ring_data_event;      /* futex word: bumped after each publish */
    uint32_t consumer_sleeping;    /* worker: 1 while (about to be) asleep */
    uint64_t shutdown_requested;   /* owner: 1 = leave the loop once the ring is empty */
    uint64_t compact_horizon;      /* owner, before it publishes a COMPACT record: the oldest seq a
                                    * snapshot or iterator of its still reads as of; compaction keeps
                                    * every version such a read needs (compact.pyx, _build) */

    /* Line 2 — ring consumer: written by the worker, read by the owner. */
    AMDB_LINE uint64_t ring_tail;  /* bytes ever released; release store */
    uint32_t ring_space_event;     /* futex word: bumped after each release */
    uint32_t producer_sleeping;    /* owner: 1 while waiting for space */
    /* The record the worker has taken off the ring and not finished (its
     * header, copied): handling_pos is 1 + its ring position, 0 between
     * records. The op, seq and chunk_no are written first, handling_pos last
     * (release); it goes back to 0 (release) once the record is released and
     * acknowledged. Read by the owner only after the worker died: a worker
     * that died with handling_pos == 0 took nothing it did not finish, so its
     * successor resumes from ring_tail and nothing is blamed on the data. */
    uint64_t handling_pos;
    uint32_t handling_op;
    uint32_t handling_reserved;
    uint64_t handling_seq;
    uint64_t handling_chunk_no;
    uint64_t handling_end;         /* CHUNK: ring position past its last record */

    /* Line 3 — progress: written by the worker, read by the owner. */
    AMDB_LINE uint64_t applied_chunk; /* chunk_no of the last chunk applied; release store */
    uint64_t applied_seq;          /* batch seq of that chunk (statistics) */
    uint64_t failed_chunk;         /* chunk_no of the last chunk refused, 0 = none; release store */
    uint64_t failed_status;        /* AMDB_STATUS_* of that refusal */
    uint64_t aborts_done;          /* abort_no of the last ABORT record handled; release store */
    uint32_t progress_event;       /* futex word: bumped after any of the above */
    uint32_t owner_waiting;        /* owner: 1 while waiting for progress */
    uint64_t worker_state;         /* AMDB_WORKER_*; release store */
    uint64_t worker_pid;
    uint64_t start_status;         /* AMDB_STATUS_* why it could not start (state FAILED); written
                                    * before worker_state */

    /* Line 4 — counters of the current generation: written by the worker
     * (relaxed: the owner reads them for statistics, and under the write lock,
     * when no batch or compaction is in flight). The roots live in the arena
     * header of the current region (amdb_arena_header, invariant 8). */
    AMDB_LINE uint64_t arena_used;  /* bump pointer: every block below it is whole; release store
                                     * (after the block's header: a successor walks up to it) */
    uint64_t arena_committed;       /* bytes backed by posix_fallocate */
    uint64_t live_keys;             /* keys whose latest version is not a tombstone */
    uint64_t node_count;
    uint64_t version_count;
    uint64_t chunks_applied;

    /* Line 5 — the SHA-256 ledger: written by the worker before it
     * release-stores applied_chunk; the owner reads it after acquiring it. */
    AMDB_LINE uint8_t ledger_head[32];
    uint64_t ledger_chunks;

    /* Line 6 — durability (wal.h): written by the worker, read by the owner
     * for statistics and to decide on automatic checkpoints (relaxed). */
    AMDB_LINE uint64_t log_segment;  /* number of the log segment being appended */
    uint64_t log_bytes;             /* log bytes written since the last checkpoint */
    uint64_t checkpoint_seq;        /* seq of the newest checkpoint written (0 = none) */
    uint64_t log_syncs;             /* fdatasync calls on the log */
    uint64_t log_errors;            /* failed log or checkpoint writes */
    uint64_t log_broken;            /* 1: the log could not be repaired; writes are refused */

    /* Line 7 — crash recovery. The open batch fields are written by the
     * worker when a batch's first chunk reaches it (begin_batch) and read by
     * its successor: a worker the owner starts in place of a dead one rolls
     * that batch back if the owner never made it visible (crash_repair).
     * Relaxed: the successor starts after the owner reaped the dead worker,
     * and a process's exit orders every store it made before anything
     * another process does after seeing it gone. `heartbeat` is bumped
     * (relaxed) during long operations; the owner reads it, with the ring
     * and progress counters, to tell a busy worker from a hung one. */
    AMDB_LINE uint8_t open_batch_ledger_head[32]; /* ledger head before the open batch */
    uint64_t open_batch_seq;        /* seq of the batch begun last here (0 = none) */
    uint64_t open_batch_start;      /* arena_used when it began */
    uint64_t open_batch_live_keys;  /* live_keys, version_count, ledger_chunks when it began */
    uint64_t open_batch_versions;
    uint64_t open_batch_ledger_chunks;
    uint64_t heartbeat;
    uint64_t incarnation;           /* owner: 0 for the first worker, n for the n-th successor */

    /* Line 8 — compaction (compact.pyx): written by the worker. A worker that
     * attaches to the segment finds its generation here: region arena_region
     * (base = arena_offset + arena_region * arena_capacity), whose header holds
     * the roots, after compact_recover has finished a switch in flight. */
    AMDB_LINE uint64_t arena_region;  /* region of the current generation; release store */
    uint64_t compact_state;         /* AMDB_COMPACT_*; release store */
    /* The switch record: line 4 and arena_region as they are once the switch
     * is done. Written whole before compact_state becomes SWITCHING. */
    uint64_t switch_region;
    uint64_t switch_used;
    uint64_t switch_committed;
    uint64_t switch_live_keys;
    uint64_t switch_node_count;
    uint64_t switch_version_count;
    /* Statistics (relaxed). */
    AMDB_LINE uint64_t compactions;   /* generations written by compaction */
    uint64_t versions_reclaimed;    /* versions left behind by every compaction */
    uint64_t nodes_reclaimed;       /* nodes without a version (rolled back) left behind */
    uint64_t last_compact_seq;      /* visible_seq of the last compaction */
    uint64_t last_compact_ns;       /* how long the worker took to write it */
    uint64_t last_bytes_before;     /* arena_used before and after it */
    uint64_t last_bytes_after;

    /* Line 9 — async single writes ("Async single writes" below): written by
     * the worker, read by the producer. refunded_* count what the worker
     * applied (or refused) of SOLO chunks, in the producer's own charge
     * units; credit_* are the totals the producer may have charged (release
     * stores: the memory behind them is committed). A successor keeps them. */
    AMDB_LINE uint64_t credit_bytes;
    uint64_t credit_records;
    uint64_t refunded_bytes;
    uint64_t refunded_records;

    /* Line 10 — background checkpoints (worker/checkpoint.pyx): written by
     * the worker's checkpoint thread, read by the owner. checkpoint_done is
     * the seq of the last one that ended (release store, after
     * checkpoint_status and, on success, checkpoint_seq); progress_event is
     * bumped after it. checkpoint_hold (tests only, set by the owner): while
     * it holds a stage, AMDB_CKPT_STAGE_*, a checkpoint pauses there (futex
     * word), saying so in checkpoint_held. */
    AMDB_LINE uint64_t checkpoint_started;  /* seq of the newest one begun */
    uint64_t checkpoint_done;
    uint64_t checkpoint_status;     /* AMDB_STATUS_* of checkpoint_done */
    uint64_t checkpoint_undo_words; /* words its copy had to undo (statistics) */
    uint32_t checkpoint_hold;
    uint32_t checkpoint_held;       /* 1 while a copy is paused by checkpoint_hold */

    /* Line 11 — outgrown hash tables ("Outgrown hash tables" below).
     * tables_retired: written by the worker (release store), after it
     * published a grown table; tables_drained: written by the owner (release
     * store). */
    AMDB_LINE uint64_t tables_retired; /* hash tables this partition has outgrown, ever */
    uint64_t tables_drained;        /* no reader is left in any of the first tables_drained */

    /* Lines 12.. — results of read-modify-write records that asked for one
     * (ticket != 0), by ticket % AMDB_RMW_RESULTS: written by the worker
     * before it release-stores applied_chunk, read by the producer after it
     * acquired it ("Read-modify-write" below). */
    AMDB_LINE amdb_rmw_result rmw_results[AMDB_RMW_RESULTS];
} amdb_control;

/* Async single writes. put() and delete() send a SOLO chunk of one record and
 * return without waiting for the worker. What makes that safe:
 *   1. Acknowledged means applied later, whatever happens: the producer
 *      charges every SOLO record amdb_async_charge(key, value) bytes and one
 *      record, and sends it only while its charges stay within the worker's
 *      credit_bytes / credit_records. The worker publishes, after applying,
 *        credit_bytes   = refunded_bytes + min(committed - used, AMDB_ASYNC_CREDIT_BYTES)
 *        credit_records = refunded_records + min(new keys the hash table takes
 *                         without growing, AMDB_ASYNC_WINDOW)
 *      and grows the hash table, or applies a batch, only with committed
 *      memory beyond what it promised. So every record in flight fits in
 *      memory that is already committed, and finds a hash slot: it cannot
 *      fail for lack of arena memory. Without credit the producer writes
 *      synchronously (and raises ArenaFullError).
 *   2. A worker that dies between records loses nothing (its successor
 *      resumes from ring_tail); one that dies inside a SOLO chunk is undone
 *      and the chunk applied again by its successor (handling_pos).
 *   3. A SOLO chunk never lies inside another batch: the producer sends SOLO
 *      chunks only while no batch or admin call holds its write lock.
 *   4. Reads: a read as of now of one key waits until its worker applied
 *      every SOLO chunk this process sent it (applied_chunk), then sees SOLO
 *      versions whatever visible_seq; every other read first waits for all of
 *      them and raises visible_seq over them (a CAS-max: it only grows). */
/* Where a background checkpoint can be paused by checkpoint_hold (tests). */
enum {
    AMDB_CKPT_STAGE_COPYING = 1,    /* halfway through the copy of the arena */
    AMDB_CKPT_STAGE_NOTED = 2,      /* notes handed over, file not yet renamed */
    AMDB_CKPT_STAGE_RENAMED = 3,    /* file renamed, checkpoint_done not yet published */
};

/* Outgrown hash tables. A grown table is a new block (the old one stays whole
 * for the readers in it: hashindex.pyx); its slots are dead memory once no
 * reader can be in it, and at 1M keys they are 17 of every key's bytes. So:
 *   1. The worker, having published a grown table (release store of the
 *      root), bumps tables_retired (release) and notes the old table, with
 *      that number, in its private list.
 *   2. The owner, seeing tables_retired = R above tables_drained, bumps the
 *      read epoch and waits (without blocking writes) until no reader that
 *      entered before the bump is left: its own registered readers of the
 *      old parity, and every reader slot below the new shared epoch. Then it
 *      release-stores tables_drained = R. Readers that entered after the bump
 *      loaded the root after the worker published the new one.
 *   3. The worker gives back (fallocate PUNCH_HOLE) the whole pages of the
 *      slots of every noted table numbered <= tables_drained (acquire),
 *      then sets AMDB_TABLE_RELEASED in its header — never while a
 *      background checkpoint copies the arena, whose copy may need the old
 *      table as the root it restores (undo.pxd). The header stays, so the
 *      arena can still be walked; reading the slots gives zeros.
 *   4. A worker that loads a checkpoint gives back every table but the
 *      current one at once (no reader exists yet); a successor finds the
 *      tables its predecessor did not release by a walk, and waits for the
 *      owner as in 2 (numbered tables_retired as of its start). */
#define AMDB_TABLE_RELEASED 1u

#define AMDB_ASYNC_WINDOW 65536u    /* SOLO records in flight per worker at most */
#define AMDB_ASYNC_CREDIT_BYTES (4ULL << 20) /* arena bytes they may hold in flight per worker */

/* Reader slots: how a process other than the owner (a forked child) reads
 * safely while the owner retires arena regions (compaction).
 *
 *   - read_epoch (db control) starts at 1; the owner bumps it (seq_cst) after
 *     it adopts a new generation of any partition. A region retired at epoch
 *     E (current before the bump to E + 1) is punched out or rewritten only
 *     once no live slot holds an epoch in [1, E].
 *   - A foreign process claims a slot (CAS on pid, 0 = free, or the pid of a
 *     dead process). To read, it stores read_epoch into its slot's epoch
 *     (seq_cst), loads read_epoch again and repeats until both agree (so the
 *     owner's scan after its bump sees the slot or the reader sees the bump:
 *     Dekker), then takes each partition's region from control.arena_region
 *     (acquire) when its epoch moved. Leaving, it stores 0 (release).
 *   - The owner never takes a slot: its own readers are counted in process
 *     (engine.pyx, "Process safety").
 * A dead process's slot holds at most a stale epoch: the owner skips slots
 * whose pid no longer runs.
 * How many slots: reader_slot_count (db control), the owner's max_clients=,
 * written before the control block is handed to any process and never
 * changed; the slots follow the fixed part of the block (readers[]). */
#define AMDB_MAX_READER_SLOTS 16384    /* max_clients= at most: 1 MiB of slots */
typedef struct amdb_reader_slot {
    uint64_t pid;                   /* holder; 0 = free; claimed by CAS */
    uint64_t epoch;                 /* read_epoch its reads entered in; 0 = not reading */
    uint64_t pin_seq;               /* the oldest seq its open snapshots and iterators read as of
                                     * (0: none); the owner's compactions keep what they need */
    uint64_t reserved[5];           /* a cache line per slot: processes never share one */
} amdb_reader_slot;

/* Database control block (its own small segment): written by the owner,
 * except the reader slots (each written by its holder). */
typedef struct amdb_db_control {
    uint64_t magic;
    uint64_t layout_version;
    uint64_t worker_count;
    uint64_t slot_count;
    uint64_t reader_slot_count;       /* readers[] entries (max_clients=); read-only once handed over */
    AMDB_LINE uint64_t visible_seq;   /* newest seq every reader may see; release store */
    AMDB_LINE uint64_t read_epoch;    /* owner: +1 after each region switch; seq_cst */
    /* The owner's async single writes, for clients (attachment.pyx,
     * client_catch_up). After publishing a SOLO chunk the owner's Writer
     * stores its chunk_no into solo_chunk[worker], then its seq into
     * solo_seq (release each; the owner is their only writer). A client
     * loads solo_seq (acquire), then solo_chunk[w], and waits until worker
     * w's applied_chunk or failed_chunk reached it: then it sees every write
     * the owner acknowledged before that load. Before a read of more than
     * one key it may raise visible_seq to solo_seq (a CAS-max), as the
     * owner's own reads do: a SOLO chunk goes out between batches only, so
     * every seq below it is whole. */
    AMDB_LINE uint64_t solo_seq;
    AMDB_LINE uint64_t solo_chunk[AMDB_MAX_WORKERS];
    /* The owner's forwarder of clients' writes ("Client channels" below):
     * forwarder_sleeping is the forwarder's (1 while it is about to sleep,
     * seq_cst); forward_event is bumped by a client that published records
     * while it slept (seq_cst), then woken (futex). */
    AMDB_LINE uint32_t forward_event;
    uint32_t forwarder_sleeping;
    AMDB_LINE uint16_t slot_owner[AMDB_SLOT_COUNT]; /* slot -> worker index */
    AMDB_LINE amdb_reader_slot readers[];   /* reader_slot_count of them */
} amdb_db_control;

/* Bytes of a database control block with `reader_slots` reader slots, whole pages. */
static inline uint64_t amdb_db_control_bytes(uint64_t reader_slots) {
    uint64_t bytes = offsetof(amdb_db_control, readers) + reader_slots * sizeof(amdb_reader_slot);
    return (bytes + AMDB_PAGE - 1) / AMDB_PAGE * AMDB_PAGE;
}
/* Reader slots that `length` mapped bytes of a database control block hold whole. */
static inline uint64_t amdb_db_control_slots_within(uint64_t length) {
    uint64_t fixed = offsetof(amdb_db_control, readers);
    return length < fixed ? 0 : (length - fixed) / sizeof(amdb_reader_slot);
}

/* ---- Client channels: the async single writes of attached clients ----------
 *
 * An attached client's put() and delete() travel through a channel of its own
 * (a memfd the owner creates at the attach and hands over with the segments,
 * no name in /dev/shm; a file in the directory of a durable database: 5): a byte ring of amdb_ring_record records
 * (PUT or DELETE, key, value; WRAP to skip to the start), written by the
 * client only, read by the owner's forwarder only (writer.pyx, "Forwarding"),
 * which sends each record on as a SOLO chunk of the owner's own (layout
 * "Async single writes"), under the same rules: no SOLO chunk inside a batch
 * (the forwarder pauses while the owner holds its write lock), credit first.
 *   1. The client fills a record past `head`, then publishes head (seq_cst),
 *      then wakes the forwarder if db control's forwarder_sleeping is set.
 *      One of its threads at a time: the one holding the client's GIL from
 *      its room check to its publication (ClientWriter._send).
 *      The put is acknowledged then: the forwarder sends on every record
 *      published, also after the client died.
 *   2. The forwarder trusts no byte: it checks each record's op and lengths
 *      (a bad one breaks the channel: status, nothing more is forwarded),
 *      hashes the key again, then advances `tail` (release) past the records
 *      it sent on. Their chunks are then in the workers' rings, and solo_seq
 *      / solo_chunk cover them, so a read that waits for tail >= the client's
 *      head, then catches up (client_catch_up), sees its own writes. It
 *      waits before it pins its read epoch (reader slot): the forwarder
 *      waits while the owner holds its write lock, and a compaction that
 *      holds it waits for pinned readers.
 *   3. A record the forwarder could not send (/dev/shm full, say) is counted
 *      in `refused`, its status in `refused_status`: the client's next write
 *      or flush raises it (it was acknowledged: like an owner's async write
 *      that failed after it returned). One a worker refused after it was sent
 *      on (a poison chunk, a broken log) is found by the client's flush:
 *      forwarded_chunk[w] not applied while failed_chunk reached it.
 *   4. Stopping (close), the forwarder sends on what was published, stores
 *      closed = 1 (seq_cst), and makes one last pass. A client loads closed
 *      (seq_cst) after it published head: when it finds 1, its record may
 *      have come after that pass, so the put raises OwnerGoneError instead
 *      of returning (Dekker: the last pass saw the record, or the client
 *      sees closed). An acknowledged put is never dropped by a close.
 *   5. A durable database's channel is a file in its directory
 *      (client-<random>.channel), so that an owner killed before it sent on
 *      what a client published loses none of it. In a channel record `hash`
 *      is the forwarder's: the seq it gave the record, stored (release)
 *      before the chunk is published (0: not sent on). A record whose mark
 *      is <= the recovered seq of the next opening is in the database
 *      (recovery keeps a prefix of seqs, and one forwarder assigns them in
 *      the order it publishes); from the first record that is not, the
 *      next opening applies them in order (Supervisor._replay_channels,
 *      writer.pyx take_over_channel: it stores closed first, as in 4, then
 *      reads head), before it serves attaches or returns; it clears their
 *      marks and moves tail to the first of them before applying any, so a
 *      crash of that opening repeats them rather than skips one. A channel
 *      let go drained, or left drained at a close, loses its file; one with
 *      records left keeps it for the next opening. */
#define AMDB_CHANNEL_MAGIC 0x4c4e4e4843424d41ULL /* "AMBCHNNL" little-endian */
#define AMDB_CHANNEL_BYTES (1ULL << 20)         /* ring bytes of a client's channel */
typedef struct amdb_channel {
    /* Line 0 — written by the owner before handing it over; read-only after. */
    uint64_t magic;
    uint64_t capacity;              /* ring bytes, a power of two; the ring starts at AMDB_CONTROL_BYTES */
    uint64_t client_pid;
    uint64_t closed;                /* the forwarder, stopping (seq_cst), before its last pass: point 4 */
    uint64_t reserved0[4];
    /* Line 1 — the client. */
    AMDB_LINE uint64_t head;        /* bytes ever published; seq_cst store */
    uint32_t client_waiting;        /* 1 while the client waits for tail (seq_cst) */
    uint32_t reserved1;
    /* Line 2 — the forwarder. */
    AMDB_LINE uint64_t tail;        /* bytes ever sent on (or refused); release store */
    uint32_t tail_event;            /* futex word: bumped after tail moved while client_waiting */
    uint32_t broken;                /* 1: a malformed record; nothing more is forwarded */
    uint64_t refused;               /* records that could not be sent on (point 3) */
    uint64_t refused_status;        /* AMDB_STATUS_* of the last of them */
    /* Lines 3.. — the forwarder: per worker, the chunk_no of the last SOLO
     * chunk it sent on for this client (published by the release of tail). */
    AMDB_LINE uint64_t forwarded_chunk[AMDB_MAX_WORKERS];
} amdb_channel;

/* ---- Ring records (owner -> worker), 8-byte aligned ---------------------- */

enum {
    AMDB_OP_PUT = 1,
    AMDB_OP_DELETE = 2,
    AMDB_OP_CHUNK = 3,     /* amdb_ring_chunk: header of `count` data records */
    AMDB_OP_ABORT = 4,     /* amdb_ring_chunk: roll back the batch starting at `seq` */
    AMDB_OP_WRAP = 5,      /* skip to the start of the ring */
    AMDB_OP_COMMIT = 6,    /* amdb_ring_chunk: batch `seq` is whole here; `count` = workers in it.
                            * Durable databases only: logged, then acknowledged as chunk `chunk_no` */
    AMDB_OP_CHECKPOINT = 7,/* amdb_ring_chunk: write a checkpoint as of `seq`; acknowledged as `chunk_no` */
    AMDB_OP_COMPACT = 8,   /* amdb_ring_chunk: write the next generation keeping the newest `count`
                            * versions of every key (0: all) and switch to it; `seq` = visible_seq.
                            * Sent between batches only; acknowledged as `chunk_no` */
    AMDB_OP_INCREMENT = 9, /* data records, resolved by the worker: see "Read-modify-write" */
    AMDB_OP_PUT_IF_ABSENT = 10,
    AMDB_OP_COMPARE_AND_SET = 11,
};

enum {                              /* amdb_ring_chunk.flags */
    AMDB_CHUNK_FIRST_OF_BATCH = 1,
    AMDB_CHUNK_SOLO = 2,            /* a whole batch of one record, committed by itself (no COMMIT
                                     * record follows, also in the log); the producer did not wait
                                     * for it (async single write): see "Async single writes" */
};

typedef struct amdb_ring_record {   /* a put, a delete, a read-modify-write */
    uint32_t op;
    uint32_t key_len;
    uint32_t value_len;
    uint32_t reserved;              /* read-modify-write: the result ticket (0: none); else 0 */
    uint64_t hash;                  /* xxh64(key), computed once by the owner; in a client's channel,
                                     * the seq the forwarder gave it ("Client channels", 5) */
    /* key bytes, value bytes, zero padding to 8 */
} amdb_ring_record;

typedef struct amdb_ring_chunk {    /* CHUNK, ABORT, COMMIT, CHECKPOINT */
    uint32_t op;
    uint32_t flags;
    uint64_t seq;                   /* sequence number of the batch (all its chunks share it) */
    uint64_t count;                 /* data records that follow (CHUNK) */
    uint64_t end;                   /* ring position just past the chunk's last record */
    uint64_t chunk_no;              /* CHUNK, COMMIT, CHECKPOINT: 1, 2, 3... per ring (progress);
                                     * ABORT: its abort_no */
} amdb_ring_chunk;

/* ---- Arena blocks ---------------------------------------------------------- */

enum {
    AMDB_BLOCK_NODE = 1,
    AMDB_BLOCK_VERSION = 2,
    AMDB_BLOCK_HASH_TABLE = 3,
    AMDB_BLOCK_PAD = 4,             /* filler: found only in arenas written before nodes were packed
                                     * (they started on a cache line); walks skip it */
    AMDB_BLOCK_LEDGER = 5,          /* amdb_ledger_block: end of a chunk, its ledger head */
    AMDB_BLOCK_GARBAGE = 6,         /* a rolled-back version or ledger block (unreachable) */
    AMDB_BLOCK_LEDGER_BASE = 7,     /* amdb_ledger_base_block: where a compacted generation's ledger starts */
};

/* Bytes 0..63 of every arena region (invariant 8). */
typedef struct amdb_arena_header {
    uint64_t magic;                 /* AMDB_PARTITION_MAGIC once the region holds a generation */
    uint64_t generation;            /* 1 for the first, +1 per compaction */
    uint64_t skiplist_head;         /* head node offset; set once per generation, release store */
    uint64_t hash_table;            /* current hash table offset; release store on growth */
    uint64_t base_block;            /* offset of the LEDGER_BASE block, 0: never compacted */
    uint64_t compact_seq;           /* visible_seq the generation was compacted at (0: none) */
    uint64_t keep_versions;         /* versions per key that compaction kept (0: all) */
    uint64_t reserved;
} amdb_arena_header;

static inline amdb_arena_header *amdb_arena_header_of(const char *arena) {
    return (amdb_arena_header *)arena;
}
/* The roots of the generation in the region at `arena`. Acquire: the
 * structure an offset names is whole before a reader follows it. */
static inline uint64_t amdb_arena_skiplist_head(const char *arena) {
    return __atomic_load_n(&((const amdb_arena_header *)arena)->skiplist_head, __ATOMIC_ACQUIRE);
}
static inline uint64_t amdb_arena_hash_table(const char *arena) {
    return __atomic_load_n(&((const amdb_arena_header *)arena)->hash_table, __ATOMIC_ACQUIRE);
}



typedef struct amdb_block {
    uint32_t kind;                  /* AMDB_BLOCK_* */
    uint32_t words;                 /* size in 8-byte words, header included */
} amdb_block;

/* Written after every applied chunk: head = SHA-256(previous head | seq (8 LE)
 * | versions (8 LE) | the chunk's version hashes (8 LE each, apply order)).
 * Versions and ledger blocks lie in the arena in apply order, so the ledger
 * can be recomputed from the arena alone (ParallelDB.verify). */
typedef struct amdb_ledger_block {
    amdb_block block;
    uint64_t seq;
    uint64_t versions;              /* versions the chunk appended */
    uint8_t head[32];
} amdb_ledger_block;

/* Written by compaction after the versions it kept (which lie between the
 * generation's first block and this one, in key order, oldest version of a
 * key first). Ledger verification starts again here: head is the ledger head
 * as of compaction (control.ledger_head, unchanged by compaction), and
 * kept = SHA-256(seq (8 LE) | the kept versions' hashes (8 LE each, arena
 * order)) seals what compaction copied; `versions` counts them. */
typedef struct amdb_ledger_base_block {
    amdb_block block;
    uint64_t seq;                   /* visible_seq of the compaction */
    uint64_t versions;              /* versions it kept */
    uint8_t head[32];
    uint8_t kept[32];
} amdb_ledger_base_block;

/* Skip-list node: one per key, sized to its height; key bytes follow next[]. */
typedef struct amdb_node {
    amdb_block block;
    uint64_t latest;                /* newest version offset; published by release store */
    uint64_t key_prefix;            /* first 8 key bytes, big-endian, zero padded */
    uint64_t hash;                  /* xxh64(key) */
    uint32_t key_len;
    uint16_t height;                /* 1..AMDB_MAX_HEIGHT */
    uint16_t reserved;
    uint64_t next[];                /* next[i]: published by release store, level 0 first */
} amdb_node;

enum {
    AMDB_VERSION_TOMBSTONE = 1,
    AMDB_VERSION_SOLO = 2,          /* written by a SOLO chunk: visible to reads as of now as soon as
                                     * published (one record: atomic by itself), whatever visible_seq */
    /* What the tail leaves out (amdb_version_tail). Versions written before
     * these existed have neither: their tails hold every field. */
    AMDB_VERSION_LINKED = 4,        /* no prev_hash: it is the hash of `prev` (0 for version 1) */
    AMDB_VERSION_AFTER_NODE = 8,    /* no node: its node is the block right before it */
};
/* The flags a version's chain hash covers (SOLO, LINKED, AFTER_NODE say how it
 * was applied or stored, not what it holds). */
#define AMDB_VERSION_HASHED_FLAGS AMDB_VERSION_TOMBSTONE

/* The link fields of a node, by ordering (invariant 3; LevelDB's Next and
 * NoBarrier_Next). Every access to `next[]` and `latest` goes through these:
 *   *_acquire          a reader that will follow the offset: the block it
 *                      names is whole (pairs with publish_*)
 *   *_relaxed          the partition's own worker, the only writer, reading
 *                      what it wrote itself (or a successor after its death)
 *   publish_*          the worker publishing a whole block (release)
 *   init_*             the worker filling a node nobody can reach yet */
static inline uint64_t amdb_node_next_acquire(const amdb_node *n, uint32_t level) {
    return __atomic_load_n(&n->next[level], __ATOMIC_ACQUIRE);
}
static inline uint64_t amdb_node_next_relaxed(const amdb_node *n, uint32_t level) {
    return __atomic_load_n(&n->next[level], __ATOMIC_RELAXED);
}
static inline void amdb_node_publish_next(amdb_node *n, uint32_t level, uint64_t off) {
    __atomic_store_n(&n->next[level], off, __ATOMIC_RELEASE);
}
static inline void amdb_node_init_next(amdb_node *n, uint32_t level, uint64_t off) {
    __atomic_store_n(&n->next[level], off, __ATOMIC_RELAXED);
}
static inline uint64_t amdb_node_latest_acquire(const amdb_node *n) {
    return __atomic_load_n(&n->latest, __ATOMIC_ACQUIRE);
}
static inline uint64_t amdb_node_latest_relaxed(const amdb_node *n) {
    return __atomic_load_n(&n->latest, __ATOMIC_RELAXED);
}
static inline void amdb_node_publish_latest(amdb_node *n, uint64_t off) {
    __atomic_store_n(&n->latest, off, __ATOMIC_RELEASE);
}
static inline void amdb_node_init_latest(amdb_node *n, uint64_t off) {
    __atomic_store_n(&n->latest, off, __ATOMIC_RELAXED);
}

/* Version record: immutable once published through node.latest. The fields a
 * reader needs (prev, seq, flags, value_len) and the value come first, so a
 * small version is one cache line; the fields only writers, history and
 * verification need sit in a tail after the value (amdb_version_tail). */
typedef struct amdb_version {
    amdb_block block;
    uint64_t prev;                  /* older version of the same key, 0 = first */
    uint64_t seq;                   /* sequence number of the chunk that wrote it */
    uint32_t flags;                 /* AMDB_VERSION_TOMBSTONE */
    uint32_t value_len;
    /* value bytes, zero padding to 8, then amdb_version_tail */
} amdb_version;

/* The tail holds version_no, timestamp_ns and hash, then the fields its
 * version's flags do not leave out, in this order:
 *   prev_hash  hash of the version before (0 for version 1); left out
 *              (LINKED) when that version is `prev`, whose hash is in the
 *              arena: every version but the oldest kept by a compaction,
 *              which starts its chain above version 1 (invariant 9)
 *   node       the owning node (rollback, verification); left out
 *              (AFTER_NODE) for the version written right after its node:
 *              a key's first version, and compaction's oldest kept one.
 *              Rollback walks the arena forward, so it knows that block.
 * Read them with amdb_version_prev_hash / amdb_version_node_after. */
typedef struct amdb_version_tail {
    uint64_t version_no;            /* 1, 2, 3, ... per key */
    uint64_t timestamp_ns;          /* CLOCK_REALTIME when its chunk was applied */
    uint64_t hash;                  /* xxh64(prev_hash | key | version_no | flags | value) */
    uint64_t rest[];                /* prev_hash unless LINKED, then node unless AFTER_NODE */
} amdb_version_tail;
#define AMDB_VERSION_TAIL_MAX 40    /* bytes of a tail with every field */

/* Hash index slot: one 8-byte word, 0 = empty:
 *   bits 63..43  the top 21 bits of the key's xxh64 (the tag)
 *   bits 42..0   node offset / 8 (offsets are 8-aligned; arenas <= 64 TiB)
 * Tables index slots by the TOP bits of the hash (hash >> (64 - log2 cap)),
 * so for tables of up to 2^21 slots the tag alone says where an entry
 * belongs and growing a table never touches the nodes. One word means one
 * release store publishes a slot; 8 bytes a slot keeps large tables in cache. */
typedef uint64_t amdb_hash_slot;
#define AMDB_SLOT_TAG_BITS 21
#define AMDB_SLOT_OFFSET_BITS 43
#define AMDB_SLOT_OFFSET_MASK ((1ULL << AMDB_SLOT_OFFSET_BITS) - 1)
static inline uint64_t amdb_slot_tag(uint64_t hash) { return hash >> (64 - AMDB_SLOT_TAG_BITS); }
static inline uint64_t amdb_slot_word(uint64_t hash, uint64_t node_off) {
    return (amdb_slot_tag(hash) << AMDB_SLOT_OFFSET_BITS) | (node_off >> 3);
}
static inline uint64_t amdb_slot_node(uint64_t word) { return (word & AMDB_SLOT_OFFSET_MASK) << 3; }
static inline uint64_t amdb_slot_word_tag(uint64_t word) { return word >> AMDB_SLOT_OFFSET_BITS; }
/* Home slot of `hash` in a table of 2^log2_capacity slots. */
static inline uint64_t amdb_slot_home(uint64_t hash, uint32_t log2_capacity) {
    return log2_capacity ? hash >> (64 - log2_capacity) : 0;
}

/* Open-addressing table (linear probing). A grown table is a new block; the
 * old one stays valid (and complete as of its retirement) for readers in flight. */
typedef struct amdb_hash_table {
    amdb_block block;
    uint64_t capacity;              /* slots, a power of two; immutable */
    uint64_t count;                 /* used slots; worker-private */
    uint32_t log2_capacity;         /* immutable */
    uint32_t flags;                 /* AMDB_TABLE_RELEASED; worker-written, once outgrown */
    amdb_hash_slot slots[];
} amdb_hash_table;

#define AMDB_HASH_MAX_LOAD_NUM 5    /* grow past 5/8 = 62.5% full */
#define AMDB_HASH_MAX_LOAD_DEN 8
#define AMDB_HASH_HARD_LOAD_NUM 7   /* a table that could not grow takes keys up to 7/8 full */
#define AMDB_HASH_HARD_LOAD_DEN 8
#define AMDB_HASH_INITIAL_LOG2 12
#define AMDB_HASH_INITIAL_CAPACITY (1ULL << AMDB_HASH_INITIAL_LOG2)

static inline uint64_t amdb_round8(uint64_t n) { return (n + 7) & ~7ULL; }
static inline uint64_t amdb_node_bytes(uint32_t height, uint32_t key_len) {
    return amdb_round8(sizeof(amdb_node) + 8ULL * height + key_len);
}
static inline uint64_t amdb_version_tail_bytes(uint32_t flags) {
    return sizeof(amdb_version_tail) + (flags & AMDB_VERSION_LINKED ? 0 : 8)
           + (flags & AMDB_VERSION_AFTER_NODE ? 0 : 8);
}
/* Bytes of a version block with these flags. */
static inline uint64_t amdb_version_block_bytes(uint32_t value_len, uint32_t flags) {
    return sizeof(amdb_version) + amdb_round8(value_len) + amdb_version_tail_bytes(flags);
}
/* The most a version of value_len bytes takes (what reservations count). */
static inline uint64_t amdb_version_bytes(uint32_t value_len) {
    return sizeof(amdb_version) + amdb_round8(value_len) + AMDB_VERSION_TAIL_MAX;
}
/* Worst-case arena bytes of one SOLO record: a full-height node,
 * a version, the chunk's ledger block (hash-table growth is reserved apart). */
static inline uint64_t amdb_async_charge(uint32_t key_len, uint32_t value_len) {
    return amdb_node_bytes(AMDB_MAX_HEIGHT, key_len) + amdb_version_bytes(value_len)
           + sizeof(amdb_ledger_block);
}
static inline uint64_t amdb_record_bytes(uint32_t key_len, uint32_t value_len) {
    return amdb_round8(sizeof(amdb_ring_record) + (uint64_t)key_len + value_len);
}
static inline const uint8_t *amdb_node_key(const amdb_node *n) {
    return (const uint8_t *)&n->next[n->height];
}
static inline const uint8_t *amdb_version_value(const amdb_version *v) {
    return (const uint8_t *)(v + 1);
}
static inline amdb_version_tail *amdb_version_tail_of(const amdb_version *v) {
    return (amdb_version_tail *)((const uint8_t *)(v + 1) + amdb_round8(v->value_len));
}
/* Where the stored prev_hash is, or NULL (LINKED). */
static inline uint64_t *amdb_version_stored_prev_hash(const amdb_version *v) {
    return v->flags & AMDB_VERSION_LINKED ? NULL : &amdb_version_tail_of(v)->rest[0];
}
/* Where the stored node is, or NULL (AFTER_NODE). */
static inline uint64_t *amdb_version_stored_node(const amdb_version *v) {
    return v->flags & AMDB_VERSION_AFTER_NODE ? NULL
           : &amdb_version_tail_of(v)->rest[v->flags & AMDB_VERSION_LINKED ? 0 : 1];
}
/* The hash of the version before `v` in its chain. REQUIRES (LINKED) that
 * v->prev, when not 0, is a whole version of the same arena. */
static inline uint64_t amdb_version_prev_hash(const char *arena, const amdb_version *v) {
    const uint64_t *stored = amdb_version_stored_prev_hash(v);
    if (stored) return *stored;
    return v->prev ? amdb_version_tail_of((const amdb_version *)(arena + v->prev))->hash : 0;
}
/* v's node: the stored one, or (AFTER_NODE) `before`, the offset of the
 * block right before v, which only a forward walk of the arena knows. */
static inline uint64_t amdb_version_node_after(const amdb_version *v, uint64_t before) {
    const uint64_t *stored = amdb_version_stored_node(v);
    return stored ? *stored : before;
}

/* Big-endian 8-byte prefix, zero padded: comparing prefixes as integers
 * orders keys like memcmp does on their first 8 bytes. */
static inline uint64_t amdb_key_prefix(const uint8_t *key, uint32_t len) {
    uint64_t p = 0;
    if (len >= 8) { memcpy(&p, key, 8); return __builtin_bswap64(p); }
    uint32_t n = len < 8 ? len : 8;
    for (uint32_t i = 0; i < n; i++) p |= (uint64_t)key[i] << (56 - 8 * i);
    return p;
}

static inline int amdb_op_is_rmw(uint32_t op) {
    return op == AMDB_OP_INCREMENT || op == AMDB_OP_PUT_IF_ABSENT || op == AMDB_OP_COMPARE_AND_SET;
}
/* A counter's value (increment): 8 bytes, signed, big-endian, so that the
 * stored bytes are what int.to_bytes(8, "big", signed=True) gives. */
static inline int64_t amdb_counter_decode(const uint8_t *value) {
    uint64_t v;
    memcpy(&v, value, 8);
    return (int64_t)__builtin_bswap64(v);
}
/* a + b into *sum; nonzero (and *sum wrapped) when it overflows int64. */
static inline int amdb_add_overflows(int64_t a, int64_t b, int64_t *sum) {
    return __builtin_add_overflow(a, b, sum);
}
static inline void amdb_counter_encode(int64_t n, uint8_t *out) {
    uint64_t v = __builtin_bswap64((uint64_t)n);
    memcpy(out, &v, 8);
}

_Static_assert(sizeof(amdb_control) <= AMDB_CONTROL_BYTES, "control block fits a page");
_Static_assert(AMDB_MAX_WORKERS <= 65536, "a slot owner is a uint16");
_Static_assert(sizeof(amdb_reader_slot) == 64, "a reader slot is one cache line");
_Static_assert(offsetof(amdb_db_control, readers) % 64 == 0, "reader slots start on a cache line");
_Static_assert(sizeof(amdb_channel) <= AMDB_CONTROL_BYTES, "a channel's header fits a page");
_Static_assert(sizeof(amdb_rmw_result) == 16, "a read-modify-write result is 16 bytes");
_Static_assert(sizeof(amdb_ring_record) == 24, "ring record header is 24 bytes");
_Static_assert(sizeof(amdb_ring_chunk) == 40, "chunk header is 40 bytes");
_Static_assert(sizeof(amdb_node) == 40, "node header is 40 bytes");
_Static_assert(sizeof(amdb_version) == 32, "version hot header is 32 bytes");
_Static_assert(sizeof(amdb_version_tail) == 24, "version tail is 24 bytes before its optional fields");
_Static_assert(sizeof(amdb_ledger_block) == 56, "ledger block is 56 bytes");
_Static_assert(sizeof(amdb_ledger_base_block) == 88, "ledger base block is 88 bytes");
_Static_assert(sizeof(amdb_arena_header) == AMDB_ARENA_FIRST_BLOCK, "arena header fills bytes 0..63");

#endif /* AMDB_LAYOUT_H */
