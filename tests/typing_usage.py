"""The whole public API as a typed program: tests/test_typing.py runs
``mypy --strict`` on this file (with the stubs shipped in amdb/: py.typed and
the .pyi files). It is never run nor collected by pytest: the functions below
are only type-checked (some need Ray or a directory, some would fail as
written). ``assert_type`` checks that each call has exactly the type
docs/API.md promises, so a stub that answered ``Any`` would fail here.

Kept to Python 3.9 syntax (``Optional``, ``Union``) like the package itself.
"""
from __future__ import annotations

import os
from collections.abc import Iterator as AbcIterator
from collections.abc import KeysView, Mapping, MutableMapping
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import amdb
import amdb.audit
import amdb.errors
from amdb import BatchOutcome, BatchResult, ParallelDB, PrefixedDB, Snapshot
from amdb.native.client.batch import WriteBatch
from amdb.native.client.iterator import Iterator
from amdb.native.hashing import sha256, slot_of, xxh64
from amdb.native.routing import pack_pairs, slots_of_keys, slots_of_packed, take_packed
from amdb.prefixed import PrefixedWriteBatch
from amdb.views import ItemsView, ValuesView


def open_with_every_option(tmp: str) -> ParallelDB:
    db = ParallelDB(os.path.join(tmp, "db"), workers=4, max_batch=10_000, ring_size=1 << 20, arena_size=1 << 30,
                    max_key_size=512, max_value_size=65536, start_timeout=10.0,
                    audit=os.path.join(tmp, "audit.jsonl"), audit_max_bytes=1 << 20, sync="batch",
                    sync_interval_ms=50, log_segment_bytes=1 << 20, checkpoint_bytes=None, read_only=False,
                    keep_versions=3, compact_min_versions=1000, hang_timeout=None, poison_after=2)
    ParallelDB(b"/tmp/bytes-path", sync="interval", checkpoint_bytes=1 << 24, hang_timeout=5).close()
    ParallelDB(os.path.join(tmp, "db"), read_only=True, workers=None).close()
    ParallelDB().close()
    assert_type(db.closed, bool)
    assert_type(db.workers, int)
    assert_type(db.durable, bool)
    assert_type(db.max_batch, int)
    assert_type(db.max_key_size, int)
    assert_type(db.max_value_size, int)
    assert_type(db.ring_size, int)
    assert_type(db.arena_size, int)
    return db


def writes(db: ParallelDB) -> None:
    db.put(b"key_1", b"value_1")
    db.put(bytearray(b"key_2"), memoryview(b"value_2"))      # any bytes-like
    db.put(b"key_3", b"")                                      # empty values are allowed
    db.delete(b"key_3")
    db.flush()

    outcome = db.batch_put([(b"key_2", b"value_2"), (b"key_3", b"value_3")])
    assert_type(outcome, BatchOutcome)
    success, results = outcome
    assert_type(success, bool)
    assert_type(results, BatchResult)
    assert_type(outcome.success, bool)
    assert_type(outcome.results, BatchResult)
    assert_type(results.count, int)
    assert_type(results.first_seq, int)
    assert_type(results.last_seq, int)
    assert_type(results.seq, int)
    assert_type(results.chunks, int)
    assert_type(results.per_worker, List[int])
    assert_type(results.key_digest, int)
    assert_type(results.as_dict(), Dict[str, Any])
    db.batch_put({b"a": b"1", b"b": b"2"})                              # a mapping
    db.batch_put((b"k%d" % i, b"v") for i in range(10))                  # a generator
    assert_type(db.batch_delete([b"a", b"b"]), BatchOutcome)
    db.batch_delete(iter([memoryview(b"k1")]))

    # write_batch(): a context manager, or write() / discard()
    with db.write_batch() as wb:
        assert_type(wb, WriteBatch)
        wb.put(b"a", b"1")
        wb.delete(b"b")
        wb.increment(b"counter", 2, initial=10)
        wb.compare_and_set(b"a", None, b"2")
        wb.put_if_absent(b"c", b"3")
        assert_type(wb.count, int)
        assert_type(wb.open, bool)
    assert_type(wb.result, Optional[BatchResult])
    manual = db.write_batch()
    manual.put(b"x", b"y")
    assert_type(manual.write(), BatchResult)
    db.write_batch().discard()

    # atomic read-modify-write
    assert_type(db.increment(b"counter"), int)
    assert_type(db.increment(b"counter", -5, initial=100), int)
    assert_type(db.increment(b"counter", wait=True), int)
    db.increment(b"counter", 1, wait=False)                   # returns at once, like put()
    assert_type(db.increment(b"counter", wait=bool(len(db))), Optional[int])
    assert_type(db.compare_and_set(b"a", b"1", b"2"), bool)
    assert_type(db.compare_and_set(b"new", None, b"1"), bool)
    assert_type(db.put_if_absent(b"a", b"1"), bool)


