"""A small scenario that exercises every native path (chunking, ring wrap,
deletes, an aborted multi-chunk batch, async single writes, a write batch,
iterators and their seek index, scans both ways, batch reads, the numpy
paths, history, snapshots, verify and the ledger, compaction, a forked child's
reads, an attached client's reads, an idle worker's successor resuming its ring; the log,
checkpoints written while writes change the arena, and recovery; a hung
worker replaced mid-batch) for `make memcheck`
(valgrind) and `make asan-test` smoke runs.
Exits non-zero if any result is wrong."""
import amdb, numpy as np
# Every worker reserves two arena regions of arena_size (compaction): with the
# default 16 GiB, the databases this scenario opens one after the other do not
# fit valgrind's address space (mmap fails with EINVAL under it).
ARENA = 1 << 30
db = amdb.ParallelDB(workers=2, max_batch=500, ring_size=1<<16, arena_size=ARENA)
db.batch_put([(b"k%05d" % i, b"v" * (i % 50)) for i in range(3000)])
db.batch_delete([b"k%05d" % i for i in range(0, 3000, 7)])
try:
    db.batch_put(((b"x%d" % i, b"y") if i < 2000 else ("bad", b"y")) for i in range(2001))
except amdb.InvalidTypeError:
    pass
assert db.get(b"x1") is None
assert len(list(db.scan(prefix=b"k001"))) == len([i for i in range(100, 200) if i % 7])
assert db.batch_get([b"k00001", b"k00007"]) == [b"v", None]
list(db.scan(reverse=True, start=b"k002", stop=b"k003"))
a = np.arange(1000, dtype=np.uint64); db.put_array(a, a); v, f = db.get_array(a, dtype=np.uint64); assert (v == a).all()
assert db.get(b"k00014", version=1) == b"v" * 14 and db.history(b"k00007")[0].deleted
snap = db.snapshot()
db.put(b"k00001", b"changed")
assert snap.get(b"k00001") == b"v" and db.get(b"k00001") == b"changed"
assert db.verify().ok and db.verify(b"k00001").versions_checked == 2
assert len(db.digest()["workers"]) == 2
# Async single writes (SOLO chunks, credit, read-your-writes), a write batch
# streamed through the small ring, iterators (past 4096 nodes a worker: the
# seek index) both ways.
for i in range(12000):
    db.put(b"s%05d" % i, b"a" * (i % 7))
assert db.get(b"s00006") == b"aaaaaa"
db.delete(b"s00001")
assert db.get(b"s00001") is None
db.flush()
with db.write_batch() as wb:
    for i in range(3000):
        wb.put(b"w%05d" % i, b"b" * (i % 30))
    wb.delete(b"s00002")
assert db.get(b"w02999") == b"b" * 29 and db.get(b"s00002") is None
it = db.iterator(prefix=b"s")
it.seek(b"s05000")
assert it.key == b"s05000" and next(it)[0] == b"s05000" and it.prev()[0] == b"s05000"
rit = db.iterator(reverse=True, start=b"s", stop=b"t")
rit.seek(b"s05000")
assert next(rit)[0] == b"s05000" and rit.key == b"s04999"
assert len(list(db.scan(start=b"w", limit=10))) == 10
# Compaction: a scan across it, reclaimed versions, both regions in turn.
digest = db.digest()
scan = db.scan(prefix=b"k00")
first = next(scan)
db.compact(keep_versions=1)                 # the open iterators hold what they read
assert first == (b"k00001", b"changed") and len(list(scan)) > 100
for open_reader in (scan, it, rit, snap):
    open_reader.close()
db.compact(keep_versions=1)                 # now it goes
try:
    db.get(b"k00001", version=1)
    raise AssertionError("version 1 was reclaimed")
except amdb.VersionReclaimedError:
    pass
db.put(b"k00001", b"again")
db.compact(keep_versions=None)
assert db.history(b"k00001")[1].version == 2 and db.verify().ok and db.digest() != digest
# A forked child reads through a reader slot while the parent compacts
# (layout.h, "Reader slots") and writes by attaching, and an idle worker killed between calls is
# replaced by a successor that resumes from its ring.
import os, signal
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(r, 1)
    ok = db.get(b"k00001") == b"third" and len(db.batch_get([b"k%05d" % i for i in range(3000)])) == 3000
    db.put(b"x", b"y")                  # its first write attaches it to the parent, as a client
    ok = ok and db.get(b"x") == b"y"
    db.close()                          # once its put is applied
    os._exit(0 if ok else 1)
db.put(b"k00001", b"third")
db.compact(keep_versions=1)
os.write(w, b"x")
assert os.waitpid(pid, 0)[1] == 0
assert db.get(b"x") == b"y"
# An attached client (amdb/attach.py; here in this very process): mapped from
# the descriptors the owner hands over, reads through its reader slot, catches
# up with the owner's async writes; one collected without close() frees its slot.
client = amdb.ParallelDB.attach(db.handle())
db.put(b"k00002", b"async")
assert client.get(b"k00002") == b"async" and client.batch_get([b"k00001"]) == [b"third"]
assert len(list(client.scan(prefix=b"k001"))) > 50 and next(client.iterator(prefix=b"s"))[0] == b"s00000"
# Its writes (layout.h, "Client channels"): puts and deletes through its
# channel, past its end (a wrap), sent on by the owner's forwarder; a batch,
# a write batch and a read-modify-write run by the owner.
for i in range(12000):
    client.put(b"c%05d" % i, b"v" * 100)
