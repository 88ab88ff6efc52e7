"""One writer with concurrent readers; concurrent writers; close() during reads.

Every phase is bounded by a number of operations, never by time; threads are
joined with a timeout so that a hang fails the test instead of the run.
"""
import threading

import numpy as np
import pytest

from amdb_testutil import python_child, reap, wait_until

JOIN_TIMEOUT_S = 120


def _check_readers(readers):
    """After the readers were joined: fail if one hung, re-raise the first reader error."""
    assert not any(r.is_alive() for r in readers), "a reader hung"
    for r in readers:
        if r.error is not None:
            raise AssertionError(f"{r.name} failed: {r.error!r}") from r.error

# -- (a) generation-stamped batches, readers check atomic visibility ------------

K = 48
GENERATIONS = 120
KEY_PREFIX = b"cc:"
KEYS = [KEY_PREFIX + b"%03d" % i for i in range(K)]  # already in sorted order


def stamped(key, gen):
    # The length varies with the generation, so a torn or mixed value cannot
    # look well-formed by accident.
    return b"gen:%08d:" % gen + key + b"#" * (gen % 61) + b"|end"


ABORTED = 50_000_000  # generations at or above this belong to batches that failed


def parse(key, value):
    """The generation a value was written at; AssertionError if it is torn."""
    assert value is not None, f"{key!r} missing"
    assert value.startswith(b"gen:") and value[12:13] == b":", f"torn value {value[:40]!r}"
    gen = int(value[4:12])
    assert value == stamped(key, gen), f"torn value for {key!r}: {value!r}"
    assert gen < ABORTED, f"{key!r} shows a value of a failed batch: {value[:40]!r}"
    return gen


class WriterAbort(Exception):
    pass


def failing_batch(gen):
    """Items of a batch that is aborted at its very end (after every chunk was sent)."""
    for k in KEYS:
        yield (k, stamped(k, ABORTED + gen))
    yield (KEY_PREFIX + b"zz-aborted", stamped(KEY_PREFIX + b"zz-aborted", ABORTED + gen))
    raise WriterAbort(gen)


class Reader(threading.Thread):
    def __init__(self, db, mode, done):
        super().__init__(name=f"reader-{mode}", daemon=True)
        self.db, self.mode, self.done = db, mode, done
        self.reads = 0
        self.seen = set()
        self.error = None

    def read_once(self):
        """(first, last) generation one read saw; asserts that it is consistent."""
        db = self.db
        if self.mode == "batch_get":
            gens = {parse(k, v) for k, v in zip(KEYS, db.batch_get(KEYS))}
            assert len(gens) == 1, f"one batch_get saw generations {sorted(gens)}"
            gen = gens.pop()
            return gen, gen
        if self.mode == "scan":
            items = list(db.scan(prefix=KEY_PREFIX))
            assert [k for k, _ in items] == KEYS
            gens = {parse(k, v) for k, v in items}
            assert len(gens) == 1, f"one scan saw generations {sorted(gens)}"
            gen = gens.pop()
            return gen, gen
        if self.mode == "get_array":
            values, found = db.get_array(np.array(KEYS))
            assert found.all()
            gens = {parse(k, bytes(v)) for k, v in zip(KEYS, values)}
            assert len(gens) == 1, f"one get_array saw generations {sorted(gens)}"
            gen = gens.pop()
            return gen, gen
        # mode == "get": single gets may straddle batches, but in order.
        gens = [parse(k, db.get(k)) for k in KEYS]
        assert len(db) == K
        assert KEY_PREFIX + b"zz-aborted" not in db
        assert gens == sorted(gens), f"generations went backwards across gets: {gens}"
        return gens[0], gens[-1]

    def run(self):
        self.last = -1
        try:
            while True:
                finished = self.done.is_set()  # read before the read itself
                first, last = self.read_once()
                assert first >= self.last, f"generation went back from {self.last} to {first}"
                self.last = last
                self.seen.update((first, last))
                self.reads += 1
                if finished:
                    assert first == GENERATIONS - 1, \
                        f"read after the last batch returned saw generation {first}"
                    return
        except BaseException as exc:  # reported by the test thread
            self.error = exc


