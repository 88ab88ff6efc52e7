#!/usr/bin/env python3
"""Throughput sweeps: AmDb and its peers side by side over a grid of cells.

Every cell of the grid (workload x batch size x value size x key count x key
order x durability x nodes) runs on the same data for every engine: AmDb once
per --workers value, each peer once (a peer has no workers; its numbers are
the reference line every AmDb worker count is compared with).

Workloads (N = --keys; each counts N operations, reported as ops/s):
  put        N (key, value) writes into an empty database, `batch` per call
             (batch 1: one put call per item)
  get        N reads from a database loaded beforehand (untimed), `batch` keys
             per multi-key read (batch 1: one get call per key)
  mixed90    N operations, 90% reads / 10% writes (overwrites), in batches of
  mixed50    `batch` operations of one kind; 50/50 for mixed50
  scan       every item read back by ordered range scans of `batch` items each
  put_array  N uint64 keys + S<value size> values from numpy arrays, `batch`
             per call (AmDb: put_array; peers convert each chunk to bytes)
--order: sequential = keys in key order; random = a shuffled order (fixed seed).
--durable: off = memory only (AmDb path=None, SQLite ':memory:'); on = a path
with sync="none". On-disk peers always write to a fresh temporary directory.

Method: each cell runs --warmup untimed repeats, then --repeat timed ones,
each on a fresh database (and fresh directory); the engines are interleaved
within every repeat in a rotated order, so that machine drift hits all alike.
Opening, loading (get/mixed/scan) and closing are not timed; the garbage
collector is off while timing. After every timed step a sample of keys is read
back and compared (outside the timing): a fast wrong answer fails the cell.
Reported: the median over the repeats and the spread (max - min) / median;
peak RSS of the owner process and of AmDb's workers (VmHWM), bytes per key
(AmDb: arena_used of all workers; files: disk blocks of the data directory;
SQLite: pages). The ratio is AmDb / best peer (plyvel, rocksdict, lmdb) in the
same cell; dict and sqlite3 are shown as references.

Output in --out DIR (default perf/results/<timestamp>/): results.csv,
results.json, summary.md and plots (scaling.png, batch.png, value_size.png,
peers.png). Exit status: 0, 1 when an engine failed a cell, 2 on bad input.

    python perf/run_matrix.py --quick                    # the small grid (make bench)
    python perf/run_matrix.py --workers 1,2,4,8,16 --workload put,get --batch 5000
    python perf/run_matrix.py --engines amdb,lmdb --value-size 16 1000 --keys 1000000
    python perf/run_matrix.py --compare old/results.json new/results.json
    python perf/run_matrix.py --suite dbbench            # LevelDB's db_bench workloads (perf/suites.py)
    python perf/run_matrix.py --suite ycsb               # YCSB A-F, one call and batched per operation
"""
import argparse
import csv
import datetime
import itertools
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import engines as eng  # noqa: E402  (perf/engines.py)

SCHEMA = "amdb-run-matrix/1"
WORKLOADS = ("put", "get", "mixed90", "mixed50", "scan", "put_array")
READ_SHARE = {"mixed90": 0.9, "mixed50": 0.5}
WORKLOAD_ALIASES = {"mixed": ("mixed90", "mixed50"), "mixed_90_10": ("mixed90",),
                    "mixed_50_50": ("mixed50",), "90/10": ("mixed90",), "50/50": ("mixed50",),
                    "all": WORKLOADS}
ORDERS = ("sequential", "random")
ORDER_ALIASES = {"seq": "sequential", "sequential": "sequential", "rand": "random",
                 "random": "random"}
DURABLE_WORDS = {"off": False, "no": False, "false": False, "0": False, "memory": False,
                 "on": True, "yes": True, "true": True, "1": True, "path": True}
KEY_FORMAT = b"key_%012d"      # 16-byte keys; zero padding makes key order = index order
VALUE_POOL = 1024              # distinct random values, reused cyclically
PRELOAD_CHUNK = 10_000         # items per batch when loading a database (untimed)
VERIFY_SAMPLE = 200            # keys read back after every timed step
MAX_WORKERS = 256              # amdb.ParallelDB accepts 1..256
MAX_VALUE_SIZE = 4 << 20       # about AmDb's default max_value_size (ring_size // 8)
CSV_FIELDS = ("workload", "batch", "value_size", "keys", "order", "durable", "nodes", "engine",
              "workers", "status", "reason", "repeats", "median_ops_s", "min_ops_s",
              "max_ops_s", "spread_pct", "median_s", "samples_ops_s", "best_peer",
              "best_peer_ops_s", "ratio_vs_best_peer", "peak_rss_owner_mib",
              "rss_owner_start_mib", "peak_rss_workers_mib", "peak_rss_total_mib",
              "stored_bytes", "bytes_per_key")
CELL_AXES = ("workload", "batch", "value_size", "keys", "order", "durable", "nodes")
PLOT_FILES = ("scaling.png", "batch.png", "value_size.png", "peers.png")


class GridError(ValueError):
    """Bad command-line input: reported with exit status 2."""


class VerifyError(AssertionError):
    """An engine returned something other than what was written."""


def default_workers(cpus=None):
    """1, 2, 4, ... up to the core count (the core count itself included)."""
    cpus = cpus or os.cpu_count() or 1
    values = [1 << i for i in range(cpus.bit_length()) if 1 << i <= cpus]
    if values[-1] != cpus:
        values.append(cpus)
    return values


def full_grid():
    return {"workers": default_workers(), "batch": [1, 100, 5000, 100_000],
            "value_size": [16, 100, 1000, 16384], "keys": [100_000],
            "order": ["sequential", "random"], "workload": list(WORKLOADS),
            "durable": [False, True], "nodes": [1], "engines": list(eng.ENGINES)}


def quick_grid():
    """The small grid of --quick (make bench): about a minute on 2 cores."""
    cpus = os.cpu_count() or 1
    return {"workers": sorted({1, cpus}), "batch": [1, 5000], "value_size": [100],
            "keys": [50_000], "order": ["random"], "workload": list(WORKLOADS),
            "durable": [False], "nodes": [1], "engines": list(eng.ENGINES)}


# --- grid parsing ----------------------------------------------------------------

def split_list(values):
    """['1,2', '4'] -> ['1', '2', '4']: a flag takes a comma and/or space separated list."""
    out = []
    for value in values:
        out.extend(part.strip() for part in str(value).split(","))
    return [part for part in out if part]


