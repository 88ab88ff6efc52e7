"""Retention and compaction: keep_versions=, db.compact(), VersionReclaimedError (issue 3).

Everything is checked against a model that keeps every version: what
compaction kept must read back exactly, what it reclaimed must raise, never
answer with other data.
"""
import os
import random
import threading

import pytest
import xxhash

import amdb
from amdb.native.hashing import xxh64_stream


class FullHistory:
    """Every version of every key: key -> [(seq, value or None)], oldest first."""

    def __init__(self):
        self.versions = {}

    def apply(self, seq, ops):
        for key, value in ops:
            chain = self.versions.setdefault(key, [])
            if value is None and (not chain or chain[-1][1] is None):
                continue            # deleting a missing key writes no version
            chain.append((seq, value))

    def latest(self, key):
        chain = self.versions.get(key)
        return chain[-1][1] if chain else None

    def live(self):
        return sorted((k, c[-1][1]) for k, c in self.versions.items() if c and c[-1][1] is not None)

    def at(self, key, seq, keep):
        """(value as of seq, whether a read of it must raise VersionReclaimedError)
        after a compaction that kept the newest `keep` versions of each key."""
        chain = self.versions.get(key, [])
        oldest_kept = max(0, len(chain) - keep)          # index of the oldest kept version
        newest = None
        for i, (s, _) in enumerate(chain):
            if s <= seq:
                newest = i
        if newest is None:
            # Nothing yet at seq: known only if version 1 is still there.
            return None, oldest_kept > 0
        return chain[newest][1], newest < oldest_kept


def write_history(db, model, rng, keys, batches):
    for _ in range(batches):
        ops = []
        for _ in range(rng.randrange(1, 15)):
            key = rng.choice(keys)
            ops.append((key, None if rng.random() < 0.2 else b"v%d" % rng.randrange(10**6)))
        puts = [(k, v) for k, v in ops if v is not None]
        dels = [k for k, v in ops if v is None]
        if puts:
            _, result = db.batch_put(puts)
            model.apply(result.seq, puts)
        if dels:
            db.batch_delete(dels)
            model.apply(db.snapshot().seq, [(k, None) for k in dels])


def check_against_model(db, model, keep, seqs, rng):
    """Every read of the compacted database against the full model."""
    assert list(db.scan()) == model.live()
    assert len(db) == len(model.live())
    total = 0
    for key, chain in model.versions.items():
        if not chain:
            continue
        kept = chain[-keep:]
        first_kept = len(chain) - len(kept) + 1
        total += len(kept)
        assert db.get(key) == model.latest(key)
        history = db.history(key, oldest_first=True)
        assert [(v.version, v.seq, v.value, v.deleted) for v in history] == \
            [(first_kept + i, s, val, val is None) for i, (s, val) in enumerate(kept)]
        for older, newer in zip(history, history[1:]):
            assert newer.prev_hash == older.hash
        assert (history[0].prev_hash == 0) == (first_kept == 1)
        for number in range(1, len(chain) + 1):
            if number < first_kept:
                with pytest.raises(amdb.VersionReclaimedError) as info:
                    db.get(key, version=number)
                assert info.value.code == "version_reclaimed" and info.value.hint
                assert info.value.oldest_version == first_kept and info.value.version == number
            else:
                assert db.get(key, version=number) == chain[number - 1][1]
        assert db.get(key, version=len(chain) + 1, default=b"none") == b"none"
        for seq in rng.sample(seqs, min(8, len(seqs))):
            value, reclaimed = model.at(key, seq, keep)
            if reclaimed:
                with pytest.raises(amdb.VersionReclaimedError):
                    db.get(key, at_seq=seq)
            else:
                assert db.get(key, at_seq=seq) == value
    return total


@pytest.mark.parametrize("seed,keep", [(1, 1), (2, 2), (3, 3)])
def test_compaction_keeps_the_newest_versions_and_refuses_the_others(make_db, seed, keep):
    rng = random.Random(seed)
    db = make_db(workers=3)
    model = FullHistory()
    keys = [b"m%02d" % i for i in range(30)]
    write_history(db, model, rng, keys, 80)
    seqs = list(range(0, db.snapshot().seq + 1))
    digest = db.digest()
    versions_before = sum(len(c) for c in model.versions.values())
    summary = db.compact(keep_versions=keep)
    kept = check_against_model(db, model, keep, seqs, rng)
    assert summary["versions_before"] == versions_before
    assert summary["versions_after"] == kept
    assert summary["versions_reclaimed"] == versions_before - kept > 0
    assert db.digest() == digest                        # the ledger heads do not move
    report = db.verify()
    assert report.ok, report.breaks[:5]
    assert report.versions_checked == kept
    assert all(db.verify(key).ok for key in keys)
    # Reads as of an old seq: the whole answer, or VersionReclaimedError.
    for seq in rng.sample(seqs, 10):
        expected = [(key, model.at(key, seq, keep)) for key in sorted(model.versions)]
        reclaimed = [key for key, (_, r) in expected if r]
        values = [(key, v) for key, (v, r) in expected if v is not None and not r]
        got = []
        if reclaimed:
            with pytest.raises(amdb.VersionReclaimedError) as info:
                for item in db.scan(at_seq=seq):
                    got.append(item)
            # Everything before the first reclaimed key came out, and right.
            assert info.value.key == reclaimed[0]
            assert got == [(k, v) for k, v in values if k < reclaimed[0]]
            with pytest.raises(amdb.VersionReclaimedError):
                db.batch_get(sorted(model.versions), at_seq=seq)
        else:
            assert list(db.scan(at_seq=seq)) == values
            assert db.batch_get(sorted(model.versions), at_seq=seq) == [v for _, (v, _) in expected]


