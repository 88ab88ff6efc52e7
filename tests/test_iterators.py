"""Iterators (issue 14): db.iterator() against a sorted model, every move
(seek, seek_to_first / last, next, prev) with bounds, prefixes and reverse,
and an iterator that stays open while writes and a compaction go on."""
import bisect

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import amdb

KEYS = st.binary(min_size=0, max_size=3).map(lambda b: b"k" + b)


class IteratorModel(RuleBasedStateMachine):
    """A cursor over a sorted list of keys, moved like db.iterator()."""

    def __init__(self):
        super().__init__()
        self.db = amdb.ParallelDB(workers=2)
        self.it = None

    @initialize(keys=st.sets(KEYS, max_size=60), lo=st.none() | KEYS, hi=st.none() | KEYS,
                inc_lo=st.booleans(), inc_hi=st.booleans(), reverse=st.booleans())
    def setup(self, keys, lo, hi, inc_lo, inc_hi, reverse):
        self.db.batch_put([(k, k[::-1]) for k in keys])
        inside = sorted(k for k in keys
                        if (lo is None or k > lo or (inc_lo and k == lo))
                        and (hi is None or k < hi or (inc_hi and k == hi)))
        self.items = inside[::-1] if reverse else inside     # in iteration order
        self.reverse = reverse
        self.pos = 0                                           # index of the item ahead
        self.it = self.db.iterator(start=lo, stop=hi, include_start=inc_lo, include_stop=inc_hi,
                                   reverse=reverse)
        # Writes after creation are not in the iterator's snapshot.
        self.db.put(b"k", b"late")
        self.db.delete(next(iter(keys), b"none"))

    def teardown(self):
        self.db.close()

    @rule()
    def step(self):
        if self.pos < len(self.items):
            assert next(self.it) == (self.items[self.pos], self.items[self.pos][::-1])
            self.pos += 1
        else:
            with pytest.raises(StopIteration):
                next(self.it)

    @rule()
    def back(self):
        if self.pos > 0:
            self.pos -= 1
            assert self.it.prev() == (self.items[self.pos], self.items[self.pos][::-1])
        else:
            with pytest.raises(StopIteration):
                self.it.prev()

    @rule(key=KEYS)
    def seek(self, key):
        self.it.seek(key)
        if self.reverse:    # the last item <= key: in iteration order, the first one <= key
            self.pos = next((i for i, k in enumerate(self.items) if k <= key), len(self.items))
        else:
            self.pos = bisect.bisect_left(self.items, key)

    @rule()
    def first(self):
        self.it.seek_to_first()
        self.pos = len(self.items) - 1 if self.reverse and self.items else 0

    @rule()
    def last(self):
        self.it.seek_to_last()
        self.pos = 0 if self.reverse else max(len(self.items) - 1, 0)

    @invariant()
    def cursor(self):
        if self.it is None:
            return
        assert self.it.valid == (self.pos < len(self.items))
        if self.pos < len(self.items):
            assert self.it.key == self.items[self.pos]
            assert self.it.value == self.items[self.pos][::-1]


TestIteratorModel = IteratorModel.TestCase
TestIteratorModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_scan_prefix_with_start_and_limit(make_db):
    db = make_db(workers=2)
    db.batch_put([(b"a%03d" % i, b"x") for i in range(200)] + [(b"b%03d" % i, b"y") for i in range(10)])
    assert list(db.scan(prefix=b"a1", start=b"a150", keys_only=True)) == [b"a%03d" % i for i in range(150, 200)]
    assert list(db.scan(prefix=b"a", limit=3, keys_only=True)) == [b"a000", b"a001", b"a002"]
    assert list(db.scan(prefix=b"a", limit=2, reverse=True, keys_only=True)) == [b"a199", b"a198"]
    assert list(db.iterator(prefix=b"b", values_only=True)) == [b"y"] * 10
    with pytest.raises(amdb.InvalidArgumentError):
        db.iterator(keys_only=True, values_only=True)


def test_reverse_iteration_reads_everything_once(make_db):
    db = make_db(workers=3)
    keys = [b"r%06d" % i for i in range(20_000)]
    db.batch_put([(k, k) for k in keys])
    db.batch_delete(keys[::7])
    live = [k for i, k in enumerate(keys) if i % 7]
    assert list(db.iterator(reverse=True, keys_only=True)) == live[::-1]
    assert list(db.iterator(keys_only=True)) == live


def test_an_open_iterator_reads_its_snapshot_through_writes_and_compactions(make_db):
    db = make_db(workers=2, keep_versions=None)
    keys = [b"c%05d" % i for i in range(3000)]
    db.batch_put([(k, b"old") for k in keys])
    forward = db.iterator()
    backward = db.iterator(reverse=True)
    seen_f = [next(forward) for _ in range(1000)]
    seen_b = [next(backward) for _ in range(1000)]
    db.batch_put([(k, b"new") for k in keys])
    db.batch_put([(b"c%05dz" % i, b"added") for i in range(0, 3000, 3)])
    db.compact()                          # keeps every version: the snapshot's are still there
    seen_f += list(forward)
    seen_b += list(backward)
    assert seen_f == [(k, b"old") for k in keys]
    assert seen_b == [(k, b"old") for k in reversed(keys)]
    db.compact(keep_versions=1)           # the old values go: a new iterator sees the new ones
    fresh = db.iterator(start=b"c00000", stop=b"c00003")
    assert list(fresh) == [(b"c00000", b"new"), (b"c00000z", b"added"), (b"c00001", b"new"), (b"c00002", b"new")]


def test_a_closed_iterator_or_database_refuses(make_db):
    db = make_db(workers=2)
    db.batch_put([(b"a", b"1"), (b"b", b"2")])
    it = db.iterator()
    with it:
        assert next(it) == (b"a", b"1")
    with pytest.raises(amdb.InvalidArgumentError):
        next(it)
    it2 = db.iterator()
    db.close()
    with pytest.raises(amdb.ClosedError):
        next(it2)


def test_seeks_in_long_lists_find_the_first_key_at_or_after(make_db):
    # Lists past SEEK_INDEX_MIN_NODES use the process's seek index: it must
    # give the right answer when built, after inserts it has not seen (it is
    # stale until the list grows by a quarter), and after a compaction (a new
    # generation). Keys share prefixes longer than the index keeps of them.
    import random
    rng = random.Random(7)
    db = make_db(workers=2)
    long_prefix = b"p" * 30

    def key_of(i):
        return (long_prefix if i % 3 == 0 else b"") + b"%08d" % i

    present = sorted(key_of(i) for i in range(0, 40_000, 2))
    db.batch_put([(k, k) for k in present])

    def check(keys, probes):
        it = db.iterator()
        for probe in probes:
            it.seek(probe)
            at = bisect.bisect_left(keys, probe)
            got = []
            while it.valid and len(got) < 3:
                got.append(next(it)[0])
            assert got == keys[at:at + 3], probe
        rev = db.iterator(reverse=True)
        for probe in probes[:200]:
            rev.seek(probe)
            at = bisect.bisect_right(keys, probe)
            assert (rev.key if rev.valid else None) == (keys[at - 1] if at else None), probe

    probes = [key_of(rng.randrange(-2, 40_002)) for _ in range(2_000)] + [b"", b"p" * 31, b"\xff"]
    check(present, probes)
    added = [key_of(i) for i in range(1, 8_000, 2)]    # a fifth more: the index is not rebuilt
    for k in added:
        db.put(k, k)
    present = sorted(present + added)
    check(present, probes)
    db.compact()
    check(present, probes)