def dedupe(values):
    seen, out = set(), []
    for value in values:
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def parse_ints(flag, values, low, high=None, what="value"):
    items = split_list(values)
    if not items:
        raise GridError(f"{flag}: empty list; give at least one {what}")
    out = []
    for item in items:
        try:
            number = int(item)
        except ValueError:
            raise GridError(f"{flag}: {item!r} is not an integer") from None
        if number < low or (high is not None and number > high):
            bound = f"between {low:,} and {high:,}" if high is not None else f"at least {low:,}"
            raise GridError(f"{flag}: {number:,} is impossible; each {what} must be {bound}")
        out.append(number)
    return dedupe(out)


def parse_choices(flag, values, choices, aliases=None):
    items = split_list(values)
    if not items:
        raise GridError(f"{flag}: empty list; choose from {', '.join(choices)}")
    out = []
    for item in items:
        key = item.lower()
        if key in choices:
            out.append(key)
        elif aliases and key in aliases:
            expanded = aliases[key]
            out.extend([expanded] if isinstance(expanded, str) else expanded)
        else:
            raise GridError(f"{flag}: unknown value {item!r}; choose from {', '.join(choices)}")
    return dedupe(out)


def parse_durable(values):
    items = split_list(values)
    if not items:
        raise GridError("--durable: empty list; use off (memory only), on (a path) or off,on")
    out = []
    for item in items:
        if item.lower() not in DURABLE_WORDS:
            raise GridError(f"--durable: {item!r} is not off/on (also: memory/path, no/yes)")
        out.append(DURABLE_WORDS[item.lower()])
    return dedupe(out)


def parse_engines(values, installed=None):
    items = [item.lower() for item in split_list(values)]
    if not items:
        raise GridError(f"--engines: empty list; choose from {', '.join(eng.ENGINES)}")
    unknown = [item for item in items if item not in eng.ENGINES]
    if unknown:
        installed = eng.installed_engines() if installed is None else installed
        raise GridError(f"--engines: unknown engine(s) {', '.join(unknown)}; known engines: "
                        f"{', '.join(eng.ENGINES)} (installed here: {', '.join(installed) or 'none'})")
    return dedupe(items)


def build_grid(args):
    """The grid (a dict of lists) from the parsed flags; raises GridError."""
    base = quick_grid() if args.quick else full_grid()
    grid = {
        "workers": parse_ints("--workers", args.workers, 1, MAX_WORKERS, "worker count")
        if args.workers is not None else base["workers"],
        "batch": parse_ints("--batch", args.batch, 1, what="batch size")
        if args.batch is not None else base["batch"],
        "value_size": parse_ints("--value-size", args.value_size, 1, MAX_VALUE_SIZE, "value size")
        if args.value_size is not None else base["value_size"],
        "keys": parse_ints("--keys", args.keys, 1, what="key count")
        if args.keys is not None else base["keys"],
        "order": parse_choices("--order", args.order, ORDERS, ORDER_ALIASES)
        if args.order is not None else base["order"],
        "workload": parse_choices("--workload", args.workload, WORKLOADS, WORKLOAD_ALIASES)
        if args.workload is not None else base["workload"],
        "durable": parse_durable(args.durable) if args.durable is not None else base["durable"],
        "nodes": parse_ints("--nodes", args.nodes, 1, what="node count")
        if args.nodes is not None else base["nodes"],
        "engines": parse_engines(args.engines) if args.engines is not None else base["engines"],
    }
    if args.repeat < 1:
        raise GridError(f"--repeat: {args.repeat} is impossible; at least 1 timed repeat")
    if args.warmup < 0:
        raise GridError(f"--warmup: {args.warmup} is impossible; 0 or more")
    check_memory(grid)
    return grid


def check_memory(grid, available=None, shm_free=None):
    """Refuse a grid whose largest data set cannot fit in this machine's memory."""
    available = eng.read_meminfo_bytes("MemAvailable") if available is None else available
    if shm_free is None:
        try:
            st = os.statvfs("/dev/shm")
            shm_free = st.f_bavail * st.f_frsize
        except OSError:
            shm_free = None
    keys, value_size = max(grid["keys"]), max(grid["value_size"])
    data = keys * (value_size + 16 + 100)
    # The items and arrays in this process (about twice the data) plus one database.
    need = 3 * data
    if available and need > available:
        raise GridError(f"--keys {keys:,} with --value-size {value_size:,} needs about "
                        f"{need / (1 << 30):.1f} GiB of memory; {available / (1 << 30):.1f} GiB "
                        "is available: use fewer keys or smaller values")
    if "amdb" in grid["engines"] and shm_free and data * 1.5 > shm_free:
        raise GridError(f"AmDb keeps its data in /dev/shm: --keys {keys:,} with --value-size "
                        f"{value_size:,} needs about {data * 1.5 / (1 << 30):.1f} GiB there, "
                        f"{shm_free / (1 << 30):.1f} GiB is free")


def expand_cells(grid):
    """Every cell (a dict of the CELL_AXES), grouped so that data is built once per
    (keys, value size, order)."""
    cells = [dict(zip(CELL_AXES, values)) for values in itertools.product(
        grid["workload"], grid["batch"], grid["value_size"], grid["keys"], grid["order"],
        grid["durable"], grid["nodes"])]
    position = {axis: {v: i for i, v in enumerate(grid[axis])} for axis in CELL_AXES}
    cells.sort(key=lambda c: (position["keys"][c["keys"]], position["value_size"][c["value_size"]],
                              position["order"][c["order"]], position["workload"][c["workload"]],
                              position["batch"][c["batch"]], position["durable"][c["durable"]],
                              position["nodes"][c["nodes"]]))
    return cells


# --- statistics --------------------------------------------------------------------

def summarize(samples):
    """Median, min, max and spread ((max - min) / median, in %) of ops/s samples."""
    if not samples:
        return {"n": 0, "median": None, "min": None, "max": None, "spread_pct": None}
    median = statistics.median(samples)
    low, high = min(samples), max(samples)
    return {"n": len(samples), "median": median, "min": low, "max": high,
            "spread_pct": 100.0 * (high - low) / median if median else None}


