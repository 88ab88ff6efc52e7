"""Many processes on one database: an attached client's reads and single puts
against the owner's, two reader (and writer) processes against one, and what
attaching costs.

    python perf/bench_attach.py [--keys 100000] [--ops 200000] [--repeat 3] [--workers 2]

The owner opens a memory-only database of --keys 16-byte keys with 100-byte
values. Then, each timed --repeat times (medians):
  - owner get / batch_get(100): in the owner's own process;
  - client get / batch_get(100): in another process, attached with
    ParallelDB.attach(db.handle()) (reads straight from the shared memory);
  - owner put / client put: single put() of 100-byte values, then flush()
    (timed: everything applied), in the owner and in an attached client
    (whose puts go through its channel and the owner's forwarder);
  - 1 vs 2 reader processes: get throughput of one client process alone,
    then of two at once (their sum); the same for 2 writer processes,
    with the CPU time spent per put meanwhile: by the writers, by the
    owner's forwarder thread (1 / that: the records/s one forwarder can
    carry) and by the workers (spinning included: an upper bound). Their
    sum over the cores is what the cores can carry;
  - client put, owner busy in Python: a client's puts while a thread of the
    owner loops on get() (and so holds the owner's GIL most of the time);
  - lmdb, the peer whose readers also share one database across processes:
    the same 1 vs 2 reader processes on an LMDB environment of the same data;
  - attach and close: milliseconds per ParallelDB.attach() and per close()
    in a client process (50 of each);
  - owner put / client put again on a durable database (a directory in the
    temporary directory, sync="none"): the client's channel is a file there.
Prints a table and the ratios the attach issue asks for.
"""
import argparse
import json
import os
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A reader process: opens (attaches) once, says "ready", waits for "go", runs
# its loop, prints one JSON line of ops/s.
READER = r'''
import json, pickle, random, sys, time
kind, arg, ops, mode, keys_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
keys = [b"key%013d" % i for i in range(keys_n)]
random.seed(7)
order = [keys[random.randrange(keys_n)] for _ in range(ops)]
if kind == "amdb":
    import amdb
    db = amdb.ParallelDB.attach(pickle.loads(bytes.fromhex(arg)))
    get, batch_get = db.get, db.batch_get
else:
    import lmdb
    env = lmdb.open(arg, readonly=True, lock=True, max_readers=126)
    txn = env.begin(buffers=False)
    get = txn.get
    def batch_get(ks, get=get):
        return [get(k) for k in ks]
sys.path.insert(0, sys.argv[6])
from bench_attach import timed_reads, timed_puts
print("ready", flush=True)
sys.stdin.readline()
cpu = time.process_time()
if mode == "put":
    elapsed = timed_puts(db.put, db.flush, order)
else:
    elapsed = timed_reads(get, batch_get, order, mode)
cpu = time.process_time() - cpu
if kind == "amdb":
    t_attach, t_close = [], []
    handle = db.handle()
    db.close()
    if mode == "get":
        for _ in range(50):
            t0 = time.perf_counter()
            c = amdb.ParallelDB.attach(handle)
            t1 = time.perf_counter()
            c.close()
            t2 = time.perf_counter()
            t_attach.append(t1 - t0)
            t_close.append(t2 - t1)
    print(json.dumps({"ops_per_s": ops / elapsed, "attach_ms": [x * 1e3 for x in t_attach],
                      "close_ms": [x * 1e3 for x in t_close], "cpu_ns_per_op": cpu * 1e9 / ops}), flush=True)
else:
    print(json.dumps({"ops_per_s": ops / elapsed}), flush=True)
'''


def start_processes(kind, arg, ops, mode, keys, count):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", READER, kind, arg, str(ops), mode, str(keys),
                               os.path.dirname(os.path.abspath(__file__))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(count)]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a reader process did not start")
    return procs


def go(procs):
    """Let them go at once; [result dict]."""
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return [json.loads(p.stdout.readline()) for p in procs]


def end(procs):
    for p in procs:
        p.stdin.close()
        p.wait(timeout=60)


def run_readers(kind, arg, ops, mode, keys, count):
    """Start `count` reader processes, let them go at once; [result dict]."""
    procs = []
    try:
        procs = start_processes(kind, arg, ops, mode, keys, count)
        return go(procs)
    finally:
        end(procs)