def arrays(db: ParallelDB) -> None:
    keys = np.arange(1000, dtype=np.uint64)
    assert_type(db.put_array(keys, keys * 2), BatchOutcome)
    db.put_array(np.array([b"a", b"b"], dtype="S1"), np.zeros((2, 16), dtype=np.uint8))
    values, found = db.get_array(keys, dtype=np.uint64)
    assert_type(values, NDArray[Any])
    assert_type(found, NDArray[np.bool_])
    values, found, lengths = db.get_array(keys, "S16", lengths=True)
    assert_type(lengths, NDArray[np.int64])
    db.get_array(keys)
    db.get_array(keys, None, lengths=False)
    parts = db.get_array(keys, lengths=bool(len(keys)))
    assert_type(parts, Tuple[NDArray[Any], ...])

    kbuf, koffs, vbuf, voffs, slots = pack_pairs([(b"a", b"1"), (b"b", b"2")], db.max_key_size,
                                                 db.max_value_size)
    assert_type(kbuf, NDArray[np.uint8])
    assert_type(koffs, NDArray[np.int64])
    assert_type(slots, NDArray[np.uint16])
    assert_type(db.put_packed(kbuf, koffs, vbuf, voffs), BatchOutcome)
    assert_type(slots_of_keys([b"a", bytearray(b"b")]), NDArray[np.uint16])
    assert_type(slots_of_packed(kbuf, koffs), NDArray[np.uint16])
    picked, picked_offsets = take_packed(kbuf, koffs, np.array([1, 0], dtype=np.int64))
    assert_type(picked, NDArray[np.uint8])
    assert_type(picked_offsets, NDArray[np.int64])
    assert_type(xxh64(b"data", 7), int)
    assert_type(slot_of(b"key"), int)
    assert_type(sha256(b"data"), bytes)
    slot_count: int = amdb.SLOT_COUNT
    del slot_count
    assert_type(amdb.__version__, str)


def reads(db: ParallelDB) -> None:
    assert_type(db.get(b"key_1"), Optional[bytes])
    assert_type(db.get(b"nope", b"?"), bytes)
    assert_type(db.get(b"nope", 0), Union[bytes, int])
    assert_type(db.get(b"key_1", version=1), Optional[bytes])
    assert_type(db.get(bytearray(b"key_1"), None, at_seq=0), Optional[bytes])
    assert_type(db.batch_get([b"key_2", b"nope"]), List[Optional[bytes]])
    assert_type(db.batch_get((b"k",), at_seq=3), List[Optional[bytes]])

    for key, value in db.scan(start=b"key_2", stop=b"key_9"):
        assert_type(key, bytes)
        assert_type(value, bytes)
    assert_type(list(db.scan(prefix=b"key_", keys_only=True)), List[bytes])
    assert_type(db.scan(reverse=True, limit=10, at_seq=1), Iterator[Tuple[bytes, bytes]])
    assert_type(db.scan(keys_only=bool(len(db))), Iterator[Any])

    it = db.iterator(prefix=b"key_", reverse=True)
    assert_type(it, Iterator[Tuple[bytes, bytes]])
    it.seek(b"key_3")
    while it.valid:
        assert_type(it.key, bytes)
        assert_type(it.value, bytes)
        key, value = next(it)
    assert_type(it.prev(), Tuple[bytes, bytes])
    assert_type(it.next(), Tuple[bytes, bytes])
    it.seek_to_first()
    it.seek_to_last()
    assert_type(it.snapshot_seq, int)
    it.close()
    with db.iterator(b"a", b"z", include_start=False, include_stop=True, at_seq=None, limit=5) as bounded:
        for key, value in bounded:
            pass
    assert_type(db.iterator(keys_only=True), Iterator[bytes])
    assert_type(db.iterator(values_only=True), Iterator[bytes])
    assert_type(db.iterator(keys_only=False, values_only=False), Iterator[Tuple[bytes, bytes]])
    plain: AbcIterator[bytes] = db.iterator(keys_only=True)        # a plain Python iterator too
    assert_type(next(plain), bytes)


