"""Bounded history: the arena after an update-heavy run against the arena after
load, with the default retention and with every version kept.

    python perf/bench_retention.py [--n 100000] [--ops-per-record 10] [--workers 2]

YCSB A's shape: --n records of 1,000 bytes loaded in batches, then
n * --ops-per-record operations, half reads and half updates of a scrambled
zipfian (0.99) key, one call each. Prints, per retention setting, the arena
bytes after load and after the run (stats()["memory"]), their ratio, the
/dev/shm held, and the run's ops/s (automatic compactions included).
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from suites import scrambled, zipfian  # noqa: E402


def run(n, ops_per_record, workers, keep, seed=7):
    import amdb
    options = {} if keep == "default" else {"keep_versions": keep}
    rng = np.random.default_rng(seed)
    key = lambda i: b"user%016d" % i                    # noqa: E731
    values = [bytes(rng.integers(0, 256, 1000, dtype=np.uint8)) for _ in range(64)]
    with amdb.ParallelDB(workers=workers, **options) as db:
        for start in range(0, n, 1000):
            db.batch_put([(key(i), values[i % 64]) for i in range(start, min(n, start + 1000))])
        loaded = db.stats()["memory"]["total"]
        ops = n * ops_per_record
        updates = rng.random(ops) >= 0.5
        targets = scrambled(zipfian(n, ops, rng), n).tolist()
        get, put = db.get, db.put
        start = time.perf_counter()
        for is_update, target, value in zip(updates.tolist(), targets, range(ops)):
            if is_update:
                put(key(target), values[value % 64])
            else:
                get(key(target))
        db.flush()
        seconds = time.perf_counter() - start
        after = db.stats()
        memory = after["memory"]["total"]
        return {"keep": keep, "arena_after_load": loaded["arena_used"], "arena_after_run": memory["arena_used"],
                "ratio": memory["arena_used"] / loaded["arena_used"], "shm_after_run": memory["shm_bytes"],
                "versions": memory["version_count"], "compactions": after["compaction"]["compactions"],
                "ops_per_s": ops / seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--ops-per-record", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"## retention: YCSB A shape, {args.n:,} records of 1,000 B, {args.ops_per_record} ops per record, "
          f"workers={args.workers}\n")
    print("| keep_versions | arena after load (MiB) | after the run (MiB) | ratio | /dev/shm held (MiB) "
          "| versions | compactions | ops/s |")
    print("|---|---|---|---|---|---|---|---|")
    for keep in ("default", None):
        r = run(args.n, args.ops_per_record, args.workers, keep)
        label = "default (1)" if keep == "default" else "None (every version)"
        print(f"| {label} | {r['arena_after_load'] / 2**20:.1f} | {r['arena_after_run'] / 2**20:.1f} | "
              f"{r['ratio']:.2f}x | {r['shm_after_run'] / 2**20:.1f} | {r['versions']:,} | {r['compactions']} | "
              f"{r['ops_per_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
