"""The field's standard workloads, AmDb and its peers side by side in one run.

  --suite dbbench   LevelDB's db_bench: 16-byte keys, 100-byte values, N records
      fillseq       put every key in key order, one call each (fresh database)
      fillrandom    put every key in a random order, one call each (fresh database)
      overwrite     put N random existing keys, one call each
      fillbatch     put every key in key order, batches of 1,000 (fresh database), each
                    batch one call (AmDb: batch_put(list))
      writebatch    the same, each put one call into the engine's write batch (AmDb,
                    plyvel: `with db.write_batch() as wb: wb.put(k, v)`; RocksDB:
                    WriteBatch.put; LMDB: txn.put in one transaction)
      readrandom    get N random existing keys, one call each
      readseq       iterate the whole database in key order
      readreverse   iterate the whole database in reverse key order
      seekrandom    N/10 times: seek to a random key, read the next 10 items
      readmissing   get N keys that do not exist, one call each
      deleterandom  delete N random keys (every key once), one call each
  --suite ycsb      YCSB core workloads: 1,000-byte records, N records, N operations,
                    scrambled zipfian (0.99) key choice, "latest" for D
      load          insert the N records, one call each (fresh database)
      A B C D E F   50/50 read/update; 95/5 read/update; read only; 95/5 read
                    latest/insert; 95/5 short scans (1-100 items)/insert;
                    50/50 read/read-modify-write
      and each again "batched": the same operations, 1,000 per call (multi-key
      reads and write batches; scans stay one call each).

Engines: amdb (ParallelDB, --workers), plyvel (LevelDB), rocksdict (RocksDB),
lmdb, dict (point operations only: it has no order). Every engine runs the
same operation sequence; engines are interleaved within each repeat, in a
rotated order; the table shows the median ops/s over --repeat repeats, the
ratio AmDb / best peer, and for one-call workloads the p50 / p99 latency of
one call (LATENCY_SAMPLE calls timed one by one after the throughput run, on
the same arguments: an overwrite or a read again, not counted in ops/s). Opening, loading and
closing are not timed; the garbage collector is off while timing.

    python perf/run_matrix.py --suite dbbench --n 300000 --repeat 3
    python perf/run_matrix.py --suite ycsb --n 100000 --engines amdb,plyvel,lmdb --durable
"""
import argparse
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

SUITES = ("dbbench", "ycsb")
DBBENCH = ("fillseq", "fillrandom", "overwrite", "fillbatch", "writebatch", "readrandom", "readseq", "readreverse",
           "seekrandom", "readmissing", "deleterandom")
YCSB = ("load", "A", "B", "C", "D", "E", "F")
PEERS = ("plyvel", "rocksdict", "lmdb")
BATCH = 1000                # operations per call in batched variants and fillbatch
LATENCY_SAMPLE = 20_000     # one-call operations timed one by one, after the throughput run
ZIPF_THETA = 0.99
MAX_SCAN = 100              # YCSB E: scans of 1..100 items


# ---- engines ---------------------------------------------------------------------------

class Adapter:
    """One engine behind the operations the workloads use."""
    name = "?"
    ordered = True          # has ordered iteration (scans, seeks)

    def close(self):
        pass

    def write_batch(self, pairs):
        for k, v in pairs:
            self.put(k, v)

    def write_batch_loop(self, pairs):
        """One call per put into the engine's own write batch (writebatch)."""
        self.write_batch(pairs)

    def read_batch(self, keys):
        get = self.get
        return [get(k) for k in keys]


class Amdb(Adapter):
    name = "amdb"

    def __init__(self, tmp, durable, workers):
        import amdb
        self.db = amdb.ParallelDB(os.path.join(tmp, "amdb") if durable else None, workers=workers)
        self.put, self.get, self.delete = self.db.put, self.db.get, self.db.delete

    def close(self):
        self.db.close()

    def write_batch(self, pairs):
        self.db.batch_put(pairs)

    def write_batch_loop(self, pairs):
        with self.db.write_batch() as wb:
            put = wb.put
            for k, v in pairs:
                put(k, v)

    def read_batch(self, keys):
        return self.db.batch_get(keys)

    def sync(self):
        self.db.flush()

    def scan_from(self, key, n):
        count = 0
        for _ in self.db.scan(start=key, limit=n):
            count += 1
        return count

    def iterate(self, reverse):
        return sum(1 for _ in self.db.scan(reverse=reverse))