def test_a_snapshot_taken_before_compaction(make_db):
    db = make_db(workers=2)
    db.batch_put([(b"s%03d" % i, b"old") for i in range(100)])
    snap = db.snapshot()
    db.batch_put([(b"s%03d" % i, b"new") for i in range(0, 100, 2)])
    db.compact(keep_versions=1)
    # Open, it holds what it reads (test_open_snapshots_and_iterators_keep_what_they_read).
    assert snap.get(b"s000") == b"old" and snap.get(b"s001") == b"old"
    snap.close()                                       # it lets go: the next compaction reclaims
    db.compact(keep_versions=1)
    assert snap.get(b"s001") == b"old"                 # untouched since: its version is kept
    with pytest.raises(amdb.VersionReclaimedError) as info:
        snap.get(b"s000")                              # rewritten since: reclaimed
    assert info.value.key == b"s000" and info.value.at_seq == snap.seq
    with pytest.raises(amdb.VersionReclaimedError):
        b"s000" in snap
    with pytest.raises(amdb.VersionReclaimedError):
        snap.history(b"s000")
    assert [v.value for v in snap.history(b"s001")] == [b"old"]
    assert db.get(b"s000") == b"new" and db.history(b"s000")[0].version == 2
    with pytest.raises(amdb.VersionReclaimedError):
        list(snap.scan())
    assert list(snap.scan(start=b"s001", stop=b"s002")) == [(b"s001", b"old")]


def test_writes_after_compaction_continue_every_chain_and_the_ledger(make_db):
    # Two databases fed the same batches, one compacted twice on the way:
    # the same digest, versions counting on, chains linked through the cut.
    plain, compacted = make_db(workers=2), make_db(workers=2)
    keys = [b"w%03d" % i for i in range(200)]
    for round_ in range(6):
        for db in (plain, compacted):
            db.batch_put([(k, b"r%d" % round_) for k in keys])
            if round_ % 2:
                db.batch_delete(keys[round_::7])
        if round_ in (2, 4):
            compacted.compact(keep_versions=1)
    assert compacted.digest() == plain.digest()
    for key in keys[:50]:
        # Everything but the timestamps (each database has its own clock).
        full = [v._replace(timestamp=0) for v in plain.history(key)]
        kept = [v._replace(timestamp=0) for v in compacted.history(key)]
        assert kept == full[:len(kept)]
        assert kept[-1].version > 1 and kept[-1].prev_hash == full[len(kept)].hash
    assert list(compacted.scan()) == list(plain.scan())
    report = compacted.verify()
    assert report.ok, report.breaks[:5]
    assert compacted.stats()["compaction"]["compactions"] == 2


def test_repeated_compactions_switch_regions_both_ways(make_db):
    db = make_db(workers=2)
    keys = [b"p%03d" % i for i in range(300)]
    regions = [db._regions()]
    for round_ in range(5):
        db.batch_put([(k, b"%d" % round_) for k in keys])
        db.batch_put([(k, b"%d'" % round_) for k in keys[::3]])
        db.compact(keep_versions=2)
        regions.append(db._regions())
        assert db.verify().ok
        assert db.get(keys[0]) == b"%d'" % round_ and db.get(keys[1]) == b"%d" % round_
    for before, after in zip(regions, regions[1:]):
        for (region_before, generation_before), (region_after, generation_after) in zip(before, after):
            assert region_after == 1 - region_before
            assert generation_after == generation_before + 1
    assert [v.version for v in db.history(keys[0])] == [10, 9]
    stats = db.stats()
    assert [w["compactions"] for w in stats["workers"]] == [5, 5]
    assert [w["generation"] for w in stats["workers"]] == [6, 6]


def test_compact_without_retention_keeps_every_version_and_drops_garbage(make_db):
    db = make_db(workers=1, max_batch=200, ring_size=1 << 20, keep_versions=None)
    db.batch_put([(b"g%05d" % i, b"x" * 40) for i in range(3000)])
    db.batch_put([(b"g%05d" % i, b"y") for i in range(0, 3000, 2)])

    def failing():                           # new keys and new versions, then rolled back
        for i in range(6000):
            yield (b"g%05d" % i, b"z" * 100)
        raise RuntimeError("stop")
    with pytest.raises(RuntimeError):
        db.batch_put(failing())
    db.put(b"after", b"abort")                # settles the rollback
    history = {k: db.history(k) for k in (b"g00000", b"g00001", b"g04000")}
    before = db.stats()["workers"][0]
    summary = db.compact()                    # keep_versions=None: every version
    after = db.stats()["workers"][0]
    assert summary["versions_reclaimed"] == 0 and summary["versions_after"] == 3000 + 1500 + 1
    assert {k: db.history(k) for k in history} == history and history[b"g04000"] == []
    assert after["nodes"] == 3001 < before["nodes"]         # the rolled-back new keys are gone
    assert after["arena_used"] < before["arena_used"] // 2
    assert db.verify().ok
    db.put(b"g04000", b"born again")
    assert [v.version for v in db.history(b"g04000")] == [1]
    assert db.verify().ok


