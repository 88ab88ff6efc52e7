"""Every native crash ever seen, kept as a regression test.

Each test names the crash, how it showed, and the fix. They run in every
build; `make asan-test` and `make memcheck` are what turn a silent memory
error into a failure, so run those after touching native code.
"""
import json
import sys

import numpy as np
import pytest

import amdb
from amdb_testutil import python_child, reap


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


# -- found by tests/test_fuzz.py (issue 6) ------------------------------------------


def test_batch_get_whose_keys_close_the_database(make_db):
    # SIGSEGV: batch_get checked `closed` before consuming its keys, then
    # loaded visible_seq through the control block pointer that close() had
    # cleared. A generator of keys (or another thread meanwhile) can close the
    # database. Fixed: reads check `closed` after the last point where the
    # caller's code can run (Engine._limit_seq).
    db = make_db(workers=2)
    db.put(b"k", b"v")

    def keys():
        yield b"k"
        db.close()
        yield b"k"

    with pytest.raises(amdb.ClosedError):
        db.batch_get(keys())


class _ClosingInt(int):
    """An int whose comparisons close a database: argument checks run them."""

    db = None

    def __lt__(self, other):
        if self.db is not None:
            self.db.close()
        return int(self) < other


@pytest.mark.parametrize("call", ["get_at_seq", "get_version", "history"])
def test_versioned_read_whose_argument_closes_the_database(make_db, call):
    # SIGSEGV: an int subclass passed as at_seq= or version= runs its own
    # __lt__ when the argument is checked; closing the database there left the
    # read to follow cleared pointers. Same fix as above.
    db = make_db(workers=2)
    db.put(b"k", b"v")
    arg = _ClosingInt(1)
    arg.db = db
    calls = {"get_at_seq": lambda: db.get(b"k", at_seq=arg), "get_version": lambda: db.get(b"k", version=arg),
             "history": lambda: db.history(b"k", at_seq=arg)}
    with pytest.raises(amdb.ClosedError):
        calls[call]()
    assert db.closed


class _ClosingKey:
    """A key whose buffer export (Python 3.12+: __buffer__) closes a database."""

    def __init__(self, db):
        self.db = db

    def __buffer__(self, flags):
        if self.db is not None:
            db, self.db = self.db, None
            db.close()
        return memoryview(b"k")


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python classes export buffers from 3.12 on (PEP 688)")
@pytest.mark.parametrize("call", ["get", "contains", "history", "verify", "scan"])
def test_key_whose_buffer_export_closes_the_database(make_db, call):
    # SIGSEGV on Python 3.12+: a key's buffer export can run the key's own
    # code; get, `in`, history and verify(key) then read through the pointers
    # close() had cleared. Fixed by checking `closed` after the key's buffer
    # is had, before any shared memory is touched.
    db = make_db(workers=2)
    db.put(b"k", b"v")
    key = _ClosingKey(db)
    calls = {"get": lambda: db.get(key), "contains": lambda: key in db, "history": lambda: db.history(key),
             "verify": lambda: db.verify(key), "scan": lambda: list(db.scan(start=key))}
    with pytest.raises(amdb.ClosedError):
        calls[call]()
    assert db.closed


def test_put_packed_offsets_whose_difference_overflows(make_db):
    # SIGSEGV: put_packed validated offsets through end - start, which
    # overflows int64: start = 2**63 - 1, end = -2**63 + 4 gave a 5-byte item
    # at keys + 2**63 - 1. Fixed: validation compares offsets, never subtracts.
    db = make_db(workers=2)
    keys, values = np.zeros(8, np.uint8), np.zeros(0, np.uint8)
    for offsets in ([2**63 - 1, -2**63 + 4], [0, 0, 2**63 - 1, -2**63 + 4]):
        with pytest.raises(amdb.InvalidArgumentError):
            db.put_packed(keys, np.array(offsets, np.int64), values, np.zeros(len(offsets), np.int64))
    assert len(db) == 0 and db.snapshot().seq == 0


def test_routing_helpers_check_packed_offsets():
    # SIGSEGV: slots_of_packed and take_packed read data[offsets[i]:offsets[i + 1]]
    # without checking the offsets against the buffer. Fixed: every item read
    # is checked first (routing.check_item).
    from amdb.native import routing
    data = np.zeros(4, np.uint8)
    for offsets in ([0, 1 << 40], [0, -5], [3, 1]):
        with pytest.raises(amdb.InvalidArgumentError):
            routing.slots_of_packed(data, np.array(offsets, np.int64))
        with pytest.raises(amdb.InvalidArgumentError):
            routing.take_packed(data, np.array(offsets, np.int64), np.array([0], np.int64))
    out, offsets = routing.take_packed(np.frombuffer(b"abcd", np.uint8).copy(), np.array([0, 1, 4], np.int64),
                                       np.array([1, 0], np.int64))
    assert out.tobytes() == b"bcda" and offsets.tolist() == [0, 3, 4]


def test_pack_pairs_reads_each_pair_once():
    # Memory read out of bounds (SIGSEGV with a long key): pack_pairs checked
    # the pairs in one pass and copied them in a second that read items[i]
    # again; a list subclass (or an item's own code) could hand it another,
    # shorter or non-bytes, pair the second time. Fixed: the copy pass uses the
    # pairs the first pass checked, from a private list.
    from amdb.native import routing

    class Shifting(list):
        reads = 0

        def __getitem__(self, i):
            Shifting.reads += 1
            return list.__getitem__(self, i) if Shifting.reads == 1 else (b"", b"")

    keys, key_offsets, values, value_offsets, slots = routing.pack_pairs(
        Shifting([(b"k" * 1_000_000, b"v")]), 1 << 21, 16)
    assert keys.tobytes() == b"k" * 1_000_000 and values.tobytes() == b"v"
    assert key_offsets.tolist() == [0, 1_000_000] and value_offsets.tolist() == [0, 1]
    with pytest.raises(amdb.InvalidTypeError):
        routing.pack_pairs(5, 16, 16)


