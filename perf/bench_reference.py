#!/usr/bin/env python3
"""The reference workload: AmDb side by side with LevelDB, RocksDB, LMDB and dict.

    items = [(f"key_{i}".encode(), f"value_{i}".encode()) for i in range(N)]

For every engine, each repeat measures

  batch_put_5k  the items written in batches of 5,000 (fresh database)
  batch_put_all the items written in one batch call (fresh database)
  get           every key read back one call per key, in a shuffled order
                (fixed seed), from the database of batch_put_all

and for AmDb also

  batch_get     every key in the same shuffled order, 100,000 keys per call
  put_array     N uint64 keys and values (np.arange) in one call (fresh database)

Engines run interleaved (each repeat runs every engine once, in a rotated
order) and the table shows the MEDIAN items/s over the repeats. Opening and
closing a database is not timed; the garbage collector is off while timing
(as timeit does). After each timed step a sample of keys is read back and
compared, outside the timing, so a fast wrong answer cannot pass.

A peer that is not installed is skipped with a notice. The exit status is 1
when an engine raised or returned wrong data, else 0.

    python perf/bench_reference.py                       # N = 1,000,000, 3 repeats
    python perf/bench_reference.py --n 100000 --engines plyvel,lmdb,dict
    python perf/bench_reference.py --json perf/results/ref.json
"""
import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engines  # noqa: E402  (perf/engines.py)
from engines import (PEERS, AmdbEngine, filesystem_of, machine_info,  # noqa: E402,F401
                     timed)

WRITE_BATCH = 5_000         # records per batch_put call in batch_put_5k
GET_BATCH = 100_000         # keys per batch_get call
PUT_ARRAY_GOAL = 10_000_000  # items/s that put_array is meant to reach
VERIFY_SAMPLE = 1_000       # keys read back after each timed step

WORKLOADS = (
    # name,          column heading
    ("batch_put_5k", "batch_put x5k"),
    ("batch_put_all", "batch_put x1"),
    ("get", "get"),
    ("batch_get", "batch_get"),
    ("put_array", "put_array"),
)


class VerifyError(AssertionError):
    """An engine returned something other than what was written."""


def expected_value(key):
    return b"value_" + key[4:]   # key_<i> -> value_<i>


# --- engines -------------------------------------------------------------------
#
# The adapters (perf/engines.py, shared with perf/run_matrix.py): load() imports
# the engine (ImportError = not installed, skipped), version(), settings (printed),
# open(tmp) / close(db), put_batches(db, chunks) with one engine batch per chunk,
# get_each(db, keys) reading one key per call, lookup(db, key) for verification.
# AmDb has two extra workloads.

ENGINES = ("amdb", "plyvel", "rocksdict", "lmdb", "dict")


def make_engine(name, args):
    return engines.make_engine(name, args.workers)


# --- measuring -----------------------------------------------------------------

def verify_lookups(engine, db, sample_keys, what):
    for key in sample_keys:
        got = engine.lookup(db, key)
        if got != expected_value(key):
            raise VerifyError(f"{engine.name} {what}: get({key!r}) returned {got!r}")
    got = engine.lookup(db, b"missing_key")
    if got is not None:
        raise VerifyError(f"{engine.name} {what}: a missing key returned {got!r}")


class Workload:
    """The data every engine gets, built once."""

    def __init__(self, n, seed):
        self.n = n
        self.items = [(f"key_{i}".encode(), f"value_{i}".encode()) for i in range(n)]
        self.chunks = [self.items[i:i + WRITE_BATCH] for i in range(0, n, WRITE_BATCH)]
        rng = random.Random(seed)
        order = list(range(n))
        rng.shuffle(order)
        self.shuffled_keys = [self.items[i][0] for i in order]
        self.key_chunks = [self.shuffled_keys[i:i + GET_BATCH]
                           for i in range(0, n, GET_BATCH)]
        self.sample_keys = rng.sample(self.shuffled_keys, min(VERIFY_SAMPLE, n))