class Plyvel(Adapter):
    name = "plyvel"

    def __init__(self, tmp, durable, workers):
        import plyvel
        self.db = plyvel.DB(os.path.join(tmp, "plyvel"), create_if_missing=True)
        self.put, self.get, self.delete = self.db.put, self.db.get, self.db.delete

    def close(self):
        self.db.close()

    def write_batch(self, pairs):
        with self.db.write_batch() as wb:
            for k, v in pairs:
                wb.put(k, v)

    def scan_from(self, key, n):
        count = 0
        with self.db.iterator(start=key) as it:
            for _ in it:
                count += 1
                if count == n:
                    break
        return count

    def iterate(self, reverse):
        with self.db.iterator(reverse=reverse) as it:
            return sum(1 for _ in it)


class Rocksdict(Adapter):
    name = "rocksdict"

    def __init__(self, tmp, durable, workers):
        import rocksdict
        self.rocksdict = rocksdict
        self.db = rocksdict.Rdict(os.path.join(tmp, "rocksdict"))
        self.put, self.get = self.db.put, self.db.get
        self.delete = self.db.delete

    def close(self):
        self.db.close()

    def write_batch(self, pairs):
        wb = self.rocksdict.WriteBatch()
        for k, v in pairs:
            wb.put(k, v)
        self.db.write(wb)

    def read_batch(self, keys):
        return self.db.get(keys)

    def scan_from(self, key, n):
        it = self.db.iter()
        it.seek(key)
        count = 0
        while it.valid() and count < n:
            it.key(), it.value()
            it.next()
            count += 1
        return count

    def iterate(self, reverse):
        it = self.db.iter()
        count = 0
        if reverse:
            it.seek_to_last()
            while it.valid():
                it.key(), it.value()
                it.prev()
                count += 1
        else:
            it.seek_to_first()
            while it.valid():
                it.key(), it.value()
                it.next()
                count += 1
        return count


class Lmdb(Adapter):
    name = "lmdb"

    def __init__(self, tmp, durable, workers):
        import lmdb
        self.env = lmdb.open(os.path.join(tmp, "lmdb"), map_size=16 << 30, sync=False, metasync=False,
                             writemap=True, map_async=True)
        env = self.env

        def put(k, v):
            with env.begin(write=True) as txn:
                txn.put(k, v)

        def get(k):
            with env.begin() as txn:
                return txn.get(k)

        def delete(k):
            with env.begin(write=True) as txn:
                txn.delete(k)
        self.put, self.get, self.delete = put, get, delete

    def close(self):
        self.env.close()

    def write_batch(self, pairs):
        with self.env.begin(write=True) as txn:
            for k, v in pairs:
                txn.put(k, v)

    def read_batch(self, keys):
        with self.env.begin() as txn:
            get = txn.get
            return [get(k) for k in keys]

    def scan_from(self, key, n):
        count = 0
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if cursor.set_range(key):
                for _ in cursor:
                    count += 1
                    if count == n:
                        break
        return count

    def iterate(self, reverse):
        with self.env.begin() as txn:
            cursor = txn.cursor()
            return sum(1 for _ in (cursor.iterprev() if reverse else cursor.iternext()))


class Dict(Adapter):
    name = "dict"
    ordered = False

    def __init__(self, tmp, durable, workers):
        self.db = {}
        self.put = self.db.__setitem__
        self.get = self.db.get
        pop = self.db.pop
        self.delete = lambda key: pop(key, None)


ADAPTERS = {"amdb": Amdb, "plyvel": Plyvel, "rocksdict": Rocksdict, "lmdb": Lmdb, "dict": Dict}


# ---- key choice ------------------------------------------------------------------------

