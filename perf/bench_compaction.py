"""Compaction: versions compacted per second, memory given back, and the
latency of reads running meanwhile.

The reference keys (key_0 .. key_{n-1}) are written `--versions` times each
(value_<i>_<round>), then db.compact(keep_versions=--keep) runs while one
thread reads random keys with db.get() and records each call's latency; the
same reader runs for as long again without a compaction, for comparison.

  versions/s      versions the compaction walked (before) / its wall time
  memory          the partition segments' allocated blocks (st_blocks) before
                  and after: what the system got back; and /dev/shm's used
                  bytes (statvfs; other users of /dev/shm add noise)
  read latency    p50 / p99 / max of get() during the compaction vs without

    .venv/bin/python perf/bench_compaction.py [--n 200000] [--versions 10] [--keep 1]
        [--workers 2] [--repeat 3] [--json FILE]
"""
import argparse
import json
import os
import random
import statistics
import threading
import time

import amdb


def segment_bytes(db):
    return sum(os.fstat(fd).st_blocks * 512 for fd in db._supervisor.segment_fds[:db.workers])


def shm_used():
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def read_latencies(db, keys, stop, out):
    """get() random keys until stop is set; latencies in microseconds."""
    rng = random.Random(1)
    get, clock = db.get, time.perf_counter_ns
    while not stop.is_set():
        key = keys[rng.randrange(len(keys))]
        start = clock()
        value = get(key)
        out.append((clock() - start) / 1000)
        if value is None:
            raise AssertionError(f"{key!r} missing")


def percentiles(samples):
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)
    return {"count": len(ordered), "p50_us": ordered[len(ordered) // 2],
            "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], "max_us": ordered[-1]}


def one_run(args):
    keys = [f"key_{i}".encode() for i in range(args.n)]
    with amdb.ParallelDB(workers=args.workers) as db:
        for round_ in range(args.versions):
            db.batch_put([(k, b"value_%d_%d" % (i, round_)) for i, k in enumerate(keys)])
        before, df_before = segment_bytes(db), shm_used()
        stop, during = threading.Event(), []
        reader = threading.Thread(target=read_latencies, args=(db, keys, stop, during))
        reader.start()
        started = time.perf_counter()
        summary = db.compact(keep_versions=args.keep)
        seconds = time.perf_counter() - started
        stop.set()
        reader.join()
        after, df_after = segment_bytes(db), shm_used()
        # The same reader, as long again, without a compaction.
        stop, quiet = threading.Event(), []
        reader = threading.Thread(target=read_latencies, args=(db, keys, stop, quiet))
        reader.start()
        time.sleep(seconds)          # a measuring window, not synchronisation
        stop.set()
        reader.join()
        assert db.get(keys[0]) == b"value_0_%d" % (args.versions - 1)
        assert db.verify().ok
    return {"seconds": seconds, "versions_before": summary["versions_before"],
            "versions_after": summary["versions_after"],
            "versions_per_s": summary["versions_before"] / seconds,
            "shm_bytes_before": before, "shm_bytes_after": after, "bytes_reclaimed": before - after,
            "dev_shm_used_before": df_before, "dev_shm_used_after": df_after,
            "arena_bytes_before": summary["arena_bytes_before"], "arena_bytes_after": summary["arena_bytes_after"],
            "reads_during": percentiles(during), "reads_without": percentiles(quiet)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="keys")
    parser.add_argument("--versions", type=int, default=10, help="versions written per key")
    parser.add_argument("--keep", type=int, default=1, help="keep_versions of the compaction")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the runs and their median here")
    args = parser.parse_args()
    runs = []
    for i in range(args.repeat):
        run = one_run(args)
        runs.append(run)
        print(f"run {i + 1}/{args.repeat}: {run['versions_before']:,} -> {run['versions_after']:,} versions "
              f"in {run['seconds']:.3f} s = {run['versions_per_s'] / 1e6:.2f}M versions/s; memory "
              f"{run['shm_bytes_before'] / 2**20:,.0f} -> {run['shm_bytes_after'] / 2**20:,.0f} MiB (/dev/shm used "
              f"{run['dev_shm_used_before'] / 2**20:,.0f} -> {run['dev_shm_used_after'] / 2**20:,.0f} MiB); get() "
              f"p50/p99/max {run['reads_during'].get('p50_us', 0):.1f}/{run['reads_during'].get('p99_us', 0):.1f}/"
              f"{run['reads_during'].get('max_us', 0):.0f} us during ({run['reads_during']['count']:,} reads), "
              f"{run['reads_without'].get('p50_us', 0):.1f}/{run['reads_without'].get('p99_us', 0):.1f}/"
              f"{run['reads_without'].get('max_us', 0):.0f} us without")
    median = sorted(runs, key=lambda r: r["versions_per_s"])[len(runs) // 2]
    print(f"median: {median['versions_per_s'] / 1e6:.2f}M versions/s compacted "
          f"({args.n:,} keys x {args.versions} versions, keep {args.keep}, {args.workers} workers); "
          f"{median['bytes_reclaimed'] / 2**20:,.0f} MiB given back "
          f"(arena {median['arena_bytes_before'] / 2**20:,.0f} -> {median['arena_bytes_after'] / 2**20:,.0f} MiB); "
          f"get() p99 {median['reads_during'].get('p99_us', 0):.1f} us during vs "
          f"{median['reads_without'].get('p99_us', 0):.1f} us without "
          f"(p50 {statistics.median(r['reads_during'].get('p50_us', 0) for r in runs):.1f} vs "
          f"{statistics.median(r['reads_without'].get('p50_us', 0) for r in runs):.1f} us)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "median": median}, f, indent=1)


if __name__ == "__main__":
    main()