def run_engine_once(engine, work, tmp, record, say, durable=False):
    """One repeat of every workload of one engine; calls record(workload, items/s).
    durable: AmDb opens a directory (write-ahead log, sync="none"); the peers
    always write theirs (LevelDB and RocksDB their log, LMDB its map, unsynced)."""
    n = work.n

    def step(workload, seconds):
        rate = n / seconds
        record(workload, rate)
        say(f"  {engine.name:<10} {workload:<14} {rate:>14,.0f} items/s  ({seconds:.3f} s)")

    db = engine.open(tmp, durable) if engine.name == "amdb" else engine.open(tmp)
    try:
        seconds, _ = timed(engine.put_batches, db, work.chunks)
        verify_lookups(engine, db, work.sample_keys, "batch_put_5k")
        step("batch_put_5k", seconds)
    finally:
        engine.close(db)

    db = engine.open(tmp, durable) if engine.name == "amdb" else engine.open(tmp)
    try:
        seconds, _ = timed(engine.put_batches, db, [work.items])
        verify_lookups(engine, db, work.sample_keys, "batch_put_all")
        step("batch_put_all", seconds)

        seconds, _ = timed(engine.get_each, db, work.shuffled_keys)
        step("get", seconds)

        if isinstance(engine, AmdbEngine):
            if len(db) != n:
                raise VerifyError(f"amdb: len(db) = {len(db)} after writing {n} distinct keys")
            seconds, results = timed(engine.batch_get_all, db, work.key_chunks)
            verify_batch_get(work, results)
            step("batch_get", seconds)
    finally:
        engine.close(db)

    if isinstance(engine, AmdbEngine):
        np = engine.numpy
        keys = np.arange(n, dtype=np.uint64)
        values = np.arange(n, dtype=np.uint64)
        db = engine.open(tmp, durable) if engine.name == "amdb" else engine.open(tmp)
        try:
            seconds, _ = timed(db.put_array, keys, values)
            for i in random.Random(n).sample(range(n), min(VERIFY_SAMPLE, n)):
                encoded = i.to_bytes(8, "big")
                got = db.get(encoded)
                if got != encoded:
                    raise VerifyError(f"amdb put_array: get({encoded!r}) returned {got!r}")
            step("put_array", seconds)
        finally:
            engine.close(db)


def verify_batch_get(work, results):
    got = [value for chunk in results for value in chunk]
    if len(got) != work.n:
        raise VerifyError(f"amdb batch_get: {len(got)} results for {work.n} keys")
    for i in random.Random(0).sample(range(work.n), min(VERIFY_SAMPLE, work.n)):
        key = work.shuffled_keys[i]
        if got[i] != expected_value(key):
            raise VerifyError(f"amdb batch_get: {key!r} gave {got[i]!r}")


# --- reporting -----------------------------------------------------------------

def ratio(numerator, denominator):
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def compute_ratios(medians):
    def median_of(engine, workload):
        return medians.get(engine, {}).get(workload)

    ratios = {}
    for workload in ("batch_put_5k", "batch_put_all"):
        peers = [(median_of(p, workload), p) for p in PEERS if median_of(p, workload)]
        best_rate, best_peer = max(peers) if peers else (None, None)
        ratios[f"amdb_{workload}_vs_best_peer"] = {
            "value": ratio(median_of("amdb", workload), best_rate), "peer": best_peer}
    ratios["amdb_get_vs_lmdb_get"] = {
        "value": ratio(median_of("amdb", "get"), median_of("lmdb", "get")), "peer": "lmdb"}
    ratios["amdb_batch_get_vs_lmdb_get"] = {
        "value": ratio(median_of("amdb", "batch_get"), median_of("lmdb", "get")), "peer": "lmdb"}
    ratios["amdb_put_array_vs_goal"] = {
        "value": ratio(median_of("amdb", "put_array"), PUT_ARRAY_GOAL),
        "goal_items_per_s": PUT_ARRAY_GOAL}
    return ratios


def print_table(engines, medians, status):
    headings = [heading for _, heading in WORKLOADS]
    width = max(14, *(len(h) for h in headings))
    print(f"{'items/s (median)':<18}" + "".join(f"{h:>{width}}" for h in headings))
    for engine in engines:
        row = medians.get(engine, {})
        cells = []
        for workload, _ in WORKLOADS:
            rate = row.get(workload)
            cells.append(f"{rate:>{width},.0f}" if rate is not None else f"{'-':>{width}}")
        note = "" if status[engine] == "ok" else f"   [{status[engine]}]"
        print(f"{engine:<18}" + "".join(cells) + note)


def print_ratios(ratios):
    def fmt(value):
        return "n/a" if value is None else f"{value:.2f}x"

    lines = []
    for workload, label in (("batch_put_5k", "batch_put x5k"), ("batch_put_all", "batch_put x1")):
        entry = ratios[f"amdb_{workload}_vs_best_peer"]
        peer = entry["peer"] or "no peer measured"
        lines.append((f"amdb {label} / best peer ({peer})", fmt(entry["value"])))
    lines.append(("amdb get / lmdb get", fmt(ratios["amdb_get_vs_lmdb_get"]["value"])))
    lines.append(("amdb batch_get / lmdb get", fmt(ratios["amdb_batch_get_vs_lmdb_get"]["value"])))
    lines.append((f"amdb put_array / goal of {PUT_ARRAY_GOAL:,} items/s",
                  fmt(ratios["amdb_put_array_vs_goal"]["value"])))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"  {label:<{width}}  {value:>8}")


