"""put_array / get_array with fixed-width bytes (S<n>, V<n>, 2-D uint8) and integer arrays."""
import numpy as np
import pytest

import amdb

UINT_DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64]


@pytest.fixture(scope="module")
def ndb():
    db = amdb.ParallelDB(workers=2)
    yield db
    db.close()


def _s_keys(prefix, n):
    return np.array([prefix + b"%06d" % i for i in range(n)])


def test_bytes_keys_and_values_round_trip(ndb, prefix):
    n = 500
    keys = _s_keys(prefix, n)
    values = np.array([b"v" * (i % 13) + b"%d" % i for i in range(n)])  # varying lengths
    outcome = ndb.put_array(keys, values)
    success, results = outcome
    assert success is True
    assert results.count == n and sum(results.per_worker) == n
    for i in range(0, n, 37):
        assert ndb.get(bytes(keys[i])) == bytes(values[i])
        assert ndb.get(keys[i].tobytes()) == bytes(values[i])
    got, found = ndb.get_array(keys)
    assert found.dtype == np.bool_ and found.shape == (n,) and found.all()
    longest = max(len(bytes(v)) for v in values)
    assert got.dtype == np.dtype("S%d" % longest)
    assert got.shape == (n,)
    assert (got == values).all()
    assert ndb.batch_get([bytes(k) for k in keys]) == [bytes(v) for v in values]


def test_put_array_is_one_batch(ndb, prefix):
    keys = _s_keys(prefix, 100)
    before = ndb.stats()["visible_seq"]
    success, results = ndb.put_array(keys, keys)
    assert results.first_seq > before
    assert ndb.stats()["visible_seq"] >= results.last_seq


def test_trailing_nuls_are_stripped_like_numpy(ndb, prefix):
    p = prefix
    keys = np.array([p + b"tn\x00", p + b"mid\x00dle", p + b"plain"], dtype="S16")
    values = np.array([b"v\x00\x00", b"\x00lead", b""], dtype="S6")
    ndb.put_array(keys, values)
    # Each element is what numpy itself reads: trailing NULs gone, others kept.
    assert ndb.get(p + b"tn") == b"v"
    assert ndb.get(p + b"tn\x00") is None
    assert ndb.get(p + b"mid\x00dle") == b"\x00lead"
    assert ndb.get(p + b"plain") == b""
    assert p + b"plain" in ndb  # empty value still stored
    # Interop: a key written with put() and a trailing NUL is not reachable
    # through an S array (numpy strips the NUL before AmDb sees it) ...
    ndb.put(p + b"raw\x00", b"x")
    got, found = ndb.get_array(np.array([p + b"raw\x00"]))
    assert not found[0]
    # ... while keys without a trailing NUL are reachable both ways.
    ndb.put(p + b"raw", b"y")
    got, found = ndb.get_array(np.array([p + b"raw\x00", p + b"raw"], dtype="S20"))
    assert found.tolist() == [True, True]
    assert got.tolist() == [b"y", b"y"]


def test_values_with_trailing_nuls_keep_their_length(ndb, prefix):
    ndb.put(prefix + b"tv", b"ab\x00\x00")
    got, found = ndb.get_array(np.array([prefix + b"tv"]))
    assert found[0]
    assert got.dtype == np.dtype("S4")  # the longest value found, NULs included
    assert got.tobytes() == b"ab\x00\x00"


def test_found_mask_and_missing_defaults(ndb, prefix):
    present = _s_keys(prefix + b"p", 50)
    ndb.put_array(present, np.array([b"val%d" % i for i in range(50)]))
    query = np.array([prefix + b"p%06d" % i if i % 3 else prefix + b"missing%d" % i
                      for i in range(50)])
    got, found = ndb.get_array(query)
    assert found.tolist() == [i % 3 != 0 for i in range(50)]
    for i in range(50):
        assert bytes(got[i]) == (b"val%d" % i if i % 3 else b"")


def test_result_dtype_none_and_s_m(ndb, prefix):
    keys = _s_keys(prefix, 4)
    ndb.put_array(keys, np.array([b"a", b"bbb", b"cc", b"ddddd"]))
    missing = np.array([prefix + b"nope"] + [bytes(k) for k in keys])
    got, found = ndb.get_array(missing)
    assert got.dtype == np.dtype("S5")
    got, found = ndb.get_array(keys[:3])
    assert got.dtype == np.dtype("S3")  # longest among those found
    got, found = ndb.get_array(keys, dtype="S9")
    assert got.dtype == np.dtype("S9")
    assert got.tolist() == [b"a", b"bbb", b"cc", b"ddddd"]
    assert found.all()
    got, found = ndb.get_array(keys, dtype=np.dtype("S5"))
    assert got.tolist() == [b"a", b"bbb", b"cc", b"ddddd"]
    with pytest.raises(amdb.ValueTooLargeError) as info:
        ndb.get_array(keys, dtype="S4")
    assert info.value.code and info.value.hint
    # A short dtype is fine when only short values are found.
    got, found = ndb.get_array(keys[:3], dtype="S3")
    assert got.tolist() == [b"a", b"bbb", b"cc"]


