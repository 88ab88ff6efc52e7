"""How long a worker crash costs: from the crash to the call that was in
flight raising WorkerCrashedError, with the successor ready and the batch
rolled back (memory-only and durable), and from a SIGKILL between calls to
the next write returning.

    python perf/bench_respawn.py [--records 1000000] [--repeat 5]

The in-flight case injects a crash (AMDB_FAULT, after_records, abort) into
worker 0 half-way through one batch of --records records: the successor
undoes that half, then the same batch is retried (for comparison). The other
case SIGKILLs worker 0 of an idle database and times a write to one of its
keys until it returns. Prints medians of --repeat runs.
"""
import argparse
import os
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import amdb  # noqa: E402
import amdb.native.hashing  # noqa: E402


def crash_in_flight(records, path):
    """(seconds of the call a crash ends, seconds of the same batch retried)."""
    half = records // 4          # worker 0 of 2 holds about half: crash half-way through its part
    os.environ["AMDB_FAULT"] = f"worker=0,point=after_records,after={half},action=abort,incarnations=1"
    db = amdb.ParallelDB(path, workers=2)
    del os.environ["AMDB_FAULT"]
    try:
        items = [(b"k%09d" % i, b"v" * 16) for i in range(records)]
        started = time.perf_counter()
        try:
            db.batch_put(items)
            raise AssertionError("no crash")
        except amdb.WorkerCrashedError as exc:
            assert exc.restarted
        failed = time.perf_counter() - started
        assert len(db) == 0
        started = time.perf_counter()
        db.batch_put(items)
        return failed, time.perf_counter() - started
    finally:
        db.close()


def kill_to_next_write(path):
    """Seconds from SIGKILL of worker 0 to a write on one of its keys returning."""
    db = amdb.ParallelDB(path, workers=2)
    try:
        keys = [b"k%06d" % i for i in range(100_000)]
        db.batch_put([(k, b"v") for k in keys])
        key = next(k for k in keys if amdb.native.hashing.slot_of(k) % 2 == 0)
        victim = db.stats()["workers"][0]["pid"]
        started = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        while True:
            try:
                db.put(key, b"w")
                break
            except amdb.WorkerCrashedError as exc:
                assert exc.restarted
        assert db.stats()["worker_restarts"] == 1
        return time.perf_counter() - started
    finally:
        db.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for durable in (False, True):
        failed, retried, kills = [], [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="amdb-respawn-") as tmp:
                a, b = crash_in_flight(args.records, tmp + "/a" if durable else None)
                failed.append(a)
                retried.append(b)
                kills.append(kill_to_next_write(tmp + "/b" if durable else None))
        rows.append(("durable" if durable else "memory", statistics.median(failed),
                     statistics.median(retried), statistics.median(kills)))
    print(f"worker crash cost, median of {args.repeat} (2 workers, batch of {args.records:,} records, "
          "crash half-way through worker 0's part)")
    print(f"{'database':<10}{'call the crash ends':>22}{'same batch retried':>22}{'SIGKILL -> next write':>24}")
    for name, a, b, c in rows:
        print(f"{name:<10}{a:>20.3f} s{b:>20.3f} s{c:>22.3f} s")


if __name__ == "__main__":
    main()
