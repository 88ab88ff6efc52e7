"""Fuzzing the public API of ParallelDB with hostile input (issue 6).

Every call the fuzzer makes must end in success or in the exception the
contract (docs/API.md, amdb/errors.py) names for that input: a documented
``amdb.Error`` subclass, or the caller's own exception when the caller's code
(a generator, a pair's ``__iter__``) raised it. Never a crash, a hang, a
foreign exception type, or part of a batch.

How the checks stay honest:

* An oracle says, before each call and from the input alone, what the call
  must do: the error for the first bad item in AmDb's documented order, or
  what it must store or return. What a bytes-like object holds is asked from
  Python itself (a PyBUF_SIMPLE buffer request through ctypes, the request
  "any C-contiguous buffer" means).
* One database (2 workers, max_batch=8, a 64 KiB ring: a batch of a few dozen
  items spans several chunks, a few hundred wrap the ring) and a model: a
  plain dict plus the log of every version of every key, both updated only
  for calls that returned. After every failed write the whole database is
  compared with the model: scans both ways, batch_get, get, ``in``, len, the
  sequence number (a failed batch uses none) and verify().
* Reads are checked against the model as of any earlier sequence number.
* Another thread closes a database while a batch_put, batch_get, scan or
  versioned read of the first is running (Barrier/Event, no sleeps).

AMDB_FUZZ_EXAMPLES sets the examples per fuzz test (the default keeps the file
well under a minute on two cores); ``pytest -m slow`` runs every fuzz body with
SLOW_FACTOR times as many. The counts of a run are printed in pytest's
terminal summary ("fuzz: N cases, M raised documented errors, ...").
"""
import array
import collections
import ctypes
import math
import os
import shutil
import tempfile
import threading

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amdb
from amdb.native import routing
from amdb.shm.control import RECORD_HEADER_BYTES
from amdb_testutil import children_of, shm_entries, wait_until

MAX_KEY = 48                # bytes: max_key_size of the fuzzed database
MAX_VALUE = 200             # bytes: max_value_size
MAX_BATCH = 8               # records per chunk: a 30-item batch is several chunks
RING_SIZE = 64 << 10        # bytes per worker: a few hundred 200-byte records wrap it
WORKERS = 2
# keep_versions=None: the model holds every version (the slow soak writes more
# than the default retention's compact_min_versions).
DB_OPTIONS = dict(workers=WORKERS, max_batch=MAX_BATCH, ring_size=RING_SIZE,
                  max_key_size=MAX_KEY, max_value_size=MAX_VALUE, keep_versions=None)
EXAMPLES = int(os.environ.get("AMDB_FUZZ_EXAMPLES", "50"))
SLOW_FACTOR = 20            # -m slow: examples per fuzz body = SLOW_FACTOR * EXAMPLES
RESET_KEYS = 3000           # empty the database when it holds more keys than this
LEAK_GRACE_S = 5.0          # seconds a closed database's workers get to leave
JOIN_TIMEOUT_S = 60.0       # a thread of a concurrency test that takes longer is hung
SLOT_MASK = amdb.SLOT_COUNT - 1
UINT64_MAX = (1 << 64) - 1


# ---- counting --------------------------------------------------------------------

class Tally:
    """Cases run and how they ended; printed in the terminal summary."""

    def __init__(self):
        self.cases = 0
        self.ok = 0
        self.documented = 0      # raised the amdb.Error subclass the oracle named
        self.user = 0            # the caller's own exception came out unchanged
        self.by_error = collections.Counter()

    def line(self):
        kinds = ", ".join(f"{name} {n}" for name, n in sorted(self.by_error.items()))
        return (f"fuzz: {self.cases} cases, {self.documented} raised documented errors "
                f"({kinds}); {self.user} propagated the caller's exception; {self.ok} succeeded")


TALLY = Tally()


class _SummaryPlugin:
    def pytest_terminal_summary(self, terminalreporter):
        if TALLY.cases:
            terminalreporter.write_line(TALLY.line())


@pytest.fixture(scope="module", autouse=True)
def _fuzz_summary(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("amdb-fuzz-summary"):
        manager.register(_SummaryPlugin(), "amdb-fuzz-summary")
    yield


# ---- hostile objects -------------------------------------------------------------

class Boom(Exception):
    """The caller's own exception: must come out of AmDb unchanged."""


class BaseBoom(BaseException):
    """A BaseException that is not an Exception (as KeyboardInterrupt is not)."""


class BytesRaises:
    def __bytes__(self):
        raise Boom("__bytes__")


class HasBytes:
    def __bytes__(self):
        return b"looks-like-bytes"


class BytesSubclass(bytes):
    pass


class StrSubclass(str):
    pass


class IntSubclass(int):
    pass


class PairNamedTuple(collections.namedtuple("PairNamedTuple", "key value")):
    pass


class TupleSubclass(tuple):
    pass


class IterRaisesPair(list):
    """A list of length 2 whose iteration raises after the first element."""

    def __init__(self, items, exc):
        super().__init__(items)
        self.exc = exc

    def __iter__(self):
        yield list.__getitem__(self, 0)
        raise self.exc


class LenRaisesPair(list):
    """A list whose len() raises."""

    def __init__(self, items, exc):
        super().__init__(items)
        self.exc = exc

    def __len__(self):
        raise self.exc


class RaisingIterator:
    """An iterator object (not a generator) that raises after `n` items."""

    def __init__(self, items, n, exc):
        self.items, self.n, self.exc, self.i = list(items), n, exc, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i == self.n:
            raise self.exc
        if self.i >= len(self.items):
            raise StopIteration
        self.i += 1
        return self.items[self.i - 1]


def released_memoryview(data):
    view = memoryview(data)
    view.release()
    return view


# ---- the oracle ------------------------------------------------------------------

class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
PYBUF_SIMPLE = 0


def buffer_bytes(obj):
    """The bytes AmDb must read from key or value `obj`, or the error class it
    must raise: str and objects without a buffer are InvalidTypeError; a
    buffer that cannot be had as C-contiguous bytes is InvalidArgumentError."""
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, str):
        return amdb.InvalidTypeError
    view = _PyBuffer()
    try:
        _get_buffer(obj, ctypes.byref(view), PYBUF_SIMPLE)
    except TypeError:
        return amdb.InvalidTypeError
    except (BufferError, ValueError):
        return amdb.InvalidArgumentError
    try:
        return ctypes.string_at(view.buf, view.len) if view.len else b""
    finally:
        _release_buffer(ctypes.byref(view))


def is_error(x):
    return isinstance(x, BaseException) or (isinstance(x, type) and issubclass(x, BaseException))


def pair_outcome(item):
    """(key, value) that batch_put stores for `item`, or the error (a class,
    or the caller's exception) it must raise, checked in AmDb's order: shape,
    key type, value type, key size, value size."""
    if isinstance(item, LenRaisesPair):
        return item.exc
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        return amdb.InvalidArgumentError
    if isinstance(item, IterRaisesPair):
        return item.exc
    key = buffer_bytes(item[0])
    if is_error(key):
        return key
    value = buffer_bytes(item[1])
    if is_error(value):
        return value
    if len(key) > MAX_KEY:
        return amdb.KeyTooLargeError
    if len(value) > MAX_VALUE:
        return amdb.ValueTooLargeError
    return key, value


def key_outcome(obj, check_size):
    """What a key argument reads as (writes also check its size)."""
    key = buffer_bytes(obj)
    if not is_error(key) and check_size and len(key) > MAX_KEY:
        return amdb.KeyTooLargeError
    return key


def seq_outcome(at_seq, newest):
    """Error class for a bad at_seq=, else the seq a read sees."""
    if at_seq is None:
        return newest
    if isinstance(at_seq, bool) or not isinstance(at_seq, int):
        return amdb.InvalidTypeError
    if at_seq < 0 or at_seq > newest:
        return amdb.InvalidArgumentError
    return int(at_seq)


def version_outcome(version):
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int):
        return amdb.InvalidTypeError
    if version < 1:
        return amdb.InvalidArgumentError
    return int(version)