def add_ratios(rows):
    """Set best_peer / best_peer_ops_s / ratio_vs_best_peer on every AmDb row: its
    median over the best median of the peers (plyvel, rocksdict, lmdb) of the cell."""
    best = {}
    for row in rows:
        if row["engine"] in eng.PEERS and row["status"] == "ok" and row["median_ops_s"]:
            key = cell_key(row)
            if key not in best or row["median_ops_s"] > best[key][1]:
                best[key] = (row["engine"], row["median_ops_s"])
    for row in rows:
        row.setdefault("best_peer", None)
        row.setdefault("best_peer_ops_s", None)
        row.setdefault("ratio_vs_best_peer", None)
        if row["engine"] != "amdb" or cell_key(row) not in best:
            continue
        peer, rate = best[cell_key(row)]
        row["best_peer"], row["best_peer_ops_s"] = peer, rate
        if row["status"] == "ok" and row["median_ops_s"]:
            row["ratio_vs_best_peer"] = row["median_ops_s"] / rate
    return rows


def cell_key(row):
    return tuple(row[axis] for axis in CELL_AXES)


def row_key(row):
    return cell_key(row) + (row["engine"], row.get("workers"))


# --- data and workloads ------------------------------------------------------------

class Data:
    """Keys and values of one (keys, value size, order): the same for every engine."""

    def __init__(self, n, value_size, order, seed):
        self.n, self.value_size, self.order = n, value_size, order
        rng = random.Random(f"{seed}/{n}/{value_size}/{order}")
        self.sorted_keys = [KEY_FORMAT % i for i in range(n)]
        # Random bytes (nothing for LevelDB/RocksDB to compress), ending in a non-NUL
        # byte so that a numpy S<n> array keeps every value whole.
        self.pool = [rng.randbytes(value_size - 1) + b"v" for _ in range(min(n, VALUE_POOL))]
        index = list(range(n))
        if order == "random":
            rng.shuffle(index)
        self.index = index                       # the access order
        self.keys = [self.sorted_keys[i] for i in index]
        self.items = [(self.sorted_keys[i], self.pool[i % len(self.pool)]) for i in index]
        self.sample = rng.sample(range(n), min(n, VERIFY_SAMPLE))
        self._preload = None
        self._arrays = None

    def value_of(self, i, generation=0):
        return self.pool[(i + generation) % len(self.pool)]

    @property
    def preload_chunks(self):
        if self._preload is None:
            items = [(key, self.value_of(i)) for i, key in enumerate(self.sorted_keys)]
            self._preload = [items[i:i + PRELOAD_CHUNK] for i in range(0, self.n, PRELOAD_CHUNK)]
        return self._preload

    @property
    def arrays(self):
        if self._arrays is None:
            import numpy as np
            keys = np.array(self.index, dtype=np.uint64)
            pool = np.array(self.pool, dtype=f"S{self.value_size}")
            self._arrays = (keys, pool[keys % len(self.pool)])
        return self._arrays


class Plan:
    """What one cell times: fn(engine, db) on a database (loaded first when
    preload), then check(engine, db, result) outside the timing."""

    def __init__(self, preload, fn, check, ops):
        self.preload, self.fn, self.check, self.ops = preload, fn, check, ops


def chunked(seq, size):
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def check_lookups(engine, db, expected, what):
    for key, value in expected:
        got = engine.lookup(db, key)
        if got != value:
            raise VerifyError(f"{engine.name} {what}: get({key!r}) returned "
                              f"{got[:40] if isinstance(got, bytes) else got!r}, "
                              f"expected {value[:40]!r}")
    got = engine.lookup(db, b"missing_key")
    if got is not None:
        raise VerifyError(f"{engine.name} {what}: a missing key returned {got!r}")


def make_plan(data, workload, batch, seed):
    n = data.n
    plain = [(data.sorted_keys[i], data.value_of(i)) for i in data.sample]

    def check_plain(engine, db, _result):
        check_lookups(engine, db, plain, workload)

    if workload == "put":
        if batch == 1:
            return Plan(False, lambda e, db: e.put_items(db, data.items), check_plain, n)
        chunks = chunked(data.items, batch)
        return Plan(False, lambda e, db: e.put_batches(db, chunks), check_plain, n)

    if workload == "get":
        if batch == 1:
            return Plan(True, lambda e, db: e.get_each(db, data.keys), check_plain, n)
        chunks = chunked(data.keys, batch)
        return Plan(True, lambda e, db: e.get_batches(db, chunks), check_plain, n)

    if workload in READ_SHARE:
        return make_mixed_plan(data, workload, batch, seed)

    if workload == "scan":
        keys = data.sorted_keys
        ranges = [(keys[i], keys[i + batch] if i + batch < n else None)
                  for i in range(0, n, batch)]
        if data.order == "random":
            random.Random(f"{seed}/scan/{n}/{batch}").shuffle(ranges)

        def check_scan(engine, db, count):
            if count != n:
                raise VerifyError(f"{engine.name} scan: read {count} items, expected {n}")
            check_plain(engine, db, None)
        return Plan(True, lambda e, db: e.scan_ranges(db, ranges), check_scan, n)

    if workload == "put_array":
        keys, values = data.arrays
        expected = [(i.to_bytes(8, "big"), data.value_of(i)) for i in data.sample]

        def check_arrays(engine, db, _result):
            check_lookups(engine, db, expected, "put_array")
        return Plan(False, lambda e, db: e.put_arrays(db, keys, values, batch), check_arrays, n)

    raise GridError(f"unknown workload {workload!r}")


def make_mixed_plan(data, workload, batch, seed):
    """N operations in batches of `batch` operations of one kind (read or write);
    consecutive batches of the same kind form a run, timed as the engine's
    get_each/get_batches or put_items/put_batches. Writes overwrite with another value."""
    n = data.n
    rng = random.Random(f"{seed}/{workload}/{n}/{batch}/{data.order}")
    read_share = READ_SHARE[workload]
    runs = []                                   # [(is_write, [batch, ...])]
    final = {}                                  # key index -> last generation written
    for start in range(0, n, batch):
        size = min(batch, n - start)
        if data.order == "sequential":
            indexes = [(start + j) % n for j in range(size)]
        else:
            indexes = [rng.randrange(n) for _ in range(size)]
        is_write = rng.random() >= read_share
        if is_write:
            ops = [(data.sorted_keys[i], data.value_of(i, 1)) for i in indexes]
            for i in indexes:
                final[i] = 1
        else:
            ops = [data.sorted_keys[i] for i in indexes]
        if runs and runs[-1][0] == is_write:
            runs[-1][1].append(ops)
        else:
            runs.append((is_write, [ops]))
    if batch == 1:                               # one call per operation: flat lists
        runs = [(is_write, [op for ops in batches for op in ops]) for is_write, batches in runs]

    def run(engine, db):
        put_items, put_batches = engine.put_items, engine.put_batches
        get_each, get_batches = engine.get_each, engine.get_batches
        for is_write, ops in runs:
            if batch == 1:
                (put_items if is_write else get_each)(db, ops)
            else:
                (put_batches if is_write else get_batches)(db, ops)

    expected = [(data.sorted_keys[i], data.value_of(i, final.get(i, 0))) for i in data.sample]
    writes = sum(len(ops) if batch == 1 else sum(map(len, ops)) for w, ops in runs if w)

    def check(engine, db, _result):
        check_lookups(engine, db, expected, workload)
    plan = Plan(True, run, check, n)
    plan.writes = writes
    return plan


