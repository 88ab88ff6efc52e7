"""Bulk routing helpers (amdb.native.routing) and ParallelDB.put_packed."""
import random

import numpy as np
import pytest
import xxhash

import amdb
from amdb.native import routing


def _packed(keys):
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(k) for k in keys])
    return np.frombuffer(b"".join(keys), dtype=np.uint8).copy(), offsets


def test_slots_match_xxhash_for_lists_and_packed_buffers():
    rng = random.Random(7)
    keys = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40))) for _ in range(2000)]
    expected = [xxhash.xxh64_intdigest(k) % amdb.SLOT_COUNT for k in keys]
    assert routing.slots_of_keys(keys).tolist() == expected
    data, offsets = _packed(keys)
    assert routing.slots_of_packed(data, offsets).tolist() == expected


def _split_by_owner(items, slot_owner, owners):
    keys, key_offsets, values, value_offsets, slots = routing.pack_pairs(items, 1 << 16, 1 << 30)
    owner_of = slot_owner[slots]
    groups = []
    for owner in range(owners):
        index = np.flatnonzero(owner_of == owner).astype(np.int64)
        groups.append(routing.take_packed(keys, key_offsets, index)
                      + routing.take_packed(values, value_offsets, index))
    return groups


def test_pack_and_take_split_by_owner_and_keep_order():
    owners = 3
    slot_owner = np.array([(s * 7) % owners for s in range(amdb.SLOT_COUNT)], dtype=np.uint16)
    items = [(b"k%04d" % i, b"v" * (i % 5)) for i in range(3000)] + [(b"k0001", b"again")]
    groups = _split_by_owner(items, slot_owner, owners)
    assert len(groups) == owners
    seen = []
    for owner, (keys, key_offsets, values, value_offsets) in enumerate(groups):
        for i in range(len(key_offsets) - 1):
            key = keys[key_offsets[i]:key_offsets[i + 1]].tobytes()
            value = values[value_offsets[i]:value_offsets[i + 1]].tobytes()
            assert slot_owner[xxhash.xxh64_intdigest(key) % amdb.SLOT_COUNT] == owner
            seen.append((owner, key, value))
    assert sorted((k, v) for _, k, v in seen) == sorted(items)
    # Order within an owner is the input order (the duplicate comes last).
    dup = [v for _, k, v in seen if k == b"k0001"]
    assert dup == [b"v", b"again"]


def test_pack_pairs_and_take_packed_reject_bad_input():
    with pytest.raises(amdb.InvalidTypeError):
        routing.pack_pairs([("k", b"v")], 100, 100)
    with pytest.raises(amdb.InvalidArgumentError):
        routing.pack_pairs([(b"k",)], 100, 100)
    with pytest.raises(amdb.KeyTooLargeError):
        routing.pack_pairs([(b"k" * 101, b"v")], 100, 100)
    with pytest.raises(amdb.ValueTooLargeError):
        routing.pack_pairs([(b"k", b"v" * 101)], 100, 100)
    data, offsets = _packed([b"a", b"bc"])
    with pytest.raises(amdb.InvalidArgumentError):
        routing.take_packed(data, offsets, np.array([2], dtype=np.int64))



def _unpacked(packed):
    keys, key_offsets, values, value_offsets, slots = packed
    return [(keys[key_offsets[i]:key_offsets[i + 1]].tobytes(), values[value_offsets[i]:value_offsets[i + 1]].tobytes())
            for i in range(len(slots))]


@pytest.mark.parametrize("value_size", [0, 7, 200, 5000])
def test_pack_pairs_every_input_shape_and_size(value_size):
    # Lists and tuples are read as they are, other iterables from a copy; a
    # pair that is a list or a tuple subclass makes a list start again from a
    # copy. Values past 4 MiB in all go to a mapping of their own that grows
    # (pack_pairs starts with 64 bytes per value): every shape and size must
    # give the same packed bytes, offsets and slots.
    rng = random.Random(value_size)
    n = 3000
    items = [(b"key_%d" % i, rng.randbytes(rng.randrange(value_size + 1))) for i in range(n)]
    expected = items
    odd = list(items)
    odd[n // 2] = list(odd[n // 2])
    odd[n - 1] = PairTuple(odd[n - 1])
    for shape in (items, tuple(items), iter(items), (pair for pair in items), odd, tuple(odd)):
        packed = routing.pack_pairs(shape, 1 << 16, 1 << 20)
        assert _unpacked(packed) == expected
        assert packed[4].tolist() == [xxhash.xxh64_intdigest(k) % amdb.SLOT_COUNT for k, _ in expected]
        assert packed[1].dtype == packed[3].dtype == np.int64 and packed[4].dtype == np.uint16
        assert packed[0].dtype == packed[2].dtype == np.uint8


def test_pack_pairs_of_nothing():
    for items in ([], (), iter([])):
        keys, key_offsets, values, value_offsets, slots = routing.pack_pairs(items, 16, 16)
        assert (keys.tolist(), key_offsets.tolist(), values.tolist(), value_offsets.tolist(), slots.tolist()) \
            == ([], [0], [], [0], [])


class PairTuple(tuple):
    pass

def test_put_packed_round_trip_and_atomic_on_bad_offsets(make_db):
    db = make_db(workers=2)
    items = [(b"p%05d" % i, b"x" * (i % 9)) for i in range(5000)]
    keys, key_offsets, values, value_offsets, _ = routing.pack_pairs(items, 4096, 1 << 20)
    success, results = db.put_packed(keys, key_offsets, values, value_offsets)
    assert success and results.count == len(items)
    assert db.batch_get([k for k, _ in items]) == [v for _, v in items]
    before = len(db)
    bad = key_offsets.copy()
    bad[-1] = len(keys) + 10                       # past the end of the buffer
    with pytest.raises(amdb.InvalidArgumentError):
        db.put_packed(keys, bad, values, value_offsets)
    with pytest.raises(amdb.InvalidTypeError):
        db.put_packed(keys, key_offsets.astype(np.int32), values, value_offsets)
    with pytest.raises(amdb.InvalidArgumentError):
        db.put_packed(keys, key_offsets[:-1], values, value_offsets)
    assert len(db) == before