@pytest.mark.parametrize("dtype", UINT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_uint_keys_big_endian_and_ordered(make_db, dtype):
    db = make_db(workers=3)
    width = np.dtype(dtype).itemsize
    rng = np.random.default_rng(width)
    if width == 1:
        ints = np.arange(256, dtype=dtype)
    else:
        ints = np.unique(rng.integers(0, np.iinfo(dtype).max, size=3000, dtype=dtype,
                                      endpoint=True))
        ints = np.concatenate([ints, np.array([0, np.iinfo(dtype).max], dtype=dtype)])
        ints = np.unique(ints)
    shuffled = rng.permutation(ints)
    values = np.array([b"i%d" % int(x) for x in shuffled])
    success, results = db.put_array(shuffled, values)
    assert results.count == len(ints)
    scanned = list(db.scan(keys_only=True))
    assert all(len(k) == width for k in scanned)
    assert [int.from_bytes(k, "big") for k in scanned] == [int(x) for x in ints]  # sorted
    for x in shuffled[:100]:
        assert db.get(int(x).to_bytes(width, "big")) == b"i%d" % int(x)
    got, found = db.get_array(shuffled)
    assert found.all()
    assert (got == values).all()
    # A big-endian dtype in memory means the same integers.
    got, found = db.get_array(shuffled.astype(np.dtype(dtype).newbyteorder(">")))
    assert found.all() and (got == values).all()


@pytest.mark.parametrize("dtype", UINT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_uint_values_decode(ndb, prefix, dtype):
    width = np.dtype(dtype).itemsize
    keys = _s_keys(prefix, 200)
    rng = np.random.default_rng(7 + width)
    values = rng.integers(0, np.iinfo(dtype).max, size=200, dtype=dtype, endpoint=True)
    values[:2] = [0, np.iinfo(dtype).max]
    ndb.put_array(keys, values)
    for i in range(0, 200, 17):
        assert ndb.get(bytes(keys[i])) == int(values[i]).to_bytes(width, "big")
    got, found = ndb.get_array(keys, dtype=dtype)
    assert got.dtype == np.dtype(dtype)
    assert found.all()
    assert (got == values).all()
    # Missing keys give 0 and found=False.
    mixed = np.array([bytes(keys[0]), prefix + b"absent"])
    got, found = ndb.get_array(mixed, dtype=dtype)
    assert found.tolist() == [True, False]
    assert got.tolist() == [int(values[0]), 0]


def test_uint_keys_interop_with_bytes_api(ndb):
    keys = np.array([1, 2, 3, 258], dtype=np.uint16)
    ndb.put_array(keys, np.array([b"one", b"two", b"three", b"x102"]))
    assert ndb.get(b"\x00\x01") == b"one"
    assert ndb.get(b"\x01\x02") == b"x102"
    ndb.put(b"\x00\x04", b"four")
    got, found = ndb.get_array(np.array([4, 3, 5], dtype=np.uint16))
    assert found.tolist() == [True, True, False]
    assert got.tolist() == [b"four", b"three", b""]


def test_strided_arrays_are_read_correctly_or_rejected(ndb, prefix):
    keys = _s_keys(prefix, 40)
    values = np.array([b"sv%d" % i for i in range(40)])
    try:
        ndb.put_array(keys[::2], values[::2])
    except amdb.InvalidArgumentError:
        return  # rejecting non-contiguous input is fine; storing garbage is not
    assert ndb.batch_get([bytes(k) for k in keys]) == \
        [bytes(v) if i % 2 == 0 else None for i, v in enumerate(values)]
    try:
        got, found = ndb.get_array(keys[::-1])
    except amdb.InvalidArgumentError:
        return
    assert found.tolist() == [i % 2 == 0 for i in range(39, -1, -1)]
    assert got.tolist() == [bytes(values[i]) if i % 2 == 0 else b"" for i in range(39, -1, -1)]


def test_empty_arrays(ndb):
    success, results = ndb.put_array(np.array([], dtype="S4"), np.array([], dtype="S4"))
    assert success and results.count == 0
    got, found = ndb.get_array(np.array([], dtype=np.uint32))
    assert got.shape == (0,) and found.shape == (0,)


def test_put_array_overwrites_and_last_wins(ndb, prefix):
    keys = np.array([prefix + b"d", prefix + b"e", prefix + b"d"])
    ndb.put_array(keys, np.array([b"first", b"e", b"last"]))
    assert ndb.get(prefix + b"d") == b"last"
    ndb.put_array(keys[:1], np.array([b"again"]))
    assert ndb.get(prefix + b"d") == b"again"


def test_million_item_round_trip(make_db):
    n = 1_000_000
    db = make_db(workers=2)
    rng = np.random.default_rng(42)
    keys = rng.permutation(np.arange(n, dtype=np.uint64) * np.uint64(2654435761))
    int_values = keys ^ np.uint64(0x5A5A5A5A5A5A5A5A)
    success, results = db.put_array(keys, int_values)
    assert success and results.count == n and sum(results.per_worker) == n
    assert len(db) == n
    got, found = db.get_array(keys, dtype=np.uint64)
    assert found.all()
    assert np.array_equal(got, int_values)
    # Bytes values over the same keys: random bytes, compared as numpy sees them.
    s_values = np.frombuffer(rng.bytes(n * 10), dtype="S10")
    db.put_array(keys, s_values)
    got, found = db.get_array(keys, dtype="S10")
    assert found.all()
    assert np.array_equal(got, s_values)
    assert len(db) == n
    probe = keys[:: 99_991]
    assert db.batch_get([int(k).to_bytes(8, "big") for k in probe]) == \
        [bytes(s_values[i]) for i in range(0, n, 99_991)]


def test_hash_index_grows_past_tag_bits(make_db):
    # Tables of up to 2^21 slots grow from the slot tags alone; past that the
    # worker re-reads every node's full hash. 3M keys in one worker cross it
    # (3M / 0.625 load > 2^22 slots): every key must still be found.
    db = make_db(workers=1)
    keys = np.arange(3_000_000, dtype=np.uint64)
    db.put_array(keys, keys * np.uint64(3))
    values, found = db.get_array(keys, dtype=np.uint64)
    assert found.all()
    assert (values == keys * np.uint64(3)).all()
    assert len(db) == len(keys)
    missing, found = db.get_array(np.arange(3_000_000, 3_000_100, dtype=np.uint64))
    assert not found.any()


# ---- binary values as they are, signed integers in order (issue 17) --------------------

def test_binary_values_keep_every_byte_as_v_n_or_2d_uint8(db):
    # S<n> strips trailing NULs (numpy's own reading); V<n> and 2-D uint8 do not.
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=(200, 100), dtype=np.uint8)
    raw[:, -1] = 0                                   # every value ends in a NUL byte
    keys = np.array([b"bin%03d" % i for i in range(200)])
    db.put_array(keys, raw)
    assert all(db.get(keys[i]) == raw[i].tobytes() for i in range(200))
    db.put_array(keys, raw.view("V100").reshape(-1))
    values, found, lengths = db.get_array(keys, dtype="V100", lengths=True)
    assert found.all() and lengths.tolist() == [100] * 200
    assert np.array_equal(values.view(np.uint8).reshape(200, 100), raw)
    db.put_array(raw[:, :8], raw[:, 8:16])           # 2-D uint8 keys too
    assert db.get(raw[3, :8].tobytes()) == raw[3, 8:16].tobytes()


def test_lengths_of_variable_length_values(db):
    keys = np.array([b"a", b"bb", b"missing", b"e"])
    db.batch_put([(b"a", b"1"), (b"bb", b"22\x00"), (b"e", b"")])
    values, found, lengths = db.get_array(keys, lengths=True)
    assert found.tolist() == [True, True, False, True] and lengths.tolist() == [1, 3, 0, 0]
    assert [values[i:i + 1].tobytes()[:lengths[i]] for i in range(4)] == [b"1", b"22\x00", b"", b""]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, ">i8"])
def test_signed_integer_keys_keep_their_order(db, dtype):
    info = np.iinfo(np.dtype(dtype))
    keys = np.array([info.min, -70, -1, 0, 1, 70, info.max], dtype=dtype)
    shuffled = keys[[3, 0, 6, 2, 5, 1, 4]]
    db.put_array(shuffled, shuffled)
    order = [k for k in db.scan(keys_only=True)]
    assert order == sorted(order) and len(order) == 7
    values, found = db.get_array(keys, dtype=dtype)
    assert found.all() and values.dtype == np.dtype(dtype) and values.tolist() == keys.tolist()
    values, found = db.get_array(np.array([5], dtype=dtype), dtype=dtype)
    assert not found[0] and values[0] == 0


def test_structured_and_float_arrays_are_refused_before_anything_is_written(db):
    n = len(db)
    for bad in (np.zeros(3, dtype=[("a", "u1")]), np.zeros(3, dtype=np.float64), np.zeros((3, 2), np.uint16)):
        with pytest.raises((amdb.InvalidTypeError, amdb.InvalidArgumentError)):
            db.put_array(bad, np.array([b"v"] * 3))
    assert len(db) == n
