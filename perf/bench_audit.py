#!/usr/bin/env python3
"""Micro-benchmark of amdb.audit: what one AuditLog.write_op costs its caller.

Goal it supports (issue 3): batch_put on the reference workload loses at most
10% with the audit log on vs off. A batch of 5,000 items costs about 1 ms in
AmDb and is audited by ONE write_op, so write_op must cost well under 100 us.

Measured, each as the MEDIAN over --repeats runs (gc off while timing):

  call_tight    ns per write_op in a tight loop, writer thread running and
                writing to a real file (it competes for the GIL: worst case).
                Runs of --calls calls, below the queue bound, so nothing drops.
  call_enqueue  ns per write_op with the writer kept off the GIL (blocked in
                os.write) and room in the queue: the caller's own cost.
  call_full     ns per write_op while the queue is full and the writer is
                stuck (every call takes the drop path).
  noop          ns per iteration of the same loop without the call (baseline).
  batch_sim     a ~1 ms GIL-releasing job (zlib.crc32 over a buffer) standing in
                for one batch_put of 5,000 items, followed by one write_op
                (audit on) or nothing (audit off), --batches times: the
                overhead in % is what the goal is about. On and off runs are
                interleaved.
  amdb          with --amdb: real ParallelDB.batch_put of the reference
                workload in batches of 5,000, with a write_op after each batch
                (on) or not (off), fresh database per run, on and off runs
                alternating; overhead in % on the medians and on the best
                runs, and the spread of the off runs alone (the noise floor).
                (The log is fed by hand here: the wiring into ParallelDB is
                separate.)

    python perf/bench_audit.py
    python perf/bench_audit.py --amdb --n 1000000 --json perf/results/bench_audit.json
"""
import argparse
import gc
import glob
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from amdb import audit  # noqa: E402


def median(xs):
    return statistics.median(xs)


def timed(fn):
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        fn()
        return time.perf_counter_ns() - t0
    finally:
        gc.enable()


def bench_calls(tmp, calls, repeats):
    path = os.path.join(tmp, "tight.log")
    tight, noop = [], []
    with audit.AuditLog(path) as log:
        write_op = log.write_op

        def loop_on():
            for i in range(calls):
                write_op("batch_put", 5000, i, i + 4999, 0x9E3779B97F4A7C15)

        def loop_off():
            for i in range(calls):
                pass
        for _ in range(repeats):
            tight.append(timed(loop_on) / calls)
            noop.append(timed(loop_off) / calls)
            assert log.flush(60), "the writer did not catch up"
        st = log.stats()
    return {"call_tight_ns": median(tight), "noop_ns": median(noop),
            "dropped": st["dropped"], "written": st["written"],
            "bytes_per_record": round(sum(os.path.getsize(f) for f in glob.glob(path + "*"))
                                      / max(1, st["written"]), 1)}


class _StuckWriter:
    """Block the writer thread inside os.write until released."""

    def __enter__(self):
        self.entered, self.release = threading.Event(), threading.Event()
        self.real = audit._os_write

        def stuck_write(fd, data):
            self.entered.set()
            self.release.wait(300)
            return self.real(fd, data)
        audit._os_write = stuck_write
        return self

    def __exit__(self, *exc):
        self.release.set()
        audit._os_write = self.real


def bench_stuck(tmp, calls, repeats):
    """The caller's own cost, the writer kept off the GIL (stuck in write):

    call_enqueue: the queue has room (the record is queued);
    call_full:    the queue is full (the record is dropped and counted).
    """
    out = {}
    for name, queue_size in (("call_enqueue_ns", calls * repeats + 10), ("call_full_ns", 1000)):
        with _StuckWriter() as stuck:
            with audit.AuditLog(os.path.join(tmp, name + ".log"), queue_size=queue_size) as log:
                log.write_op("put", 1, 0, 0, 0)
                assert stuck.entered.wait(10)
                write_op = log.write_op

                def loop():
                    for i in range(calls):
                        write_op("batch_put", 5000, i, i + 4999, 1)
                out[name] = median([timed(loop) / calls for _ in range(repeats)])
                if name == "call_full_ns":
                    out["dropped_in_full"] = log.stats()["dropped"]
                stuck.release.set()
    return out


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def calibrate_job(target_ns):
    """A buffer whose zlib.crc32 (GIL released) takes about target_ns."""
    size = 1 << 20
    buf = bytes(size)
    t = min(timed(lambda: zlib.crc32(buf)) for _ in range(5))
    size = max(4096, int(size * target_ns / max(1, t)))
    return bytes(size)


