"""What the hash chain costs batch_put: this tree against a copy built with
chain_hash() returning 0 (--skip-ledger also skips the SHA-256 ledger fold),
side by side, interleaved, median of --repeat runs of the reference workload.

    .venv/bin/python perf/chain_cost.py [--repeat 5] [--skip-ledger]

The copy is built in a temporary directory and removed afterwards.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import sys, time
import amdb
assert amdb.__file__.startswith(sys.argv[1]), amdb.__file__
N = 1_000_000
items = [(f"key_{i}".encode(), f"value_{i}".encode()) for i in range(N)]
with amdb.ParallelDB(workers=2) as db:
    t = time.perf_counter(); db.batch_put(items); one = N / (time.perf_counter() - t)
with amdb.ParallelDB(workers=2) as db:
    t = time.perf_counter()
    for i in range(0, N, 5000):
        db.batch_put(items[i:i + 5000])
    five = N / (time.perf_counter() - t)
print(one, five)
'''


def patch(path, old, new):
    with open(path) as f:
        text = f.read()
    if old not in text:
        raise SystemExit(f"cannot patch {path}: the code changed; update perf/chain_cost.py")
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


def build_skipping_copy(dest, skip_ledger):
    files = subprocess.run(["git", "ls-files", "amdb", "setup.py"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))
    patch(os.path.join(dest, "amdb/native/versions.pyx"),
          "    cdef uint8_t *out\n", "    cdef uint8_t *out\n    return 0   # chain skipped\n")
    if skip_ledger:
        patch(os.path.join(dest, "amdb/native/worker/apply.pyx"),
              "    cdef amdb_ledger_block *block\n",
              "    cdef amdb_ledger_block *block\n    if True:\n"
              "        alloc_block(&w.p, AMDB_BLOCK_LEDGER, sizeof(amdb_ledger_block))\n        return\n")
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"], cwd=dest,
                   check=True, capture_output=True)


def run(root):
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", CHILD, root], cwd=tempfile.gettempdir(), env=env,
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-ledger", action="store_true", help="also skip the SHA-256 ledger")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="amdb-nochain-") as copy:
        build_skipping_copy(copy, args.skip_ledger)
        rows = {"with chain": [], "skipping": []}
        for _ in range(args.repeat):
            rows["with chain"].append(run(ROOT))
            rows["skipping"].append(run(copy))
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in rows.items()}
    what = "chain and ledger" if args.skip_ledger else "chain"
    print(f"batch_put of 1,000,000 reference items, workers=2, median of {args.repeat}, interleaved")
    for name, (one, five) in med.items():
        print(f"  {name:<11} one call {one:>12,.0f}/s   batches of 5,000 {five:>12,.0f}/s")
    print(f"  with / skipping the {what}: one call {med['with chain'][0] / med['skipping'][0]:.3f}, "
          f"batches of 5,000 {med['with chain'][1] / med['skipping'][1]:.3f}")


if __name__ == "__main__":
    main()