def column_outcome(arr):
    """(elements' bytes, item width) that put_array/get_array read from a
    numpy array, or the error class: a non-array is InvalidTypeError, not 1-D
    InvalidArgumentError, a dtype other than S<n>/unsigned InvalidTypeError."""
    if not isinstance(arr, np.ndarray):
        return amdb.InvalidTypeError
    kind, width = arr.dtype.kind, arr.dtype.itemsize
    if arr.ndim == 2 and kind == "u" and width == 1:
        return [row.tobytes() for row in arr], arr.shape[1]     # 2-D uint8: one raw row per item
    if arr.ndim != 1:
        return amdb.InvalidArgumentError
    if kind == "S":
        return [bytes(x) for x in arr], width      # numpy strips trailing NULs: so must AmDb
    if kind == "V" and arr.dtype.fields is None:
        return [arr[i:i + 1].tobytes() for i in range(len(arr))], width     # raw, nothing stripped
    if kind == "u":
        return [int(x).to_bytes(width, "big") for x in arr], width
    if kind == "i":                                 # order-preserving: the sign bit flipped
        return [(int(x) + (1 << (8 * width - 1))).to_bytes(width, "big") for x in arr], width
    return amdb.InvalidTypeError


# ---- strategies ------------------------------------------------------------------

KEY_ATOMS = [b"\x00", b"a", b"b", b"\xff"]
small_keys = st.lists(st.sampled_from(KEY_ATOMS), max_size=3).map(b"".join)
long_keys = st.builds(lambda atom, n: atom * n, st.sampled_from([b"a", b"\xff", b"z"]),
                      st.sampled_from([MAX_KEY - 1, MAX_KEY]))
oversize_keys = st.integers(MAX_KEY + 1, MAX_KEY + 40).map(lambda n: b"K" * n)
good_key_bytes = st.one_of(small_keys, small_keys, long_keys)
key_bytes = st.one_of(good_key_bytes, good_key_bytes, good_key_bytes, oversize_keys)
good_value_bytes = st.one_of(st.just(b""), st.binary(max_size=12),
                             st.integers(MAX_VALUE - 2, MAX_VALUE).map(lambda n: b"v" * n))
oversize_values = st.one_of(st.integers(MAX_VALUE + 1, MAX_VALUE + 64).map(lambda n: b"V" * n),
                            st.just(b"H" * (RING_SIZE + 1)))
value_bytes = st.one_of(good_value_bytes, good_value_bytes, good_value_bytes, oversize_values)

WRAP_FORMS = ["bytes", "bytes", "bytes", "bytearray", "memoryview", "bytes_subclass", "numpy_u1",
              "array_B", "array_H", "memoryview_2d", "memoryview_of_bytearray", "memoryview_step",
              "memoryview_reversed", "released_memoryview"]


