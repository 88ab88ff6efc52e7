"""Atomic counters: increments that lose no update, AmDb and its peers in one run.

    python perf/bench_rmw.py [--ops 100000] [--keys 16] [--threads 1,8] [--repeat 3]

Each engine applies --ops increments of 8-byte big-endian counters, spread
round-robin over --keys keys, from each thread count, and must end with the
exact total (checked). How each engine does an atomic increment:

  amdb              db.increment(key): applied by the key's worker, returns the value
  amdb nowait       db.increment(key, wait=False), then one flush(): like put()
  amdb put          db.put(key, counter) without reading: NOT an increment, the
                    reference the issue's goal compares with (one async put)
  plyvel, rocksdict get + put under one Python lock (they have no atomic
                    increment; rocksdict's merge operators need a Rust/C++ plugin)
  lmdb              get + put in one write transaction (LMDB serialises writers)
  dict              get + put under one Python lock

Prints a table of median ops/s and, per thread count, amdb / best peer.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from suites import ADAPTERS  # noqa: E402


def counter(n):
    return n.to_bytes(8, "big", signed=True)


def value_of(raw):
    return 0 if raw is None else int.from_bytes(raw, "big", signed=True)


def make(engine, tmp, workers):
    """(increment(key), finish(), read(key), close()) of an engine."""
    if engine.startswith("amdb"):
        import amdb
        db = amdb.ParallelDB(workers=workers)
        if engine == "amdb":
            increment = db.increment
        elif engine == "amdb nowait":
            def increment(key, inc=db.increment):
                inc(key, wait=False)
        else:
            one = counter(1)

            def increment(key, put=db.put):
                put(key, one)
        return increment, db.flush, db.get, db.close
    if engine == "lmdb":
        adapter = ADAPTERS["lmdb"](tmp, False, workers)
        env = adapter.env

        def increment(key):
            with env.begin(write=True) as txn:
                txn.put(key, counter(value_of(txn.get(key)) + 1))
        return increment, lambda: None, adapter.get, adapter.close
    adapter = ADAPTERS[engine](tmp, False, workers)
    lock = threading.Lock()
    get, put = adapter.get, adapter.put

    def increment(key):
        with lock:
            put(key, counter(value_of(get(key)) + 1))
    return increment, lambda: None, get, adapter.close


def run(engine, ops, keys, threads, workers):
    tmp = tempfile.mkdtemp(prefix="amdb-rmw-")
    increment, finish, read, close = make(engine, tmp, workers)
    names = [b"counter:%04d" % i for i in range(keys)]
    per = ops // threads

    def work(t):
        for i in range(per):
            increment(names[(i + t) % keys])

    try:
        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        finish()
        seconds = time.perf_counter() - start
        total = sum(value_of(read(k)) for k in names)
        if engine != "amdb put":
            assert total == per * threads, f"{engine}: lost {per * threads - total} increments"
        return per * threads / seconds
    finally:
        close()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=16)
    parser.add_argument("--threads", default="1,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engines", default="amdb,amdb nowait,amdb put,plyvel,rocksdict,lmdb,dict")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    rates = {(e, t): [] for e in engines for t in thread_counts}
    for rep in range(args.repeat):
        rotated = engines[rep % len(engines):] + engines[:rep % len(engines)]
        for threads in thread_counts:
            for engine in rotated:
                rates[engine, threads].append(run(engine, args.ops, args.keys, threads, args.workers))
                print(f"  {engine} x{threads}: {rates[engine, threads][-1]:,.0f} increments/s", flush=True)
    print(f"\n## counters ({args.ops:,} increments over {args.keys} keys, median of {args.repeat}, "
          f"workers={args.workers})\n")
    print("| threads | " + " | ".join(engines) + " | amdb / best peer | amdb / amdb put |")
    print("|" + "---|" * (len(engines) + 3))
    for threads in thread_counts:
        med = {e: statistics.median(rates[e, threads]) for e in engines}
        peers = [med[e] for e in engines if e in ("plyvel", "rocksdict", "lmdb")]
        cols = [f"{med[e]:,.0f}" for e in engines]
        best = f"{med['amdb'] / max(peers):.2f}x" if "amdb" in med and peers else "-"
        own = f"{med['amdb'] / med['amdb put']:.2f}x" if "amdb" in med and "amdb put" in med else "-"
        print(f"| {threads} | " + " | ".join(cols) + f" | {best} | {own} |")


if __name__ == "__main__":
    main()