@pytest.mark.parametrize("workers,max_batch", [(3, 8), (2, 100_000)], ids=["w3-chunked", "w2"])
def test_one_writer_many_readers_atomic_generations(make_db, workers, max_batch):
    db = make_db(workers=workers, max_batch=max_batch)
    db.batch_put((k, stamped(k, 0)) for k in KEYS)
    done = threading.Event()
    readers = [Reader(db, mode, done) for mode in ("batch_get", "get", "scan", "get_array")]
    for r in readers:
        r.start()
    try:
        assert wait_until(lambda: all(r.reads >= 1 or r.error for r in readers), 60), \
            "readers did not start"
        for gen in range(1, GENERATIONS):
            if gen % 5 == 4:  # a failed batch first; readers must never see it
                with pytest.raises(WriterAbort):
                    db.batch_put(failing_batch(gen))
            if gen % 3 == 0:
                db.put_array(np.array(KEYS), np.array([stamped(k, gen) for k in KEYS]))
            elif gen % 3 == 1:
                db.batch_put((k, stamped(k, gen)) for k in KEYS)
            else:
                db.batch_put([(k, stamped(k, gen)) for k in reversed(KEYS)])
            if any(r.error for r in readers):
                break
    finally:
        done.set()
        for r in readers:
            r.join(JOIN_TIMEOUT_S)
    _check_readers(readers)
    for r in readers:
        assert r.reads >= 2 and r.last == GENERATIONS - 1
    # The readers really overlapped the writer.
    assert len(set().union(*(r.seen for r in readers))) >= 3


# -- (b) several writer threads, disjoint key ranges ------------------------------

WRITER_THREADS = 4
ROUNDS = 15
BATCH = 200