def client_put_owner_busy(db, handle_hex, ops, keys):
    """A client's put() throughput while a thread of the owner loops on
    get() (an owner busy in Python holds its GIL most of the time)."""
    import threading
    stop = threading.Event()

    def busy(sample=[b"key%013d" % i for i in range(1000)]):
        while not stop.is_set():
            for k in sample:
                db.get(k)
    thread = threading.Thread(target=busy)
    thread.start()
    try:
        return run_readers("amdb", handle_hex, ops, "put", keys, 1)[0]["ops_per_s"]
    finally:
        stop.set()
        thread.join()


class ForwarderCost:
    """CPU time per record a client put, over the body of a with block: of
    the owner's forwarder thread (/proc/self/task/TID/schedstat), whatever
    the cores it waited for meanwhile (1 / it: the records/s one forwarder
    can send on), and of the workers (/proc/PID/stat, every thread)."""

    def __init__(self, db):
        import threading
        self.db = db
        self.tid = next(t.native_id for t in threading.enumerate() if t.name == "amdb-forwarder")
        self.worker_pids = [w["pid"] for w in db.stats()["workers"]]

    def _cpu_ns(self):
        with open(f"/proc/self/task/{self.tid}/schedstat") as f:
            return int(f.read().split()[0])

    def _workers_cpu_ns(self):
        total = 0
        for pid in self.worker_pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])          # utime, stime (ticks)
        return total * 1e9 / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self.cpu, self.workers, self.records = self._cpu_ns(), self._workers_cpu_ns(), self.db._writer.forwarded
        return self

    def __exit__(self, *exc):
        records = max(1, self.db._writer.forwarded - self.records)
        self.ns_per_record = (self._cpu_ns() - self.cpu) / records
        self.workers_ns_per_record = (self._workers_cpu_ns() - self.workers) / records


def timed_reads(get, batch_get, order, mode):
    """Seconds to read `order`: one get() per key, or batch_get() of 100."""
    start = time.perf_counter()
    if mode == "get":
        for k in order:
            get(k)
    else:
        for i in range(0, len(order), 100):
            batch_get(order[i:i + 100])
    return time.perf_counter() - start


def timed_puts(put, flush, order):
    """Seconds to put a 100-byte value under every key of `order`, then
    flush() (every put applied)."""
    value = b"w" * 100
    start = time.perf_counter()
    for k in order:
        put(k, value)
    flush()
    return time.perf_counter() - start