def bench_batch_sim(tmp, batches, repeats, job_ns, block=50):
    """Alternate blocks of `block` simulated batches with the audit on and off
    (so load from elsewhere on the machine hits both alike); compare medians of
    wall time and of process CPU time (which includes the writer thread)."""
    buf = calibrate_job(job_ns)
    crc32 = zlib.crc32
    wall = {True: [], False: []}
    cpu = {True: [], False: []}
    with audit.AuditLog(os.path.join(tmp, "sim.log")) as log:
        write_op = log.write_op

        def run_on():
            for i in range(block):
                crc32(buf)
                write_op("batch_put", 5000, i * 5000 + 1, i * 5000 + 5000, i)

        def run_off():
            for i in range(block):
                crc32(buf)
        rounds = max(1, batches * repeats // block // 5)
        for r in range(rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                c0 = cpu_s()
                wall[on].append(timed(run_on if on else run_off) / block)
                cpu[on].append((cpu_s() - c0) * 1e9 / block)
        log.flush(60)
        dropped = log.stats()["dropped"]
    m_on, m_off = median(wall[True]), median(wall[False])
    c_on, c_off = median(cpu[True]), median(cpu[False])
    return {"batch_sim_job_us": round(m_off / 1e3, 1),
            "batch_sim_on_us": round(m_on / 1e3, 2), "batch_sim_off_us": round(m_off / 1e3, 2),
            "batch_sim_overhead_pct": round(100 * (m_on - m_off) / m_off, 2),
            "batch_sim_cpu_per_record_us": round((c_on - c_off) / 1e3, 1),
            "batch_sim_blocks": rounds,
            "batch_sim_dropped": dropped}


def bench_amdb(tmp, n, repeats, workers):
    import amdb
    items = [(f"key_{i}".encode(), f"value_{i}".encode()) for i in range(n)]
    chunks = [items[i:i + 5000] for i in range(0, n, 5000)]
    on, off = [], []
    with audit.AuditLog(os.path.join(tmp, "amdb.log")) as log:
        def run(audited):
            db = amdb.ParallelDB(workers=workers)
            try:
                write_op = log.write_op
                gc.disable()
                t0 = time.perf_counter_ns()
                if audited:
                    for c in chunks:
                        _, res = db.batch_put(c)
                        write_op("batch_put", res.count, res.first_seq, res.last_seq, 0)
                else:
                    for c in chunks:
                        db.batch_put(c)
                dt = time.perf_counter_ns() - t0
                gc.enable()
                assert db.get(items[-1][0]) == items[-1][1]
                return dt
            finally:
                gc.enable()
                db.close()
        for r in range(repeats):
            order = [True, False] if r % 2 == 0 else [False, True]
            for audited in order:
                (on if audited else off).append(run(audited))
            log.flush(60)
        dropped = log.stats()["dropped"]
    m_on, m_off = median(on), median(off)
    b_on, b_off = min(on), min(off)
    return {"amdb_n": n, "amdb_workers": workers, "amdb_repeats": repeats,
            "amdb_on_items_s": round(n / (m_on / 1e9)), "amdb_off_items_s": round(n / (m_off / 1e9)),
            "amdb_batch_on_us": round(m_on / len(chunks) / 1e3, 1),
            "amdb_batch_off_us": round(m_off / len(chunks) / 1e3, 1),
            "amdb_overhead_pct": round(100 * (m_on - m_off) / m_off, 2),
            "amdb_overhead_best_pct": round(100 * (b_on - b_off) / b_off, 2),
            # run-to-run noise of the "off" runs alone: (max - min) / median
            "amdb_off_spread_pct": round(100 * (max(off) - min(off)) / m_off, 1),
            "amdb_dropped": dropped}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=50_000, help="write_op calls per tight run")
    ap.add_argument("--batches", type=int, default=2000, help="simulated batches per run")
    ap.add_argument("--job-us", type=float, default=1000.0,
                    help="duration of the simulated batch (GIL released)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--amdb", action="store_true", help="also time real ParallelDB.batch_put")
    ap.add_argument("--n", type=int, default=1_000_000, help="items for --amdb")
    ap.add_argument("--workers", type=int, default=None, help="workers for --amdb")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)

    res = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="amdb_bench_audit_") as tmp:
        res.update(bench_calls(tmp, args.calls, args.repeats))
        res.update(bench_stuck(tmp, args.calls, args.repeats))
        res.update(bench_batch_sim(tmp, args.batches, args.repeats, args.job_us * 1e3))
        if args.amdb:
            res.update(bench_amdb(tmp, args.n, args.repeats, args.workers or os.cpu_count()))

    print(f"write_op, tight loop, writer running : {res['call_tight_ns']:8.0f} ns/call "
          f"(empty loop {res['noop_ns']:.0f} ns; {res['dropped']} dropped, "
          f"{res['bytes_per_record']} bytes/record)")
    print(f"write_op, writer off the GIL, queued : {res['call_enqueue_ns']:8.0f} ns/call")
    print(f"write_op, queue full (drop path)     : {res['call_full_ns']:8.0f} ns/call")
    print(f"simulated {res['batch_sim_job_us']:.0f} us batch + write_op  : "
          f"on {res['batch_sim_on_us']} us, off {res['batch_sim_off_us']} us, "
          f"overhead {res['batch_sim_overhead_pct']:+.2f}% wall; "
          f"writer CPU {res['batch_sim_cpu_per_record_us']} us/record "
          f"({res['batch_sim_blocks']} blocks each, {res['batch_sim_dropped']} dropped)")
    if args.amdb:
        print(f"ParallelDB batch_put x5k, n={res['amdb_n']}, workers={res['amdb_workers']}: "
              f"on {res['amdb_on_items_s']:,} items/s ({res['amdb_batch_on_us']} us/batch), "
              f"off {res['amdb_off_items_s']:,} items/s ({res['amdb_batch_off_us']} us/batch), "
              f"overhead {res['amdb_overhead_pct']:+.2f}% on medians, "
              f"{res['amdb_overhead_best_pct']:+.2f}% on best runs "
              f"(off runs alone spread {res['amdb_off_spread_pct']}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
