"""Model-based test: ParallelDB against a dict, driven by a hypothesis state machine.

One database per configuration is reused across examples; every example starts
from an empty database (the previous example's keys are deleted in teardown,
and __init__ deletes anything still left), so the dict model is exact,
including for len() and whole-database scans.
"""
import os
import random

import pytest

import amdb
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test,
)

# A small alphabet so that keys collide and share prefixes; includes the empty
# key and keys with \x00 and \xff bytes.
KEY_ATOMS = [b"\x00", b"a", b"b", b"\xff"]
keys_st = st.lists(st.sampled_from(KEY_ATOMS), max_size=3).map(b"".join)
values_st = st.one_of(st.just(b""), st.binary(max_size=24), st.binary(min_size=100, max_size=600))
pairs_st = st.lists(st.tuples(keys_st, values_st), max_size=12)
deltas_st = st.one_of(st.integers(-3, 3), st.sampled_from([2 ** 63 - 1, -2 ** 63]))
containers_st = st.sampled_from(["list", "tuple", "generator", "list_pairs", "dict_items"])
MISSING = object()


def as_container(pairs, kind):
    if kind == "list":
        return list(pairs)
    if kind == "tuple":
        return tuple(pairs)
    if kind == "generator":
        return (p for p in pairs)
    if kind == "list_pairs":
        return [[k, v] for k, v in pairs]
    # dict items lose duplicates but keep the last value: same result as the batch.
    return dict(pairs).items()


def check_outcome(outcome, n_items, n_unique):
    success, results = outcome
    assert success is True
    assert outcome.success is True and outcome.results is results
    assert n_unique <= results.count <= n_items
    assert sum(results.per_worker) == results.count
    if n_items == 0:
        assert (results.count, results.first_seq, results.last_seq) == (0, 0, 0)
    else:
        assert 0 < results.first_seq <= results.last_seq
    return results