# --- one run -----------------------------------------------------------------------

def read_status_kib(pid, field):
    """A field (VmHWM, VmRSS) of /proc/<pid>/status in bytes, or None."""
    return eng.read_proc_kib(f"/proc/{pid}/status", field)


def reset_peak_rss():
    """Reset this process's VmHWM (Linux >= 4.0): True when it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def disk_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def run_once(engine, durable, plan, data, tmp_root):
    """One fresh database, one timed step; returns the measurements."""
    tmp = tempfile.mkdtemp(dir=tmp_root)
    try:
        rss_start = read_status_kib("self", "VmRSS")
        hwm_reset = reset_peak_rss()
        db = engine.open(tmp, durable)
        try:
            if plan.preload:
                engine.put_batches(db, data.preload_chunks)
            seconds, result = eng.timed(plan.fn, engine, db)
            plan.check(engine, db, result)
            worker_hwm = [read_status_kib(pid, "VmHWM") for pid in engine.worker_pids(db)]
            stored = engine.stored_bytes(db)
        finally:
            engine.close(db)
        owner_hwm = read_status_kib("self", "VmHWM")
        if stored is None and os.listdir(tmp):
            stored = disk_bytes(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"seconds": seconds, "rss_start": rss_start, "owner_hwm": owner_hwm,
            "hwm_reset": hwm_reset,
            "workers_hwm": sum(w for w in worker_hwm if w) if worker_hwm else None,
            "stored_bytes": stored}


# --- the sweep -----------------------------------------------------------------------

class Variant:
    """One engine configuration measured in a cell: a peer, or AmDb with w workers."""

    def __init__(self, engine, workers=None):
        self.engine, self.workers = engine, workers
        self.name = engine.name
        self.label = f"amdb w={workers}" if workers is not None else engine.name


class Progress:
    """A tqdm bar (current cell and engine, ETA) on a terminal; elsewhere (make bench
    into a log, CI) or without tqdm, one line per cell with the runs done and an ETA."""

    def __init__(self, total, enabled):
        self.bar = None
        self.enabled = enabled
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.label = ""
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr,
                                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                           "runs [{elapsed}<{remaining}]")
            except ImportError:
                self.bar = None

    def cell(self, label):
        self.label = label
        if self.bar is None and self.enabled:
            elapsed = time.perf_counter() - self.start
            eta = (f", ETA {elapsed / self.done * (self.total - self.done):.0f} s"
                   if self.done else "")
            print(f"[{self.done}/{self.total} runs, {elapsed:.0f} s{eta}] {label}",
                  file=sys.stderr, flush=True)

    def engine(self, label):
        if self.bar is not None:
            self.bar.set_description_str(f"{self.label} [{label}]", refresh=True)

    def update(self, n=1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def cell_label(cell):
    return (f"{cell['workload']} b={cell['batch']:,} v={cell['value_size']:,}B "
            f"n={cell['keys']:,} {cell['order'][:4]}"
            + (" durable" if cell["durable"] else "")
            + (f" nodes={cell['nodes']}" if cell["nodes"] != 1 else ""))


def base_row(cell, variant):
    row = dict(cell)
    row.update({"engine": variant.name, "workers": variant.workers, "status": "ok",
                "reason": None, "repeats": 0, "samples_ops_s": [], "median_ops_s": None,
                "min_ops_s": None, "max_ops_s": None, "spread_pct": None, "median_s": None,
                "peak_rss_owner_mib": None, "rss_owner_start_mib": None,
                "peak_rss_workers_mib": None, "peak_rss_total_mib": None,
                "stored_bytes": None, "bytes_per_key": None})
    return row


def sweep(grid, variants, args, say):
    """Run every cell; returns (rows, failed, interrupted)."""
    cells = expand_cells(grid)
    plans = []
    skipped_notices = set()
    total = 0
    for cell in cells:
        active, skipped = [], []
        for variant in variants:
            reason = variant.engine.skip_reason(durable=cell["durable"],
                                                workload=cell["workload"], nodes=cell["nodes"])
            (skipped if reason else active).append((variant, reason))
        plans.append((cell, [v for v, _ in active], skipped))
        total += len(active) * (args.warmup + args.repeat)

    rows, failed, interrupted = [], False, False
    progress = Progress(total, not args.no_progress)
    tmp_root = tempfile.mkdtemp(prefix="amdb-matrix-", dir=args.tmpdir)
    data, data_key = None, None
    try:
        for cell, active, skipped in plans:
            for variant, reason in skipped:
                row = base_row(cell, variant)
                row["status"], row["reason"] = "skipped", reason
                rows.append(row)
                if (variant.name, reason) not in skipped_notices:
                    skipped_notices.add((variant.name, reason))
                    progress.write(f"NOTICE {variant.name}: cells skipped: {reason}")
            if not active:
                continue
            label = cell_label(cell)
            progress.cell(label)
            key = (cell["keys"], cell["value_size"], cell["order"])
            if key != data_key:
                data, data_key = None, None          # free the previous data first
                data = Data(cell["keys"], cell["value_size"], cell["order"], args.seed)
                data_key = key
            plan = make_plan(data, cell["workload"], cell["batch"], args.seed)
            results = {id(v): [] for v in active}
            errors = {}
            for repeat in range(args.warmup + args.repeat):
                shift = repeat % len(active)
                for variant in active[shift:] + active[:shift]:
                    if id(variant) in errors:
                        progress.update()
                        continue
                    progress.engine(variant.label)
                    try:
                        measured = run_once(variant.engine, cell["durable"], plan, data, tmp_root)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:
                        errors[id(variant)] = f"{type(exc).__name__}: {exc}"
                        progress.write(f"FAILED {variant.label} in {label}: "
                                       f"{type(exc).__name__}: {exc}")
                        if args.verbose:
                            progress.write("".join(traceback.format_exception(
                                type(exc), exc, exc.__traceback__)))
                    else:
                        if repeat >= args.warmup:
                            results[id(variant)].append(measured)
                    progress.update()
            for variant in active:
                row = base_row(cell, variant)
                if id(variant) in errors:
                    failed = True
                    row["status"], row["reason"] = "failed", errors[id(variant)]
                fill_measurements(row, results[id(variant)], plan.ops, cell["keys"])
                rows.append(row)
    except KeyboardInterrupt:
        interrupted = True
        progress.write("interrupted: writing the cells measured so far")
    finally:
        progress.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    return add_ratios(rows), failed, interrupted


def fill_measurements(row, measured, ops, keys):
    if not measured:
        return
    rates = [ops / m["seconds"] for m in measured]
    stats = summarize(rates)
    mib = 1 << 20

    def peak(field):
        values = [m[field] for m in measured if m[field] is not None]
        return max(values) if values else None
    owner, workers, start = peak("owner_hwm"), peak("workers_hwm"), peak("rss_start")
    stored = measured[-1]["stored_bytes"]
    row.update({
        "repeats": len(rates), "samples_ops_s": rates, "median_ops_s": stats["median"],
        "min_ops_s": stats["min"], "max_ops_s": stats["max"], "spread_pct": stats["spread_pct"],
        "median_s": statistics.median(m["seconds"] for m in measured),
        "peak_rss_owner_mib": owner / mib if owner is not None else None,
        "rss_owner_start_mib": start / mib if start is not None else None,
        "peak_rss_workers_mib": workers / mib if workers is not None else None,
        "peak_rss_total_mib": ((owner or 0) + (workers or 0)) / mib if owner is not None else None,
        "stored_bytes": stored,
        "bytes_per_key": stored / keys if stored is not None else None,
    })


# --- reports -------------------------------------------------------------------------

def fmt_rate(value):
    if value is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def fmt_num(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def durable_word(durable):
    return "on" if durable else "off"


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            out = dict(row)
            out["durable"] = durable_word(row["durable"])
            out["workers"] = "" if row.get("workers") is None else row["workers"]
            out["samples_ops_s"] = ";".join(f"{s:.1f}" for s in row.get("samples_ops_s") or [])
            for field in CSV_FIELDS:
                if out.get(field) is None:
                    out[field] = ""
                elif isinstance(out[field], float):
                    out[field] = f"{out[field]:.6g}" if field != "median_s" else f"{out[field]:.6f}"
            writer.writerow(out)


def write_json(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def load_report(path):
    try:
        with open(path) as f:
            report = json.load(f)
    except OSError as exc:
        raise GridError(f"--compare: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise GridError(f"--compare: {path} is not JSON: {exc}") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise GridError(f"--compare: {path} is not a run_matrix results.json "
                        f"(schema {SCHEMA!r})")
    return report


def markdown_table(headers, rows, align=None):
    align = align or ["l"] * len(headers)
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_table(rows, engine_names):
    """The main summary table: one line per cell and AmDb worker count, every engine's
    median ops/s (with its spread), AmDb's memory, and AmDb / best peer."""
    by_cell = {}
    for row in rows:
        by_cell.setdefault(cell_key(row), []).append(row)
    order = {w: i for i, w in enumerate(WORKLOADS)}
    keys = sorted(by_cell, key=lambda k: (order.get(k[0], 99), k[5], k[6], k[3], k[2], k[1],
                                          ORDERS.index(k[4]) if k[4] in ORDERS else 9))
    peers = [name for name in engine_names if name != "amdb"]
    headers = (["workload", "batch", "value B", "keys", "order", "durable"]
               + (["workers", "amdb ops/s"] if "amdb" in engine_names else [])
               + [f"{name} ops/s" for name in peers]
               + (["amdb / best peer", "amdb RSS MiB", "amdb B/key"]
                  if "amdb" in engine_names else []))
    align = ["l", "r", "r", "r", "l", "l"] + ["r"] * (len(headers) - 6)

    def cell_text(row):
        if row is None:
            return "-"
        if row["status"] == "skipped":
            return "skipped"
        if row["status"] == "failed":
            return "FAILED"
        if row["median_ops_s"] is None:
            return "-"
        spread = row["spread_pct"]
        return fmt_rate(row["median_ops_s"]) + (f" ±{spread:.0f}%" if spread else "")

    lines = []
    for key in keys:
        group = by_cell[key]
        peer_rows = {r["engine"]: r for r in group if r["engine"] != "amdb"}
        amdb_rows = sorted((r for r in group if r["engine"] == "amdb"),
                           key=lambda r: r["workers"] or 0) or [None]
        if len(amdb_rows) > 1 and all(r["status"] == "skipped" for r in amdb_rows):
            amdb_rows = [dict(amdb_rows[0], workers="all")]     # one line, not one per w
        nodes = f" nodes={key[6]}" if key[6] != 1 else ""
        for amdb in amdb_rows:
            line = [key[0], f"{key[1]:,}", f"{key[2]:,}", f"{key[3]:,}", key[4],
                    durable_word(key[5]) + nodes]
            if "amdb" in engine_names:
                line += [amdb["workers"] if amdb else "-", cell_text(amdb)]
            line += [cell_text(peer_rows.get(name)) for name in peers]
            if "amdb" in engine_names:
                ratio = amdb and amdb.get("ratio_vs_best_peer")
                line.append(f"{ratio:.2f}x ({amdb['best_peer']})" if ratio else "n/a")
                line.append(fmt_num(amdb and amdb["peak_rss_total_mib"], 0))
                line.append(fmt_num(amdb and amdb["bytes_per_key"], 0))
            lines.append(line)
    return markdown_table(headers, lines, align)


