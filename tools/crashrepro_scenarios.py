#!/usr/bin/env python3
"""Workloads for tools/crashrepro.py, runnable on their own:

    python tools/crashrepro_scenarios.py random-mix --seed 7 --workers 2
    python tools/crashrepro_scenarios.py --file my_workload.py --seed 7

Built-in scenarios (each checks its own results and raises on a wrong one):

  prototype-batch     the prototype's crash: one batch_put of 1,000,000
                      key_<i> -> value_<i> items (--items), then reads back
  random-mix          seeded random batch/single puts and deletes, gets,
                      batch_gets and scans, checked against a dict (--items steps)
  concurrent-readers  one writer thread rewriting every key per batch, reader
                      threads checking that batches are seen whole (--items batches)
  huge-values         values at and near max_value_size through small rings
                      (--items values per ring size)
  clean               a few puts and gets (a quick smoke run)

A workload file is run as __main__ with SEED, WORKERS and ITEMS (None unless
--items) as globals; it opens its own amdb.ParallelDB.

Exit status: 0 done and correct; 1 a check failed or the workload raised;
70 the owner caught amdb.WorkerCrashedError (its message, which names the
worker, its pid, the signal and the batch, is printed to stderr after
"crashrepro: owner caught").
"""
import argparse
import os
import random
import runpy
import sys
import threading
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import amdb  # noqa: E402

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_WORKER_CRASHED = 70

SCENARIOS = {}


def scenario(name):
    def register(fn):
        SCENARIOS[name] = fn
        return fn
    return register


def say(text):
    print(text, flush=True)


@scenario("clean")
def clean(seed, workers, items):
    n = items or 1000
    with amdb.ParallelDB(workers=workers) as db:
        db.batch_put((b"c%06d" % i, b"v%d" % i) for i in range(n))
        assert db.get(b"c%06d" % (n - 1)) == b"v%d" % (n - 1)
        assert len(db) == n
    say(f"clean: {n} items ok")


