"""amdb.native.hashing agrees with the xxhash package bit for bit."""
import random

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import amdb
from amdb.native import hashing

U64 = (1 << 64) - 1
EDGE_SEEDS = [0, 1, 0x9E3779B185EBCA87, 1 << 63, U64]
MAX_LEN = 300


def _random_bytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


@pytest.mark.parametrize("seed", EDGE_SEEDS)
def test_one_shot_every_length(seed):
    rng = random.Random(seed)
    for n in range(MAX_LEN + 1):
        data = _random_bytes(rng, n)
        assert hashing.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed), (n, seed)


def test_one_shot_every_length_random_seeds():
    rng = random.Random(1234)
    for n in range(MAX_LEN + 1):
        data = _random_bytes(rng, n)
        seed = rng.getrandbits(64)
        assert hashing.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed), (n, seed)


def test_default_seed_is_zero():
    for data in (b"", b"a", b"abc", b"0123456789abcdef" * 3):
        assert hashing.xxh64(data) == xxhash.xxh64_intdigest(data, 0)


def test_published_vectors():
    # Reference values of the XXH64 specification (seed 0).
    assert hashing.xxh64(b"") == 0xEF46DB3751D8E999
    assert hashing.xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert hashing.xxh64(b"abc") == 0x44BC2CF5AD770999


def test_buffer_types():
    data = bytes(range(200))
    expected = xxhash.xxh64_intdigest(data, 7)
    assert hashing.xxh64(bytearray(data), 7) == expected
    assert hashing.xxh64(memoryview(data), 7) == expected
    assert hashing.xxh64(memoryview(b"xx" + data)[2:], 7) == expected


def test_result_is_unsigned_64_bit():
    values = [hashing.xxh64(bytes([i])) for i in range(256)]
    assert all(0 <= v <= U64 for v in values)
    assert any(v >= 1 << 63 for v in values)  # the top bit survives


@given(data=st.binary(max_size=2048), seed=st.integers(0, U64))
@settings(max_examples=60)
def test_one_shot_random(data, seed):
    assert hashing.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


def _split(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@given(data=st.binary(max_size=1024), seed=st.integers(0, U64),
       cuts=st.lists(st.integers(0, 1 << 16), max_size=8))
@settings(max_examples=60)
def test_stream_random_splits(data, seed, cuts):
    pieces = _split(data, cuts)
    assert b"".join(pieces) == data
    assert hashing.xxh64_stream(pieces, seed) == xxhash.xxh64_intdigest(data, seed)


def test_stream_every_length_and_split():
    rng = random.Random(99)
    for n in range(MAX_LEN + 1):
        data = _random_bytes(rng, n)
        seed = rng.choice(EDGE_SEEDS + [rng.getrandbits(64)])
        expected = xxhash.xxh64_intdigest(data, seed)
        # Every single split point for short inputs, a few random ones for long.
        cut_points = range(n + 1) if n <= 40 else rng.sample(range(n + 1), 12)
        for cut in cut_points:
            assert hashing.xxh64_stream([data[:cut], data[cut:]], seed) == expected, (n, cut)
        # Many small pieces (crossing the 32-byte stripe boundary unevenly).
        pieces, i = [], 0
        while i < n:
            step = rng.randint(0, 9)
            pieces.append(data[i:i + step])
            i += step
        assert hashing.xxh64_stream(pieces, seed) == expected, n


def test_stream_empty_and_generators():
    assert hashing.xxh64_stream([], 5) == xxhash.xxh64_intdigest(b"", 5)
    assert hashing.xxh64_stream([b"", b"", b""]) == xxhash.xxh64_intdigest(b"")
    data = bytes(range(256)) * 3
    gen = (data[i:i + 17] for i in range(0, len(data), 17))
    assert hashing.xxh64_stream(gen, 11) == xxhash.xxh64_intdigest(data, 11)


def test_slot_count():
    assert amdb.SLOT_COUNT == 16384


@given(key=st.binary(max_size=300))
@settings(max_examples=60)
def test_slot_of_random(key):
    slot = hashing.slot_of(key)
    assert slot == hashing.xxh64(key) % amdb.SLOT_COUNT
    assert slot == xxhash.xxh64_intdigest(key) % 16384


def test_slot_of_many_keys():
    keys = [b"key_%d" % i for i in range(20_000)] + [b"", b"\x00", b"\xff" * 9]
    slots = [hashing.slot_of(k) for k in keys]
    assert slots == [xxhash.xxh64_intdigest(k) % 16384 for k in keys]
    assert all(0 <= s < 16384 for s in slots)
    # Keys spread over the slots (a constant or truncated hash would not).
    assert len(set(slots)) > 10_000