class DBMachine(RuleBasedStateMachine):
    db = None  # set by the test before running the machine

    def __init__(self):
        super().__init__()
        leftover = list(self.db.keys())
        if leftover:
            self.db.batch_delete(leftover)
        self.model = {}
        self.last_seq = 0

    @initialize()
    def starts_empty(self):
        assert len(self.db) == 0
        assert list(self.db.scan()) == []

    def teardown(self):
        keys = set(self.model)
        keys.update(self.db.keys())
        if keys:
            self.db.batch_delete(list(keys))

    def _seq_advances(self, results):
        if results.count:
            assert results.first_seq > self.last_seq
            self.last_seq = results.last_seq

    # -- writes ---------------------------------------------------------------
    @rule(key=keys_st, value=values_st)
    def put(self, key, value):
        assert self.db.put(key, value) is None
        self.model[key] = value

    @rule(key=keys_st)
    def delete(self, key):
        assert self.db.delete(key) is None
        self.model.pop(key, None)

    @rule(pairs=pairs_st, kind=containers_st)
    def batch_put(self, pairs, kind):
        n_items = len(dict(pairs)) if kind == "dict_items" else len(pairs)
        outcome = self.db.batch_put(as_container(pairs, kind))
        results = check_outcome(outcome, n_items, len({k for k, _ in pairs}))
        self._seq_advances(results)
        for k, v in pairs:  # last one wins
            self.model[k] = v

    @rule(keys=st.lists(keys_st, max_size=10), as_generator=st.booleans())
    def batch_delete(self, keys, as_generator):
        source = (k for k in keys) if as_generator else list(keys)
        outcome = self.db.batch_delete(source)
        success, results = outcome
        assert success is True
        assert sum(results.per_worker) == results.count
        assert results.count <= len(keys)
        self._seq_advances(results)
        for k in keys:
            self.model.pop(k, None)

    # -- read-modify-write (resolved by the worker) ---------------------------
    def _model_increment(self, model, key, delta, initial):
        """The model's increment: the new value, or the exception it raises."""
        old = model.get(key)
        if old is not None and len(old) != 8:
            return amdb.InvalidTypeError
        total = (initial if old is None else int.from_bytes(old, "big", signed=True)) + delta
        if not -2 ** 63 <= total < 2 ** 63:
            return amdb.InvalidArgumentError
        model[key] = total.to_bytes(8, "big", signed=True)
        return total

    @rule(key=keys_st, delta=deltas_st, initial=deltas_st)
    def increment(self, key, delta, initial):
        expected = self._model_increment(dict(self.model), key, delta, initial)
        if isinstance(expected, type):
            with pytest.raises(expected):
                self.db.increment(key, delta, initial=initial)
        else:
            assert self.db.increment(key, delta, initial=initial) == expected
            self.model[key] = expected.to_bytes(8, "big", signed=True)

    @rule(key=keys_st, value=values_st)
    def put_if_absent(self, key, value):
        absent = key not in self.model
        assert self.db.put_if_absent(key, value) is absent
        if absent:
            self.model[key] = value

    @rule(key=keys_st, expected=st.none() | values_st, new=values_st, use_current=st.booleans())
    def compare_and_set(self, key, expected, new, use_current):
        if use_current:                        # mostly succeed, not only by chance
            expected = self.model.get(key)
        done = self.model.get(key) == expected
        assert self.db.compare_and_set(key, expected, new) is done
        if done:
            self.model[key] = new

    @rule(ops=st.lists(st.tuples(st.sampled_from(["put", "delete", "increment", "put_if_absent",
                                                  "compare_and_set"]), keys_st, values_st, deltas_st),
                       max_size=8))
    def write_batch_with_conditions(self, ops):
        """A batch applies whole with every condition holding (as each key
        stands after the batch's earlier writes), or not at all."""
        staged, failure = dict(self.model), None
        for op, key, value, delta in ops:
            if op == "put":
                staged[key] = value
            elif op == "delete":
                staged.pop(key, None)
            elif op == "increment":
                outcome = self._model_increment(staged, key, delta, 0)
                failure = failure or (outcome if isinstance(outcome, type) else None)
            elif op == "put_if_absent":
                if key in staged:
                    failure = failure or amdb.ConditionFailedError
                staged.setdefault(key, value)
            elif staged.get(key) == value[:2]:          # compare_and_set: expected = value[:2]
                staged[key] = value
            else:
                failure = failure or amdb.ConditionFailedError
        try:
            with self.db.write_batch() as batch:
                for op, key, value, delta in ops:
                    if op in ("put", "put_if_absent"):
                        getattr(batch, op)(key, value)
                    elif op == "delete":
                        batch.delete(key)
                    elif op == "increment":
                        batch.increment(key, delta)
                    else:
                        batch.compare_and_set(key, value[:2], value)
        except amdb.Error as exc:
            # Records on different workers: the first failure seen may be
            # another of the batch's failures, but one there must be.
            assert failure is not None, exc
            assert isinstance(exc, (amdb.ConditionFailedError, amdb.InvalidTypeError,
                                    amdb.InvalidArgumentError)), exc
        else:
            assert failure is None, failure
            self.model = staged

    @rule(pairs=pairs_st, keys=st.lists(keys_st, max_size=6))
    def put_then_delete_in_two_batches(self, pairs, keys):
        # A key put in one batch and deleted in the next must end up deleted,
        # also when both batches land in several chunks.
        self.db.batch_put(pairs)
        self.db.batch_delete(keys + [k for k, _ in pairs[:2]])
        for k, v in pairs:
            self.model[k] = v
        for k in keys + [k for k, _ in pairs[:2]]:
            self.model.pop(k, None)

    # -- reads ----------------------------------------------------------------
    @rule(key=keys_st)
    def get(self, key):
        got = self.db.get(key)
        assert got == self.model.get(key)
        if got is not None:
            assert type(got) is bytes
        if key in self.model:
            assert self.db.get(key, MISSING) == self.model[key]
        else:
            assert self.db.get(key, MISSING) is MISSING
            assert self.db.get(key, default=b"dflt") == b"dflt"

    @rule(keys=st.lists(keys_st, max_size=12))
    def batch_get(self, keys):
        got = self.db.batch_get(keys)
        assert isinstance(got, list)
        assert got == [self.model.get(k) for k in keys]

    @rule(key=keys_st)
    def contains(self, key):
        assert (key in self.db) == (key in self.model)

    @rule(start=st.none() | keys_st, stop=st.none() | keys_st,
          reverse=st.booleans(), keys_only=st.booleans())
    def scan_range(self, start, stop, reverse, keys_only):
        keys = sorted(k for k in self.model
                      if (start is None or k >= start) and (stop is None or k < stop))
        if reverse:
            keys.reverse()
        expected = keys if keys_only else [(k, self.model[k]) for k in keys]
        got = list(self.db.scan(start, stop, reverse=reverse, keys_only=keys_only))
        assert got == expected, (start, stop, reverse, keys_only)

    @rule(prefix=keys_st, reverse=st.booleans(), keys_only=st.booleans())
    def scan_prefix(self, prefix, reverse, keys_only):
        keys = sorted(k for k in self.model if k.startswith(prefix))
        if reverse:
            keys.reverse()
        expected = keys if keys_only else [(k, self.model[k]) for k in keys]
        got = list(self.db.scan(prefix=prefix, reverse=reverse, keys_only=keys_only))
        assert got == expected, (prefix, reverse, keys_only)

    @rule()
    def whole_db_iterators(self):
        keys = sorted(self.model)
        assert list(self.db.keys()) == keys
        assert list(iter(self.db)) == keys
        assert list(self.db.values()) == [self.model[k] for k in keys]
        assert list(self.db.items()) == [(k, self.model[k]) for k in keys]

    @invariant()
    def length_matches(self):
        assert len(self.db) == len(self.model)


