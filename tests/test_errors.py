"""Bad input raises a clear amdb error before anything of the call is visible."""
import json
import os
import signal

import numpy as np
import pytest

import amdb
from amdb_testutil import (
    is_alive, kill_quietly, proc_stat, python_child, read_line, reap, wait_until,
)

MAX_KEY = 64
MAX_VALUE = 256
PRE = {b"pre:%03d" % i: b"pre-value-%d" % i for i in range(300)}


def check_error(exc, cls):
    assert isinstance(exc, cls), (type(exc), cls)
    assert isinstance(exc, amdb.Error)
    assert isinstance(exc.code, str) and exc.code
    assert isinstance(exc.hint, str) and exc.hint
    return exc


@pytest.fixture(scope="module")
def edb():
    db = amdb.ParallelDB(workers=2, max_key_size=MAX_KEY, max_value_size=MAX_VALUE,
                         max_batch=50, ring_size=1 << 20)
    db.batch_put(PRE.items())
    yield db
    db.close()


@pytest.fixture
def untouched(edb):
    """Asserts after the test that the pre-existing data and len are as before."""
    yield
    assert edb.batch_get(list(PRE)) == list(PRE.values())


def assert_invisible(db, keys):
    assert db.batch_get(list(keys)) == [None] * len(keys)
    assert not any(k in db for k in list(keys)[:50])


# -- types --------------------------------------------------------------------

BAD_TYPE_KEYS = ["str-key", 5, None, [1, 2], 1.5, object()]
BAD_TYPE_VALUES = ["str-value", 5, None, [1, 2]]


def test_str_key_hint_mentions_encode(edb, untouched):
    with pytest.raises(amdb.InvalidTypeError) as info:
        edb.put("a", b"v")
    check_error(info.value, TypeError)
    assert "encode" in info.value.hint
    assert edb.get(b"a") is None


def test_str_value_hint_mentions_encode(edb, untouched):
    with pytest.raises(amdb.InvalidTypeError) as info:
        edb.put(b"a", "v")
    check_error(info.value, TypeError)
    assert "encode" in info.value.hint
    assert edb.get(b"a") is None


@pytest.mark.parametrize("key", BAD_TYPE_KEYS, ids=lambda k: type(k).__name__)
def test_bad_key_types_everywhere(edb, untouched, key):
    n = len(edb)
    calls = [
        lambda: edb.put(key, b"v"),
        lambda: edb.delete(key),
        lambda: edb.get(key),
        lambda: key in edb,
        lambda: edb.batch_get([b"pre:001", key]),
        lambda: edb.batch_put([(b"ok-before", b"v"), (key, b"v")]),
        lambda: edb.batch_delete([b"pre:002", key]),
    ]
    for call in calls:
        with pytest.raises(amdb.InvalidTypeError) as info:
            call()
        check_error(info.value, TypeError)
    assert edb.get(b"ok-before") is None
    assert edb.get(b"pre:002") == PRE[b"pre:002"]
    assert len(edb) == n


@pytest.mark.parametrize("value", BAD_TYPE_VALUES, ids=lambda v: type(v).__name__)
def test_bad_value_types(edb, untouched, value):
    n = len(edb)
    with pytest.raises(amdb.InvalidTypeError) as info:
        edb.put(b"bv", value)
    check_error(info.value, TypeError)
    with pytest.raises(amdb.InvalidTypeError) as info:
        edb.batch_put([(b"bv-ok", b"v"), (b"bv", value), (b"pre:003", b"changed")])
    check_error(info.value, TypeError)
    assert_invisible(edb, [b"bv", b"bv-ok"])
    assert len(edb) == n


# -- sizes --------------------------------------------------------------------


def test_key_size_limit(edb, untouched, prefix):
    n = len(edb)
    ok = (prefix + b"k" * MAX_KEY)[:MAX_KEY]
    edb.put(ok, b"fits")
    assert edb.get(ok) == b"fits"
    too_long = ok + b"x"
    for call in (lambda: edb.put(too_long, b"v"),
                 lambda: edb.batch_put([(prefix + b"a", b"v"), (too_long, b"v")]),
                 lambda: edb.batch_delete([ok, too_long])):
        with pytest.raises(amdb.KeyTooLargeError) as info:
            call()
        check_error(info.value, ValueError)
        assert isinstance(info.value, amdb.InvalidArgumentError)
    assert edb.get(too_long) is None
    assert edb.get(prefix + b"a") is None
    assert edb.get(ok) == b"fits"  # the aborted batch_delete deleted nothing
    assert len(edb) == n + 1


