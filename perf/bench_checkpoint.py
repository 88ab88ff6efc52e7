"""What checkpoints cost writers (issue 14): a durable database loads N
records of 1,000 bytes, then makes M batched updates, with automatic
checkpoints every --checkpoint-bytes of log (128 MiB: several during the run;
written in the background) and with checkpoints pushed out of reach. The
ratio is what checkpoints cost; 1.0 means nothing. Configurations alternate
which runs first, after an untimed warm-up (first-touch costs of memory).

    python perf/bench_checkpoint.py                      # N=600000, M=200000, workers=2
    python perf/bench_checkpoint.py --n 100000 --m 50000 --repeat 1
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import amdb  # noqa: E402

BATCH = 1000


def run(n, m, workers, checkpoint_bytes, tmpdir):
    path = tempfile.mkdtemp(prefix="amdb-ckpt-", dir=tmpdir)
    value = os.urandom(1000)
    try:
        with amdb.ParallelDB(os.path.join(path, "db"), workers=workers, checkpoint_bytes=checkpoint_bytes) as db:
            keys = [b"user%016d" % i for i in range(n)]
            started = time.perf_counter()
            for s in range(0, n, BATCH):
                db.batch_put([(k, value) for k in keys[s:s + BATCH]])
            load = n / (time.perf_counter() - started)
            order = [keys[(i * 7919) % n] for i in range(m)]
            started = time.perf_counter()
            for s in range(0, m, BATCH):
                db.batch_put([(k, value) for k in order[s:s + BATCH]])
            update = m / (time.perf_counter() - started)
            checkpoints = db.stats()["workers"][0]["checkpoint_seq"]
        return load, update, checkpoints
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=600_000)
    parser.add_argument("--m", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--checkpoint-bytes", type=int, default=128 << 20)
    args = parser.parse_args()
    results = {"checkpointing": [], "out of reach": []}
    configs = [("checkpointing", args.checkpoint_bytes), ("out of reach", 1 << 50)]
    run(args.n // 4, args.m // 4, args.workers, args.checkpoint_bytes, args.tmpdir)     # warm-up: first-touch costs of memory
    for rep in range(args.repeat):
        for name, cb in configs[rep % 2:] + configs[:rep % 2]:        # alternate which goes first
            results[name].append(run(args.n, args.m, args.workers, cb, args.tmpdir))
    print(f"durable, workers={args.workers}, checkpoint every {args.checkpoint_bytes >> 20} MiB of log, {args.n:,} records of 1,000 B loaded, {args.m:,} batched updates, "
          f"median of {args.repeat}")
    med = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
           for name, rs in results.items()}
    for name, (load, update) in med.items():
        print(f"  {name:13s} load {load:>10,.0f}/s  updates {update:>10,.0f}/s")
    print(f"  checkpointing / out of reach: load {med['checkpointing'][0] / med['out of reach'][0]:.2f}x"
          f"      updates {med['checkpointing'][1] / med['out of reach'][1]:.2f}x")


if __name__ == "__main__":
    main()