client.delete(b"c00000")
assert client.get(b"c11999") == b"v" * 100 and client.get(b"c00000") is None
client.batch_put([(b"cb%d" % i, b"b") for i in range(50)])
with client.write_batch() as wb:
    wb.put(b"cw", b"w")
    wb.increment(b"cn", 2)
assert client.increment(b"cn") == 3
client.flush()
assert db.get(b"c11998") == b"v" * 100 and db.get(b"cb49") == b"b" and db.get(b"cw") == b"w"
client.close()
import gc
lost = amdb.ParallelDB.attach(db.handle())
assert lost.get(b"k00001") == b"third"
del lost
gc.collect()
os.kill(db.stats()["workers"][0]["pid"], signal.SIGKILL)
db.batch_put([(b"k%05d" % i, b"after") for i in range(100)])
assert db.get(b"k00050") == b"after" and db.stats()["worker_restarts"] == 1 and db.verify().ok
db.close()
# Durable: the write-ahead log (chunks that wrap the ring, COMMIT, ABORT), a
# checkpoint, and recovery (checkpoint load + log replay) on reopening.
import shutil, tempfile
tmp = tempfile.mkdtemp(prefix="amdb-memcheck-")
try:
    path = tmp + "/db"
    db = amdb.ParallelDB(path, workers=2, max_batch=500, ring_size=1<<16, sync="batch", arena_size=ARENA)
    db.batch_put([(b"d%05d" % i, b"v" * (i % 50)) for i in range(3000)])
    try:
        db.batch_put(((b"y%d" % i, b"y") if i < 1500 else ("bad", b"y")) for i in range(1501))
    except amdb.InvalidTypeError:
        pass
    db.checkpoint()
    # A checkpoint copied while the worker changes the arena (notes, undo).
    import threading
    db.batch_put([(b"d%05d" % i, b"u") for i in range(0, 3000, 7)])   # else nothing new to checkpoint
    db._supervisor.debug_hold_checkpoints("copying")
    thread = threading.Thread(target=db.checkpoint)
    thread.start()
    assert all(db._supervisor.debug_wait_checkpoint_held(w, 120) == "copying" for w in range(2))
    db.batch_put([(b"d%05d" % i, b"z") for i in range(0, 3000, 2)])
    db._supervisor.debug_hold_checkpoints(None)
    thread.join()
    db.batch_put([(b"d%05d" % i, b"w") for i in range(0, 3000, 3)])
    db.compact(keep_versions=1)             # ends with a checkpoint of the compacted arenas
    db.batch_delete([b"d%05d" % i for i in range(0, 3000, 5)])
    digest = db.digest()
    db.close()
    db = amdb.ParallelDB(path, workers=2, max_batch=500, ring_size=1<<16, arena_size=ARENA)
    assert db.digest() == digest and len(db) == 2400 and db.get(b"y1") is None and db.verify().ok
    # A durable client's channel is a file (layout.h, "Client channels", 5),
    # gone when it closes drained.
    client = amdb.ParallelDB.attach(db.handle())
    for i in range(3000):
        client.put(b"cc%05d" % i, b"v" * 100)
    client.close()
    assert db.get(b"cc02999") == b"v" * 100
    db.close()
    assert not [n for n in os.listdir(path) if n.endswith(".channel")]
    # One a dead owner left (made by hand here: header, then records marked
    # with a seq or not): the next opening applies what recovery lacks.
    import struct
    from amdb.native.constants import CONTROL_BYTES
    ring = b""
    for op, key, value, mark in ((1, b"cc00001", b"done", 1), (1, b"cc00002", b"left", 0), (2, b"cc00003", b"", 0)):
        body = struct.pack("<IIIIQ", op, len(key), len(value), 0, mark) + key + value
        ring += body + bytes(-len(body) % 8)
    header = bytearray(CONTROL_BYTES)
    struct.pack_into("<QQ", header, 0, 0x4C4E4E4843424D41, 4096)     # AMDB_CHANNEL_MAGIC, capacity
    struct.pack_into("<Q", header, 64, len(ring))                       # head; tail (offset 128) 0
    with open(path + "/client-00000000000000aa.channel", "wb") as f:
        f.write(bytes(header) + ring + bytes(4096 - len(ring)))
    db = amdb.ParallelDB(path, workers=2, max_batch=500, ring_size=1<<16, arena_size=ARENA)
    assert db.get(b"cc00001") == b"v" * 100 and db.get(b"cc00002") == b"left" and db.get(b"cc00003") is None
    db.close()
    # A worker that hangs half-way through linking a key (AMDB_FAULT, read at
    # open): killed after hang_timeout, its successor repairs the arena
    # (re-index, undo the open batch) and logs the rollback; reopen recovers.
    import os
    os.environ["AMDB_FAULT"] = "worker=1,point=mid_link,after=100,action=hang,incarnations=1"
    db = amdb.ParallelDB(tmp + "/db2", workers=2, max_batch=500, ring_size=1<<16, hang_timeout=3,
                         arena_size=ARENA)
    del os.environ["AMDB_FAULT"]
    items = [(b"h%05d" % i, b"v") for i in range(1000)]
    try:
        db.batch_put(items)
        raise AssertionError("the hang was not detected")
    except amdb.WorkerCrashedError as exc:
        assert exc.restarted and exc.worker == 1, exc
    db.batch_put(items)
    digest = db.digest()
    assert db.verify().ok and len(db) == 1000
    db.close()
    db = amdb.ParallelDB(tmp + "/db2", workers=2, arena_size=ARENA)
    assert db.digest() == digest and db.verify().ok
    db.close()
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print("memcheck scenario ok")