def test_value_size_limit(edb, untouched, prefix):
    n = len(edb)
    edb.put(prefix + b"max", b"v" * MAX_VALUE)
    assert edb.get(prefix + b"max") == b"v" * MAX_VALUE
    for call in (lambda: edb.put(prefix + b"big", b"v" * (MAX_VALUE + 1)),
                 lambda: edb.batch_put([(prefix + b"a", b"v"),
                                        (prefix + b"big", b"v" * (MAX_VALUE + 1))])):
        with pytest.raises(amdb.ValueTooLargeError) as info:
            call()
        check_error(info.value, ValueError)
        assert isinstance(info.value, amdb.InvalidArgumentError)
    assert_invisible(edb, [prefix + b"big", prefix + b"a"])
    assert len(edb) == n + 1


def test_default_max_value_size_about_an_eighth_of_ring(make_db):
    ring = 1 << 20
    db = make_db(workers=1, ring_size=ring)
    db.put(b"ok", b"v" * (ring // 16))
    assert len(db.get(b"ok")) == ring // 16
    with pytest.raises(amdb.ValueTooLargeError) as info:
        db.put(b"big", b"v" * (ring // 4))
    check_error(info.value, ValueError)
    assert db.get(b"big") is None


# -- malformed pairs and iterables ---------------------------------------------

MALFORMED_ITEMS = {
    "1-tuple": (b"k",),
    "3-tuple": (b"k", b"v", b"x"),
    "empty-tuple": (),
    "int": 5,
    "none": None,
    "1-list": [b"k"],
}


@pytest.mark.parametrize("name", sorted(MALFORMED_ITEMS))
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_malformed_pair(edb, untouched, prefix, name, where):
    n = len(edb)
    good = [(prefix + b"%03d" % i, b"v") for i in range(120)]  # > max_batch: several chunks
    pos = {"first": 0, "middle": 60, "last": len(good)}[where]
    items = good[:pos] + [MALFORMED_ITEMS[name]] + good[pos:]
    with pytest.raises((amdb.InvalidArgumentError, amdb.InvalidTypeError)) as info:
        edb.batch_put(items)
    check_error(info.value, amdb.Error)
    assert_invisible(edb, [k for k, _ in good])
    assert len(edb) == n


def test_items_not_iterable(edb, untouched):
    for bad in (5, None, object()):
        with pytest.raises(amdb.InvalidTypeError) as info:
            edb.batch_put(bad)
        check_error(info.value, TypeError)
        with pytest.raises(amdb.InvalidTypeError) as info:
            edb.batch_delete(bad)
        check_error(info.value, TypeError)


# -- large batches that fail late ------------------------------------------------

N_LARGE = 250_000


@pytest.fixture(scope="module")
def big_db():
    # max_batch small so that many chunks reach the workers before the bad item.
    db = amdb.ParallelDB(workers=2, max_batch=2_000, ring_size=1 << 20)
    db.batch_put(PRE.items())
    yield db
    db.close()


def _large_items(tag, n=N_LARGE):
    # Overwrites every pre-existing key too: they must keep their old values.
    return [(b"%s:%07d" % (tag, i), b"val%d" % i) for i in range(n)] + \
        [(k, b"OVERWRITTEN") for k in PRE]


def _check_abort_left_nothing(db, items, n_before):
    keys = [k for k, _ in items if k not in PRE]
    assert db.batch_get(keys) == [None] * len(keys)
    assert db.batch_get(list(PRE)) == list(PRE.values())
    assert len(db) == n_before
    assert db.stats()["keys"] == n_before
    assert list(db.scan(prefix=keys[0][:4], keys_only=True)) == []
    # The database is still usable, and later batches do not make the aborted
    # batch's records visible (its sequence numbers are now below visible_seq).
    db.batch_put([(b"after:%d" % i, b"a") for i in range(5_000)])
    db.put(b"after:single", b"s")
    assert db.get(b"after:4999") == b"a" and db.get(b"after:single") == b"s"
    assert db.batch_get(keys) == [None] * len(keys)
    assert db.batch_get(list(PRE)) == list(PRE.values())
    assert list(db.scan(prefix=keys[0][:4], keys_only=True)) == []
    assert len(db) == n_before + 5_001
    db.batch_delete([b"after:%d" % i for i in range(5_000)] + [b"after:single"])
    assert len(db) == n_before


@pytest.mark.parametrize("where", ["middle", "end"])
def test_bad_item_late_in_large_batch(big_db, where):
    n_before = len(big_db)
    items = _large_items(b"bad" + where.encode()[:1])
    bad = ("str-key", b"v")
    if where == "end":
        items_with_bad = items + [bad]
    else:
        items_with_bad = items[:len(items) // 2] + [bad] + items[len(items) // 2:]
    with pytest.raises(amdb.InvalidTypeError) as info:
        big_db.batch_put(items_with_bad)
    check_error(info.value, TypeError)
    _check_abort_left_nothing(big_db, items, n_before)
    # The same batch without the bad item then works completely.
    success, results = big_db.batch_put(items)
    assert success and results.count == len(items)
    assert big_db.get(items[-1][0]) == items[-1][1]
    assert big_db.get(items[0][0]) == items[0][1]
    big_db.batch_delete(k for k, _ in items if k not in PRE)
    big_db.batch_put(PRE.items())
    assert len(big_db) == n_before


def test_oversize_value_at_end_of_large_batch(big_db):
    n_before = len(big_db)
    items = _large_items(b"ovs", 100_000)
    with pytest.raises(amdb.ValueTooLargeError) as info:
        big_db.batch_put(items + [(b"ovs:huge", b"x" * (1 << 20))])
    check_error(info.value, ValueError)
    _check_abort_left_nothing(big_db, items + [(b"ovs:huge", b"")], n_before)


class Boom(RuntimeError):
    pass


def test_generator_raising_midway_propagates_unwrapped(big_db):
    n_before = len(big_db)
    items = _large_items(b"gen", 100_000)
    produced = []

    def gen():
        for i, item in enumerate(items):
            produced.append(i)
            yield item
        raise Boom("generator failed after all items")

    with pytest.raises(Boom) as info:
        big_db.batch_put(gen())
    assert type(info.value) is Boom and not isinstance(info.value, amdb.Error)
    assert str(info.value) == "generator failed after all items"
    assert len(produced) == len(items)  # it really consumed everything first
    _check_abort_left_nothing(big_db, items, n_before)


def test_generator_raising_runtime_error_early(big_db):
    n_before = len(big_db)
    items = _large_items(b"gre", 30_000)

    def gen():
        yield from items[:20_000]
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here") as info:
        big_db.batch_put(gen())
    assert type(info.value) is RuntimeError
    _check_abort_left_nothing(big_db, items, n_before)


def test_keyboard_interrupt_in_generator(big_db):
    n_before = len(big_db)
    items = _large_items(b"kbi", 50_000)

    def gen():
        yield from items
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        big_db.batch_put(gen())
    _check_abort_left_nothing(big_db, items, n_before)


def test_batch_delete_with_bad_key_at_end_deletes_nothing(big_db):
    n_before = len(big_db)
    keys = [b"del:%06d" % i for i in range(20_000)]
    big_db.batch_put((k, b"d") for k in keys)
    with pytest.raises(amdb.InvalidTypeError):
        big_db.batch_delete(keys + list(PRE) + ["str"])
    assert big_db.batch_get(keys) == [b"d"] * len(keys)
    assert big_db.batch_get(list(PRE)) == list(PRE.values())
    assert len(big_db) == n_before + len(keys)

    def gen():
        yield from keys
        raise RuntimeError("delete generator failed")

    with pytest.raises(RuntimeError):
        big_db.batch_delete(gen())
    assert big_db.batch_get(keys) == [b"d"] * len(keys)
    big_db.batch_delete(keys)
    assert len(big_db) == n_before


# -- numpy ------------------------------------------------------------------------

GOOD_KEYS = np.array([b"np1", b"np2", b"np3"])
GOOD_VALUES = np.array([b"a", b"b", b"c"])
BAD_DTYPE_ARRAYS = {
    "float64": np.array([1.0, 2.0, 3.0]),
    "float32": np.array([1.0, 2.0, 3.0], dtype=np.float32),
    "complex": np.array([1, 2, 3], dtype=np.complex64),
    "structured": np.zeros(3, dtype=[("a", "u1"), ("b", ">i4")]),
    "object": np.array([b"a", b"b", b"c"], dtype=object),
    "unicode": np.array(["a", "b", "c"]),
    "bool": np.array([True, False, True]),
}


@pytest.mark.parametrize("name", sorted(BAD_DTYPE_ARRAYS))
def test_put_array_bad_dtypes(edb, untouched, name):
    n = len(edb)
    bad = BAD_DTYPE_ARRAYS[name]
    with pytest.raises(amdb.InvalidTypeError) as info:
        edb.put_array(bad, GOOD_VALUES)
    check_error(info.value, TypeError)
    with pytest.raises(amdb.InvalidTypeError) as info:
        edb.put_array(GOOD_KEYS, bad)
    check_error(info.value, TypeError)
    with pytest.raises(amdb.InvalidTypeError) as info:
        edb.get_array(bad)
    check_error(info.value, TypeError)
    assert_invisible(edb, [bytes(k) for k in GOOD_KEYS])
    assert len(edb) == n


@pytest.mark.parametrize("dtype", [np.float64, np.bool_, object, "U4"])
def test_get_array_bad_result_dtype(edb, dtype):
    with pytest.raises((amdb.InvalidTypeError, amdb.InvalidArgumentError)) as info:
        edb.get_array(GOOD_KEYS, dtype=dtype)
    check_error(info.value, amdb.Error)


def test_put_array_2d_and_mismatch(edb, untouched):
    n = len(edb)
    keys2d = np.array([[b"a", b"b"], [b"c", b"d"]])
    vals2d = np.array([[b"1", b"2"], [b"3", b"4"]])
    cases = [
        (keys2d, vals2d),
        (keys2d.ravel(), vals2d),
        (keys2d, vals2d.ravel()),
        (np.arange(4, dtype=np.uint32).reshape(2, 2), vals2d.ravel()),
        (GOOD_KEYS, GOOD_VALUES[:2]),
        (GOOD_KEYS[:2], GOOD_VALUES),
        (np.array([], dtype="S1"), GOOD_VALUES),
    ]
    for keys, values in cases:
        with pytest.raises(amdb.InvalidArgumentError) as info:
            edb.put_array(keys, values)
        check_error(info.value, ValueError)
    with pytest.raises(amdb.InvalidArgumentError):
        edb.get_array(keys2d)
    assert_invisible(edb, [b"a", b"b", b"c", b"d", b"np1", b"np2", b"np3",
                           b"\x00\x00\x00\x00", b"\x00\x00\x00\x01"])
    assert len(edb) == n


def test_put_array_oversize_key_or_value(edb, untouched):
    n = len(edb)
    keys = np.array([b"k1", b"k" * (MAX_KEY + 1)])
    with pytest.raises(amdb.KeyTooLargeError):
        edb.put_array(keys, np.array([b"a", b"b"]))
    with pytest.raises(amdb.ValueTooLargeError):
        edb.put_array(np.array([b"k1", b"k2"]), np.array([b"a", b"v" * (MAX_VALUE + 1)]))
    assert_invisible(edb, [b"k1", b"k2"])
    assert len(edb) == n


def test_error_hierarchy():
    assert issubclass(amdb.InvalidArgumentError, amdb.Error)
    assert issubclass(amdb.InvalidArgumentError, ValueError)
    assert issubclass(amdb.KeyTooLargeError, amdb.InvalidArgumentError)
    assert issubclass(amdb.ValueTooLargeError, amdb.InvalidArgumentError)
    assert issubclass(amdb.InvalidTypeError, amdb.Error)
    assert issubclass(amdb.InvalidTypeError, TypeError)
    for cls in (amdb.ClosedError, amdb.ArenaFullError, amdb.WorkerCrashedError,
                amdb.WorkerStartError, amdb.VersionReclaimedError):
        assert issubclass(cls, amdb.Error)
    assert amdb.VersionReclaimedError.code == "version_reclaimed" and "keep_versions=" in amdb.VersionReclaimedError.hint
    assert "arena_size=" in amdb.ArenaFullError.hint
    err = amdb.WorkerCrashedError("w1 died", worker=1, signal=9)
    assert (err.worker, err.signal) == (1, 9)


# -- arena full ---------------------------------------------------------------------

ARENA = 1 << 20  # the smallest arena_size accepted


def test_arena_full_applies_nothing(make_db):
    db = make_db(workers=1, arena_size=ARENA, ring_size=1 << 20)
    db.batch_put((b"pre%03d" % i, b"p%d" % i) for i in range(100))
    seq_before = db.stats()["visible_seq"]
    items = [(b"full%06d" % i, b"x" * 1000) for i in range(3 * ARENA // 1000)]
    with pytest.raises(amdb.ArenaFullError) as info:
        db.batch_put(items)
    check_error(info.value, amdb.Error)
    assert "arena_size=" in info.value.hint
    assert_invisible(db, [k for k, _ in items])
    assert db.batch_get([b"pre%03d" % i for i in range(100)]) == [b"p%d" % i for i in range(100)]
    assert len(db) == 100
    assert list(db.scan(prefix=b"full")) == []
    st = db.stats()
    assert st["keys"] == 100 and not st["closed"]
    assert st["workers"][0]["arena_used"] <= st["workers"][0]["arena_capacity"]
    # Still usable: a small write either fits or is refused the same way; a
    # later successful write must not expose the refused batch.
    try:
        db.put(b"small", b"s")
    except amdb.ArenaFullError:
        assert db.get(b"small") is None
    else:
        assert db.get(b"small") == b"s"
        assert db.stats()["visible_seq"] > seq_before
        assert_invisible(db, [k for k, _ in items])
        assert len(db) == 101


def test_arena_full_over_several_workers(make_db):
    db = make_db(workers=2, arena_size=ARENA, ring_size=1 << 20, max_batch=100)
    db.put(b"keep", b"k")
    items = ((b"many%07d" % i, b"y" * 500) for i in range(10_000))  # ~5 MB over 2 MB of arenas
    with pytest.raises(amdb.ArenaFullError):
        db.batch_put(items)
    assert db.get(b"keep") == b"k"
    assert len(db) == 1
    assert db.batch_get([b"many%07d" % i for i in range(0, 10_000, 7)]) == \
        [None] * len(range(0, 10_000, 7))
    assert list(db.keys()) == [b"keep"]


# -- Ctrl-C during a long batch ------------------------------------------------------

SIGINT_DURING_BATCH = r"""
import json, sys
import amdb
db = amdb.ParallelDB(workers=2, ring_size=1 << 20, max_batch=5000)
db.put(b"pre", b"p")

def items():
    for i in range(30_000_000):
        if i == 300_000:
            print("in flight", flush=True)
        yield (b"s%08d" % i, b"z" * 16)

result = {}
try:
    db.batch_put(items())
    result["write"] = "completed"
except KeyboardInterrupt:
    result["write"] = "KeyboardInterrupt"
except BaseException as exc:
    result["write"] = repr(exc)
result["len"] = len(db)
probe = [b"s%08d" % i for i in range(0, 400_000, 997)]
result["visible"] = sum(v is not None for v in db.batch_get(probe))
db.put(b"after", b"a")
result["usable"] = db.get(b"after") == b"a" and len(db) == 2
db.close()
print(json.dumps(result), flush=True)
"""


def test_ctrl_c_during_batch_applies_nothing():
    proc = python_child(SIGINT_DURING_BATCH, stdin=False)
    try:
        assert read_line(proc, timeout=60) == "in flight"
        os.kill(proc.pid, signal.SIGINT)
        result = json.loads(read_line(proc, timeout=60))
        assert proc.wait(timeout=30) == 0
    finally:
        reap(proc)
    assert result == {"write": "KeyboardInterrupt", "len": 1, "visible": 0, "usable": True}


# -- read-side and container mistakes --------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda db: list(db.scan("a")),
    lambda db: list(db.scan(stop="b")),
    lambda db: list(db.scan(prefix="a")),
    lambda db: list(db.scan(stop=5)),
    lambda db: db.batch_get("ab"),      # a single str key, not a list
    lambda db: db.batch_get(b"ab"),     # a single bytes key, not a list
    lambda db: db.batch_get(None),
    lambda db: db.batch_delete(b"ab"),
], ids=["scan-start-str", "scan-stop-str", "scan-prefix-str", "scan-stop-int",
        "batch_get-str", "batch_get-bytes", "batch_get-none", "batch_delete-bytes"])
def test_read_side_type_errors(edb, untouched, call):
    n = len(edb)
    with pytest.raises(amdb.InvalidTypeError) as info:
        call(edb)
    check_error(info.value, TypeError)
    assert len(edb) == n


def test_a_mapping_passed_to_batch_put_writes_its_items(edb, untouched, prefix):
    # Iterating a dict yields its keys only (a 2-byte key would even unpack
    # into two ints): batch_put takes a mapping's items instead (issue 17),
    # one atomic batch; a bad value anywhere still writes nothing.
    n = len(edb)
    with pytest.raises(amdb.InvalidTypeError):
        edb.batch_put({prefix + b"ab": b"v", prefix + b"cd": "str"})
    assert len(edb) == n and edb.get(prefix + b"ab") is None
    edb.batch_put({prefix + b"ab": b"v", prefix + b"cd": b"w"})
    assert edb.batch_get([prefix + b"ab", prefix + b"cd"]) == [b"v", b"w"] and len(edb) == n + 2
    edb.batch_delete([prefix + b"ab", prefix + b"cd"])


BLOCKED_WRITE = r"""
import json, sys, time
import amdb
db = amdb.ParallelDB(workers=2, ring_size=1 << 16, max_batch=1000)
db.put(b"pre", b"p")
print(json.dumps([w["pid"] for w in db.stats()["workers"]]), flush=True)
sys.stdin.readline()                     # the parent has stopped worker 0
print("writing", flush=True)
result = {}
try:
    db.batch_put((b"s%07d" % i, b"z" * 64) for i in range(200_000))
    result["write"] = "completed"
except KeyboardInterrupt:
    result["write"] = "KeyboardInterrupt"
except BaseException as exc:
    result["write"] = repr(exc)
print(json.dumps(result), flush=True)
sys.stdin.readline()                     # the parent has resumed worker 0
result["len"] = len(db)
result["visible"] = sum(v is not None for v in db.batch_get([b"s%07d" % i for i in range(0, 200_000, 101)]))
db.close()
print(json.dumps(result), flush=True)
"""


def test_ctrl_c_interrupts_a_write_blocked_on_a_stuck_worker():
    # A write waiting for ring space of a worker that makes no progress (here:
    # SIGSTOPped) must still honour Ctrl-C promptly, and apply nothing.
    proc = python_child(BLOCKED_WRITE)
    workers = []
    try:
        workers = json.loads(read_line(proc, timeout=60))
        os.kill(workers[0], signal.SIGSTOP)
        assert wait_until(lambda: proc_stat(workers[0])[0] == "T", 5.0)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert read_line(proc, timeout=30) == "writing"
        # Wait until the owner is blocked (its 64 KiB ring to worker 0 is full).
        assert wait_until(lambda: proc_stat(proc.pid)[0] == "S", 10.0)
        os.kill(proc.pid, signal.SIGINT)
        interrupted = json.loads(read_line(proc, timeout=5))
        assert interrupted == {"write": "KeyboardInterrupt"}
        os.kill(workers[0], signal.SIGCONT)
        proc.stdin.write("\n")
        proc.stdin.flush()
        final = json.loads(read_line(proc, timeout=30))
        assert final["len"] == 1 and final["visible"] == 0, final
        assert proc.wait(timeout=30) == 0
    finally:
        for pid in workers:
            kill_quietly(pid, signal.SIGCONT)
        reap(proc)
        assert wait_until(lambda: not any(is_alive(p) for p in workers), 5.0)