def owner_loop(db, keys, ops, mode):
    random.seed(7)
    order = [keys[random.randrange(len(keys))] for _ in range(ops)]
    if mode == "put":
        return ops / timed_puts(db.put, db.flush, order)
    return ops / timed_reads(db.get, db.batch_get, order, mode)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    import amdb
    keys = [b"key%013d" % i for i in range(args.keys)]
    value = b"v" * 100
    rows = {}

    def note(name, value_):
        rows.setdefault(name, []).append(value_)

    tmp = tempfile.mkdtemp(prefix="bench_attach_")
    try:
        with amdb.ParallelDB(workers=args.workers) as db:
            db.batch_put([(k, value) for k in keys])
            handle_hex = pickle.dumps(db.handle()).hex()
            lmdb_path = None
            try:
                import lmdb
                lmdb_path = os.path.join(tmp, "lmdb")
                with lmdb.open(lmdb_path, map_size=1 << 30) as env, env.begin(write=True) as txn:
                    for k in keys:
                        txn.put(k, value)
            except ImportError:
                print("# lmdb is not installed: no peer figures")
            for _ in range(args.repeat):
                note("owner get", owner_loop(db, keys, args.ops, "get"))
                note("owner batch_get(100)", owner_loop(db, keys, args.ops, "batch"))
                one = run_readers("amdb", handle_hex, args.ops, "get", args.keys, 1)[0]
                note("client get", one["ops_per_s"])
                note("attach ms", statistics.median(one["attach_ms"]))
                note("close ms", statistics.median(one["close_ms"]))
                note("client batch_get(100)",
                     run_readers("amdb", handle_hex, args.ops, "batch", args.keys, 1)[0]["ops_per_s"])
                note("amdb 2 reader processes get (sum)",
                     sum(r["ops_per_s"] for r in run_readers("amdb", handle_hex, args.ops, "get", args.keys, 2)))
                note("owner put", owner_loop(db, keys, args.ops, "put"))
                note("client put", run_readers("amdb", handle_hex, args.ops, "put", args.keys, 1)[0]["ops_per_s"])
                with ForwarderCost(db) as cost:
                    writers = run_readers("amdb", handle_hex, args.ops, "put", args.keys, 2)
                note("amdb 2 writer processes put (sum)", sum(r["ops_per_s"] for r in writers))
                note("client CPU per put (2 writers)", statistics.mean(r["cpu_ns_per_op"] for r in writers))
                note("forwarder CPU per record (2 writers)", cost.ns_per_record)
                note("workers CPU per record (2 writers)", cost.workers_ns_per_record)
                note("client put, owner busy in Python", client_put_owner_busy(db, handle_hex, args.ops, args.keys))
                if lmdb_path:
                    note("lmdb 1 reader process get",
                         run_readers("lmdb", lmdb_path, args.ops, "get", args.keys, 1)[0]["ops_per_s"])
                    note("lmdb 2 reader processes get (sum)",
                         sum(r["ops_per_s"] for r in run_readers("lmdb", lmdb_path, args.ops, "get", args.keys, 2)))
        with amdb.ParallelDB(os.path.join(tmp, "durable"), workers=args.workers) as db:
            db.batch_put([(k, value) for k in keys])
            durable_hex = pickle.dumps(db.handle()).hex()
            for _ in range(args.repeat):
                note("owner put (durable)", owner_loop(db, keys, args.ops, "put"))
                note("client put (durable)",
                     run_readers("amdb", durable_hex, args.ops, "put", args.keys, 1)[0]["ops_per_s"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in rows.items()}
    print(f"# {args.keys:,} keys (16 B / 100 B), {args.ops:,} ops, workers={args.workers}, "
          f"{os.cpu_count()} cores, medians of {args.repeat}")
    for name, v in med.items():
        unit = "ms" if name.endswith("ms") else "ns" if "CPU per" in name else "ops/s"
        print(f"{name:<36} {v:>14,.3f} {unit}" if unit != "ops/s" else f"{name:<36} {v:>14,.0f} {unit}")
    print(f"client get / owner get:               {med['client get'] / med['owner get']:.2f}")
    print(f"client batch_get / owner batch_get:   {med['client batch_get(100)'] / med['owner batch_get(100)']:.2f}")
    print(f"amdb 2 reader processes / 1:          {med['amdb 2 reader processes get (sum)'] / med['client get']:.2f}")
    print(f"client put / owner put:               {med['client put'] / med['owner put']:.2f}")
    print(f"amdb 2 writer processes / 1:          {med['amdb 2 writer processes put (sum)'] / med['client put']:.2f}")
    print(f"client put, owner busy / owner idle:  {med['client put, owner busy in Python'] / med['client put']:.2f}")
    print(f"client put / owner put, durable:      {med['client put (durable)'] / med['owner put (durable)']:.2f}")
    forwarder_ns = med['forwarder CPU per record (2 writers)']
    per_put = med['client CPU per put (2 writers)'] + forwarder_ns + med['workers CPU per record (2 writers)']
    print(f"one forwarder's capacity / client put: {1e9 / forwarder_ns / med['client put']:.2f}"
          f"  ({1e9 / forwarder_ns:,.0f} records/s at {forwarder_ns:.0f} ns of CPU each)")
    print(f"CPU per client put, all processes:    {per_put:,.0f} ns: {os.cpu_count()} cores carry at most "
          f"{os.cpu_count() * 1e9 / per_put:,.0f} puts/s")
    if "lmdb 1 reader process get" in med:
        print(f"lmdb 2 reader processes / 1:          "
              f"{med['lmdb 2 reader processes get (sum)'] / med['lmdb 1 reader process get']:.2f}")
        print(f"amdb / lmdb, 2 reader processes:      "
              f"{med['amdb 2 reader processes get (sum)'] / med['lmdb 2 reader processes get (sum)']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": rows, "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