@scenario("prototype-batch")
def prototype_batch(seed, workers, items):
    n = items or 1_000_000
    data = [(f"key_{i}".encode(), f"value_{i}".encode()) for i in range(n)]
    with amdb.ParallelDB(workers=workers) as db:
        success, results = db.batch_put(data)
        assert success and results.count == n, results
        probe = data[::max(1, n // 1000)]
        assert db.batch_get([k for k, _ in probe]) == [v for _, v in probe]
        assert len(db) == n, (len(db), n)
    say(f"prototype-batch: one batch_put of {n} items ok")


@scenario("random-mix")
def random_mix(seed, workers, items):
    rng = random.Random(seed)
    steps = items or 2000
    keyspace = [b"k%05d" % i for i in range(rng.choice([50, 500, 5000]))]
    options = dict(max_batch=rng.choice([16, 512, 100_000]), ring_size=rng.choice([1 << 16, 1 << 20, 1 << 22]))
    model = {}

    def value():
        return rng.randbytes(rng.choice([0, 1, 8, rng.randrange(200)]))

    with amdb.ParallelDB(workers=workers, **options) as db:
        for step in range(steps):
            r = rng.random()
            if r < 0.30:
                batch = [(rng.choice(keyspace), value()) for _ in range(rng.randrange(1, 400))]
                db.batch_put(batch)
                model.update(batch)
            elif r < 0.42:
                keys = [rng.choice(keyspace) for _ in range(rng.randrange(1, 200))]
                db.batch_delete(keys)
                for k in keys:
                    model.pop(k, None)
            elif r < 0.52:
                k, v = rng.choice(keyspace), value()
                db.put(k, v)
                model[k] = v
            elif r < 0.57:
                k = rng.choice(keyspace)
                db.delete(k)
                model.pop(k, None)
            elif r < 0.75:
                k = rng.choice(keyspace)
                assert db.get(k) == model.get(k), (step, k)
            elif r < 0.88:
                keys = [rng.choice(keyspace) for _ in range(rng.randrange(1, 100))]
                assert db.batch_get(keys) == [model.get(k) for k in keys], step
            else:
                a, b = sorted((rng.choice(keyspace), rng.choice(keyspace)))
                expect = sorted((k, v) for k, v in model.items() if a <= k < b)
                assert list(db.scan(start=a, stop=b)) == expect, (step, a, b)
        assert sorted(model.items()) == list(db.scan()), "final scan"
        assert len(db) == len(model)
    say(f"random-mix: seed {seed}, {steps} steps, {len(model)} keys, options {options} ok")


@scenario("concurrent-readers")
def concurrent_readers(seed, workers, items):
    batches = items or 200
    keys = [b"r%05d" % i for i in range(2000)]
    readers = 3
    errors = []
    done = threading.Event()

    def reader(db, index):
        rng = random.Random(seed * 100 + index)
        last = -1
        try:
            while not done.is_set():
                snap = db.snapshot()
                sample = rng.sample(keys, 50)
                values = snap.batch_get(sample)
                gens = {v for v in values}
                # Every batch rewrites every key: a snapshot sees one generation.
                assert len(gens) == 1, f"reader {index}: a batch seen in part: {sorted(g for g in gens if g)[:4]}"
                gen = int(values[0][1:]) if values[0] is not None else -1
                assert gen >= last, f"reader {index}: generation went back from {last} to {gen}"
                last = gen
                scanned = list(db.scan(start=b"r01000", stop=b"r01100", keys_only=True))
                assert scanned == keys[1000:1100] or (gen < 0 and scanned == []), f"reader {index}: bad scan"
        except BaseException as exc:   # hand it to the main thread
            errors.append(exc)

    with amdb.ParallelDB(workers=workers) as db:
        db.batch_put((k, b"g0") for k in keys)
        threads = [threading.Thread(target=reader, args=(db, i), daemon=True) for i in range(readers)]
        for t in threads:
            t.start()
        try:
            for gen in range(1, batches + 1):
                db.batch_put((k, b"g%d" % gen) for k in keys)
                if errors:
                    break
        finally:
            done.set()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        assert db.batch_get(keys) == [b"g%d" % batches] * len(keys)
    say(f"concurrent-readers: {batches} batches of {len(keys)} keys, {readers} readers ok")


@scenario("huge-values")
def huge_values(seed, workers, items):
    rng = random.Random(seed)
    count = items or 40
    for ring_size in (1 << 16, 1 << 20):
        with amdb.ParallelDB(workers=workers, ring_size=ring_size) as db:
            top = db.max_value_size
            sizes = [top, top - 1, top - 7, top // 2, top // 2 + 1] + \
                [rng.randrange(top - 64, top + 1) for _ in range(count)]
            model = {}
            for start in range(0, len(sizes), 7):
                batch = [(b"h%04d" % i, rng.randbytes(size))
                         for i, size in enumerate(sizes[start:start + 7], start)]
                db.batch_put(batch)
                model.update(batch)
            try:
                db.put(b"too-big", b"x" * (top + 1))
                raise AssertionError("a value over max_value_size was accepted")
            except amdb.ValueTooLargeError:
                pass
            for k, v in model.items():
                assert db.get(k) == v, k
            assert len(db) == len(model)
        say(f"huge-values: ring {ring_size} B, {len(sizes)} values up to max_value_size={top} ok")


def run_file(path, seed, workers, items):
    runpy.run_path(path, init_globals={"SEED": seed, "WORKERS": workers, "ITEMS": items},
                   run_name="__main__")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", choices=sorted(SCENARIOS), help="a built-in scenario")
    parser.add_argument("--file", help="a Python workload file instead of a scenario")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=None, help="scale (see each scenario)")
    args = parser.parse_args(argv)
    if (args.scenario is None) == (args.file is None):
        parser.error("give a scenario or --file, not both")
    try:
        if args.file:
            run_file(args.file, args.seed, args.workers, args.items)
        else:
            SCENARIOS[args.scenario](args.seed, args.workers, args.items)
    except amdb.WorkerCrashedError as exc:
        sys.stderr.write(f"crashrepro: owner caught WorkerCrashedError: {exc}\n")
        return EXIT_WORKER_CRASHED
    except BaseException:
        traceback.print_exc()
        sys.stderr.write("crashrepro: the workload failed\n")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