def mapping_interface(db: ParallelDB) -> None:
    as_mapping: MutableMapping[bytes, bytes] = db
    db[b"a"] = b"1"
    assert_type(db[b"a"], bytes)
    del db[b"a"]
    assert_type(b"a" in db, bool)
    assert_type(len(db), int)
    db.update({b"x": b"1", b"y": b"2"})
    db.update([(b"z", b"3")])
    assert_type(dict(db.items()), Dict[bytes, bytes])
    assert_type(db.pop(b"x"), bytes)
    assert_type(db.pop(b"x", None), Optional[bytes])
    assert_type(db.popitem(), Tuple[bytes, bytes])
    assert_type(db.setdefault(b"z", b"3"), bytes)
    db.clear()
    keys = db.keys()
    assert_type(keys, amdb.views.KeysView)
    abc_keys: KeysView[bytes] = keys
    assert_type(sorted(keys), List[bytes])
    assert_type(list(reversed(keys)), List[bytes])
    values: ValuesView = db.values()
    items: ItemsView = db.items()
    assert_type((b"a", b"1") in items, bool)
    assert_type([k for k in db], List[bytes])
    assert_type(db == db, bool)
    assert_type(hash(db), int)
    del as_mapping, abc_keys, values


def namespaces(db: ParallelDB) -> None:
    users = db.prefixed(b"user:")
    assert_type(users, PrefixedDB)
    assert_type(users.db, ParallelDB)
    assert_type(users.prefix, bytes)
    users[b"ann"] = b"1"
    assert_type(users[b"ann"], bytes)
    del users[b"ann"]
    users.put(b"bob", b"2")
    users.delete(b"bob")
    assert_type(users.get(b"bob"), Optional[bytes])
    assert_type(users.get(b"bob", b"", version=1, at_seq=None), bytes)
    assert_type(users.batch_put([(b"a", b"1")]), BatchOutcome)
    assert_type(users.batch_put({b"a": b"1"}), BatchOutcome)
    assert_type(users.batch_delete([b"a"]), BatchOutcome)
    assert_type(users.batch_get([b"a"], at_seq=None), List[Optional[bytes]])
    assert_type(users.history(b"a", oldest_first=True), List[amdb.Version])
    assert_type(users.scan(start=b"b"), Iterator[Tuple[bytes, bytes]])
    assert_type(users.scan(keys_only=True, limit=2), Iterator[bytes])
    nit = users.iterator(prefix=b"a", reverse=True)
    nit.seek(b"ann")
    assert_type(nit, Iterator[Tuple[bytes, bytes]])
    assert_type(users.iterator(values_only=True), Iterator[bytes])
    with users.write_batch() as wb:
        assert_type(wb, PrefixedWriteBatch)
        wb.put(b"bob", b"2")
        wb.delete(b"ann")
        wb.increment(b"visits")
        wb.compare_and_set(b"bob", b"2", b"3")
        wb.put_if_absent(b"eve", b"4")
        assert_type(wb.count, int)
    assert_type(wb.result, Optional[BatchResult])
    other = users.write_batch()
    assert_type(other.write(), BatchResult)
    users.write_batch().discard()
    assert_type(users.increment(b"visits", 1, initial=0), int)
    users.increment(b"visits", wait=False)
    assert_type(users.compare_and_set(b"bob", None, b"1"), bool)
    assert_type(users.put_if_absent(b"bob", b"1"), bool)
    assert_type(users.prefixed(b"admins:"), PrefixedDB)
    assert_type(len(users), int)
    assert_type(b"ann" in users, bool)
    assert_type(list(users.keys()), List[bytes])
    users.update({b"x": b"1"})
    users.setdefault(b"y", b"2")
    users.clear()
    as_mapping: MutableMapping[bytes, bytes] = users
    del as_mapping


