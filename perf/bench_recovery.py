#!/usr/bin/env python3
"""Recovery speed of a durable ParallelDB: how fast opening replays the
write-ahead log, and how fast it loads checkpoints.

    python perf/bench_recovery.py                  # 10,000,000 keys, 2 workers
    python perf/bench_recovery.py --keys 1000000 --workers 4 --json out.json

Steps (each opening is timed from ParallelDB(...) to its return, workers
ready, nothing read yet):
  1. write --keys keys (key_<i> -> value_<i>) in batches of --batch, close;
  2. open: everything comes from the log   -> log records replayed per second;
  3. checkpoint, close;
  4. open: everything comes from the checkpoints -> checkpoint bytes per second;
  5. check a sample of keys and len() after each opening.
The disk is whatever --dir is on; the page cache is warm (the files were
just written), so step 4 measures the loader, not the disk.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import amdb  # noqa: E402


def timed_open(path, workers):
    started = time.perf_counter()
    db = amdb.ParallelDB(path, workers=workers)
    return db, time.perf_counter() - started


def check(db, keys):
    assert len(db) == keys, (len(db), keys)
    for i in range(0, keys, max(1, keys // 1000)):
        assert db.get(b"key_%d" % i) == b"value_%d" % i


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=1_000_000, help="items per batch_put")
    parser.add_argument("--dir", default=None, help="parent directory (default: a temporary one)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    parent = tempfile.mkdtemp(prefix="amdb-recovery-", dir=args.dir)
    path = os.path.join(parent, "db")
    try:
        db = amdb.ParallelDB(path, workers=args.workers, checkpoint_bytes=None)
        started = time.perf_counter()
        for start in range(0, args.keys, args.batch):
            db.batch_put((b"key_%d" % i, b"value_%d" % i) for i in range(start, min(start + args.batch, args.keys)))
        write_s = time.perf_counter() - started
        log_bytes = db.stats()["durability"]["log_bytes"]
        db.close()

        db, replay_s = timed_open(path, args.workers)
        recovery = db.stats()["durability"]["recovery"]
        check(db, args.keys)
        started = time.perf_counter()
        db.checkpoint()
        checkpoint_s = time.perf_counter() - started
        checkpoint_bytes = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
                               if n.endswith(".ckpt"))
        db.close()

        db, load_s = timed_open(path, args.workers)
        check(db, args.keys)
        db.close()
        result = {
            "keys": args.keys, "workers": args.workers, "batch": args.batch,
            "write_s": write_s, "log_bytes": log_bytes,
            "open_from_log_s": replay_s, "records_replayed": recovery["records_replayed"],
            "replay_records_per_s": recovery["records_replayed"] / replay_s,
            "checkpoint_s": checkpoint_s, "checkpoint_bytes": checkpoint_bytes,
            "open_from_checkpoint_s": load_s, "checkpoint_load_bytes_per_s": checkpoint_bytes / load_s,
        }
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    print(f"{args.keys:,} keys, {args.workers} workers (python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
    print(f"  write (sync=none)      {write_s:8.2f} s  {args.keys / write_s:>12,.0f} keys/s, "
          f"log {log_bytes / 2**20:,.0f} MiB")
    print(f"  open, log replay       {replay_s:8.2f} s  {result['replay_records_per_s']:>12,.0f} records/s")
    print(f"  checkpoint             {checkpoint_s:8.2f} s  {checkpoint_bytes / 2**20:,.0f} MiB")
    print(f"  open, from checkpoint  {load_s:8.2f} s  {result['checkpoint_load_bytes_per_s'] / 2**20:>12,.0f} MiB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
