"""pack_pairs throughput: (key, value) tuples -> packed buffers + slots, the
step DistributedCluster.batch_put takes before sending (issue 18 regression).

    python perf/bench_pack_pairs.py [--items 1000000] [--repeat 5] [--against OTHER.so]

Prints the median keys/s over --repeat runs; with --against, the same runs
alternate with another build of amdb/native/routing (a .so copied from an
older commit), and the ratio is printed too."""
import argparse
import gc
import importlib.machinery
import importlib.util
import statistics
import time


def load(path):
    loader = importlib.machinery.ExtensionFileLoader("amdb.native.routing", path)
    spec = importlib.util.spec_from_file_location("amdb.native.routing", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--against", help="another routing .so to time alternately")
    args = parser.parse_args()
    from amdb.native import routing
    builds = {"this build": routing.pack_pairs}
    if args.against:
        builds["--against"] = load(args.against).pack_pairs
    pairs = [(b"key_%d" % i, b"value_%d" % i) for i in range(args.items)]
    times = {name: [] for name in builds}
    gc.disable()
    for _ in range(args.repeat):
        for name, pack in builds.items():
            start = time.perf_counter()
            pack(pairs, 1 << 16, 1 << 30)
            times[name].append(time.perf_counter() - start)
    medians = {name: args.items / statistics.median(t) for name, t in times.items()}
    for name, rate in medians.items():
        print(f"pack_pairs {name}: {rate / 1e6:.1f} M keys/s (median of {args.repeat}, {args.items:,} pairs)")
    if args.against:
        print(f"ratio this / --against: {medians['this build'] / medians['--against']:.2f}x")


if __name__ == "__main__":
    main()
