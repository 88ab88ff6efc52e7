"""Version history, snapshots and hash-chain verification (issue 3)."""
import random

import pytest

import amdb


class VersionModel:
    """Every version of every key, with the seq of the batch that wrote it."""

    def __init__(self):
        self.versions = {}          # key -> [(seq, value or None)], oldest first

    def apply(self, seq, ops):
        for key, value in ops:
            chain = self.versions.setdefault(key, [])
            if value is None and (not chain or chain[-1][1] is None):
                continue            # deleting a missing key writes no version
            chain.append((seq, value))

    def at(self, key, seq):
        value = None
        for s, v in self.versions.get(key, []):
            if s <= seq:
                value = v
        return value


def _run_random_history(db, rng, batches=60):
    model = VersionModel()
    keys = [b"h%02d" % i for i in range(25)]
    seqs = [0]
    for _ in range(batches):
        ops = []
        for _ in range(rng.randrange(1, 12)):
            key = rng.choice(keys)
            ops.append((key, None if rng.random() < 0.25 else b"v%d" % rng.randrange(1000)))
        if rng.random() < 0.5:
            puts = [(k, v) for k, v in ops if v is not None]
            if not puts:
                continue
            _, result = db.batch_put(puts)
            model.apply(result.last_seq, puts)
        else:
            # one op per call: put or delete
            key, value = ops[0]
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
            model.apply(db.snapshot().seq, [ops[0]])
        seqs.append(db.snapshot().seq)
    return model, keys, seqs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_history_and_reads_as_of_any_seq_match_a_model(make_db, seed):
    rng = random.Random(seed)
    db = make_db(workers=3, keep_versions=None)      # the model is the full history
    model, keys, seqs = _run_random_history(db, rng)
    for key in keys:
        chain = model.versions.get(key, [])
        history = db.history(key, oldest_first=True)
        assert [(v.seq, v.value, v.deleted) for v in history] == \
            [(s, val, val is None) for s, val in chain]
        assert [v.version for v in history] == list(range(1, len(chain) + 1))
        assert db.history(key) == history[::-1]
        for v in history:
            expected = None if v.deleted else v.value
            assert db.get(key, version=v.version) == expected
        assert db.get(key, version=len(chain) + 1) is None
        for seq in rng.sample(seqs, min(10, len(seqs))):
            assert db.get(key, at_seq=seq) == model.at(key, seq)
        # hashes chain: each version's prev_hash is the previous version's hash
        for older, newer in zip(history, history[1:]):
            assert newer.prev_hash == older.hash
        if history:
            assert history[0].prev_hash == 0
    assert db.verify().ok


def test_snapshot_reads_stay_put_while_writes_go_on(make_db):
    db = make_db(workers=2)
    db.batch_put([(b"s%03d" % i, b"old") for i in range(200)])
    snap = db.snapshot()
    db.batch_put([(b"s%03d" % i, b"new") for i in range(0, 200, 2)])
    db.batch_delete([b"s%03d" % i for i in range(1, 200, 4)])
    db.put(b"s999", b"born later")
    assert snap.get(b"s000") == b"old" and db.get(b"s000") == b"new"
    assert snap.batch_get([b"s001", b"s999"]) == [b"old", None]
    assert b"s999" not in snap and b"s999" in db
    assert list(snap.scan()) == [(b"s%03d" % i, b"old") for i in range(200)]
    assert list(snap.scan(prefix=b"s01", keys_only=True)) == [b"s%03d" % i for i in range(10, 20)]
    assert [v.value for v in snap.history(b"s000")] == [b"old"]


def test_version_and_seq_arguments_are_checked(make_db):
    db = make_db(workers=1)
    db.put(b"k", b"1")
    for bad in (0, -1):
        with pytest.raises(amdb.InvalidArgumentError) as info:
            db.get(b"k", version=bad)
        assert info.value.hint
    for bad in ("1", 1.0, True):
        with pytest.raises(amdb.InvalidTypeError):
            db.get(b"k", version=bad)
    with pytest.raises(amdb.InvalidArgumentError, match="future"):
        db.get(b"k", at_seq=db.snapshot().seq + 1)
    with pytest.raises(amdb.InvalidArgumentError):
        db.get(b"k", at_seq=-1)
    assert db.get(b"k", at_seq=0) is None           # before anything was written
    assert db.get(b"k", version=7, default=b"d") == b"d"
    assert db.history(b"never written") == []
    assert db.get(b"never", version=1) is None