def memory_table(rows):
    headers = ["workload", "batch", "value B", "keys", "order", "durable", "engine",
               "peak RSS owner MiB", "owner at start MiB", "peak RSS workers MiB",
               "bytes/key"]
    lines = []
    for row in rows:
        if row["status"] != "ok" or row["peak_rss_owner_mib"] is None:
            continue
        name = f"amdb w={row['workers']}" if row["engine"] == "amdb" else row["engine"]
        lines.append([row["workload"], f"{row['batch']:,}", f"{row['value_size']:,}",
                      f"{row['keys']:,}", row["order"], durable_word(row["durable"]), name,
                      fmt_num(row["peak_rss_owner_mib"]), fmt_num(row["rss_owner_start_mib"]),
                      fmt_num(row["peak_rss_workers_mib"]), fmt_num(row["bytes_per_key"], 0)])
    return markdown_table(headers, lines, ["l", "r", "r", "r", "l", "l", "l", "r", "r", "r", "r"])


def describe_machine(machine):
    return (f"{machine['cpu_model']}, {machine['cpu_count']} cores "
            f"({machine['cpus_usable']} usable), {machine['memory_gib']} GiB RAM; "
            f"{machine['python']} on {machine['platform']}")


def skipped_lines(rows):
    reasons = {}
    for row in rows:
        if row["status"] in ("skipped", "failed"):
            name = f"amdb w={row['workers']}" if row["engine"] == "amdb" else row["engine"]
            reasons.setdefault((row["status"], name, row["reason"]), 0)
            reasons[(row["status"], name, row["reason"])] += 1
    return [f"- {status} {name}: {count} cell(s): {reason}"
            for (status, name, reason), count in sorted(reasons.items())]


