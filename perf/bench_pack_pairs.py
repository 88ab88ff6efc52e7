"""pack_pairs throughput: (key, value) tuples -> packed buffers + slots, the
step DistributedCluster.batch_put takes before sending (issue 18 regression).

    python perf/bench_pack_pairs.py [--items 1000000] [--repeat 5] [--value-size 100]
                                    [--against LABEL=OTHER.so ...]

The pairs (`key_<i>` keys, values of --value-size bytes) are built once,
outside the timing; prints the median keys/s over --repeat calls. With
--against (repeatable), the same runs alternate with other builds of
amdb/native/routing (a .so built from an older commit, e.g. in a worktree),
one call of each build in turn, so that a busy machine slows them alike; the
ratio of this build to each is printed too."""
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
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    parser.add_argument("--against", action="append", default=[], metavar="[LABEL=]PATH",
                        help="another routing .so to time alternately (repeatable)")
    args = parser.parse_args()
    from amdb.native import routing
    builds = {"this build": routing.pack_pairs}
    for spec in args.against:
        label, _, path = spec.rpartition("=")
        builds[label or path] = load(path).pack_pairs
    pairs = [(b"key_%d" % i, (b"%d" % i).ljust(args.value_size, b"v")[:args.value_size]) for i in range(args.items)]
    times = {name: [] for name in builds}
    gc.disable()
    for pack in builds.values():                # one untimed call each: the first pays for cold caches
        pack(pairs, 1 << 16, 1 << 30)
    for _ in range(args.repeat):
        for name, pack in builds.items():
            start = time.perf_counter()
            packed = pack(pairs, 1 << 16, 1 << 30)
            times[name].append(time.perf_counter() - start)
            del packed
    medians = {name: args.items / statistics.median(t) for name, t in times.items()}
    print(f"# pack_pairs: {args.items:,} pairs (key_<i>, {args.value_size}-byte values), median of {args.repeat}")
    for name, rate in medians.items():
        each = " ".join(f"{args.items / t / 1e6:.1f}" for t in times[name])
        print(f"pack_pairs {name}: {rate / 1e6:.1f} M keys/s (runs: {each})")
    for name in list(builds)[1:]:
        print(f"ratio this build / {name}: {medians['this build'] / medians[name]:.2f}x")


if __name__ == "__main__":
    main()