def history_and_verification(db: ParallelDB) -> None:
    versions = db.history(b"key_1", oldest_first=True, at_seq=None)
    assert_type(versions, List[amdb.Version])
    v = versions[0]
    assert_type(v.version, int)
    assert_type(v.seq, int)
    assert_type(v.timestamp, float)
    assert_type(v.value, Optional[bytes])
    assert_type(v.deleted, bool)
    assert_type(v.hash, int)
    assert_type(v.prev_hash, int)

    snap = db.snapshot()
    assert_type(snap, Snapshot)
    assert_type(snap.seq, int)
    assert_type(snap.get(b"k"), Optional[bytes])
    assert_type(snap.get(b"k", b""), bytes)
    assert_type(snap[b"k"], bytes)
    assert_type(snap.batch_get([b"k"]), List[Optional[bytes]])
    assert_type(snap.scan(prefix=b"k"), Iterator[Tuple[bytes, bytes]])
    assert_type(snap.scan(keys_only=True, reverse=True), Iterator[bytes])
    assert_type(snap.history(b"k", oldest_first=False), List[amdb.Version])
    assert_type(b"k" in snap, bool)
    assert_type(len(snap), int)
    assert_type(list(snap.keys()), List[bytes])
    as_mapping: Mapping[bytes, bytes] = snap
    del as_mapping

    report = db.verify()
    assert_type(report, amdb.VerifyReport)
    assert_type(report.ok, bool)
    assert_type(report.keys_checked, int)
    assert_type(report.versions_checked, int)
    assert_type(report.breaks_total, int)
    assert_type(report.seconds, float)
    for brk in report.breaks:
        assert_type(brk, amdb.Break)
        assert_type(brk.worker, int)
        assert_type(brk.key, Optional[bytes])
        assert_type(brk.version, Optional[int])
        assert_type(brk.kind, str)
        assert_type(brk.expected, Optional[int])
        assert_type(brk.stored, Optional[int])
    db.verify(b"key_1")

    digest = db.digest()
    assert_type(digest["root"], str)
    assert_type(digest["workers"], List[str])
    assert_type(digest["chunks"], List[int])
    assert_type(digest["seq"], int)


def administration(db: ParallelDB, tmp: str) -> None:
    assert_type(db.compact(), Dict[str, Any])
    assert_type(db.compact(keep_versions=None), Dict[str, Any])
    db.compact(keep_versions=2)
    assert_type(db.checkpoint(), int)
    assert_type(db.backup(os.path.join(tmp, "backup-1")), int)
    assert_type(amdb.backup(os.path.join(tmp, "db"), os.path.join(tmp, "backup-2")), int)
    amdb.backup(os.path.join(tmp, "db"), os.path.join(tmp, "backup-3"), ring_size=1 << 20)
    stats = db.stats()
    assert_type(stats, Dict[str, Any])
    recovery = stats["durability"]["recovery"]
    del recovery
    for record in amdb.audit.read(os.path.join(tmp, "audit.jsonl")):
        assert_type(record, Dict[str, Any])
    records, bad_lines = amdb.audit.read_report(os.path.join(tmp, "audit.jsonl"), include_rotated=False)
    assert_type(records, List[Dict[str, Any]])
    assert_type(bad_lines, int)
    db.close()
    with ParallelDB(workers=2) as fresh:
        assert_type(fresh, ParallelDB)
        handle = fresh.handle()
        assert_type(handle, amdb.Handle)
        assert_type(handle.path, Optional[str])
        with ParallelDB.attach(handle) as client:
            assert_type(client, ParallelDB)
            assert_type(client.get(b"k"), Optional[bytes])
        try:
            client.get(b"k")
        except amdb.OwnerGoneError as gone:
            assert_type(gone.code, str)