def summary_markdown(report):
    config, grid, rows = report["config"], report["grid"], report["results"]
    names = [name for name in grid["engines"]]
    out = [f"# AmDb run matrix, {report['created']}", ""]
    if report.get("interrupted"):
        out += ["**Interrupted: only part of the grid was measured.**", ""]
    out += [f"Machine: {describe_machine(report['machine'])}.", "",
            "Engines:", ""]
    for name, info in report["engines"].items():
        if info["status"] == "ok":
            out.append(f"- {name}: {info['version']}; {info['settings']}")
        else:
            out.append(f"- {name}: {info['status']}")
    out += ["",
            f"Grid: workloads {', '.join(grid['workload'])}; batch {grid['batch']}; "
            f"value size {grid['value_size']} B; keys {grid['keys']}; order "
            f"{', '.join(grid['order'])}; durable {', '.join(map(durable_word, grid['durable']))}; "
            f"AmDb workers {grid['workers']}; nodes {grid['nodes']}.",
            f"Median of {config['repeat']} timed repeat(s) after {config['warmup']} warm-up "
            f"repeat(s), a fresh database each; engines interleaved; ± is the spread "
            f"(max - min) / median. On-disk peers in {config['tmp_parent']} "
            f"({config['tmp_fstype']}); AmDb in /dev/shm. Took {report['elapsed_s']:.0f} s.",
            "",
            "## Throughput (operations per second)", "",
            throughput_table(rows, names), "",
            "amdb / best peer: AmDb's median over the best median of plyvel, rocksdict and "
            "lmdb in the same cell (dict and sqlite3 are references, not peers). amdb RSS: "
            "peak RSS (VmHWM) of the owner process plus the workers; the arenas are shared "
            "memory, counted in every process that touched a page, and the owner's figure "
            "includes the benchmark's own copy of the data, so B/key (the workers' "
            "arena_used per key) is the exact footprint.", ""]
    notes = skipped_lines(rows)
    if notes:
        out += ["## Skipped and failed", ""] + notes + [""]
    out += ["## Memory", "", memory_table(rows), "",
            "## Plots", ""] + [f"- [{name}]({name})" for name in report.get("plots", [])] + [""]
    return "\n".join(out)


def compare_reports(a, b, threshold=5.0, names=("A", "B")):
    """Markdown: every (cell, engine, workers) measured in both runs with its change."""
    rows_a = {row_key(r): r for r in a["results"] if r["status"] == "ok" and r["median_ops_s"]}
    rows_b = {row_key(r): r for r in b["results"] if r["status"] == "ok" and r["median_ops_s"]}
    common = [k for k in rows_a if k in rows_b]
    order = {w: i for i, w in enumerate(WORKLOADS)}
    common.sort(key=lambda k: (order.get(k[0], 99),) + tuple(str(x) for x in k[1:]))
    lines, worse, better = [], 0, 0
    for key in common:
        ra, rb = rows_a[key], rows_b[key]
        change = 100.0 * (rb["median_ops_s"] - ra["median_ops_s"]) / ra["median_ops_s"]
        noise = max(threshold, ra["spread_pct"] or 0, rb["spread_pct"] or 0)
        if change < -noise:
            flag, worse = "SLOWER", worse + 1
        elif change > noise:
            flag, better = "faster", better + 1
        else:
            flag = "~"
        engine = f"amdb w={key[8]}" if key[7] == "amdb" else key[7]
        lines.append([key[0], f"{key[1]:,}", f"{key[2]:,}", f"{key[3]:,}", key[4],
                      durable_word(key[5]), engine, fmt_rate(ra["median_ops_s"]),
                      fmt_rate(rb["median_ops_s"]), f"{change:+.1f}%", flag])
    out = ["# run_matrix: A -> B", "",
           f"- A: {names[0]}, {a.get('created')}, {describe_machine(a['machine'])}",
           f"- B: {names[1]}, {b.get('created')}, {describe_machine(b['machine'])}", ""]
    if (a["machine"].get("cpu_model"), a["machine"].get("cpu_count")) != \
            (b["machine"].get("cpu_model"), b["machine"].get("cpu_count")):
        out += ["**The two runs come from different machines.**", ""]
    out.append(markdown_table(
        ["workload", "batch", "value B", "keys", "order", "durable", "engine",
         "A ops/s", "B ops/s", "change", ""],
        lines, ["l", "r", "r", "r", "l", "l", "l", "r", "r", "r", "l"]))
    only_a = len([k for k in rows_a if k not in rows_b])
    only_b = len([k for k in rows_b if k not in rows_a])
    out += ["", f"{len(common)} measurement(s) in both: {worse} slower, {better} faster "
            f"(beyond max({threshold:g}%, the spread of either run)); "
            f"{only_a} only in A, {only_b} only in B."]
    return "\n".join(out), worse


# --- plots ----------------------------------------------------------------------------

