"""A 10-million-item batch_put from a generator streams through the rings:
prints the throughput and the owner's peak RSS before and after.

    .venv/bin/python perf/stream_memory.py [--n 10000000] [--workers 2]
"""
import argparse
import resource
import time

import amdb


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with amdb.ParallelDB(workers=args.workers) as db:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        _, result = db.batch_put((b"k%08d" % i, b"v%08d" % i) for i in range(args.n))
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert len(db) == args.n and db.get(b"k%08d" % (args.n - 1)) == b"v%08d" % (args.n - 1)
        used = sum(w["arena_used"] for w in db.stats()["workers"])
    print(f"{args.n:,} items from a generator in one batch_put: {args.n / seconds:,.0f} items/s, "
          f"{result.chunks} chunks; owner peak RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB; "
          f"arenas {used / 2**20:,.0f} MiB in /dev/shm ({used / args.n:.0f} B/key)")


if __name__ == "__main__":
    main()