def test_verify_is_clean_after_deletes_and_aborted_batches(make_db):
    db = make_db(workers=2, max_batch=500, ring_size=1 << 20, keep_versions=None)   # counts every version
    db.batch_put((b"a%05d" % i, b"x" * (i % 30)) for i in range(20_000))
    db.batch_delete([b"a%05d" % i for i in range(0, 20_000, 3)])

    def failing():
        for i in range(5000):
            yield (b"a%05d" % i, b"changed")
        raise RuntimeError("stop")
    with pytest.raises(RuntimeError):
        db.batch_put(failing())
    db.put(b"after", b"abort")                      # settles the rollback first
    report = db.verify()
    assert report.ok, report.breaks[:5]
    assert report.keys_checked == 20_001
    assert report.versions_checked == 20_000 + len(range(0, 20_000, 3)) + 1
    assert db.verify(b"a00003").versions_checked == 2


# -- corruption: every flipped bit in a value, key, hash or link is found --------

FIELDS = ["value", "key", "hash", "prev_hash", "prev_link", "latest", "next0"]


def _field_offset(layout, field, rng):
    versions = layout["versions"]
    if field == "key":
        return layout["key_off"] + rng.randrange(layout["key_len"])
    if field == "latest":
        return layout["latest_off"] + rng.randrange(8)
    if field == "next0":
        return layout["next0_off"] + rng.randrange(8)
    if field in ("prev_hash", "prev_link"):
        older = [i for i, v in enumerate(versions) if v["version"] > 1]     # versions that have a predecessor
        i = rng.choice(older)
        v = versions[i]
        if field == "prev_link":
            return v["prev_off"] + rng.randrange(8)
        if v["prev_hash_off"] is None:
            # Not stored (layout.h, LINKED): the link is the hash of the
            # version before, which the chain then disagrees with.
            return versions[i + 1]["hash_off"] + rng.randrange(8)
        return v["prev_hash_off"] + rng.randrange(8)
    v = rng.choice([v for v in versions if field != "value" or v["value_len"]])
    if field == "value":
        return v["value_off"] + rng.randrange(v["value_len"])
    return v["hash_off"] + rng.randrange(8)


def test_every_flipped_bit_is_detected_and_never_crashes(make_db):
    rng = random.Random(2024)
    db = make_db(workers=2)
    keys = [b"c%04d" % i for i in range(2000)]
    for round_ in range(3):
        db.batch_put([(k, b"value-%d-%s" % (round_, k)) for k in keys])
    assert db.verify().ok
    flips = 0
    for _ in range(140):
        key = rng.choice(keys[:-1])           # not the last key: its next0 link is 0 by design
        layout = db._debug_layout(key)
        field = rng.choice(FIELDS)
        offset = _field_offset(layout, field, rng)
        bit = rng.randrange(8)
        db._debug_flip_bit(layout["worker"], offset, bit)
        try:
            report = db.verify()
            assert not report.ok, f"flipped bit {bit} of {field} of {key!r} went unnoticed"
            assert report.breaks, report
            if field in ("value", "hash", "prev_hash", "prev_link"):
                assert any(b.key == key for b in report.breaks), (field, report.breaks[:3])
            if field == "key":      # reported under the key as now stored (corrupted)
                assert any(b.kind in ("hash", "key_hash") for b in report.breaks), report.breaks[:3]
        finally:
            db._debug_flip_bit(layout["worker"], offset, bit)      # repair it
        flips += 1
    assert flips == 140
    assert db.verify().ok
    assert db.batch_get(keys[:3]) == [b"value-2-" + k for k in keys[:3]]