def reference_values(grid):
    """The value each axis is held at in a plot about another axis."""
    def prefer(values, wanted, fallback):
        return wanted if wanted in values else fallback(values)
    return {"batch": prefer(grid["batch"], 5000, max),
            "value_size": prefer(grid["value_size"], 100, min),
            "keys": max(grid["keys"]),
            "order": prefer(grid["order"], "random", lambda v: v[0]),
            "durable": prefer(grid["durable"], False, lambda v: v[0]),
            "nodes": prefer(grid["nodes"], 1, min),
            "workers": max(grid["workers"])}


def held_text(ref, skip):
    parts = []
    for axis, text in (("batch", f"batch {ref['batch']:,}"),
                       ("value_size", f"values {ref['value_size']:,} B"),
                       ("keys", f"{ref['keys']:,} keys"), ("order", f"{ref['order']} order"),
                       ("durable", "durable" if ref["durable"] else "memory only"),
                       ("workers", f"AmDb {ref['workers']} workers")):
        if axis not in skip:
            parts.append(text)
    return ", ".join(parts)


def write_plots(out_dir, rows, grid, machine):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = reference_values(grid)
    ok = [r for r in rows if r["status"] == "ok" and r["median_ops_s"]]
    workloads = grid["workload"]
    engine_names = grid["engines"]
    colors = {name: f"C{i}" for i, name in enumerate(eng.ENGINES)}
    where = f"{machine['cpu_model']}, {machine['cpu_count']} cores"

    def select(row, free):
        return all(row[axis] == ref[axis] for axis in ("batch", "value_size", "keys", "order",
                                                        "durable", "nodes") if axis not in free)

    def figure(title):
        cols = min(3, len(workloads))
        nrows = math.ceil(len(workloads) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.0 * nrows), squeeze=False)
        for ax in axes.flat[len(workloads):]:
            ax.set_visible(False)
        fig.suptitle(f"{title}\n{where}", fontsize=11)
        return fig, list(axes.flat)

    def finish(fig, name, written):
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=90)
        plt.close(fig)
        written.append(name)

    def log_if_wide(ax, values):
        values = [v for v in values if v]
        if values and max(values) / min(values) > 20:
            ax.set_yscale("log")

    written = []

    # Scaling: AmDb ops/s vs workers, a line per batch size, with the ideal line.
    fig, axes = figure(f"AmDb throughput vs workers ({held_text(ref, {'batch', 'workers'})})")
    for ax, workload in zip(axes, workloads):
        ys_all = []
        for i, batch in enumerate(grid["batch"]):
            points = sorted((r["workers"], r["median_ops_s"]) for r in ok
                            if r["engine"] == "amdb" and r["workload"] == workload
                            and r["batch"] == batch and select(r, {"batch"}))
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-", color=f"C{i}", label=f"amdb, batch {batch:,}")
            ideal = [ys[0] * x / xs[0] for x in xs]
            ax.plot(xs, ideal, ":", color=f"C{i}", linewidth=1,
                    label="ideal linear" if i == 0 else None)
            ys_all += list(ys) + ideal
        peers = [r for r in ok if r["engine"] in eng.PEERS and r["workload"] == workload
                 and select(r, set())]
        if peers:
            best = max(peers, key=lambda r: r["median_ops_s"])
            ax.axhline(best["median_ops_s"], color="grey", linestyle="--", linewidth=1,
                       label=f"best peer ({best['engine']}), batch {ref['batch']:,}")
            ys_all.append(best["median_ops_s"])
        decorate(ax, workload, "AmDb workers", ys_all)
        ax.set_xticks(grid["workers"])
        log_if_wide(ax, ys_all)
    finish(fig, "scaling.png", written)

    # Throughput vs batch size and vs value size: a line per engine.
    for axis, name, xlabel in (("batch", "batch.png", "batch size (operations per call)"),
                               ("value_size", "value_size.png", "value size (bytes)")):
        fig, axes = figure(f"Throughput vs {xlabel.split(' (')[0]} ({held_text(ref, {axis})})")
        for ax, workload in zip(axes, workloads):
            ys_all = []
            for engine in engine_names:
                points = sorted((r[axis], r["median_ops_s"]) for r in ok
                                if r["engine"] == engine and r["workload"] == workload
                                and select(r, {axis})
                                and (engine != "amdb" or r["workers"] == ref["workers"]))
                if not points:
                    continue
                xs, ys = zip(*points)
                label = f"amdb ({ref['workers']} workers)" if engine == "amdb" else engine
                ax.plot(xs, ys, "o-", color=colors[engine], label=label)
                ys_all += ys
            decorate(ax, workload, xlabel, ys_all)
            if len(grid[axis]) > 1:
                ax.set_xscale("log")
            log_if_wide(ax, ys_all)
        finish(fig, name, written)

    # Bars: every engine in the reference cell of every workload.
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(workloads) + 2), 4.6))
    width = 0.8 / max(1, len(engine_names))
    heights = []
    for j, engine in enumerate(engine_names):
        xs, ys = [], []
        for i, workload in enumerate(workloads):
            match = [r for r in ok if r["engine"] == engine and r["workload"] == workload
                     and select(r, set()) and (engine != "amdb" or r["workers"] == ref["workers"])]
            if match:
                xs.append(i + (j - (len(engine_names) - 1) / 2) * width)
                ys.append(match[0]["median_ops_s"])
        label = f"amdb ({ref['workers']} workers)" if engine == "amdb" else engine
        ax.bar(xs, ys, width=width, color=colors[engine], label=label)
        heights += ys
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads)
    ax.set_ylabel("operations / s (median)")
    log_if_wide(ax, heights)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"AmDb and its peers ({held_text(ref, set())})\n{where}", fontsize=10)
    finish(fig, "peers.png", written)
    return written


def decorate(ax, title, xlabel, ys):
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("operations / s (median)")
    ax.grid(alpha=0.3)
    if ys:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


# --- main -------------------------------------------------------------------------------

