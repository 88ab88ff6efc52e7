#!/usr/bin/env python3
"""What the write-ahead log costs: batch_put of the reference items into a
memory-only ParallelDB and into a durable one (sync="none", and optionally
"batch"), interleaved round by round on the same data; medians and ratios.

    python perf/wal_cost.py                 # N = 1,000,000, 5 rounds
    python perf/wal_cost.py --n 200000 --rounds 3 --sync none,batch
"""
import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import amdb  # noqa: E402


def run(items, batch, path, sync, workers):
    db = amdb.ParallelDB(path, workers=workers, **({"sync": sync} if path else {}))
    try:
        gc.disable()
        started = time.perf_counter()
        for start in range(0, len(items), batch):
            db.batch_put(items[start:start + batch])
        seconds = time.perf_counter() - started
    finally:
        gc.enable()
        db.close()
    return len(items) / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--sync", default="none", help="durable modes to compare (comma separated)")
    args = parser.parse_args(argv)
    items = [(b"key_%d" % i, b"value_%d" % i) for i in range(args.n)]
    modes = ["memory"] + args.sync.split(",")
    rates = {(mode, batch): [] for mode in modes for batch in (5000, args.n)}
    tmp = tempfile.mkdtemp(prefix="amdb-walcost-")
    try:
        for round_no in range(args.rounds):
            for batch in (5000, args.n):
                for mode in modes[round_no % len(modes):] + modes[:round_no % len(modes)]:
                    path = None if mode == "memory" else os.path.join(tmp, f"db-{round_no}-{batch}-{mode}")
                    rates[(mode, batch)].append(run(items, batch, path, mode, args.workers))
                    if path:
                        shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"N={args.n:,}, workers={args.workers}, median of {args.rounds} interleaved rounds, items/s")
    for batch in (5000, args.n):
        base = statistics.median(rates[("memory", batch)])
        line = f"  batch {batch:>9,}: memory {base:>12,.0f}"
        for mode in modes[1:]:
            rate = statistics.median(rates[(mode, batch)])
            line += f" | sync={mode} {rate:>12,.0f} ({rate / base:.2f}x)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
