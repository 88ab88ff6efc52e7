"""What the audit log costs batch_put: the reference workload in batches of
5,000 with audit=path vs audit=None, interleaved, median of 5.

    .venv/bin/python perf/audit_cost.py
"""
import amdb, time, statistics, tempfile, os
N = 1_000_000
items = [(f"key_{i}".encode(), f"value_{i}".encode()) for i in range(N)]
d = tempfile.mkdtemp()
res = {"off": [], "on": []}
for r in range(5):
    for mode in ("off", "on"):
        db = amdb.ParallelDB(workers=2, audit=os.path.join(d, f"a{r}.jsonl") if mode == "on" else None)
        t = time.perf_counter()
        for i in range(0, N, 5000):
            db.batch_put(items[i:i + 5000])
        res[mode].append(N / (time.perf_counter() - t))
        if mode == "on":
            st = db.stats()["audit"]
        db.close()
m = {k: statistics.median(v) for k, v in res.items()}
print(f"batch_put x5k (200 audited batches per run), median of 5: off {m['off']:,.0f}/s, on {m['on']:,.0f}/s, on/off {m['on']/m['off']:.3f}; last run audit stats written={st['written']} dropped={st['dropped']}")