def make_parser():
    parser = argparse.ArgumentParser(
        prog="run_matrix.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    lists = parser.add_argument_group("grid (each takes a list: 1,2,4 or 1 2 4)")
    lists.add_argument("--workers", nargs="+", help="AmDb worker counts (default 1, 2, 4, ... "
                       "up to the core count)")
    lists.add_argument("--batch", nargs="+", help="operations per call (default 1,100,5000,100000)")
    lists.add_argument("--value-size", nargs="+", help="value bytes (default 16,100,1000,16384)")
    lists.add_argument("--keys", nargs="+", help="key count = operations per run (default 100000)")
    lists.add_argument("--order", nargs="+", help="sequential, random (default both)")
    lists.add_argument("--workload", nargs="+",
                       help=f"{', '.join(WORKLOADS)}; mixed = mixed90,mixed50 (default all)")
    lists.add_argument("--durable", nargs="+", help="off (memory only), on (a path, "
                       "sync='none') (default off,on)")
    lists.add_argument("--engines", nargs="+",
                       help=f"{', '.join(eng.ENGINES)} (default all; missing peers are skipped)")
    lists.add_argument("--nodes", nargs="+", help="cluster nodes (default 1; > 1 waits for "
                       "amdb.distributed: those cells are skipped)")
    parser.add_argument("--quick", action="store_true",
                        help="the small grid (make bench); flags given still override it")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per cell (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed repeats before them (default 1)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of orders and values")
    parser.add_argument("--out", metavar="DIR", help="output directory "
                        "(default perf/results/<timestamp>/)")
    parser.add_argument("--tmpdir", help="where on-disk peers write (default: system temp)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of failures")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                        help="print the changes from run A to run B and exit")
    parser.add_argument("--threshold", type=float, default=5.0,
                        help="--compare: %% change below which a difference is noise "
                             "(default 5; the runs' spreads count too)")
    return parser


def load_variants(grid, say):
    """The engine variants to run, and the engines' status / version / settings."""
    variants, info = [], {}
    for name in grid["engines"]:
        engine = eng.make_engine(name, grid["workers"][0])
        try:
            engine.load()
        except Exception as exc:   # not installed, or (amdb) not built
            info[name] = {"status": f"skipped: not available ({type(exc).__name__}: {exc})",
                          "version": None, "settings": None}
            say(f"NOTICE {name} skipped: not available ({type(exc).__name__}: {exc})")
            continue
        if name == "lmdb":
            data = max(grid["keys"]) * (max(grid["value_size"]) + 64)
            engine.map_size = max(eng.LMDB_MAP_SIZE, 4 * data)
        if name == "amdb":
            for workers in grid["workers"]:
                amdb = eng.AmdbEngine(workers)
                amdb.amdb, amdb.numpy = engine.amdb, engine.numpy
                variants.append(Variant(amdb, workers))
            settings = ("ParallelDB(workers=w), defaults otherwise; put / batch_put(list) / "
                        "batch_get(list) / scan(start, stop) / put_array per call")
        else:
            variants.append(Variant(engine))
            settings = engine.settings
        info[name] = {"status": "ok", "version": engine.version(), "settings": settings}
    amdb_variants = [v for v in variants if v.name == "amdb"]
    if amdb_variants and True in grid["durable"]:       # ask AmDb once, not per variant
        reason = amdb_variants[0].engine.durable_unavailable()
        for variant in amdb_variants:
            variant.engine._durable_probe = reason or ""
    return variants, info


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--suite" or a.startswith("--suite=") for a in argv):
        import suites                    # perf/suites.py: db_bench and YCSB, peers side by side
        return suites.main(argv)
    parser = make_parser()
    args = parser.parse_args(argv)
    say = lambda line: print(line, flush=True)  # noqa: E731

    if args.compare:
        try:
            a, b = (load_report(path) for path in args.compare)
        except GridError as exc:
            parser.error(str(exc))
        text, _worse = compare_reports(a, b, args.threshold, tuple(args.compare))
        say(text)
        return 0

    try:
        grid = build_grid(args)
    except GridError as exc:
        parser.error(str(exc))

    cells = expand_cells(grid)
    machine = eng.machine_info()
    say(f"AmDb run matrix: {len(cells)} cell(s) x {len(grid['engines'])} engine(s) "
        f"(AmDb at workers {grid['workers']}), {args.repeat} timed repeat(s) + "
        f"{args.warmup} warm-up")
    say(f"  machine  {describe_machine(machine)}")
    if args.dry_run:
        for cell in cells:
            say("  " + cell_label(cell))
        return 0

    variants, info = load_variants(grid, say)
    if not variants:
        parser.error(f"none of the engines {', '.join(grid['engines'])} is available here "
                     f"(installed: {', '.join(eng.installed_engines()) or 'none'})")
    for name, entry in info.items():
        if entry["status"] == "ok":
            say(f"  {name:<9} {entry['version']}")
    if max(grid["workers"]) > (os.cpu_count() or 1):
        say(f"NOTICE --workers {max(grid['workers'])} is more than the "
            f"{os.cpu_count()} cores here: workers will share cores")

    out_dir = args.out or os.path.join(HERE, "results",
                                       datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    tmp_parent = args.tmpdir or tempfile.gettempdir()
    mount, fstype = eng.filesystem_of(tmp_parent)

    started = time.perf_counter()
    created = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    rows, failed, interrupted = sweep(grid, variants, args, say)
    elapsed = time.perf_counter() - started

    report = {
        "schema": SCHEMA, "created": created, "argv": sys.argv[1:] if argv is None else argv,
        "elapsed_s": elapsed, "interrupted": interrupted, "machine": machine,
        "engines": info,
        "grid": {**grid, "durable": grid["durable"]},
        "config": {"repeat": args.repeat, "warmup": args.warmup, "seed": args.seed,
                   "quick": args.quick, "tmp_parent": tmp_parent, "tmp_fstype": fstype,
                   "tmp_mount": mount, "key_format": KEY_FORMAT.decode(),
                   "value_pool": VALUE_POOL, "verify_sample": VERIFY_SAMPLE,
                   "preload_chunk": PRELOAD_CHUNK, "peers_for_ratio": list(eng.PEERS)},
        "results": rows,
        "plots": [],
    }
    if not args.no_plots:
        try:
            report["plots"] = write_plots(out_dir, rows, grid, machine)
        except ImportError as exc:
            say(f"NOTICE no plots: {exc} (pip install matplotlib, or the bench extra)")
    write_json(os.path.join(out_dir, "results.json"), report)
    write_csv(os.path.join(out_dir, "results.csv"), rows)
    summary = summary_markdown(report)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary)

    say("")
    say(f"Throughput, operations/s (median of {args.repeat}; ± spread), "
        f"{elapsed:.0f} s in all:")
    say(throughput_table(rows, grid["engines"]))
    for line in skipped_lines(rows):
        say(line)
    say(f"\nwrote {out_dir}/: results.csv, results.json, summary.md"
        + (", " + ", ".join(report["plots"]) if report["plots"] else ""))
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