# (workers, max_batch): a tiny max_batch splits even small batches into several
# chunks per worker, so "last one wins" must hold across chunks too.
CONFIGS = [(1, 100_000), (3, 3)]
# AMDB_MODEL_EXAMPLES=2000 for a soak run; CI runs the default.
MODEL_EXAMPLES = int(os.environ.get("AMDB_MODEL_EXAMPLES", "60"))


def run_model(db, examples, steps):
    """Run the dict-model state machine against `db` (shared with test_soak.py)."""
    class Machine(DBMachine):
        pass

    Machine.db = db
    run_state_machine_as_test(
        Machine, settings=settings(max_examples=examples, stateful_step_count=steps, deadline=None))


@pytest.mark.parametrize("workers,max_batch", CONFIGS, ids=["w1", "w3-chunked"])
def test_db_matches_dict_model(make_db, workers, max_batch):
    db = make_db(workers=workers, max_batch=max_batch)
    run_model(db, MODEL_EXAMPLES, steps=30)
    # The machine really ran against this database.
    assert db.stats()["visible_seq"] > 0
    assert not db.closed


def test_random_sizes_up_to_the_limits_through_a_tiny_ring(make_db):
    """Keys and values of every size up to max_key_size / max_value_size, packed
    through the smallest ring (64 KiB), so records wrap at every alignment."""
    rng = random.Random(2024)
    max_key, max_value = 1000, 6000  # a record of both still fits ring_size // 8
    db = make_db(workers=2, ring_size=1 << 16, max_batch=7,
                 max_key_size=max_key, max_value_size=max_value)
    model = {}
    for rnd in range(120):
        items = []
        for _ in range(rng.randint(0, 40)):
            key_len = rng.choice([0, 1, 7, 8, 9, 16, 17, max_key - 1, max_key,
                                  rng.randint(0, max_key)])
            value_len = rng.choice([0, 1, 7, 8, 9, max_value - 1, max_value,
                                    rng.randint(0, max_value), rng.randint(0, 64)])
            items.append((bytes([rng.randint(0, 3)]) * key_len, os.urandom(value_len)))
        if model and rng.random() < 0.25:
            doomed = [k for k, _ in items[:3]] + rng.sample(sorted(model), min(3, len(model)))
            db.batch_delete(doomed)
            for k in doomed:
                model.pop(k, None)
        db.batch_put(items)
        model.update(items)
        if rnd % 10 == 0:
            assert len(db) == len(model)
            assert list(db.items()) == sorted(model.items())
    assert db.batch_get(list(model)) == list(model.values())
    assert list(db.scan(reverse=True, keys_only=True)) == sorted(model, reverse=True)