def _wrap(data, form):
    """`data` as another bytes-like (or not quite bytes-like) object."""
    if form == "bytearray":
        return bytearray(data)
    if form == "memoryview":
        return memoryview(data)
    if form == "bytes_subclass":
        return BytesSubclass(data)
    if form == "numpy_u1":
        return np.frombuffer(data, dtype=np.uint8)
    if form == "array_B":
        return array.array("B", data)
    if form == "array_H":
        return array.array("H", data[:len(data) // 2 * 2])
    if form == "memoryview_2d" and data and len(data) % 2 == 0:
        return memoryview(data).cast("B", shape=[len(data) // 2, 2])
    if form == "memoryview_of_bytearray":
        return memoryview(bytearray(data))
    if form == "memoryview_step":       # C-contiguous only with 0 or 1 bytes
        return memoryview(data + data)[::2]
    if form == "memoryview_reversed":
        return memoryview(data)[::-1]
    if form == "released_memoryview":
        return released_memoryview(data)
    return data


def wrapped(data_strategy):
    return st.builds(_wrap, data_strategy, st.sampled_from(WRAP_FORMS))


# numpy arrays of odd dtypes, shapes and layouts.
ODD_DTYPES = ["u1", "<u2", ">u2", ">u8", "u8", "i4", "<f8", ">f4", "f2", "?", "c8", "U2", "S3", "S0",
              "V3", "M8[D]", "m8[s]", [("a", "u1"), ("b", ">i4")], "O"]
LAYOUTS = ["C", "C", "F", "strided", "reversed", "field"]


@st.composite
def odd_arrays(draw, ndim=None, dtypes=ODD_DTYPES, max_side=4):
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    if ndim is None:
        ndim = draw(st.sampled_from([1, 1, 2, 0]))
    shape = tuple(draw(st.lists(st.integers(0, max_side), min_size=ndim, max_size=ndim)))
    count = math.prod(shape)
    if dtype.kind == "O":
        flat = np.empty(count, dtype=object)
        for i in range(count):
            flat[i] = draw(st.sampled_from([b"x", None, 1.5, "s"]))
    elif dtype.itemsize == 0:
        flat = np.zeros(count, dtype=dtype)
    else:
        raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        flat = np.frombuffer(raw, dtype=dtype).copy()
    arr = flat.reshape(shape)
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "F" and arr.ndim >= 2:
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim >= 1:
        arr = np.repeat(arr, 2, axis=0)[::2]
    elif layout == "reversed" and arr.ndim >= 1:
        arr = arr[::-1]
    elif layout == "field" and dtype.kind != "O" and dtype.itemsize:
        holder = np.zeros(arr.shape, dtype=[("pad", "u1"), ("f", dtype)])
        holder["f"] = arr
        arr = holder["f"]       # a view with the holder's stride: not contiguous
    return arr


HOSTILE_NON_BUFFERS = [
    st.text(max_size=3),
    st.builds(StrSubclass, st.text(max_size=3)),
    st.integers(-3, 300),
    st.builds(IntSubclass, st.integers(0, 3)),
    st.none(),
    st.floats(),
    st.booleans(),
    st.lists(st.integers(0, 255), max_size=3),
    st.dictionaries(st.binary(max_size=2), st.binary(max_size=2), max_size=2),
    st.builds(object),
    st.builds(BytesRaises),
    st.builds(HasBytes),
    st.builds(complex),
    st.frozensets(st.integers(0, 3), max_size=2),
]


def any_keys():
    """Keys: mostly bytes, then other bytes-likes, odd numpy arrays, non-buffers."""
    return st.one_of(key_bytes, key_bytes, key_bytes, key_bytes, wrapped(key_bytes), wrapped(key_bytes),
                     odd_arrays(), st.one_of(*HOSTILE_NON_BUFFERS))


def any_values():
    return st.one_of(value_bytes, value_bytes, value_bytes, value_bytes, wrapped(value_bytes),
                     wrapped(value_bytes), odd_arrays(), st.one_of(*HOSTILE_NON_BUFFERS))


USER_EXCEPTIONS = [lambda: Boom("the caller's"), lambda: RuntimeError("generator failed"),
                   lambda: KeyboardInterrupt(), lambda: BaseBoom("base"),
                   lambda: amdb.InvalidArgumentError("the caller's own amdb error")]
user_exceptions = st.sampled_from(USER_EXCEPTIONS).map(lambda make: make())


@st.composite
def pair_items(draw):
    """One item of a batch_put: mostly well-formed pairs, some hostile."""
    kind = draw(st.sampled_from(["tuple"] * 6 + ["list", "namedtuple", "tuple_subclass", "arity",
                                                  "not_a_pair", "iter_raises", "len_raises"]))
    key = draw(st.one_of(good_key_bytes, good_key_bytes, any_keys()))
    value = draw(st.one_of(good_value_bytes, good_value_bytes, any_values()))
    if kind == "tuple":
        return (key, value)
    if kind == "list":
        return [key, value]
    if kind == "namedtuple":
        return PairNamedTuple(key, value)
    if kind == "tuple_subclass":
        return TupleSubclass((key, value))
    # (Picked by index: sampled_from would hash its elements, and some of these refuse to be hashed.)
    if kind == "arity":
        choices = [(), (key,), (key, value, value), [key], [key, value, b"x"]]
        return choices[draw(st.integers(0, len(choices) - 1))]
    if kind == "not_a_pair":
        choices = [b"ab", "ab", {b"k": b"v"}, None, 7, bytearray(b"ab"), iter([b"k", b"v"]), memoryview(b"ab")]
        return choices[draw(st.integers(0, len(choices) - 1))]
    if kind == "iter_raises":
        return IterRaisesPair([key, value], draw(user_exceptions))
    return LenRaisesPair([key, value], draw(user_exceptions))


hostile_at_seqs = st.one_of(
    st.integers(0, 10**6), st.integers(-3, -1), st.just(2**64), st.just(2**70), st.booleans(), st.floats(),
    st.text(max_size=2), st.builds(IntSubclass, st.integers(0, 50)))
version_args = st.one_of(
    st.none(), st.none(), st.integers(1, 6), st.integers(1, 6), st.one_of(
        st.integers(-2, 0), st.just(UINT64_MAX), st.just(UINT64_MAX + 1), st.just(2**100), st.booleans(), st.floats(),
        st.text(max_size=2), st.builds(IntSubclass, st.integers(1, 4))))


# ---- the database and its model --------------------------------------------------

class Model:
    """What the successful calls left in the database: a plain dict, and every
    version of every key as (seq, value, or None for a deletion)."""

    def __init__(self, db):
        self.db = db
        self.data = {}
        self.versions = collections.defaultdict(list)
        self.seq = 0

    def commit_puts(self, pairs):
        self.seq += 1
        for key, value in pairs:
            self.data[key] = value
            self.versions[key].append((self.seq, value))

    def commit_deletes(self, keys):
        self.seq += 1
        for key in keys:
            if key in self.data:          # deleting a missing key appends no version
                del self.data[key]
                self.versions[key].append((self.seq, None))

    def commit_outcome(self, outcome, records, *, puts=None, deletes=None):
        """Check a write's BatchOutcome against the records the oracle expected; commit them."""
        success, results = outcome
        assert success is True and outcome.results is results
        assert results.count == len(records), (results, len(records))
        assert sum(results.per_worker) == results.count and len(results.per_worker) == WORKERS
        if not records:
            assert (results.count, results.first_seq, results.last_seq, results.chunks) == (0, 0, 0, 0)
            return
        assert results.first_seq == results.last_seq == results.seq == self.seq + 1, \
            f"sequence numbers do not count committed batches: {results} after seq {self.seq}"
        assert results.chunks >= -(-len(records) // MAX_BATCH)
        if puts is not None:
            self.commit_puts(puts)
        else:
            self.commit_deletes(deletes)

    def state_at(self, seq):
        out = {}
        for key, versions in self.versions.items():
            value = None
            for s, v in versions:
                if s > seq:
                    break
                value = v
            if value is not None:
                out[key] = value
        return out

    def history_at(self, key, seq):
        """[(version_no, seq, value or None)] oldest first, as of seq."""
        return [(i + 1, s, v) for i, (s, v) in enumerate(self.versions.get(key, ())) if s <= seq]


def one_of_keys(keys):
    """A key of `keys` (a sorted list; b"a" if empty), picked by index: what is
    drawn does not depend on the model's state, so hypothesis can replay it."""
    return st.integers(0, 1 << 16).map(lambda i: keys[i % len(keys)] if keys else b"a")


def live_key(model):
    return one_of_keys(sorted(model.data))


def check_db(model, probes=()):
    """The whole database equals the model."""
    db = model.db
    expected = sorted(model.data.items())
    assert list(db.scan()) == expected
    assert list(db.scan(reverse=True, keys_only=True)) == [k for k, _ in reversed(expected)]
    assert len(db) == len(model.data)
    keys = [k for k, _ in expected] + [p for p in probes if p not in model.data]
    assert db.batch_get(keys) == [model.data.get(k) for k in keys]
    for key in keys[:4] + keys[-4:]:
        assert db.get(key, b"<missing>") == model.data.get(key, b"<missing>")
        assert (key in db) == (key in model.data)
    assert db.snapshot().seq == model.seq, "the sequence number moved without a committed batch"
    report = db.verify()
    assert report.ok, report.breaks[:5]
    # Nodes of keys that only an aborted batch wrote stay in the index (with no
    # version): verify() counts them, nothing else shows them.
    assert report.keys_checked >= len(model.versions)
    assert report.versions_checked == sum(map(len, model.versions.values()))


MODULE_WORKERS = set()      # pids of the module database's workers, while it is open


@pytest.fixture(scope="module")
def fuzz_model():
    db = amdb.ParallelDB(**DB_OPTIONS)
    MODULE_WORKERS.update(w["pid"] for w in db.stats()["workers"])
    yield Model(db)
    db.close()
    MODULE_WORKERS.clear()


@pytest.fixture(autouse=True)
def _nothing_leaks():
    """After every test: no segment of ours in /dev/shm, no child process but
    the workers of the module's database."""
    me = os.getpid()
    yield
    allowed = set(MODULE_WORKERS)
    assert wait_until(lambda: not shm_entries(me), LEAK_GRACE_S), f"left in /dev/shm: {shm_entries(me)}"
    assert wait_until(lambda: set(children_of(me)) <= allowed, LEAK_GRACE_S), \
        f"processes left behind: {sorted(set(children_of(me)) - allowed)}"


def reset_if_large(model):
    if len(model.data) > RESET_KEYS:
        keys = list(model.data)
        model.commit_outcome(model.db.batch_delete(keys), keys, deletes=keys)


# ---- running a call against its expected outcome -----------------------------------

class Reentrant:
    """Expected: amdb.Error with code "reentrant_write"."""


def attempt(call):
    """('ok', result) or ('raised', exception) of call()."""
    try:
        return "ok", call()
    except (Exception, KeyboardInterrupt, BaseBoom) as exc:
        return "raised", exc


def expect(what, outcome, error):
    """Assert that `outcome` (from attempt) matches `error`: None (success),
    an amdb error class (exactly that class), Reentrant, or the caller's
    exception instance (that very object). Counts the case."""
    status, got = outcome
    TALLY.cases += 1
    if error is None:
        assert status == "ok", f"{what}: expected success, got {type(got).__name__}: {got!r}"
        TALLY.ok += 1
        return got
    assert status == "raised", f"{what}: expected {error!r}, got success: {got!r}"
    if isinstance(error, BaseException):
        assert got is error, f"{what}: the caller's {error!r} came back as {type(got).__name__}: {got!r}"
        TALLY.user += 1
        return got
    if error is Reentrant:
        assert type(got) is amdb.Error and got.code == "reentrant_write", f"{what}: {got!r}"
    else:
        assert type(got) is error, f"{what}: expected {error.__name__}, got {type(got).__name__}: {got}"
    assert isinstance(got, amdb.Error)
    assert isinstance(got.code, str) and got.code and isinstance(got.hint, str) and got.hint
    TALLY.documented += 1
    TALLY.by_error[type(got).__name__] += 1
    return got


def run_fuzz(body, examples):
    """Run body(data) as a hypothesis test of `examples` examples."""
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def fuzz(data):
        body(data)

    fuzz()


# ---- batch_put ---------------------------------------------------------------------

def plain_keys(items):
    """The bytes keys of the well-formed pairs among `items` (probes after a failure)."""
    return [item[0] for item in items
            if type(item) is tuple and len(item) == 2 and isinstance(item[0], bytes)]


def batch_put_oracle(items, container, raise_at, exc, reentrant_at, reentrant_call):
    """(expected error or None, pairs stored) of a batch_put of `items` fed
    through `container`."""
    stored = []
    for i, item in enumerate(items):
        if container in ("raising_generator", "raising_iterator") and i == raise_at:
            return exc, []
        if container == "reentrant_generator" and i == reentrant_at and reentrant_call != "read":
            return Reentrant, []
        outcome = pair_outcome(item)
        if is_error(outcome):
            return outcome, []
        stored.append(outcome)
    if container in ("raising_generator", "raising_iterator") and raise_at == len(items):
        return exc, []
    return None, stored


def fuzz_batch_put(model, data):
    db = model.db
    reset_if_large(model)
    if data.draw(st.booleans(), label="many items"):
        # Several chunks per worker, and more bytes than the ring holds.
        n = data.draw(st.integers(MAX_BATCH + 1, 400), label="n")
        size = data.draw(st.integers(0, MAX_VALUE), label="value size")
        items = [(b"g%04d" % i, (b"%d-" % i * (size // 2 + 1))[:size]) for i in range(n)]
        bad_at = data.draw(st.none() | st.integers(0, n - 1), label="bad item at")
        if bad_at is not None:
            items[bad_at] = data.draw(pair_items(), label="bad item")
    else:
        items = data.draw(st.lists(pair_items(), max_size=12), label="items")
    container = data.draw(st.sampled_from(
        ["list"] * 4 + ["tuple", "generator", "raising_generator", "raising_iterator",
                        "reentrant_generator", "set", "not_iterable", "str", "bytes", "dict"]),
        label="container")
    raise_at = data.draw(st.integers(0, len(items) + 1), label="raise after")
    exc = data.draw(user_exceptions, label="exception")
    reentrant_at = data.draw(st.integers(0, len(items)), label="reentrant at")
    reentrant_call = data.draw(st.sampled_from(["read", "put", "close", "verify", "digest", "batch_delete"]),
                               label="reentrant call")
    expected, stored = batch_put_oracle(items, container, raise_at, exc, reentrant_at, reentrant_call)
    before = dict(model.data)
    probe_keys = list(before)[:20] + [b"g0000", b"a"]
    inside = {}

    def generator():
        for i, item in enumerate(items):
            if container == "raising_generator" and i == raise_at:
                raise exc
            if container == "reentrant_generator" and i == reentrant_at:
                if reentrant_call == "read":
                    # Workers may have applied chunks of this batch already: still invisible.
                    inside["len"] = len(db)
                    inside["got"] = db.batch_get(probe_keys)
                else:
                    calls = {"put": lambda: db.put(b"a", b"x"), "close": db.close, "verify": db.verify,
                             "digest": db.digest, "batch_delete": lambda: db.batch_delete([b"a"])}
                    calls[reentrant_call]()
            yield item
        if container == "raising_generator" and raise_at == len(items):
            raise exc

    if container == "list":
        source = list(items)
    elif container == "tuple":
        source = tuple(items)
    elif container == "raising_iterator":
        source = RaisingIterator(items, raise_at, exc)
    elif container == "set":
        try:
            source = set(items)
        except (TypeError, ValueError):
            source = list(items)           # unhashable items: feed them as a list
        expected, stored = batch_put_oracle(list(source), "list", None, None, None, None)
    elif container == "not_iterable":
        source = data.draw(st.sampled_from([None, 5, 1.5, object(), BytesRaises()]), label="not iterable")
        expected, stored = amdb.InvalidTypeError, []
    elif container in ("str", "bytes"):
        # Iterating these yields 1-char strs or ints: never (key, value) pairs.
        source = {"str": "ab", "bytes": b"ab"}[container]
        if data.draw(st.booleans(), label="empty"):
            source = source[:0]
            expected, stored = None, []
        else:
            expected, stored = amdb.InvalidArgumentError, []
    elif container == "dict":
        # A mapping: its items are written (issue 17), not its keys.
        source = {} if data.draw(st.booleans(), label="empty") else {b"k": b"v", b"ab": b"cd"}
        expected, stored = None, list(source.items())
    else:
        source = generator()

    got = expect("batch_put", attempt(lambda: db.batch_put(source)), expected)
    if expected is None:
        model.commit_outcome(got, stored, puts=stored)
    assert not db.closed, "a hostile batch closed the database"
    if inside:
        assert inside["len"] == len(before), "len() saw part of a batch in flight"
        assert inside["got"] == [before.get(k) for k in probe_keys], "a reader saw part of a batch in flight"
    if expected is not None:
        check_db(model, probes=plain_keys(items[:40]))


# ---- batch_delete ------------------------------------------------------------------

def fuzz_batch_delete(model, data):
    db = model.db
    key_choices = st.one_of(any_keys(), live_key(model), live_key(model), live_key(model))
    # (Draws never depend on the model's state, so that hypothesis can replay them.)
    many = data.draw(st.booleans(), label="many keys")
    bad = data.draw(st.none() | st.tuples(st.integers(0, 1 << 16), any_keys()), label="bad key")
    keys = data.draw(st.lists(key_choices, max_size=10), label="keys")
    if many:
        keys = sorted(model.data)
        if bad is not None:
            keys.insert(bad[0] % (len(keys) + 1), bad[1])
    container = data.draw(st.sampled_from(["list", "list", "tuple", "generator", "raising_generator",
                                           "numpy_S", "single_bytes", "single_str", "not_iterable",
                                           "memoryview"]), label="container")
    raise_at = data.draw(st.integers(0, 1 << 16), label="raise after") % (len(keys) + 2)
    exc = data.draw(user_exceptions, label="exception")

    def generator():
        for i, key in enumerate(keys):
            if i == raise_at and container == "raising_generator":
                raise exc
            yield key
        if raise_at == len(keys) and container == "raising_generator":
            raise exc

    source, walk = keys, list(keys)
    if container == "tuple":
        source = tuple(keys)
    elif container in ("generator", "raising_generator"):
        source = generator()
    elif container == "numpy_S":
        plain = [k for k in keys if isinstance(k, bytes)]
        source = np.array(plain, dtype="S%d" % max([len(k) for k in plain] + [1]))
        walk = list(source)                     # elements are np.bytes_, trailing NULs stripped
    elif container == "single_bytes":
        source = data.draw(st.sampled_from([b"ab", bytearray(b"ab"), b""]), label="single")
    elif container == "single_str":
        source = "ab"
    elif container == "not_iterable":
        source = data.draw(st.sampled_from([None, 3, 2.5, object()]), label="not iterable")
    elif container == "memoryview":
        source = memoryview(b"ab")              # iterates ints
        walk = list(source)

    expected, records = None, []
    if container in ("single_bytes", "single_str", "not_iterable"):
        expected = amdb.InvalidTypeError
    else:
        for i, key in enumerate(walk):
            if container == "raising_generator" and i == raise_at:
                expected = exc
                break
            outcome = key_outcome(key, check_size=True)
            if is_error(outcome):
                expected = outcome
                break
            records.append(outcome)
        else:
            if container == "raising_generator" and raise_at == len(walk):
                expected = exc
    got = expect("batch_delete", attempt(lambda: db.batch_delete(source)), expected)
    if expected is None:
        model.commit_outcome(got, records, deletes=records)
    else:
        check_db(model, probes=[k for k in keys[:40] if isinstance(k, bytes)])


# ---- single writes and reads -----------------------------------------------------------

def fuzz_single_calls(model, data):
    db = model.db
    key = data.draw(st.one_of(any_keys(), live_key(model)), label="key")
    value = data.draw(any_values(), label="value")
    op = data.draw(st.sampled_from(["put", "put", "delete", "get", "contains", "history", "verify"]), label="op")
    write_key = key_outcome(key, check_size=True)
    read_key = key_outcome(key, check_size=False)
    if op == "put":
        expected = pair_outcome((key, value))
        got = expect("put", attempt(lambda: db.put(key, value)), expected if is_error(expected) else None)
        if is_error(expected):
            check_db(model, probes=[read_key] if isinstance(read_key, bytes) else ())
        else:
            assert got is None
            model.commit_puts([expected])
            assert db.get(expected[0]) == expected[1]
    elif op == "delete":
        expected = write_key if is_error(write_key) else None
        got = expect("delete", attempt(lambda: db.delete(key)), expected)
        if expected is None:
            assert got is None
            model.commit_deletes([write_key])
            assert db.get(write_key) is None and write_key not in db
        else:
            check_db(model)
    elif op == "get":
        default = data.draw(st.sampled_from([None, b"<default>", 0, object()]), label="default")
        got = expect("get", attempt(lambda: db.get(key, default)), read_key if is_error(read_key) else None)
        if not is_error(read_key):
            assert got is model.data.get(read_key, default) if read_key not in model.data \
                else got == model.data[read_key]
    elif op == "contains":
        got = expect("in", attempt(lambda: key in db), read_key if is_error(read_key) else None)
        if not is_error(read_key):
            assert got is (read_key in model.data)
    elif op == "history":
        got = expect("history", attempt(lambda: db.history(key)), read_key if is_error(read_key) else None)
        if not is_error(read_key):
            check_history(model, read_key, got, model.seq, oldest_first=False)
    elif key is None:                    # verify(None) checks every key
        got = expect("verify()", attempt(lambda: db.verify(key)), None)
        assert got.ok and got.versions_checked == sum(map(len, model.versions.values()))
    else:
        got = expect("verify(key)", attempt(lambda: db.verify(key)), read_key if is_error(read_key) else None)
        if not is_error(read_key):
            assert got.ok and got.keys_checked in ((1,) if model.versions.get(read_key) else (0, 1))
            assert got.versions_checked == len(model.versions.get(read_key, ()))


def check_history(model, key, got, seq, *, oldest_first):
    expected = model.history_at(key, seq)
    if not oldest_first:
        expected.reverse()
    assert [(v.version, v.seq, v.value, v.deleted) for v in got] == \
        [(n, s, v, v is None) for n, s, v in expected], key
    chain = got if oldest_first else list(reversed(got))
    for older, newer in zip(chain, chain[1:]):
        assert newer.prev_hash == older.hash
    if chain and chain[0].version == 1:
        assert chain[0].prev_hash == 0


def fuzz_reads(model, data):
    db = model.db
    key_choice = st.one_of(any_keys(), live_key(model), live_key(model), one_of_keys(sorted(model.versions)))
    op = data.draw(st.sampled_from(["get", "get", "batch_get", "scan", "scan", "history"]), label="op")
    past_seq = st.integers(0, 1 << 20).map(lambda i: i % (model.seq + 1))
    at_seq = data.draw(st.one_of(st.none(), st.none(), st.none(), past_seq, past_seq, hostile_at_seqs),
                       label="at_seq")
    limit = seq_outcome(at_seq, model.seq)
    if op == "get":
        key = data.draw(key_choice, label="key")
        version = data.draw(version_args, label="version")
        default = data.draw(st.sampled_from([None, b"<default>"]), label="default")
        wanted = version_outcome(version)
        if version is None and at_seq is None:
            order = [key_outcome(key, False)]
        else:
            order = [wanted, limit, key_outcome(key, False)]
        error = next((x for x in order if is_error(x)), None)
        got = expect("get", attempt(lambda: db.get(key, default, version=version, at_seq=at_seq)), error)
        if error is None:
            k = buffer_bytes(key)
            history = model.history_at(k, limit)
            if wanted is None:
                want = history[-1][2] if history else None
            else:
                want = next((v for n, _, v in history if n == wanted), None)
            assert got == (default if want is None else want), (k, version, at_seq)
    elif op == "batch_get":
        keys = data.draw(st.lists(key_choice, max_size=8), label="keys")
        container = data.draw(st.sampled_from(["list", "tuple", "generator", "raising_generator", "single",
                                               "not_iterable"]), label="container")
        exc = data.draw(user_exceptions, label="exception")
        raise_at = data.draw(st.integers(0, len(keys)), label="raise at")

        def generator():
            for i, k in enumerate(keys):
                if i == raise_at and container == "raising_generator":
                    raise exc
                yield k
            if raise_at == len(keys) and container == "raising_generator":
                raise exc

        source = {"list": keys, "tuple": tuple(keys), "single": b"ab", "not_iterable": 7}.get(container)
        if source is None:
            source = generator()
        if container in ("single", "not_iterable"):
            error = amdb.InvalidTypeError
        elif container == "raising_generator":
            error = exc
        else:
            error = next((x for x in (key_outcome(k, False) for k in keys) if is_error(x)), None)
            error = error or (limit if is_error(limit) else None)
        got = expect("batch_get", attempt(lambda: db.batch_get(source, at_seq=at_seq)), error)
        if error is None:
            state = model.state_at(limit)
            assert got == [state.get(buffer_bytes(k)) for k in keys]
    elif op == "scan":
        mode = data.draw(st.sampled_from(["range", "range", "prefix", "prefix_and_range"]), label="mode")
        start = data.draw(st.none() | key_choice, label="start")
        stop = data.draw(st.none() | key_choice, label="stop")
        prefix = data.draw(key_choice, label="prefix")
        if mode == "prefix":
            start = stop = None
        elif mode == "range":
            prefix = None
        reverse = data.draw(st.sampled_from([False, True, 0, 1, "", "yes", None, [], [0]]), label="reverse")
        keys_only = data.draw(st.sampled_from([False, True, 0, 1, None]), label="keys_only")
        if is_error(limit):
            error = limit
        else:
            # prefix= with start= / stop=: the keys in both (issue 17).
            error = next((x for x in (key_outcome(b, False) for b in (start, stop, prefix) if b is not None)
                          if is_error(x)), None)
        error = error if is_error(error) else None
        got = expect("scan", attempt(lambda: list(db.scan(start, stop, prefix=prefix, reverse=reverse,
                                                           keys_only=keys_only, at_seq=at_seq))), error)
        if error is None:
            state = model.state_at(limit)
            p = b"" if prefix is None else buffer_bytes(prefix)
            lo = None if start is None else buffer_bytes(start)
            hi = None if stop is None else buffer_bytes(stop)
            keys = sorted(k for k in state if k.startswith(p) and (lo is None or k >= lo) and (hi is None or k < hi))
            if reverse:
                keys.reverse()
            assert got == (keys if keys_only else [(k, state[k]) for k in keys])
    else:
        key = data.draw(key_choice, label="key")
        oldest_first = data.draw(st.booleans(), label="oldest_first")
        read_key = key_outcome(key, False)
        error = limit if is_error(limit) else (read_key if is_error(read_key) else None)
        got = expect("history", attempt(lambda: db.history(key, oldest_first=oldest_first, at_seq=at_seq)),
                     error)
        if error is None:
            check_history(model, read_key, got, limit, oldest_first=oldest_first)


# ---- numpy: put_array, get_array, put_packed -------------------------------------------

@st.composite
def key_columns(draw):
    """A keys argument of put_array/get_array: mostly valid S<n> or unsigned
    arrays in odd layouts, sometimes anything at all."""
    kind = draw(st.sampled_from(["S", "S", "S", "u", "u", "odd", "not_array"]))
    n = draw(st.integers(0, 12))
    if kind == "S":
        keys = draw(st.lists(st.one_of(small_keys, small_keys, long_keys), min_size=n, max_size=n))
        width = max([len(k) for k in keys] + [0]) + draw(st.sampled_from([0, 0, 1, 3, MAX_KEY]))
        arr = np.array(keys, dtype="S%d" % width)
    elif kind == "u":
        dtype = np.dtype(draw(st.sampled_from(["u1", "<u2", ">u2", "<u4", ">u4", "<u8", ">u8"])))
        arr = np.array(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)), dtype=dtype)
    elif kind == "odd":
        return draw(odd_arrays())
    else:
        return draw(st.sampled_from([[b"a", b"b"], b"ab", None, "ab", 5]))
    return _layout(draw, arr)


@st.composite
def value_columns(draw, n):
    kind = draw(st.sampled_from(["S", "S", "S", "u", "u", "odd", "not_array"]))
    if kind == "S":
        values = draw(st.lists(st.one_of(good_value_bytes, st.binary(max_size=4).map(lambda b: b + b"\x00")),
                               min_size=n, max_size=n))
        width = max([len(v) for v in values] + [0]) + draw(st.sampled_from([0, 0, 2, MAX_VALUE]))
        arr = np.array(values, dtype="S%d" % width)
    elif kind == "u":
        dtype = np.dtype(draw(st.sampled_from(["u1", ">u2", "<u4", ">u8", "<u8"])))
        arr = np.array(draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)), dtype=dtype)
    elif kind == "odd":
        return draw(odd_arrays())
    else:
        return draw(st.sampled_from([[b"x"] * n, None, b"v" * n]))
    return _layout(draw, arr)


def _layout(draw, arr):
    """The same elements in another memory layout (or another shape)."""
    layout = draw(st.sampled_from(["C", "C", "C", "strided", "reversed_twice", "field", "2d", "0d"]))
    if layout == "strided":
        return np.repeat(arr, 2)[::2]
    if layout == "reversed_twice":
        return arr[::-1].copy()[::-1]
    if layout == "field":
        holder = np.zeros(arr.shape, dtype=[("pad", "u1"), ("f", arr.dtype)])
        holder["f"] = arr
        return holder["f"]
    if layout == "2d" and len(arr) % 2 == 0 and len(arr):
        return draw(st.sampled_from([arr.reshape(2, -1), np.asfortranarray(arr.reshape(2, -1))]))
    if layout == "0d" and len(arr):
        return arr[0:1].reshape(())
    return arr


def fuzz_put_array(model, data):
    db = model.db
    keys = data.draw(key_columns(), label="keys")
    n = len(keys) if isinstance(keys, np.ndarray) and keys.ndim == 1 else 2
    n += data.draw(st.sampled_from([0, 0, 0, 0, 1, -1]), label="length mismatch")
    values = data.draw(value_columns(max(n, 0)), label="values")
    kcol, vcol = column_outcome(keys), column_outcome(values)
    if is_error(kcol):
        expected = kcol
    elif is_error(vcol):
        expected = vcol
    elif len(kcol[0]) != len(vcol[0]):
        expected = amdb.InvalidArgumentError
    elif kcol[1] > MAX_KEY:
        expected = amdb.KeyTooLargeError           # checked by item width, before anything is packed
    elif vcol[1] > MAX_VALUE:
        expected = amdb.ValueTooLargeError
    else:
        expected = None
    got = expect("put_array", attempt(lambda: db.put_array(keys, values)), expected)
    if expected is None:
        pairs = list(zip(kcol[0], vcol[0]))
        model.commit_outcome(got, pairs, puts=pairs)
        back, found = db.get_array(keys)          # the same odd array reads what was written
        assert found.all()
        width = back.dtype.itemsize
        assert rows(back) == [model.data[k].ljust(width, b"\x00") for k, _ in pairs]
    else:
        check_db(model)


def rows(result):
    """The raw bytes of each element of a get_array result (numpy strips NULs on indexing)."""
    return [result[i:i + 1].tobytes() for i in range(len(result))]


def fuzz_get_array(model, data):
    db = model.db
    keys = data.draw(key_columns(), label="keys")
    dtype = data.draw(st.one_of(
        st.none(), st.none(), st.sampled_from(["S1", "S4", "S200", "S0", "u1", ">u2", "<u4", "u8", ">u8",
                                               np.uint64, "f8", "U3", "i4", bool, object, "V4",
                                               [("a", "u1")], "foo", "S-1", 3.5, ("u1", -1),
                                               np.dtype("M8[D]")])), label="dtype")
    kcol = column_outcome(keys)
    if is_error(kcol):
        expected = kcol
    else:
        try:
            out = np.dtype(dtype) if dtype is not None else None
        except (TypeError, ValueError):
            out = "unusable"
        if out == "unusable" or (out is not None and (out.kind not in "SVui"
                                                       or (out.kind == "V" and out.fields is not None))):
            expected = amdb.InvalidTypeError
        elif out is not None and out.kind in "SV" and out.itemsize == 0:
            expected = amdb.InvalidArgumentError  # S0 holds no bytes
        else:
            expected = None
            values = [model.data.get(k) for k in kcol[0]]
            for v in values:
                if v is None or out is None:
                    continue
                if out.kind in "ui" and len(v) != out.itemsize:
                    expected = amdb.InvalidArgumentError
                    break
                if out.kind in "SV" and len(v) > out.itemsize:
                    expected = amdb.ValueTooLargeError
                    break
    got = expect("get_array", attempt(lambda: db.get_array(keys, dtype=dtype)), expected)
    if expected is None:
        result, found = got
        assert found.dtype == np.bool_ and found.tolist() == [v is not None for v in values]
        assert len(result) == len(values)
        if out is not None and out.kind == "u":
            assert result.dtype == out
            assert result.tolist() == [0 if v is None else int.from_bytes(v, "big") for v in values]
        elif out is not None and out.kind == "i":
            assert result.dtype == out
            bias = 1 << (8 * out.itemsize - 1)
            assert result.tolist() == [0 if v is None else int.from_bytes(v, "big") - bias for v in values]
        elif out is not None and out.kind == "V":
            assert result.dtype == out
            assert rows(result) == [(v or b"").ljust(out.itemsize, b"\x00") for v in values]
        else:
            width = out.itemsize if out is not None else max([len(v) for v in values if v] + [1])
            assert result.dtype == np.dtype("S%d" % width)
            assert rows(result) == [(v or b"").ljust(width, b"\x00") for v in values]


def packed(pairs):
    keys = np.frombuffer(b"".join(k for k, _ in pairs), dtype=np.uint8).copy()
    values = np.frombuffer(b"".join(v for _, v in pairs), dtype=np.uint8).copy()
    key_offsets = np.cumsum([0] + [len(k) for k, _ in pairs]).astype(np.int64)
    value_offsets = np.cumsum([0] + [len(v) for _, v in pairs]).astype(np.int64)
    return [keys, key_offsets, values, value_offsets]


def fuzz_put_packed(model, data):
    db = model.db
    pairs = data.draw(st.lists(st.tuples(good_key_bytes, good_value_bytes), max_size=30), label="pairs")
    oversize = data.draw(st.none() | st.tuples(st.integers(0, 1 << 16), key_bytes, value_bytes), label="big item")
    if oversize is not None:
        pairs.insert(oversize[0] % (len(pairs) + 1), oversize[1:])
    args = packed(pairs)
    wanted_dtypes = [np.uint8, np.int64, np.uint8, np.int64]
    damage = data.draw(st.sampled_from(["none", "none", "none", "dtype", "ndim", "not_array", "strided",
                                        "offset", "offset", "wrapping_offsets", "offsets_len", "empty_offsets"]),
                       label="damage")
    which = data.draw(st.integers(0, 3), label="argument")
    if damage == "dtype":
        args[which] = args[which].astype(data.draw(st.sampled_from(
            ["i1", "u2", ">i8", "<u8", "f8", "i4", "O", "S1"]), label="dtype"))
    elif damage == "ndim":
        args[which] = args[which].reshape(1, -1) if data.draw(st.booleans()) else np.array(5, dtype=args[which].dtype)
    elif damage == "not_array":
        args[which] = data.draw(st.sampled_from([list(args[which]), bytes(args[which].astype(np.uint8)), None]))
    elif damage == "strided":
        args[which] = np.repeat(args[which], 2)[::2]          # same elements, not contiguous
    elif damage == "offset" and which in (1, 3):
        offsets = args[which].copy()
        offsets[data.draw(st.integers(0, len(offsets) - 1), label="i")] = data.draw(
            st.one_of(st.integers(-3, int(offsets[-1]) + 3), st.sampled_from([2**62, -2**63, 2**63 - 1])),
            label="offset")
        args[which] = offsets
    elif damage == "wrapping_offsets" and which in (1, 3):
        # end - start overflows int64 and wraps to a small length
        offsets = args[which].copy()
        i = data.draw(st.integers(0, 1 << 16), label="item") % max(1, len(offsets) - 1)
        if len(offsets) >= 2:
            offsets[i], offsets[i + 1] = 2**63 - 1, -2**63 + data.draw(st.integers(0, 8), label="wrapped length")
        args[which] = offsets
    elif damage == "offsets_len":
        args[which | 1] = args[which | 1][:-1]
    elif damage == "empty_offsets":
        args[1], args[3] = args[1][:0], args[3][:0]

    expected = None
    for arr, dtype in zip(args, wanted_dtypes):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype != dtype:
            expected = amdb.InvalidTypeError
            break
    if expected is None and (len(args[1]) != len(args[3]) or len(args[1]) == 0):
        expected = amdb.InvalidArgumentError
    stored = []
    if expected is None:
        keys, ko, values, vo = (a.tolist() for a in args)
        for i in range(len(ko) - 1):
            if not (0 <= ko[i] <= ko[i + 1] <= len(keys) and 0 <= vo[i] <= vo[i + 1] <= len(values)):
                expected = amdb.InvalidArgumentError
                break
        else:
            for i in range(len(ko) - 1):
                k, v = bytes(keys[ko[i]:ko[i + 1]]), bytes(values[vo[i]:vo[i + 1]])
                if len(k) > MAX_KEY:
                    expected = amdb.KeyTooLargeError
                    break
                if len(v) > MAX_VALUE:
                    expected = amdb.ValueTooLargeError
                    break
                stored.append((k, v))
    got = expect("put_packed", attempt(lambda: db.put_packed(*args)), expected)
    if expected is None:
        model.commit_outcome(got, stored, puts=stored)
    else:
        check_db(model, probes=[k for k, _ in pairs[:20]])


# ---- routing helpers (packed layout put_packed takes) -------------------------------------

class ShiftingList(list):
    """A list whose items change after they were first read."""

    def __getitem__(self, i):
        first = list.__getitem__(self, i)
        self.reads = getattr(self, "reads", 0) + 1
        return first if self.reads <= len(self) else (b"", b"")


def fuzz_routing(data):
    pairs = data.draw(st.lists(st.tuples(key_bytes, value_bytes), max_size=10), label="pairs")
    keys, key_offsets, values, value_offsets = packed(pairs)
    op = data.draw(st.sampled_from(["slots", "take", "pack", "pack_shifting"]), label="op")
    if op in ("slots", "take"):
        offsets = key_offsets.copy()
        if len(offsets) and data.draw(st.booleans(), label="damage offsets"):
            offsets[data.draw(st.integers(0, len(offsets) - 1))] = data.draw(
                st.one_of(st.integers(-5, len(keys) + 5), st.sampled_from([2**40, -2**63, 2**63 - 1])))
        if data.draw(st.booleans(), label="truncate offsets"):
            offsets = offsets[:data.draw(st.integers(0, len(offsets)))]
        items = len(offsets) - 1
        off = offsets.tolist()

        def sound(j):
            return 0 <= off[j] <= off[j + 1] <= len(keys)

        if op == "slots":
            if items < 0 or not all(sound(j) for j in range(items)):
                expected = amdb.InvalidArgumentError
            else:
                expected = None
            got = expect("slots_of_packed", attempt(lambda: routing.slots_of_packed(keys, offsets)), expected)
            if expected is None:
                raw = keys.tobytes()
                assert got.tolist() == [xxhash.xxh64_intdigest(raw[off[j]:off[j + 1]]) & SLOT_MASK
                                        for j in range(items)]
        else:
            index = np.array(data.draw(st.lists(st.integers(-2, max(items, 0) + 1), max_size=8)), dtype=np.int64)
            expected = None
            for j in index.tolist():
                if not 0 <= j < items or not sound(j):
                    expected = amdb.InvalidArgumentError
                    break
            got = expect("take_packed", attempt(lambda: routing.take_packed(keys, offsets, index)), expected)
            if expected is None:
                raw = keys.tobytes()
                taken = [raw[off[j]:off[j + 1]] for j in index.tolist()]
                out, out_offsets = got
                assert out.tobytes() == b"".join(taken)
                assert out_offsets.tolist() == np.cumsum([0] + [len(t) for t in taken]).tolist()
    else:
        items = data.draw(st.lists(pair_items(), max_size=6), label="items")
        if op == "pack_shifting":
            items = ShiftingList([(k, v) for k, v in pairs])
        expected, stored = None, []
        for item in list.__iter__(items) if isinstance(items, ShiftingList) else items:
            if isinstance(item, LenRaisesPair):
                expected = item.exc
            elif not isinstance(item, (tuple, list)) or len(item) != 2:
                expected = amdb.InvalidArgumentError
            elif isinstance(item, IterRaisesPair):
                expected = item.exc
            elif not isinstance(item[0], bytes) or not isinstance(item[1], bytes):
                expected = amdb.InvalidTypeError
            elif len(item[0]) > MAX_KEY:
                expected = amdb.KeyTooLargeError
            elif len(item[1]) > MAX_VALUE:
                expected = amdb.ValueTooLargeError
            else:
                stored.append((bytes(item[0]), bytes(item[1])))
                continue
            break
        got = expect("pack_pairs", attempt(lambda: routing.pack_pairs(items, MAX_KEY, MAX_VALUE)), expected)
        if expected is None:
            k, ko, v, vo, slots = got
            assert [a.tolist() for a in (k, ko, v, vo)] == [a.tolist() for a in packed(stored)]
            assert slots.tolist() == [xxhash.xxh64_intdigest(key) & SLOT_MASK for key, _ in stored]


# ---- options ---------------------------------------------------------------------------

def int_option(value, low, high, none_ok=False):
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return amdb.InvalidTypeError
    if not low <= value <= high:
        return amdb.InvalidArgumentError
    return value


def fuzz_options(make_db, data):
    hostile = st.sampled_from(["2", 2.0, None, True, [], -1, 0, 2**80, object()])
    workers = data.draw(st.one_of(st.just(1), st.just(1), st.integers(-1, 300), hostile), label="workers")
    max_batch = data.draw(st.one_of(st.just(4), st.integers(-1, 2), hostile), label="max_batch")
    ring_size = data.draw(st.one_of(st.just(64 << 10), st.integers(0, 1 << 17), hostile), label="ring_size")
    max_key_size = data.draw(st.one_of(st.none(), st.integers(-1, 5000), hostile), label="max_key_size")
    max_value_size = data.draw(st.one_of(st.none(), st.integers(-1, 9000), hostile), label="max_value_size")
    start_timeout = data.draw(st.one_of(st.just(30.0), st.sampled_from(
        [0, -1.0, math.nan, math.inf, "30", None, True, 3601, 1e-9])), label="start_timeout")
    audit = data.draw(st.sampled_from([None, None, 5, b"bytes-path", ["x"]]), label="audit")
    path = data.draw(st.integers(0, 9).map(lambda i: ([None] * 7 + ["str", "bytes", 0])[i]), label="path")
    if path in ("str", "bytes"):        # a durable database, in a fresh directory
        path = os.path.join(tempfile.mkdtemp(prefix="amdb-fuzz-options-"), "db")
        path = os.fsencode(path) if data.draw(st.booleans(), label="bytes path") else path
    kwargs = dict(workers=workers, max_batch=max_batch, ring_size=ring_size, max_key_size=max_key_size,
                  max_value_size=max_value_size, start_timeout=start_timeout, audit=audit)

    def oracle():
        if path is not None and not isinstance(path, (str, bytes)):
            return amdb.InvalidTypeError
        checks = [int_option(workers, 1, 256, none_ok=True), int_option(max_batch, 1, 1 << 31),
                  int_option(ring_size, 64 << 10, 1 << 34)]
        for c in checks:
            if is_error(c):
                return c
        ring = 1 << (ring_size - 1).bit_length()
        record_limit = ring // 8 - RECORD_HEADER_BYTES
        key_limit = min(65536, record_limit // 2)
        key = int_option(max_key_size, 1, key_limit, none_ok=True)
        if is_error(key):
            return key
        key = min(4096, key_limit) if key is None else key
        value = int_option(max_value_size, 0, record_limit - key, none_ok=True)
        if is_error(value):
            return value
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float)):
            return amdb.InvalidTypeError
        if not 0 < start_timeout <= 3600:
            return amdb.InvalidArgumentError
        if audit is not None and not isinstance(audit, (str, os.PathLike)):
            return amdb.InvalidTypeError
        return None

    expected = oracle()
    try:
        if expected is None and start_timeout < 1:
            return      # a real but tiny timeout: whether the workers make it is a race, not a contract
        got = expect("ParallelDB()", attempt(lambda: make_db(path=path, **kwargs)), expected)
        if expected is None:
            value = b"v"[:got.max_value_size]          # max_value_size=0 allows empty values only
            got.put(b"k", value)
            assert got.get(b"k") == value and len(got) == 1
            if got.max_value_size == 0:
                with pytest.raises(amdb.ValueTooLargeError):
                    got.put(b"k", b"v")
            got.close()
            assert got.closed
    finally:
        if isinstance(path, (str, bytes)):
            shutil.rmtree(os.path.dirname(os.fsdecode(path)), ignore_errors=True)


# ---- the fuzz tests --------------------------------------------------------------------

def test_batch_put_hostile_items_and_iterables(fuzz_model):
    run_fuzz(lambda data: fuzz_batch_put(fuzz_model, data), EXAMPLES * 2)
    check_db(fuzz_model)


def test_batch_delete_hostile_keys_and_iterables(fuzz_model):
    run_fuzz(lambda data: fuzz_batch_delete(fuzz_model, data), EXAMPLES)
    check_db(fuzz_model)


def test_single_calls_with_hostile_keys_and_values(fuzz_model):
    run_fuzz(lambda data: fuzz_single_calls(fuzz_model, data), EXAMPLES * 2)
    check_db(fuzz_model)


def test_reads_with_hostile_arguments(fuzz_model):
    run_fuzz(lambda data: fuzz_reads(fuzz_model, data), EXAMPLES * 2)
    check_db(fuzz_model)


def test_put_array_odd_arrays(fuzz_model):
    run_fuzz(lambda data: fuzz_put_array(fuzz_model, data), EXAMPLES)
    check_db(fuzz_model)


def test_get_array_odd_arrays_and_dtypes(fuzz_model):
    run_fuzz(lambda data: fuzz_get_array(fuzz_model, data), EXAMPLES)


def test_put_packed_damaged_buffers(fuzz_model):
    run_fuzz(lambda data: fuzz_put_packed(fuzz_model, data), EXAMPLES)
    check_db(fuzz_model)


def test_routing_helpers_damaged_buffers():
    run_fuzz(fuzz_routing, EXAMPLES)


def test_hostile_options(make_db):
    run_fuzz(lambda data: fuzz_options(make_db, data), max(4, EXAMPLES // 2))


SLOW_BODIES = {
    "batch_put": fuzz_batch_put, "batch_delete": fuzz_batch_delete, "single": fuzz_single_calls,
    "reads": fuzz_reads, "put_array": fuzz_put_array, "get_array": fuzz_get_array,
    "put_packed": fuzz_put_packed,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_BODIES))
def test_fuzz_soak(fuzz_model, name):
    body = SLOW_BODIES[name]
    run_fuzz(lambda data: body(fuzz_model, data), EXAMPLES * SLOW_FACTOR)
    check_db(fuzz_model)


@pytest.mark.slow
def test_routing_soak():
    run_fuzz(fuzz_routing, EXAMPLES * SLOW_FACTOR)


# ---- another thread closes the database mid-call -------------------------------------------

def run_in_thread(call):
    """Start call() in a thread; returns (thread, box) where box gets its attempt() outcome."""
    box = []
    thread = threading.Thread(target=lambda: box.append(attempt(call)), daemon=True)
    thread.start()
    return thread, box


def joined(thread, box):
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive(), "the call never returned"
    return box[0]


def filled_db(make_db, n=300):
    db = make_db(**DB_OPTIONS)
    data = {b"c%04d" % i: b"v%d" % i for i in range(n)}
    db.batch_put(data.items())
    return db, data


@pytest.mark.parametrize("pause_at", [0, 5, 3 * MAX_BATCH + 1])
def test_close_waits_for_a_batch_put_in_flight(make_db, pause_at):
    db, _ = filled_db(make_db, 10)
    barrier = threading.Barrier(2)
    n = 4 * MAX_BATCH * WORKERS

    def items():
        for i in range(n):
            if i == pause_at:
                barrier.wait()              # the main thread calls close() now
            yield (b"w%04d" % i, b"x" * 50)

    thread, box = run_in_thread(lambda: db.batch_put(items()))
    barrier.wait()
    db.close()                              # waits for the batch, which holds the write lock
    outcome = joined(thread, box)
    got = expect("batch_put during close", outcome, None)
    assert got.results.count == n
    assert db.closed
    expect("put after close", attempt(lambda: db.put(b"a", b"b")), amdb.ClosedError)


@pytest.mark.parametrize("reverse", [False, True])
def test_close_while_a_scan_iterates(make_db, reverse):
    db, data = filled_db(make_db)
    expected = sorted(data.items(), reverse=reverse)
    paused, closed = threading.Event(), threading.Event()
    seen = []

    def scan():
        iterator = db.scan(reverse=reverse)
        for item in iterator:
            seen.append(item)
            if len(seen) == 37:
                paused.set()
                assert closed.wait(JOIN_TIMEOUT_S)
        return "finished"

    thread, box = run_in_thread(scan)
    assert paused.wait(JOIN_TIMEOUT_S)
    db.close()
    closed.set()
    expect("scan after close", joined(thread, box), amdb.ClosedError)
    assert seen == expected[:37]


def test_close_while_batch_get_consumes_the_keys(make_db):
    db, data = filled_db(make_db)
    barrier = threading.Barrier(2)

    def keys():
        yield b"c0001"
        barrier.wait()          # the main thread closes the database now...
        barrier.wait()          # ...and has closed it
        yield b"c0002"

    thread, box = run_in_thread(lambda: db.batch_get(keys()))
    barrier.wait()
    db.close()
    barrier.wait()
    expect("batch_get across close", joined(thread, box), amdb.ClosedError)


class PausingSeq(int):
    """An at_seq/version whose comparisons wait while another thread closes the database."""

    barrier = None

    def __lt__(self, other):
        if self.barrier is not None:
            barrier, self.barrier = self.barrier, None
            barrier.wait()
            barrier.wait()
        return int(self) < other


@pytest.mark.parametrize("call", ["get_at_seq", "get_version", "history", "scan", "batch_get"])
def test_close_while_a_versioned_read_checks_its_arguments(make_db, call):
    db, _ = filled_db(make_db, 20)
    barrier = threading.Barrier(2)
    arg = PausingSeq(1)
    arg.barrier = barrier
    calls = {"get_at_seq": lambda: db.get(b"c0001", at_seq=arg),
             "get_version": lambda: db.get(b"c0001", version=arg),
             "history": lambda: db.history(b"c0001", at_seq=arg),
             "scan": lambda: list(db.scan(at_seq=arg)),
             "batch_get": lambda: db.batch_get([b"c0001"], at_seq=arg)}
    thread, box = run_in_thread(calls[call])
    barrier.wait()
    db.close()
    barrier.wait()
    expect(call + " across close", joined(thread, box), amdb.ClosedError)


def test_close_races_with_readers_and_a_writer(make_db):
    """No pause points: reader threads and a writer run until close() stops
    them; every call returns the right answer or raises ClosedError."""
    db, data = filled_db(make_db, 500)
    keys = sorted(data)
    key_array = np.array(keys[:64])
    ready = threading.Barrier(4)
    failures = []

    def reader(seed):
        rounds = 0
        try:
            while True:
                k = keys[(seed * 7919 + rounds) % len(keys)]
                assert db.get(k) == data[k]
                assert db.batch_get(keys[:100]) == [data[x] for x in keys[:100]]
                values, found = db.get_array(key_array)
                assert found.all() and [bytes(v) for v in values] == [data[x] for x in keys[:64]]
                assert list(db.scan(keys[10], keys[40])) == [(x, data[x]) for x in keys[10:40]]
                assert len(db) == len(data) and k in db
                assert db.history(k)[0].value == data[k]
                rounds += 1
                if rounds == 1:
                    ready.wait()
        except amdb.ClosedError:
            return rounds
        except BaseException as exc:
            failures.append(exc)
            ready.abort()
            raise

    def writer():
        rounds = 0
        try:
            while True:
                db.batch_put([(k, data[k]) for k in keys[:50]])    # rewrites the same values
                rounds += 1
                if rounds == 1:
                    ready.wait()
        except amdb.ClosedError:
            return rounds

    threads = [run_in_thread(lambda s=s: reader(s)) for s in range(2)] + [run_in_thread(writer)]
    ready.wait()
    db.close()
    for thread, box in threads:
        status, got = joined(thread, box)
        assert status == "ok" and got >= 1, (status, got, failures)
        TALLY.cases += 1
        TALLY.documented += 1
        TALLY.by_error["ClosedError"] += 1
    assert not failures