def errors(db: ParallelDB) -> None:
    try:
        db.get(b"k", version=1)
    except amdb.VersionReclaimedError as exc:
        assert_type(exc.key, Optional[bytes])
        assert_type(exc.version, Optional[int])
        assert_type(exc.at_seq, Optional[int])
        assert_type(exc.oldest_version, Optional[int])
    except amdb.PoisonBatchError as exc:
        assert_type(exc.worker, Optional[int])
    except amdb.WorkerCrashedError as exc:
        assert_type(exc.worker, Optional[int])
        assert_type(exc.signal, Optional[int])
        assert_type(exc.restarted, bool)
    except amdb.NodeUnavailableError as exc:
        assert_type(exc.node_id, Optional[int])
    except amdb.ConditionFailedError as exc:          # a condition of a write batch failed: nothing kept
        assert_type(exc.code, str)
    except (amdb.LockedError, amdb.CorruptionError) as exc:
        assert_type(exc.code, str)
    except amdb.StorageError as exc:
        assert_type(exc.hint, str)
    except (amdb.KeyTooLargeError, amdb.ValueTooLargeError, amdb.ArenaFullError, amdb.ClosedError,
            amdb.WorkerStartError) as exc:
        assert_type(exc.code, str)
    except amdb.InvalidArgumentError as exc:
        as_value_error: ValueError = exc
        del as_value_error
    except amdb.InvalidTypeError as exc:
        as_type_error: TypeError = exc
        del as_type_error
    except amdb.Error as exc:
        assert_type(exc.code, str)
        assert_type(exc.hint, str)
    raise amdb.errors.InvalidArgumentError("bad", hint="pass something else", code="bad_thing")


def cluster() -> None:
    from amdb.distributed import ClusterBatchResult, DistributedCluster
    with DistributedCluster(node_count=2, workers_per_node=1, db_options={"ring_size": 1 << 20},
                            retry_timeout=5.0, call_timeout=60.0) as c:
        assert_type(c, DistributedCluster)
        success, results = c.batch_put([(b"a", b"1"), (b"b", b"2")])
        assert_type(success, bool)
        assert_type(results, ClusterBatchResult)
        assert_type(results.count, int)
        assert_type(results.failed, int)
        assert_type(results.per_node, Dict[int, int])
        assert_type(results.failures, Dict[int, BaseException])
        c.put(b"c", b"3")
        assert_type(c.get(b"c"), Optional[bytes])
        assert_type(c.get(b"c", b""), bytes)
        c.delete(b"c")
        assert_type(c.batch_get([b"a", b"b"]), List[Optional[bytes]])
        assert_type(c.batch_delete([b"a"]).results, ClusterBatchResult)
        assert_type(list(c.scan(prefix=b"a")), List[Tuple[bytes, bytes]])
        assert_type(list(c.scan(keys_only=True, reverse=True)), List[bytes])
        assert_type(len(c), int)
        assert_type(b"a" in c, bool)
        assert_type(c.stats(), Dict[str, Any])
        assert_type(c.nodes, List[int])
        node = c.add_node()
        assert_type(node, int)
        assert_type(c.node_of(b"a"), int)
        assert_type(c.history(b"a"), List[amdb.Version])
        assert_type(c.verify()["ok"], Any)
        c.digest()
        c.check_nodes(timeout=1.0)
        assert_type(c.lost_slots(), Dict[int, List[int]])
        c.acknowledge_data_loss()
        c.remove_node(node)
        try:
            c.get(b"a")
        except amdb.NodeUnavailableError as exc:
            assert_type(exc.node_id, Optional[int])
        c.close()
        assert_type(c.closed, bool)
