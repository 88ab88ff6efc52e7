"""verify() speed: versions checked per second (chains and ledgers, one
thread per worker) on the reference items, written once and half rewritten.

    .venv/bin/python perf/bench_verify.py [--n 1000000] [--workers 2]
"""
import argparse

import amdb


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    items = [(f"key_{i}".encode(), f"value_{i}".encode()) for i in range(args.n)]
    with amdb.ParallelDB(workers=args.workers) as db:
        db.batch_put(items)
        db.batch_put(items[: args.n // 2])
        reports = sorted((db.verify() for _ in range(3)), key=lambda r: r.seconds)
    r = reports[1]
    print(f"verify: {r.versions_checked:,} versions of {r.keys_checked:,} keys, ok={r.ok}, "
          f"median of 3 {r.seconds:.3f} s = {r.versions_checked / r.seconds / 1e6:.1f}M versions/s")


if __name__ == "__main__":
    main()