def zipfian(n_items, count, rng, theta=ZIPF_THETA):
    """YCSB's ZipfianGenerator: `count` draws in [0, n_items), item 0 hottest."""
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    zetan = float(np.sum(ranks ** -theta))
    zeta2 = 1.0 + 0.5 ** theta
    alpha = 1.0 / (1.0 - theta)
    eta = (1 - (2.0 / n_items) ** (1 - theta)) / (1 - zeta2 / zetan)
    u = rng.random(count)
    uz = u * zetan
    out = (n_items * (eta * u - eta + 1) ** alpha).astype(np.int64)
    out[uz < 1.0] = 0
    out[(uz >= 1.0) & (uz < zeta2)] = 1
    return np.minimum(out, n_items - 1)


def scrambled(draws, n_items):
    """YCSB's ScrambledZipfian: hot items spread over the key space (FNV-1a 64)."""
    x = draws.astype(np.uint64)
    h = np.full(len(x), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for shift in range(0, 64, 8):
            h ^= (x >> np.uint64(shift)) & np.uint64(0xFF)
            h *= np.uint64(0x100000001B3)
    return (h % np.uint64(n_items)).astype(np.int64)


# ---- running -----------------------------------------------------------------------------

def timed_loop(fn, args, latencies, settle=None):
    """Call fn(*a) for every a, as tight a loop as Python allows (the same for
    every engine), then settle() (writes that returned early are applied),
    and time it whole. Then, for `latencies`, time up to
    LATENCY_SAMPLE more calls one by one, on arguments from the same list
    (so the database state they meet is the one the workload leaves)."""
    started = time.perf_counter()
    if args and len(args[0]) == 2:
        for a, b in args:
            fn(a, b)
    elif args and len(args[0]) == 1:
        for (a,) in args:
            fn(a)
    else:
        for a in args:
            fn(*a)
    if settle is not None:
        settle()
    seconds = time.perf_counter() - started
    if latencies is not None and args:
        clock = time.perf_counter_ns
        step = max(1, len(args) // LATENCY_SAMPLE)
        for a in args[::step]:
            t = clock()
            fn(*a)
            latencies.append(clock() - t)
    return seconds


def run_dbbench(engine, workload, n, rng_seed):
    """(seconds, operations, latencies ns) of one db_bench workload on `engine`
    (a fresh, empty adapter; loading for read workloads is untimed)."""
    rng = random.Random(rng_seed)
    keys = [b"%016d" % i for i in range(n)]
    values = [bytes(rng.getrandbits(8) for _ in range(100)) for _ in range(256)]
    order = list(range(n))
    rng.shuffle(order)
    lat = []
    put, get, delete = engine.put, engine.get, engine.delete

    def load():
        for start in range(0, n, BATCH):
            engine.write_batch([(keys[i], values[i % 256]) for i in range(start, min(n, start + BATCH))])
        getattr(engine, "sync", lambda: None)()

    sync = getattr(engine, "sync", None)

    if workload == "fillseq":
        return timed_loop(put, [(keys[i], values[i % 256]) for i in range(n)], lat, sync), n, lat
    if workload == "fillrandom":
        return timed_loop(put, [(keys[i], values[i % 256]) for i in order], lat, sync), n, lat
    if workload in ("fillbatch", "writebatch"):
        batches = [[(keys[i], values[i % 256]) for i in range(s, min(n, s + BATCH))] for s in range(0, n, BATCH)]
        call = engine.write_batch if workload == "fillbatch" else engine.write_batch_loop
        return timed_loop(call, [(b,) for b in batches], None, sync), n, []
    load()
    if workload == "overwrite":
        return timed_loop(put, [(keys[i], values[(i + 1) % 256]) for i in order], lat, sync), n, lat
    if workload == "readrandom":
        return timed_loop(get, [(keys[i],) for i in order], lat), n, lat
    if workload == "readmissing":
        return timed_loop(get, [(b"%016dx" % i,) for i in order], lat), n, lat
    if workload == "deleterandom":
        return timed_loop(delete, [(keys[i],) for i in order], lat, sync), n, lat
    if workload in ("readseq", "readreverse"):
        started = time.perf_counter()
        count = engine.iterate(workload == "readreverse")
        assert count == n, (engine.name, workload, count)
        return time.perf_counter() - started, n, []
    if workload == "seekrandom":
        seeks = [(keys[i], 10) for i in order[:n // 10]]
        return timed_loop(engine.scan_from, seeks, lat), len(seeks), lat
    raise ValueError(workload)


YCSB_MIX = {"A": (0.5, "update"), "B": (0.95, "update"), "C": (1.0, None), "D": (0.95, "insert"),
            "E": (0.95, "insert"), "F": (0.5, "rmw")}


def run_ycsb(engine, workload, n, seed, batched):
    """(seconds, operations, latencies ns) of one YCSB workload."""
    rng = np.random.default_rng(seed)
    key = lambda i: b"user%016d" % i                    # noqa: E731
    values = [bytes(rng.integers(0, 256, 1000, dtype=np.uint8)) for _ in range(64)]
    lat = []
    sync = getattr(engine, "sync", None)
    if workload == "load":
        pairs = [(key(i), values[i % 64]) for i in range(n)]
        if batched:
            seconds = timed_loop(engine.write_batch, [(pairs[s:s + BATCH],) for s in range(0, n, BATCH)], None, sync)
        else:
            seconds = timed_loop(engine.put, pairs, lat, sync)
        return seconds, n, lat
    for start in range(0, n, BATCH):                    # untimed load
        engine.write_batch([(key(i), values[i % 64]) for i in range(start, min(n, start + BATCH))])
    if sync:
        sync()
    read_share, other = YCSB_MIX[workload]
    ops = n
    kinds = rng.random(ops) >= read_share               # True: the write kind of the workload
    if workload == "D":                                  # latest: reads favour recent inserts
        inserted = n + np.cumsum(kinds)
        targets = np.maximum(inserted - 1 - zipfian(n, ops, rng), 0)
    else:
        targets = scrambled(zipfian(n, ops, rng), n)
    next_insert = n
    work = []
    for kind, target in zip(kinds.tolist(), targets.tolist()):
        if kind and other == "insert":
            work.append(("insert", key(next_insert)))
            next_insert += 1
        elif workload == "E" and not kind:
            work.append(("scan", key(target), int(rng.integers(1, MAX_SCAN + 1))))
        elif kind and other == "update":
            work.append(("update", key(target)))
        elif kind and other == "rmw":
            work.append(("rmw", key(target)))
        else:
            work.append(("read", key(target)))
    get, put = engine.get, engine.put
    value = values[1]

    def one(op):
        if op[0] == "read":
            get(op[1])
        elif op[0] in ("update", "insert"):
            put(op[1], value)
        elif op[0] == "rmw":
            get(op[1])
            put(op[1], value)
        else:
            engine.scan_from(op[1], op[2])

    if not batched:
        seconds = timed_loop(one, [(op,) for op in work], lat, sync)
    else:
        def batch(ops):
            reads = [op[1] for op in ops if op[0] in ("read", "rmw")]
            if reads:
                engine.read_batch(reads)
            writes = [(op[1], value) for op in ops if op[0] in ("update", "insert", "rmw")]
            if writes:
                engine.write_batch(writes)
            for op in ops:
                if op[0] == "scan":
                    engine.scan_from(op[1], op[2])
        seconds = timed_loop(batch, [(work[s:s + BATCH],) for s in range(0, ops, BATCH)], None, sync)
    return seconds, ops, lat


def cells(suite):
    if suite == "dbbench":
        return [(w, False) for w in DBBENCH]
    return [(w, False) for w in YCSB] + [(w, True) for w in YCSB]


def runnable(engine_name, suite, workload):
    needs_order = workload in ("readseq", "readreverse", "seekrandom", "E")
    return not (needs_order and not ADAPTERS[engine_name].ordered)


def run(suite, engines, n, repeat, workers, durable, seed, progress=print, only=None):
    results = {}
    chosen = [(w, b) for w, b in cells(suite)
              if only is None or w in only or (w + (" batched" if b else "")) in only]
    for rep in range(repeat):
        rotated = engines[rep % len(engines):] + engines[:rep % len(engines)]
        for workload, batched in chosen:
            for name in rotated:
                if not runnable(name, suite, workload):
                    continue
                tmp = tempfile.mkdtemp(prefix="amdb-suite-")
                adapter = ADAPTERS[name](tmp, durable, workers)
                gc.collect()
                gc.disable()
                try:
                    if suite == "dbbench":
                        seconds, ops, lat = run_dbbench(adapter, workload, n, seed)
                    else:
                        seconds, ops, lat = run_ycsb(adapter, workload, n, seed, batched)
                finally:
                    gc.enable()
                    adapter.close()
                    shutil.rmtree(tmp, ignore_errors=True)
                cell = results.setdefault((workload, batched), {}).setdefault(name, {"ops": [], "lat": []})
                cell["ops"].append(ops / seconds)
                cell["lat"].extend(lat)
                progress(f"  {suite} {workload}{' batched' if batched else ''} {name}: {ops / seconds:,.0f} ops/s")
    return results


def write_report(out, stem, data, text):
    """Write <stem>.json and <stem>.md to `out` (default perf/results/<time>/)
    and print the text."""
    out = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(text)
    print()
    print(text)
    print(f"wrote {out}/{stem}.json and .md")


def summarize(suite, results, engines, meta):
    rows, lines = [], []
    head = "| workload | " + " | ".join(engines) + " | AmDb / best peer | AmDb p50 / p99 (us) |"
    lines += [f"## {suite} ({meta['n']:,} records, median of {meta['repeat']}, workers={meta['workers']}, "
              f"{'durable (path, sync=none)' if meta['durable'] else 'memory only'})", "", head,
              "|" + "---|" * (len(engines) + 3)]
    for (workload, batched), cell in results.items():
        label = workload + (" batched" if batched else "")
        medians = {e: statistics.median(cell[e]["ops"]) for e in engines if e in cell}
        peers = [medians[e] for e in PEERS if e in medians]
        ratio = medians["amdb"] / max(peers) if "amdb" in medians and peers else None
        lat = sorted(cell.get("amdb", {}).get("lat", []))
        p50 = lat[len(lat) // 2] / 1000 if lat else None
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else None
        rows.append({"workload": label, "ops_per_s": medians, "ratio_vs_best_peer": ratio,
                     "amdb_p50_us": p50, "amdb_p99_us": p99})
        cols = [f"{medians[e]:,.0f}" if e in medians else "-" for e in engines]
        cols.append(f"{ratio:.2f}x" if ratio else "-")
        cols.append(f"{p50:.2f} / {p99:.2f}" if p50 is not None else "-")
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    return rows, "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=SUITES, required=True)
    parser.add_argument("--n", type=int, default=None, help="records (default: dbbench 300000, ycsb 100000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engines", default="amdb,plyvel,rocksdict,lmdb,dict")
    parser.add_argument("--durable", action="store_true", help="AmDb with a path (sync='none')")
    parser.add_argument("--workloads", help="only these, comma-separated (e.g. A,F,'A batched' or fillseq)")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--out", help="directory for suite-<name>.json and .md (default perf/results/<time>/)")
    args = parser.parse_args(argv)
    n = args.n or (300_000 if args.suite == "dbbench" else 100_000)
    engines = []
    for name in args.engines.split(","):
        try:
            ADAPTERS[name]("/nonexistent", False, 1) if name == "dict" else __import__(
                {"amdb": "amdb", "plyvel": "plyvel", "rocksdict": "rocksdict", "lmdb": "lmdb"}[name])
            engines.append(name)
        except ImportError:
            print(f"{name}: not installed, skipped", file=sys.stderr)
    meta = {"suite": args.suite, "n": n, "repeat": args.repeat, "workers": args.workers, "durable": args.durable,
            "engines": engines, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    only = None if not args.workloads else {w.strip() for w in args.workloads.split(",")}
    results = run(args.suite, engines, n, args.repeat, args.workers, args.durable, args.seed, only=only)
    rows, text = summarize(args.suite, results, engines, meta)
    write_report(args.out, f"suite-{args.suite}", {"meta": meta, "rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
