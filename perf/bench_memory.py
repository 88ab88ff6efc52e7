"""Bytes per key: what AmDb's arenas hold against what the peers keep, for
LevelDB db_bench's records (16-byte keys, 100-byte values) and YCSB's
(1,000-byte values), in one run.

    python perf/bench_memory.py [--keys 1000000] [--big-keys 300000] [--workers 2]
                                [--batch 1000] [--engines amdb,plyvel,rocksdict,lmdb,dict]

Each engine is loaded with the same keys (random order, batches of --batch)
and values of random bytes, which no engine can compress (db_bench's values
compress to half: LevelDB and RocksDB would then store less than the data).
Then, per engine:

  amdb       the arenas: arena_used less the outgrown hash tables given back
             (stats()["memory"], with where every byte goes), and what the
             segments hold in /dev/shm (rings and committed memory included)
  lmdb       the pages in use (last page number + 1, times the page size)
  plyvel,    the files in the database directory after a full compaction
  rocksdict  (compact_range)
  dict       sys.getsizeof of the dict, its keys and its values

B/key is that over the number of keys; "x payload" is that over the key and
value bytes. The goals of issue 16 are printed beside AmDb's figures.
"""
import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from suites import write_report  # noqa: E402



def records(count, value_size, seed):
    rng = random.Random(seed)
    order = list(range(count))
    rng.shuffle(order)
    values = [rng.randbytes(value_size) for _ in range(256)]
    return [(b"%016d" % i, values[i % 256][:value_size - 8] + i.to_bytes(8, "big")) for i in order]


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def measure_amdb(items, workers, batch):
    import amdb
    with amdb.ParallelDB(workers=workers) as db:
        for start in range(0, len(items), batch):
            db.batch_put(items[start:start + batch])
        db.flush()
        memory = db.stats()["memory"]
        total = memory["total"]
        parts = {name: total[name] for name in ("nodes", "versions", "hash_index", "alignment", "ledger",
                                                 "garbage", "header")}
        return {"bytes": total["arena_used"] - total["released"], "shm_bytes": total["shm_bytes"],
                "parts": parts, "released": total["released"]}


def measure_lmdb(items, tmp, batch):
    import lmdb
    env = lmdb.open(tempfile.mkdtemp(dir=tmp), map_size=64 << 30, sync=False, metasync=False)
    try:
        for start in range(0, len(items), batch):
            with env.begin(write=True) as txn:
                txn.cursor().putmulti(items[start:start + batch])
        return {"bytes": (env.info()["last_pgno"] + 1) * env.stat()["psize"]}
    finally:
        env.close()


def measure_plyvel(items, tmp, batch):
    import plyvel
    path = tempfile.mkdtemp(dir=tmp)
    db = plyvel.DB(path, create_if_missing=True)
    try:
        for start in range(0, len(items), batch):
            with db.write_batch() as wb:
                for key, value in items[start:start + batch]:
                    wb.put(key, value)
        db.compact_range()
    finally:
        db.close()
    return {"bytes": dir_bytes(path)}


def measure_rocksdict(items, tmp, batch):
    import rocksdict
    path = tempfile.mkdtemp(dir=tmp)
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    try:
        for start in range(0, len(items), batch):
            wb = rocksdict.WriteBatch(raw_mode=True)
            for key, value in items[start:start + batch]:
                wb.put(key, value)
            db.write(wb)
        db.flush()
        db.compact_range(None, None)
    finally:
        db.close()
    return {"bytes": dir_bytes(path)}


def measure_dict(items):
    d = dict(items)
    return {"bytes": sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="records of 100-byte values")
    parser.add_argument("--big-keys", type=int, default=300_000, help="records of 1,000-byte values")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1_000, help="records per write batch")
    parser.add_argument("--engines", default="amdb,plyvel,rocksdict,lmdb,dict")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--out", help="directory for memory.json and .md (default perf/results/<time>/)")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    goals = {100: ("<= 180 B/key", lambda row: row["bytes_per_key"] <= 180),
             1000: ("<= 1.15x payload", lambda row: row["x_payload"] <= 1.15)}
    rows = []
    tmp = tempfile.mkdtemp(prefix="amdb-bench-memory-")
    try:
        for value_size, count in ((100, args.keys), (1000, args.big_keys)):
            items = records(count, value_size, args.seed)
            payload = sum(len(k) + len(v) for k, v in items)
            for name in engines:
                try:
                    started = time.perf_counter()
                    if name == "amdb":
                        measured = measure_amdb(items, args.workers, args.batch)
                    elif name == "dict":
                        measured = measure_dict(items)
                    else:
                        measured = globals()["measure_" + name](items, tmp, args.batch)
                except ImportError:
                    print(f"{name}: not installed, skipped", file=sys.stderr)
                    continue
                row = {"engine": name, "value_bytes": value_size, "keys": count,
                       "bytes_per_key": measured["bytes"] / count, "x_payload": measured["bytes"] / payload,
                       "seconds": round(time.perf_counter() - started, 2), **measured}
                if name == "amdb":
                    row["shm_bytes_per_key"] = measured["shm_bytes"] / count
                    row["parts_per_key"] = {part: size / count for part, size in measured["parts"].items()}
                    row["goal"], met = goals[value_size]
                    row["goal_met"] = met(row)
                rows.append(row)
                print(f"  {value_size:>5} B values, {name}: {row['bytes_per_key']:.1f} B/key", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [f"# Bytes per key ({args.workers} workers; keys 16 B, values random bytes; batches of {args.batch:,})", "",
             "| values | keys | engine | B/key | x payload | notes |", "|---|---|---|---|---|---|"]
    for row in rows:
        notes = ""
        if row["engine"] == "amdb":
            notes = (f"/dev/shm {row['shm_bytes_per_key']:.0f} B/key; "
                     + ", ".join(f"{part} {size:.1f}" for part, size in row["parts_per_key"].items() if size)
                     + f"; goal {row['goal']}: {'met' if row['goal_met'] else 'NOT met'}")
        lines.append(f"| {row['value_bytes']:,} B | {row['keys']:,} | {row['engine']} | {row['bytes_per_key']:.1f} "
                     f"| {row['x_payload']:.3f} | {notes} |")
    text = "\n".join(lines) + "\n"
    write_report(args.out, "memory", {"meta": vars(args), "rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