def test_a_scan_opened_before_compaction_and_drained_after(make_db):
    db = make_db(workers=3)
    keys = [b"d%04d" % i for i in range(1000)]
    db.batch_put([(k, b"a") for k in keys])
    db.batch_put([(k, b"b") for k in keys[::2]])
    expected = [(k, b"b" if i % 2 == 0 else b"a") for i, k in enumerate(keys)]
    forward, backward = db.scan(), db.scan(reverse=True)
    keys_only, values = db.scan(start=b"d0100", stop=b"d0900", keys_only=True), iter(db.values())
    head = [next(forward) for _ in range(10)]
    tail = [next(backward) for _ in range(10)]
    first_keys = [next(keys_only) for _ in range(10)]
    first_values = [next(values) for _ in range(10)]
    db.compact(keep_versions=1)
    db.batch_put([(b"d0500x", b"later")])            # not in the scans' snapshot
    db.compact(keep_versions=1)
    assert head + list(forward) == expected
    assert tail + list(backward) == expected[::-1]
    assert first_keys + list(keys_only) == keys[100:900]
    assert first_values + list(values) == [v for _, v in expected]
    # A scan as of a seq whose values compaction reclaimed (before the scan
    # was opened: an open one holds them) raises when it gets there. The
    # scans above hold seq 2 until they are closed or collected.
    del forward, backward, keys_only, values
    seq = db.snapshot().seq
    db.batch_put([(k, b"c") for k in keys[700:]])
    db.compact(keep_versions=1)
    scan = db.scan(at_seq=seq)
    got = []
    with pytest.raises(amdb.VersionReclaimedError) as info:
        for item in scan:
            got.append(item)
    assert info.value.key == keys[700]
    assert got == sorted(expected[:700] + [(b"d0500x", b"later")])


