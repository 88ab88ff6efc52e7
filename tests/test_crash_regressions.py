"""Every native crash ever seen, kept as a regression test.

Each test names the crash, how it showed, and the fix. They run in every
build; `make asan-test` and `make memcheck` are what turn a silent memory
error into a failure, so run those after touching native code.
"""


def test_prototype_million_item_batch_write(make_db):
    # The prototype this project replaces died with SIGSEGV (exit 139) in
    # batch writes of this workload, one call and in batches.
    items = [(f"key_{i}".encode(), f"value_{i}".encode()) for i in range(1_000_000)]
    db = make_db(workers=2)
    success, results = db.batch_put(items)
    assert success and results.count == len(items)
    for start in range(0, len(items), 5000):
        db.batch_put(items[start:start + 5000])
    probe = items[::997]
    assert db.batch_get([k for k, _ in probe]) == [v for _, v in probe]
    assert len(db) == len(items)
    assert all(w["alive"] for w in db.stats()["workers"])


def test_tombstone_hashes_an_empty_value(make_db):
    # UBSan (make asan): "null pointer passed as argument 2" — chain_hash
    # memcpy'd the NULL value of a tombstone with length 0. Fixed by copying
    # only non-empty keys and values.
    db = make_db(workers=1)
    db.batch_put([(b"t%03d" % i, b"") for i in range(100)])
    db.batch_delete([b"t%03d" % i for i in range(0, 100, 2)])
    db.put(b"", b"")
    db.delete(b"")
    assert db.get(b"t001") == b"" and db.get(b"t000") is None
    assert len(db) == 50
    assert all(w["alive"] for w in db.stats()["workers"])


def test_worker_never_reads_a_released_chunk_header(make_db):
    # A worker released a chunk's ring space, then read the chunk header's
    # `end` and `seq` from the ring: the owner had already reused the space,
    # and the worker died with "ring holds a record of unknown kind". Fixed by
    # copying the header before applying. A tiny ring with many small chunks
    # makes the owner reuse space as early as possible.
    db = make_db(workers=2, ring_size=1 << 16, max_batch=64)
    for round_ in range(3):
        db.batch_put((b"r%d-%06d" % (round_, i), b"v" * (i % 40)) for i in range(60_000))
    assert all(w["alive"] for w in db.stats()["workers"])
    assert len(db) == 180_000
    probe = [b"r2-%06d" % i for i in range(0, 60_000, 611)]
    assert db.batch_get(probe) == [b"v" * (i % 40) for i in range(0, 60_000, 611)]


def test_replay_refuses_a_log_record_whose_key_hash_is_wrong():
    # tests/test_fuzz_logs.py: a well-framed log (valid checksums) whose put
    # record carried hash 0 instead of xxh64(key) was replayed, and the arena
    # it built failed verify() (key_hash break). Replay now recomputes every
    # record's key hash: a ring record comes from the owner, a log from disk.
    import struct
    import xxhash
    from amdb.native.apply import fuzz_replay
    from amdb.storage import LOG_MAGIC

    def frame(kind, seq, payload):
        header = struct.pack("<IIQQQ", LOG_MAGIC, kind, seq, len(payload), xxhash.xxh64_intdigest(payload, seed=seq))
        return header + struct.pack("<Q", xxhash.xxh64_intdigest(header)) + payload

    def log(key_hash):
        record = struct.pack("<IIIIQ", 1, 3, 1, 0, key_hash) + b"keyv" + bytes(4)
        chunk = struct.pack("<QQII", 1, 1, 1, 0) + record           # FIRST_OF_BATCH, one record
        return frame(1, 1, chunk) + frame(2, 1, struct.pack("<Q", 1))

    assert fuzz_replay(log(xxhash.xxh64_intdigest(b"key"))) == (0, 2, 0)   # honest: replayed, clean
    status, frames, _ = fuzz_replay(log(0))
    assert status == 3 and frames == 0                                   # AMDB_STATUS_CORRUPT
