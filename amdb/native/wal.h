/* wal.h — the on-disk formats of a durable AmDb database (ParallelDB(path)).
 *
 * A database directory holds (amdb/storage.py reads and repairs all of it):
 *   MANIFEST                      JSON: magic, format version, workers, slot table, options
 *   LOCK                          flock()ed by the owner (and inherited by its workers)
 *   wal-WWWW-SSSSSSSS.log         worker WWWW's write-ahead log, segment SSSSSSSS
 *   ckpt-WWWW-QQQQQQQQQQQQQQQQ.ckpt  worker WWWW's arena as of batch seq QQQQ...
 *
 * Who writes what: worker W is the only writer of its log segments and
 * checkpoints while the database is open; the owner writes MANIFEST, deletes
 * files a newer checkpoint made obsolete, and (only at open, before any worker
 * starts) cuts torn or uncommitted log tails.
 *
 * Invariants:
 *   1. A log segment is a sequence of whole frames, then at most one torn
 *      frame at its end (a crash mid-append). A frame is whole when its
 *      header_check and payload_check match; recovery cuts at the first frame
 *      that is not.
 *   2. A worker appends a CHUNK frame after applying the chunk and before
 *      acknowledging it, and a COMMIT frame (after all the batch's chunks)
 *      before acknowledging the batch; with sync="batch" it fdatasyncs before
 *      acknowledging the COMMIT. The owner acknowledges a batch to the caller
 *      only after every worker in it acknowledged its COMMIT.
 *   3. Batch seq S is committed iff, in every worker it touched, the last
 *      COMMIT/ABORT frame of seq S is a COMMIT, and that number of workers
 *      equals the `participants` the COMMITs carry — or some checkpoint has
 *      seq >= S (checkpoints are only written at committed batch boundaries).
 *      Recovery keeps the longest prefix of committed seqs and cuts every log
 *      at its first frame above it: a batch is recovered whole or not at all.
 *   4. Seqs in one log never decrease. An aborted attempt of seq S is followed
 *      by an ABORT frame (or, if its worker never learnt of it, by nothing:
 *      recovery cuts it as uncommitted); a retry reuses seq S.
 *   5. A checkpoint file is written under a .tmp name, fsynced, renamed, and
 *      its directory fsynced; the log then continues in a new segment, number
 *      `log_segment` in the checkpoint header. Files are deleted only when two
 *      newer checkpoints exist, so a damaged newest checkpoint can fall back to
 *      the previous one plus its logs.
 *
 * All integers little-endian. Checks are xxh64 (accidental damage, not
 * tampering: the SHA-256 ledger inside the arena covers that).
 */
#ifndef AMDB_WAL_H
#define AMDB_WAL_H

#include <stdint.h>

#define AMDB_LOG_MAGIC 0x474c4d41u                 /* "AMLG" */
#define AMDB_CHECKPOINT_MAGIC 0x54504b4342444d41ULL /* "AMDBCKPT" */
#define AMDB_FORMAT_VERSION 1
#define AMDB_CHECKPOINT_BLOCK (4ULL << 20)          /* arena bytes per checked block */
#define AMDB_LOG_MAX_PAYLOAD (1ULL << 40)

enum {
    AMDB_LOG_CHUNK = 1,    /* payload: amdb_log_chunk, then the chunk's ring records */
    AMDB_LOG_COMMIT = 2,   /* payload: uint64 participants (workers the batch touched) */
    AMDB_LOG_ABORT = 3,    /* payload: none. This worker rolled back its part of `seq` */
};

typedef struct amdb_log_frame {
    uint32_t magic;
    uint32_t kind;          /* AMDB_LOG_* */
    uint64_t seq;           /* batch seq */
    uint64_t payload_len;   /* bytes that follow this header; a multiple of 8, so frames stay aligned */
    uint64_t payload_check; /* xxh64(payload, seed = seq) */
    uint64_t header_check;  /* xxh64(the 32 bytes above, seed = 0) */
} amdb_log_frame;

typedef struct amdb_log_chunk {
    uint64_t timestamp_ns;  /* the versions' timestamp: replay reuses it */
    uint64_t count;         /* ring records that follow (amdb_ring_record + key + value + pad) */
    uint32_t flags;         /* amdb_ring_chunk.flags (AMDB_CHUNK_FIRST_OF_BATCH) */
    uint32_t reserved;
} amdb_log_chunk;

/* A checkpoint file: this header, then arena bytes [0, arena_used), then one
 * uint64 xxh64 per AMDB_CHECKPOINT_BLOCK of them (seed = block index).
 *
 * Format AMDB_CHECKPOINT_FORMAT_UNDO (a background checkpoint, written while
 * the worker goes on applying: worker/checkpoint.pyx) adds an undo section:
 * uint64 AMDB_CHECKPOINT_UNDO_MAGIC, uint64 n, n entries (uint64 offset,
 * uint64 word), uint64 xxh64(the entries, seed = n). The arena bytes are
 * then a fuzzy copy: every word below arena_used that the worker changed
 * while it was copied has an entry holding its value as of `seq` (the
 * first change's), and loading writes the entries back, last to first, so
 * the arena is exactly the one of `seq`. The block checks cover the bytes
 * as written, before the undo. */
#define AMDB_CHECKPOINT_FORMAT_UNDO 2
#define AMDB_CHECKPOINT_UNDO_MAGIC 0x4f444e55504b4341ULL /* "ACKPUNDO" */
typedef struct amdb_checkpoint_header {
    uint64_t magic;
    uint32_t format_version;
    uint32_t layout_version;   /* AMDB_LAYOUT_VERSION of the arena bytes */
    uint64_t worker_index;
    uint64_t seq;              /* every committed batch <= seq, nothing after */
    uint64_t log_segment;      /* the log continues in this segment */
    uint64_t arena_used;
    uint64_t skiplist_head;
    uint64_t hash_table;
    uint64_t live_keys;
    uint64_t node_count;
    uint64_t version_count;
    uint64_t ledger_chunks;
    uint8_t ledger_head[32];
    uint64_t header_check;     /* xxh64(the bytes above, seed = 0) */
} amdb_checkpoint_header;

_Static_assert(sizeof(amdb_log_frame) == 40, "log frame header is 40 bytes");
_Static_assert(sizeof(amdb_log_chunk) == 24, "log chunk header is 24 bytes");
_Static_assert(sizeof(amdb_checkpoint_header) == 136, "checkpoint header is 136 bytes");

#endif /* AMDB_WAL_H */