def test_concurrent_writers_disjoint_ranges(make_db):
    db = make_db(workers=2, max_batch=64)
    outcomes = [[] for _ in range(WRITER_THREADS)]
    errors = []

    def writer(t):
        try:
            for r in range(ROUNDS):
                base = r * BATCH
                keys = [b"w%d:%05d" % (t, base + i) for i in range(BATCH)]
                if r % 3 == 0:
                    outcomes[t].append(db.batch_put((k, k * 2) for k in keys))
                elif r % 3 == 1:
                    outcomes[t].append(db.put_array(np.array(keys), np.array([k * 2 for k in keys])))
                else:
                    for k in keys[:20]:
                        db.put(k, k * 2)
                    outcomes[t].append(db.batch_put((k, k * 2) for k in keys[20:]))
                db.delete(b"w%d:tmp" % t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,), daemon=True)
               for t in range(WRITER_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(JOIN_TIMEOUT_S)
    assert not any(th.is_alive() for th in threads), "a writer hung"
    assert not errors, errors
    expected = {b"w%d:%05d" % (t, i): b"w%d:%05d" % (t, i) * 2
                for t in range(WRITER_THREADS) for i in range(ROUNDS * BATCH)}
    assert len(db) == len(expected)
    assert db.batch_get(list(expected)) == list(expected.values())
    assert list(db.items()) == sorted(expected.items())
    # Writes are serialised: the sequence ranges of different batches never overlap.
    ranges = sorted((o.results.first_seq, o.results.last_seq)
                    for per_thread in outcomes for o in per_thread)
    for (a_first, a_last), (b_first, b_last) in zip(ranges, ranges[1:]):
        assert a_first <= a_last < b_first <= b_last


# -- (c) close() while other threads read: in a child, so a crash fails cleanly --

CLOSE_WHILE_READING = r"""
import sys, threading, time
import amdb

ROUNDS = 6
keys = [b"c%05d" % i for i in range(20_000)]
expected = [b"v" + k for k in keys]

def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True

for rnd in range(ROUNDS):
    db = amdb.ParallelDB(workers=2)
    db.batch_put(zip(keys, expected))
    counts = [0] * 4
    closed_seen = [False] * 4
    errors = []

    def reader(i):
        try:
            while True:
                try:
                    mode = (counts[i] + i) % 4
                    if mode == 0:
                        assert db.batch_get(keys) == expected
                    elif mode == 1:
                        for k, v in zip(keys[:500], expected[:500]):
                            assert db.get(k) == v
                    elif mode == 2:
                        n = 0
                        for k, v in db.scan():
                            assert v == b"v" + k
                            n += 1
                        assert n == len(keys)
                    else:
                        assert keys[7] in db and len(db) == len(keys)
                except amdb.ClosedError:
                    closed_seen[i] = True
                    return
                counts[i] += 1
        except BaseException as exc:
            errors.append(repr(exc))

    writes = [0]

    def writer():
        # Rewrites the same values, so readers' checks hold; stops at ClosedError.
        try:
            while True:
                try:
                    db.batch_put(zip(keys[:300], expected[:300]))
                    db.put(keys[0], expected[0])
                except amdb.ClosedError:
                    return
                writes[0] += 1
        except BaseException as exc:
            errors.append("writer: " + repr(exc))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    if not wait_until(lambda: (all(c >= 2 + rnd for c in counts) and writes[0] >= 2) or errors, 60):
        print("readers did not start", counts, flush=True)
        sys.exit(2)
    db.close()
    for t in threads:
        t.join(60)
    if any(t.is_alive() for t in threads):
        print("reader hung after close", flush=True)
        import os; os._exit(3)
    if errors:
        print("errors:", errors, flush=True)
        sys.exit(1)
    if not all(closed_seen):
        print("a reader never saw ClosedError", closed_seen, flush=True)
        sys.exit(4)
print("OK", flush=True)
"""


def test_close_while_other_threads_read():
    proc = python_child(CLOSE_WHILE_READING, stdin=False)
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        reap(proc)
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    assert out.strip().endswith("OK")


# -- (d) growing database: index growth and len() under concurrent readers --------

GROW_BATCHES = 150
GROW_BATCH_SIZE = 1000


def grow_key(i):
    return b"grow:%07d" % i


def grow_value(i):
    return b"%d" % (i * 7) * (1 + i % 5)


class GrowReader(threading.Thread):
    def __init__(self, db, state, seed):
        super().__init__(name=f"grow-reader-{seed}", daemon=True)
        self.db, self.state = db, state
        self.rng = np.random.default_rng(seed)
        self.error = None
        self.reads = 0

    def run(self):
        db, state = self.db, self.state
        last_len = 0
        try:
            while True:
                finished = state["done"]
                committed = state["committed"]  # batches known to have returned
                n = len(db)
                assert n % GROW_BATCH_SIZE == 0, f"len() saw part of a batch: {n}"
                assert n >= last_len and n >= committed * GROW_BATCH_SIZE, (n, last_len, committed)
                last_len = n
                if committed:
                    sample = self.rng.integers(0, committed * GROW_BATCH_SIZE, size=200)
                    got = db.batch_get([grow_key(int(i)) for i in sample])
                    assert got == [grow_value(int(i)) for i in sample], "a committed key is wrong"
                    batch = int(self.rng.integers(0, committed))
                    keys = list(db.scan(grow_key(batch * GROW_BATCH_SIZE),
                                        grow_key((batch + 1) * GROW_BATCH_SIZE), keys_only=True))
                    assert len(keys) == GROW_BATCH_SIZE
                # Keys of batches in flight are either absent or complete.
                ahead = [grow_key(committed * GROW_BATCH_SIZE + j) for j in (0, 500, 999)]
                got = db.batch_get(ahead)
                assert all(v is None for v in got) or all(v is not None for v in got), got
                self.reads += 1
                if finished:
                    assert n == GROW_BATCHES * GROW_BATCH_SIZE
                    return
        except BaseException as exc:
            self.error = exc


def test_readers_while_the_database_grows(make_db):
    db = make_db(workers=2, max_batch=256)
    state = {"committed": 0, "done": False}
    readers = [GrowReader(db, state, seed) for seed in range(3)]
    for r in readers:
        r.start()
    try:
        for b in range(GROW_BATCHES):
            base = b * GROW_BATCH_SIZE
            order = np.random.default_rng(b).permutation(GROW_BATCH_SIZE)
            db.batch_put((grow_key(base + int(j)), grow_value(base + int(j))) for j in order)
            state["committed"] = b + 1
            if any(r.error for r in readers):
                break
    finally:
        state["done"] = True
        for r in readers:
            r.join(JOIN_TIMEOUT_S)
    _check_readers(readers)
    for r in readers:
        assert r.reads >= 2
    assert len(db) == GROW_BATCHES * GROW_BATCH_SIZE