def test_readers_running_through_compactions_see_only_whole_right_answers(make_db):
    # One writer rewrites every key each round (one batch, value = round) and
    # compacts; readers prove every answer belongs to one round that existed
    # while they read. keep_versions=3: a scan or batch_get may also raise
    # VersionReclaimedError, but only once 3 or more rounds passed meanwhile.
    db = make_db(workers=2)
    keys = [b"c%04d" % i for i in range(400)]
    state = {"round": 0, "compactions": 0, "done": False}
    changed = threading.Condition()
    errors, reads = [], {}

    def round_of(value):
        return int(value.split(b"=")[1])

    def reader(name, read):
        count = 0
        try:
            while not state["done"]:
                read()
                count += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((name, repr(exc)))
        reads[name] = count

    def get():
        low = state["round"]
        key = keys[random.randrange(len(keys))]
        value = db.get(key)
        assert value.split(b"=")[0] == key and round_of(value) >= low, (key, value, low)

    def scan(reverse=False):
        # Half the scan, then (at least) one compaction, then the rest.
        low, compactions = state["round"], state["compactions"]
        items = []
        try:
            iterator = db.scan(reverse=reverse)
            items += [next(iterator) for _ in range(len(keys) // 2)]
            with changed:
                changed.wait_for(lambda: state["compactions"] > compactions or state["done"])
            items += list(iterator)
        except amdb.VersionReclaimedError:
            assert state["round"] - low >= 3
            return
        assert [k for k, _ in items] == (keys[::-1] if reverse else keys)
        rounds = {round_of(v) for _, v in items}
        assert len(rounds) == 1 and min(rounds) >= low, rounds

    def reverse_scan():
        scan(reverse=True)

    def batch_get():
        low = state["round"]
        values = db.batch_get(keys)
        rounds = {round_of(v) for v in values}
        assert len(rounds) == 1 and min(rounds) >= low, rounds

    def history():
        low = state["round"]
        versions = db.history(keys[random.randrange(len(keys))])
        numbers = [v.version for v in versions]
        assert numbers == list(range(numbers[0], numbers[0] - len(numbers), -1))
        assert round_of(versions[0].value) >= low
        for newer, older in zip(versions, versions[1:]):
            assert newer.prev_hash == older.hash

    db.batch_put([(k, k + b"=0") for k in keys])
    threads = [threading.Thread(target=reader, args=(f.__name__, f))
               for f in (get, scan, reverse_scan, batch_get, history)]
    for t in threads:
        t.start()
    try:
        for round_ in range(1, 41):
            db.batch_put([(k, k + b"=%d" % round_) for k in keys])
            state["round"] = round_
            db.compact(keep_versions=3)
            with changed:
                state["compactions"] += 1
                changed.notify_all()
    finally:
        with changed:
            state["done"] = True
            changed.notify_all()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert all(reads.get(name, 0) > 0 for name in ("get", "scan", "reverse_scan", "batch_get", "history")), reads
    assert db.verify().ok
    assert db.stats()["compaction"]["compactions"] == 40


def test_automatic_compaction_keeps_versions_bounded(make_db):
    keep = 2
    db = make_db(workers=2, keep_versions=keep, compact_min_versions=2000)
    keys = [b"a%03d" % i for i in range(500)]
    model = FullHistory()
    for round_ in range(20):
        items = [(k, b"%d" % round_) for k in keys]
        _, result = db.batch_put(items)
        model.apply(result.seq, items)
        versions = sum(w["versions"] for w in db.stats()["workers"])
        # Compaction runs before the write that finds the excess (>= 2000, and
        # >= a third of all versions): never more than that plus one batch.
        assert versions <= keep * len(keys) + max(2000, versions // 3) + len(keys)
    stats = db.stats()["compaction"]
    assert stats["compactions"] >= 3 and stats["failures"] == 0 and stats["keep_versions"] == keep
    assert list(db.scan()) == model.live()
    history = db.history(keys[0])
    assert [v.value for v in history[:keep]] == [b"19", b"18"]
    assert db.verify().ok
    # Inserts only: nothing beyond keep_versions, so nothing runs.
    fresh = make_db(workers=2, keep_versions=1, compact_min_versions=100)
    for round_ in range(5):
        fresh.batch_put([(b"n%d-%d" % (round_, i), b"x") for i in range(500)])
    assert fresh.stats()["compaction"]["compactions"] == 0


def _segment_bytes(db):
    """What the partition segments hold in memory: their allocated blocks."""
    return sum(os.fstat(fd).st_blocks * 512 for fd in db._supervisor.segment_fds[:db.workers])


def test_compaction_gives_the_memory_back(make_db):
    db = make_db(workers=1, arena_size=1 << 30, keep_versions=None)     # versions pile up
    value = b"v" * 1000
    keys = [b"big%04d" % i for i in range(2000)]
    for round_ in range(40):                         # 80,000 versions of 1 KB: ~ 90 MB of arena
        db.batch_put([(k, value + b"%d" % round_) for k in keys])
    before = _segment_bytes(db)
    arena_before = db.stats()["workers"][0]["arena_used"]
    summary = db.compact(keep_versions=1)
    after = _segment_bytes(db)
    arena_after = db.stats()["workers"][0]["arena_used"]
    assert arena_after < arena_before / 30
    assert not summary["reclaim_pending"]
    # The old generation's memory (and its commit slack) went back; the new
    # one holds about what it uses (it commits in 4 MiB steps).
    assert before - after >= arena_before - arena_after
    assert after - (db.ring_size + 4096) <= arena_after + (4 << 20)
    # The worker's committer thread may commit a step ahead after the last
    # write (worker/committer.pyx): the summary measured /dev/shm when the
    # compaction began.
    assert before <= summary["shm_bytes_before"] <= before + max(before // 8, 4 << 20)
    assert summary["bytes_reclaimed"] == summary["shm_bytes_before"] - after
    assert db.stats()["compaction"]["bytes_reclaimed"] == summary["bytes_reclaimed"]
    assert all(db.get(k) == value + b"39" for k in keys[:20])


def test_durable_reopen_after_compaction(make_db, tmp_path):
    path = tmp_path / "db"
    db = make_db(path=path, workers=2)
    model = FullHistory()
    rng = random.Random(7)
    keys = [b"r%02d" % i for i in range(40)]
    write_history(db, model, rng, keys, 40)
    db.compact(keep_versions=2)
    write_history(db, model, rng, keys, 10)          # replayed from the log on top
    expected = {"items": list(db.scan()), "digest": db.digest(),
                "history": {k: db.history(k) for k in keys}}
    regions = db._regions()
    db.close()
    reopened = make_db(path=path)
    assert list(reopened.scan()) == expected["items"] == model.live()
    assert reopened.digest() == expected["digest"]
    assert {k: reopened.history(k) for k in keys} == expected["history"]
    assert [g for _, g in reopened._regions()] == [g for _, g in regions]
    report = reopened.verify()
    assert report.ok, report.breaks[:5]
    # And once more through a compaction made right before closing.
    reopened.compact(keep_versions=1)
    digest = reopened.digest()
    reopened.close()
    again = make_db(path=path)
    assert again.digest() == digest and list(again.scan()) == expected["items"]
    assert all(len(again.history(k)) <= 1 for k in keys)
    assert again.verify().ok


@pytest.mark.parametrize("bad,error", [(0, amdb.InvalidArgumentError), (-1, amdb.InvalidArgumentError),
                                       ("2", amdb.InvalidTypeError), (True, amdb.InvalidTypeError),
                                       (2.0, amdb.InvalidTypeError)])
def test_keep_versions_is_checked(make_db, bad, error):
    with pytest.raises(error) as info:
        amdb.ParallelDB(workers=1, keep_versions=bad)
    assert "keep_versions" in str(info.value) and info.value.hint
    db = make_db(workers=1)
    db.put(b"k", b"v")
    with pytest.raises(error):
        db.compact(keep_versions=bad)
    assert db.stats()["compaction"]["compactions"] == 0


def test_compact_after_close_and_bad_minimum(make_db):
    with pytest.raises(amdb.InvalidArgumentError):
        amdb.ParallelDB(workers=1, keep_versions=2, compact_min_versions=0)
    db = make_db(workers=1)
    db.close()
    with pytest.raises(amdb.ClosedError):
        db.compact()


def test_verify_after_compaction_finds_every_flipped_bit(make_db):
    rng = random.Random(99)
    db = make_db(workers=2)
    keys = [b"f%04d" % i for i in range(1000)]
    for round_ in range(4):
        db.batch_put([(k, b"value-%d-%s" % (round_, k)) for k in keys])
    db.compact(keep_versions=2)
    db.batch_put([(k, b"value-4-" + k) for k in keys[::5]])     # chains that go on past the cut
    assert db.verify().ok
    fields = ["value", "key", "hash", "prev_hash", "prev_link", "latest", "next0"]
    for _ in range(120):
        key = rng.choice(keys[:-1])
        layout = db._debug_layout(key)
        field = rng.choice(fields)
        versions = layout["versions"]
        if field == "key":
            offset = layout["key_off"] + rng.randrange(layout["key_len"])
        elif field in ("latest", "next0"):
            offset = layout[field + "_off"] + rng.randrange(8)
        else:
            i = rng.randrange(len(versions))
            v = versions[i]
            prev_hash = v["prev_hash_off"]
            if prev_hash is None:          # not stored (LINKED): the hash of the version before it is the link
                prev_hash = versions[i + 1]["hash_off"] if i + 1 < len(versions) else v["hash_off"]
            offset = {"value": v["value_off"] + rng.randrange(v["value_len"]), "hash": v["hash_off"],
                      "prev_hash": prev_hash, "prev_link": v["prev_off"]}[field]
            if field != "value":
                offset += rng.randrange(8)
        bit = rng.randrange(8)
        db._debug_flip_bit(layout["worker"], offset, bit)
        try:
            report = db.verify()
            assert not report.ok, f"flipped bit {bit} of {field} of {key!r} went unnoticed"
        finally:
            db._debug_flip_bit(layout["worker"], offset, bit)
    assert db.verify().ok


def _flip_bytes(db, worker, offset, old, new):
    for i, (o, n) in enumerate(zip(old, new)):
        for bit in range(8):
            if (o ^ n) >> bit & 1:
                db._debug_flip_bit(worker, offset + i, bit)


def test_verify_after_compaction_finds_a_cut_chain_and_a_broken_seal(make_db):
    db = make_db(workers=1)
    keys = [b"x%03d" % i for i in range(100)]
    for round_ in range(5):
        db.batch_put([(k, b"%d" % round_) for k in keys])
    db.compact(keep_versions=3)
    db.batch_put([(keys[0], b"5")])
    assert db.verify().ok
    # A kept version whose link to the older kept one is zeroed: the chain
    # would end early (above the oldest kept version) without it.
    layout = db._debug_layout(keys[1])
    middle = layout["versions"][1]                   # version 4 of 5; 3 is the oldest kept
    prev = middle["prev_off"]
    old = db.history(keys[1])
    assert [v.version for v in old] == [5, 4, 3]
    stored = layout["versions"][2]["off"].to_bytes(8, "little")
    _flip_bytes(db, 0, prev, stored, bytes(8))
    try:
        report = db.verify()
        assert {b.kind for b in report.breaks} >= {"count"}, report.breaks
        assert not db.verify(keys[1]).ok
    finally:
        _flip_bytes(db, 0, prev, bytes(8), stored)
    # The LEDGER_BASE block: its seal, its head, and where the header says it is.
    header = db._debug_arena_header(0)
    assert header["base_block"] and header["keep_versions"] == 3 and header["generation"] == 2
    for offset in (header["base_kept_off"] + 5, header["base_head_off"] + 31, header["base_block_off"]):
        db._debug_flip_bit(0, offset, 3)
        try:
            assert "ledger" in {b.kind for b in db.verify().breaks}
        finally:
            db._debug_flip_bit(0, offset, 3)
    # A forged kept version (value and chain hash rewritten consistently): the
    # chain holds, the seal over the kept hashes does not.
    layout = db._debug_layout(keys[2])
    oldest = layout["versions"][-1]
    version = db.history(keys[2])[-1]
    forged = xxh64_stream([version.prev_hash.to_bytes(8, "little"), keys[2], version.version.to_bytes(8, "little"),
                           (0).to_bytes(4, "little"), b"9"])
    _flip_bytes(db, 0, oldest["value_off"], b"2", b"9")
    _flip_bytes(db, 0, oldest["hash_off"], version.hash.to_bytes(8, "little"), forged.to_bytes(8, "little"))
    breaks = db.verify().breaks
    assert "ledger" in {b.kind for b in breaks}
    # Version 3 recomputes (its hash was forged to match); version 4's hash
    # covers version 3's (layout.h, LINKED: no prev_hash of its own), so the
    # chain breaks there.
    assert [(b.kind, b.version) for b in breaks if b.kind in ("hash", "link")] == [("hash", 4)], breaks
    assert db.verify().ok is False


def test_compaction_audit_event(make_db, tmp_path):
    from amdb import audit
    log = tmp_path / "audit.jsonl"
    db = make_db(workers=2, audit=str(log))
    for round_ in range(3):
        db.batch_put([(b"e%03d" % i, b"%d" % round_) for i in range(100)])
    summary = db.compact(keep_versions=1)
    db.close()
    events = [r for r in audit.read(str(log)) if r.get("event") == "compact"]
    assert len(events) == 1, list(audit.read(str(log)))
    event = events[0]
    assert event["versions_reclaimed"] == summary["versions_reclaimed"] == 200
    assert event["bytes_reclaimed"] == summary["bytes_reclaimed"]
    assert event["keep_versions"] == 1 and event["why"] == "requested"


def test_a_reader_in_the_old_generation_keeps_its_memory(make_db):
    # A registered reader that took its base before the switch may still be
    # inside the old region: the compaction waits a bounded time, then leaves
    # the old region's memory for later instead of punching it out.
    db = make_db(workers=1, arena_size=256 << 20, keep_versions=None)
    keys = [b"h%04d" % i for i in range(3000)]
    for round_ in range(8):
        db.batch_put([(k, b"x" * 200 + b"%d" % round_) for k in keys])
    db._supervisor.compact_drain_timeout = 0.05
    slot = db._debug_enter_read()
    try:
        region_before = db._regions()[0][0]
        before = _segment_bytes(db)
        summary = db.compact(keep_versions=1)
        assert summary["reclaim_pending"] and db.stats()["compaction"]["reclaim_pending"]
        assert _segment_bytes(db) > before              # old and new generation both held
        assert db._regions()[0][0] != region_before
        assert db.get(keys[0]) == b"x" * 200 + b"7"      # new readers read the new one
    finally:
        db._debug_leave_read(slot)
    # The next compaction gives the old region back before it writes there.
    db.batch_put([(k, b"y") for k in keys])
    summary = db.compact(keep_versions=1)
    assert not summary["reclaim_pending"] and not db.stats()["compaction"]["reclaim_pending"]
    assert db._regions()[0][0] == region_before
    assert _segment_bytes(db) < before
    assert db.get(keys[-1]) == b"y" and db.verify().ok


class RetainedHistory(FullHistory):
    """FullHistory plus, per key, the index of the oldest version compactions kept."""

    def __init__(self):
        super().__init__()
        self.first_kept = {}

    def compact(self, keep):
        if keep is None:
            return
        for key, chain in self.versions.items():
            self.first_kept[key] = max(self.first_kept.get(key, 0), len(chain) - keep)

    def check(self, db, rng, seqs):
        assert list(db.scan()) == self.live()
        assert len(db) == len(self.live())
        for key in rng.sample(sorted(self.versions), min(12, len(self.versions))):
            chain, first = self.versions[key], self.first_kept.get(key, 0)
            history = db.history(key, oldest_first=True)
            assert [(v.version, v.seq, v.value) for v in history] == \
                [(first + 1 + i, s, val) for i, (s, val) in enumerate(chain[first:])]
            number = rng.randrange(1, len(chain) + 2)
            if number <= first:
                with pytest.raises(amdb.VersionReclaimedError):
                    db.get(key, version=number)
            else:
                assert db.get(key, version=number) == (chain[number - 1][1] if number <= len(chain) else None)
            seq = rng.choice(seqs)
            newest = max((i for i, (s, _) in enumerate(chain) if s <= seq), default=None)
            if (newest is None and first > 0) or (newest is not None and newest < first):
                with pytest.raises(amdb.VersionReclaimedError):
                    db.get(key, at_seq=seq)
            else:
                assert db.get(key, at_seq=seq) == (None if newest is None else chain[newest][1])



def test_a_second_compaction_at_the_same_seq_is_what_reopening_finds(make_db, tmp_path):
    # Found by the compaction soak: the worker skipped a checkpoint of a seq
    # it had already written, so a second compaction with no write between
    # (no new seq) was never checkpointed, and reopening found the first
    # one's generation, with versions the second had reclaimed.
    path = tmp_path / "db"
    db = make_db(path=path, workers=2, keep_versions=None)
    for round_ in range(6):
        db.batch_put([(b"k%02d" % i, b"v%d" % round_) for i in range(40)])
    db.compact(keep_versions=5)
    db.compact(keep_versions=2)
    assert [v.version for v in db.history(b"k07")] == [6, 5]
    db.close()
    db = make_db(path=path, workers=2, keep_versions=None)
    assert [v.version for v in db.history(b"k07")] == [6, 5]
    assert db.verify().ok


@pytest.mark.slow
@pytest.mark.parametrize("durable", [False, True])
def test_compaction_soak_against_the_model(make_db, tmp_path, durable):
    # Random writes, deletes, failed batches, compactions with random
    # retention, (durable) reopenings: every read checked against the model.
    rng = random.Random(20240 + durable)
    # keep_versions=None: only the test's own compactions (random retention) reclaim.
    options = dict(workers=3, max_batch=64, ring_size=1 << 16, keep_versions=None)
    path = tmp_path / "db" if durable else None
    db = make_db(path=path, **options)
    model, seqs = RetainedHistory(), [0]
    keys = [b"s%03d" % i for i in range(120)]
    for step in range(2500):
        action = rng.random()
        if action < 0.55:
            write_history(db, model, rng, keys, 1)
        elif action < 0.65:
            def failing():
                for i in range(rng.randrange(1, 300)):
                    yield (rng.choice(keys) + b"-new" * (i % 2), b"doomed")
                raise RuntimeError("stop")
            with pytest.raises(RuntimeError):
                db.batch_put(failing())
        elif action < 0.8:
            keep = rng.choice([None, 1, 2, 3, 5])
            db.compact(keep_versions=keep)
            model.compact(keep)
        elif action < 0.85 and durable:
            db.close()
            db = make_db(path=path, **options)
        else:
            model.check(db, rng, seqs)
        seqs.append(db.snapshot().seq)
        if step % 250 == 249:
            report = db.verify()
            assert report.ok, report.breaks[:5]
    model.check(db, rng, seqs)
    assert db.verify().ok


def test_a_worker_dying_mid_switch_is_replaced_and_its_successor_finishes_the_switch(make_db, monkeypatch, capfd):
    # Worker 1 dies with its new generation whole and the switch record
    # written but not applied (compact.pyx, invariant 3; AMDB_FAULT
    # mid_compact). Its successor first replays the switch record
    # (compact_recover, in worker_init), and the owner adopts the region it
    # names before the compact() call raises: nothing read changes, worker
    # 1's keys are compacted like worker 0's, and the database goes on.
    from amdb.native.compact import recover_compaction
    monkeypatch.setenv("AMDB_FAULT", "worker=1,point=mid_compact,action=segv,incarnations=1")
    db = make_db(workers=2)
    monkeypatch.delenv("AMDB_FAULT")
    keys = [b"z%03d" % i for i in range(300)]
    for round_ in range(3):
        db.batch_put([(k, b"%d" % round_) for k in keys])
    items, digest = list(db.scan()), db.digest()
    with pytest.raises(amdb.WorkerCrashedError) as info:
        db.compact(keep_versions=1)
    assert info.value.worker == 1 and info.value.restarted
    assert "while compacting its arena (the new generation was whole" in str(info.value), str(info.value)
    assert "fires segv at mid_compact" in capfd.readouterr().err
    stats = db.stats()["workers"]
    assert [w["compact_state"] for w in stats] == ["idle", "idle"] and [w["region"] for w in stats] == [1, 1]
    assert recover_compaction(db._supervisor.controls[1]) == 1          # nothing left to replay: idempotent
    assert list(db.scan()) == items and db.digest() == digest
    assert [len(db.history(k)) for k in keys[:20]] == [1] * 20
    report = db.verify()
    assert report.ok and report.versions_checked == len(keys), report
    db.batch_put([(k, b"after") for k in keys])
    db.compact(keep_versions=1)                               # and back to region 0
    assert [w["region"] for w in db.stats()["workers"]] == [0, 0]
    assert db.batch_get(keys) == [b"after"] * len(keys) and db.verify().ok


def test_a_layout_1_checkpoint_still_opens(make_db, tmp_path):
    # Checkpoints written before compaction (layout 1) held the roots only in
    # their header; the arena header was the magic alone. Loading one gives
    # the arena its header. Made here by rewriting a layout-2 checkpoint.
    import glob
    import struct
    import xxhash
    from amdb import storage
    path = tmp_path / "db"
    db = make_db(path=path, workers=2)
    db.batch_put([(b"o%03d" % i, b"%d" % i) for i in range(500)])
    db.batch_put([(b"o%03d" % i, b"again") for i in range(0, 500, 3)])
    seq = db.checkpoint()
    items, digest = list(db.scan()), db.digest()
    db.close()
    for name in glob.glob(str(path / f"ckpt-*-{seq:016d}.ckpt")):
        with open(name, "r+b") as f:
            data = bytearray(f.read())
            fields = list(storage.CHECKPOINT_HEADER.unpack_from(data))
            used = fields[6]
            fields[2] = 1                                             # layout_version
            start = storage.CHECKPOINT_HEADER.size
            data[start + 8:start + 64] = bytes(56)                   # the arena header: magic only
            end = min(used, storage.CHECKPOINT_BLOCK)
            struct.pack_into("<Q", data, start + used, xxhash.xxh64_intdigest(bytes(data[start:start + end]), seed=0))
            header = storage.CHECKPOINT_HEADER.pack(*fields)
            fields[-1] = xxhash.xxh64_intdigest(header[:-8])
            data[:start] = storage.CHECKPOINT_HEADER.pack(*fields)
            f.seek(0)
            f.write(data)
        assert storage.check_checkpoint(name).seq == seq
    db = make_db(path=path)
    assert db.stats()["durability"]["recovery"]["checkpoints_rejected"] == []
    assert list(db.scan()) == items and db.digest() == digest
    assert db.verify().ok
    assert [g for _, g in db._regions()] == [1, 1]
    db.compact(keep_versions=1)
    assert list(db.scan()) == items and db.verify().ok



def test_an_arena_of_whole_version_tails_opens_and_takes_compact_ones(make_db, tmp_path, monkeypatch):
    # Layout 2 wrote every version's tail whole (prev_hash and node stored);
    # layout 3 leaves them out where they can be found (layout.h,
    # amdb_version_tail) and reads the old ones as they are. An old arena is
    # made here by workers told to write whole tails, its checkpoint marked
    # layout 2; then new versions go on top of the old, a batch fails and is
    # rolled back over both, and a compaction rewrites them all.
    import glob
    from amdb import storage
    path = tmp_path / "db"
    keys = [b"t%04d" % i for i in range(2000)]
    value = lambda tag, k: (tag + k).ljust(16, b".")                    # noqa: E731
    monkeypatch.setenv("AMDB_DEBUG_FULL_TAILS", "1")
    db = make_db(path=path, workers=2)
    db.batch_put([(k, value(b"a-", k)) for k in keys])
    db.batch_put([(k, value(b"b-", k)) for k in keys[::3]])
    total = db.stats()["memory"]["total"]
    assert total["versions"] == total["version_count"] * (32 + 16 + 40)      # every tail whole
    seq = db.checkpoint()
    db.close()
    for name in glob.glob(str(path / f"ckpt-*-{seq:016d}.ckpt")):
        with open(name, "r+b") as f:
            fields = list(storage.CHECKPOINT_HEADER.unpack(f.read(storage.CHECKPOINT_HEADER.size)))
            fields[2] = 2                                                  # layout_version
            fields[-1] = xxhash.xxh64_intdigest(storage.CHECKPOINT_HEADER.pack(*fields)[:-8])
            f.seek(0)
            f.write(storage.CHECKPOINT_HEADER.pack(*fields))
        assert storage.check_checkpoint(name).seq == seq
    monkeypatch.delenv("AMDB_DEBUG_FULL_TAILS")
    db = make_db(path=path)
    assert db.stats()["durability"]["recovery"]["checkpoints_rejected"] == []
    versions_before = db.stats()["memory"]["total"]["versions"]
    db.batch_put([(k, value(b"c-", k)) for k in keys[::2]])            # on top of whole tails: LINKED
    db.batch_put([(b"n%04d" % i, value(b"n-", b"%d" % i)) for i in range(500)])    # new keys: and AFTER_NODE
    total = db.stats()["memory"]["total"]
    assert total["versions"] - versions_before == 1000 * (32 + 16 + 32) + 500 * (32 + 16 + 24)

    def failing():
        for k in keys[1::2]:
            yield k, b"never"
        yield b"n-new", b"never"
        raise RuntimeError("the batch fails")
    with pytest.raises(RuntimeError):
        db.batch_put(failing())
    assert db.verify().ok
    expected = {k: value(b"c-", k) if i % 2 == 0 else value(b"b-", k) if i % 3 == 0 else value(b"a-", k)
                for i, k in enumerate(keys)}
    assert db.batch_get(keys) == [expected[k] for k in keys] and db.get(b"n-new") is None
    history = db.history(keys[0])
    assert [v.value for v in history] == [value(b"c-", keys[0]), value(b"b-", keys[0]), value(b"a-", keys[0])]
    assert [v.prev_hash for v in history] == [v.hash for v in history[1:]] + [0]
    db.compact(keep_versions=2)
    assert db.verify().ok and db.batch_get(keys) == [expected[k] for k in keys]
    history = db.history(keys[0])
    assert [v.version for v in history] == [3, 2]
    assert history[0].prev_hash == history[1].hash and history[1].prev_hash != 0     # kept: stored again
    db.close()
    db = make_db(path=path)
    assert db.verify().ok and db.batch_get(keys) == [expected[k] for k in keys]


def test_default_retention_model(make_db):
    """The default (keep_versions=1, compacted automatically): history reads
    give exactly the versions written since the last compaction, plus each
    key's newest from before it; older ones raise VersionReclaimedError."""
    db = make_db(workers=2)
    assert db.stats()["options"]["keep_versions"] == 1
    rng = random.Random(5)
    keys = [b"r%03d" % i for i in range(300)]
    model = {k: [] for k in keys}              # values of the versions kept, oldest first
    first_kept = {k: 1 for k in keys}          # version number of the oldest kept
    compactions = 0
    for step in range(60000):
        key = keys[min(int(rng.expovariate(1 / 40)), len(keys) - 1)]
        value = b"%d" % step
        db.put(key, value)
        model[key].append(value)
        if step % 500 == 499:
            done = db.stats()["compaction"]["compactions"]
            if done > compactions:             # it compacted at some write since the last look
                compactions = done
                # Only the versions written after that compaction are extra.
                history = {k: db.history(k, oldest_first=True) for k in keys}
                for k in keys:
                    kept = history[k]
                    if kept:
                        assert [v.value for v in kept] == model[k][-len(kept):]
                        first_kept[k] += len(model[k]) - len(kept)
                        model[k] = model[k][-len(kept):]
    assert compactions >= 1, "60,000 updates of 300 keys compact by themselves"
    for k in keys:
        history = db.history(k, oldest_first=True)
        assert [v.value for v in history] == model[k]
        if history and first_kept[k] > 1:
            assert history[0].version == first_kept[k]
            with pytest.raises(amdb.VersionReclaimedError):
                db.get(k, version=first_kept[k] - 1)
    stats = db.stats()
    assert sum(w["versions"] for w in stats["workers"]) == 60000 - stats["compaction"]["versions_reclaimed"]
    assert stats["compaction"]["versions_reclaimed"] >= 10_000
    assert db.verify().ok


def test_open_snapshots_and_iterators_keep_what_they_read(make_db):
    """Compaction keeps, besides each key's newest keep_versions, every
    version down to the one a read as of the oldest open snapshot or iterator
    needs (kept versions stay one unbroken chain); once they are closed, or
    collected, the next compaction reclaims them."""
    db = make_db(workers=2)                       # the default: keep_versions=1
    keys = [b"p%04d" % i for i in range(2000)]
    db.batch_put([(k, b"old") for k in keys])
    snap = db.snapshot()
    forward = db.iterator()
    seen = [next(forward) for _ in range(500)]
    for round_ in range(3):
        db.batch_put([(k, b"new%d" % round_) for k in keys])
    db.compact()
    assert db.stats()["compaction"]["last"]["versions_reclaimed"] == 0
    assert snap[keys[1999]] == b"old" and snap.get(keys[0]) == b"old"
    assert [v.value for v in snap.history(keys[7])] == [b"old"]
    seen += list(forward)
    assert seen == [(k, b"old") for k in keys]
    assert dict(db.items()) == {k: b"new2" for k in keys}
    forward.close()
    db.compact()                                  # the snapshot still holds seq 1
    assert [v.value for v in db.history(keys[7])] == [b"new2", b"new1", b"new0", b"old"]
    snap.close()
    db.compact()
    assert db.stats()["compaction"]["last"]["versions_reclaimed"] == 3 * 2000
    assert [v.value for v in db.history(keys[7])] == [b"new2"]
    with pytest.raises(amdb.VersionReclaimedError):
        snap.get(keys[7])
    # A snapshot dropped without close() lets go too (garbage collection).
    snap = db.snapshot()
    db.batch_put([(k, b"newer") for k in keys])
    db.compact()
    assert snap[keys[3]] == b"new2"
    del snap
    db.compact()
    assert [v.value for v in db.history(keys[3])] == [b"newer"]
    assert db.verify().ok


def test_a_snapshot_held_open_does_not_make_every_write_compact(make_db):
    db = make_db(workers=2)
    keys = [b"q%03d" % i for i in range(100)]
    db.batch_put([(k, b"0") for k in keys])
    snap = db.snapshot()
    for round_ in range(300):                      # 30,000 versions the snapshot keeps alive
        db.batch_put([(k, b"%d" % round_) for k in keys])
    compaction = db.stats()["compaction"]
    # Compacting again at every write once 10,000 versions piled up would be
    # ~200 compactions here; each one waits for another quarter of growth
    # (compact_retry_at).
    assert 1 <= compaction["compactions"] <= 4, compaction
    assert compaction["versions_reclaimed"] == 0
    assert all(snap[k] == b"0" for k in keys)
    snap.close()
    db.batch_put([(k, b"x") for k in keys] * 1)
    for round_ in range(120):
        db.batch_put([(k, b"%d" % round_) for k in keys])
    assert db.stats()["compaction"]["versions_reclaimed"] > 20000


def test_an_iterator_collected_in_a_reference_cycle_lets_go_of_its_versions(make_db):
    """Regression: the cyclic garbage collector cleared an iterator's
    attachment before its __dealloc__ ran, which then called a method on None
    (SIGSEGV in test_readers_running_through_compactions_see_only_whole_right_answers
    after the pins came in); now it is never cleared, and its pin goes."""
    import gc

    class Box:
        pass

    db = make_db(workers=2)
    db.batch_put([(b"k%03d" % i, b"old") for i in range(100)])
    for _ in range(20):
        box = Box()
        box.it = db.iterator()
        next(box.it)
        box.me = box                                  # a cycle: only the collector frees it
        del box
    gc.collect()
    db.batch_put([(b"k%03d" % i, b"new") for i in range(100)])
    db.compact()
    assert db.stats()["compaction"]["last"]["versions_reclaimed"] == 100
    assert [v.value for v in db.history(b"k007")] == [b"new"]