# --- main ----------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="items (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the median is reported")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated subset of {','.join(ENGINES)}")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="AmDb workers (default os.cpu_count())")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the read order")
    parser.add_argument("--tmpdir", default=None,
                        help="where the on-disk peers keep their files (default: system temp)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--durable", action="store_true",
                        help='AmDb with a path (write-ahead log, sync="none") instead of memory only')
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    if args.n < 1 or args.repeat < 1 or args.workers < 1:
        parser.error("--n, --repeat and --workers must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    say = lambda line: print(line, flush=True)  # noqa: E731

    machine = machine_info()
    say("AmDb reference benchmark")
    say(f"  CPU        {machine['cpu_model']}, {machine['cpu_count']} cores "
        f"({machine['cpus_usable']} usable), {machine['memory_gib']} GiB RAM")
    say(f"  Python     {machine['python']} on {machine['platform']}")

    engines, status, versions, settings = [], {}, {}, {}
    for name in args.engines:
        engine = make_engine(name, args)
        try:
            engine.load()
        except Exception as exc:  # not installed, or (amdb) not built yet
            status[name] = f"skipped: {type(exc).__name__}: {exc}"
            say(f"  NOTICE     {name} skipped, not available ({type(exc).__name__}: {exc})")
            continue
        engines.append(engine)
        status[name] = "ok"
        versions[name] = engine.version()
        settings[name] = engine.settings
    for engine in engines:
        say(f"  {engine.name:<10} {versions[engine.name]}; {settings[engine.name]}")

    tmp_parent = args.tmpdir or tempfile.gettempdir()
    mount, fstype = filesystem_of(tmp_parent)
    say(f"  data       on-disk peers under {tmp_parent} ({fstype} at {mount or '?'})"
        + ("; AmDb in /dev/shm" if "amdb" in args.engines else ""))
    say(f"  load       N={args.n:,}, batches of {WRITE_BATCH:,}, batch_get of {GET_BATCH:,} "
        f"keys per call, {args.repeat} repeat(s), read-order seed {args.seed}")

    start = time.perf_counter()
    work = Workload(args.n, args.seed)
    say(f"  built the items in {time.perf_counter() - start:.1f} s")

    samples = {engine.name: {} for engine in engines}
    failed = False
    tmp = tempfile.mkdtemp(prefix="amdb-bench-", dir=args.tmpdir)
    try:
        for repeat in range(args.repeat):
            say(f"repeat {repeat + 1}/{args.repeat}")
            shift = repeat % max(1, len(engines))
            for engine in engines[shift:] + engines[:shift]:
                if status[engine.name] != "ok":
                    continue
                record = lambda workload, rate, name=engine.name: \
                    samples[name].setdefault(workload, []).append(rate)  # noqa: E731
                try:
                    run_engine_once(engine, work, tmp, record, say, args.durable)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    failed = True
                    status[engine.name] = f"FAILED: {type(exc).__name__}: {exc}"
                    say(f"  {engine.name} FAILED; not measured further:")
                    say("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                finally:
                    for entry in os.listdir(tmp):
                        shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    medians = {name: {w: statistics.median(rates) for w, rates in by_workload.items()}
               for name, by_workload in samples.items()}
    ratios = compute_ratios(medians)

    say("")
    say(f"Results: N={args.n:,}, median of {args.repeat} repeat(s), items per second")
    print_table(args.engines, medians, status)
    say("")
    say("Ratios (median / median)")
    print_ratios(ratios)

    if args.json:
        report = {
            "machine": machine,
            "config": {"n": args.n, "repeat": args.repeat, "workers": args.workers,
                       "seed": args.seed, "write_batch": WRITE_BATCH,
                       "get_batch": GET_BATCH, "tmpdir": tmp_parent, "tmp_fstype": fstype},
            "engines": {name: {"status": status[name], "version": versions.get(name),
                               "settings": settings.get(name)} for name in args.engines},
            "results": {name: {w: {"median": medians[name][w], "samples": rates}
                               for w, rates in by_workload.items()}
                        for name, by_workload in samples.items()},
            "ratios": ratios,
        }
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        say(f"\nwrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