REENTRANT_WRITE = r"""
import faulthandler, json, sys
import amdb
faulthandler.dump_traceback_later(20, exit=True)     # a regression hangs: fail instead
db = amdb.ParallelDB(workers=2, max_batch=4)
db.put(b"before", b"1")
out = {}
for name in ["put", "batch_delete", "close", "verify", "digest"]:
    def items():
        yield (b"a", b"1")
        getattr(db, name)(*{"put": (b"x", b"y"), "batch_delete": ([b"before"],)}.get(name, ()))
        yield (b"b", b"2")
    try:
        db.batch_put(items())
        out[name] = "returned"
    except amdb.Error as exc:
        out[name] = exc.code
out["closed"] = db.closed
out["state"] = [repr(db.get(k)) for k in (b"before", b"a", b"x")] + [len(db), db.snapshot().seq]
db.batch_put([(b"after", b"3")])
out["after"] = repr(db.get(b"after"))
db.close()
print(json.dumps(out), flush=True)
"""


def test_write_from_inside_a_batch_of_the_same_thread_raises():
    # Hang: a generator passed to batch_put that called put, batch_delete,
    # close, verify or digest on the same database waited forever for the
    # write lock its own thread held. Fixed: the write lock is an RLock that
    # is never entered twice; such a call raises amdb.Error(code=
    # "reentrant_write") and the batch is rolled back. Runs in a child, so a
    # regression fails instead of hanging the suite.
    proc = python_child(REENTRANT_WRITE, stdin=False)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{err[-3000:]}"
    result = json.loads(out)
    for name in ["put", "batch_delete", "close", "verify", "digest"]:
        assert result[name] == "reentrant_write", (name, result)
    assert result["closed"] is False
    assert result["state"] == ["b'1'", "None", "None", 1, 1], "a refused batch left a trace"
    assert result["after"] == "b'3'"


def test_foreign_exceptions_for_bad_input_are_amdb_errors(make_db):
    # Not crashes, but exceptions outside the documented hierarchy:
    # - a numpy array that is not C-contiguous, or a released memoryview, as a
    #   key or value: numpy's/CPython's ValueError (BufferError was mapped,
    #   ValueError was not) -> InvalidArgumentError;
    # - get(version=2**64): OverflowError -> the default (no such version);
    # - get_array(dtype="foo"/object()): numpy's TypeError -> InvalidTypeError,
    #   dtype="S0": numpy's ValueError -> InvalidArgumentError;
    # - a bytes subclass as scan start/stop/prefix: TypeError ("Expected
    #   bytes") -> accepted, like every other bytes-like.
    db = make_db(workers=2)
    db.put(b"ab", b"v")
    released = memoryview(b"k")
    released.release()
    for key in (np.asfortranarray(np.zeros((2, 3), np.uint8)), np.zeros(6, np.uint8)[::2], released):
        with pytest.raises(amdb.InvalidArgumentError):
            db.put(key, b"v")
        with pytest.raises(amdb.InvalidArgumentError):
            db.put(b"k", key)
        with pytest.raises(amdb.InvalidArgumentError):
            db.get(key)
    assert db.get(b"ab", b"none", version=2**64) == b"none"
    assert db.get(b"ab", b"none", version=2**64 - 1) == b"none"
    for dtype in ("foo", object(), 3.5):
        with pytest.raises(amdb.InvalidTypeError):
            db.get_array(np.array([b"ab"]), dtype=dtype)
    with pytest.raises(amdb.InvalidArgumentError):
        db.get_array(np.array([b"nope"]), dtype="S0")

    class Bytes(bytes):
        pass

    assert list(db.scan(Bytes(b"a"), Bytes(b"b"))) == [(b"ab", b"v")]
    assert list(db.scan(prefix=Bytes(b"a"))) == [(b"ab", b"v")]
    assert len(db) == 1 and db.verify().ok


def test_replay_refuses_a_frame_that_would_misalign_the_next():
    # UBSan (make asan-test, tests/test_fuzz_logs.py): "member access within
    # misaligned address ... for type 'struct amdb_log_frame'" — a hostile log
    # whose payload length is not a multiple of 8 put the next frame header
    # off alignment. Payload lengths must now be multiples of 8 (wal.h); the
    # owner's scanner and the worker's replay both refuse such a frame.
    import struct
    import xxhash
    from amdb import storage
    from amdb.native.apply import fuzz_replay

    def frame(kind, seq, payload):
        header = struct.pack("<IIQQQ", storage.LOG_MAGIC, kind, seq, len(payload), xxhash.xxh64_intdigest(payload, seed=seq))
        return header + struct.pack("<Q", xxhash.xxh64_intdigest(header)) + payload

    odd = frame(3, 1, b"abc") + frame(3, 1, b"")
    assert fuzz_replay(odd)[:2] == (3, 0)                    # AMDB_STATUS_CORRUPT at the first frame
    scan = storage.scan_log_bytes(odd)
    assert scan.valid_bytes == 0 and "multiple of 8" in scan.problem
    assert fuzz_replay(frame(3, 1, b"") + frame(3, 1, b""))[:2] == (0, 2)
