"""Command line: ``python -m amdb <command>``.

Commands:
  info PATH       what a database directory holds and what opening it would
                  recover (changes nothing); --json for the raw figures.
  verify PATH     open the database read-only (recovering in memory, changing
                  nothing on disk), recompute every hash chain and the ledger;
                  exit status 1 if anything is broken.
  cluster-bench   aggregate batch_put throughput of a DistributedCluster with 1, 2
                  and 4 nodes on this host, against one ParallelDB with the same
                  total number of workers (needs Ray: pip install amdb[cluster]).
"""
import argparse
import json
import os
import shutil
import platform
import statistics
import sys
import time


def _items(n, tag):
    return [(b"%s/key_%d" % (tag, i), b"value_%d" % i) for i in range(n)]


def _timed_batch_put(target, items):
    start = time.perf_counter()
    success, results = target.batch_put(items)
    elapsed = time.perf_counter() - start
    if not success:
        raise SystemExit(f"batch_put failed: {results}")
    return elapsed


def cluster_bench(args):

    import amdb
    from amdb.native.routing import pack_pairs, slots_of_packed
    from amdb.native.hashing import slot_of
    try:
        import ray

        from amdb.distributed import DistributedCluster
    except ImportError as exc:
        raise SystemExit(str(exc))

    cores = os.cpu_count() or 1
    workers = args.workers or cores
    node_counts = [int(x) for x in args.nodes.split(",")]
    n = args.items
    print(f"# amdb cluster-bench: {n:,} items per batch_put (key_<i> -> value_<i>), median of {args.repeat}")
    print(f"# host: {platform.node()} {platform.machine()}, {cores} cores, Python {platform.python_version()}, "
          f"Ray {ray.__version__}, amdb {amdb.__version__}")
    if args.path:
        print(f"# durability: every configuration twice, memory-only and durable (sync={args.sync!r}) in "
              f"{args.path}: the durable cluster's nodes in {args.path}/cluster-<n>/node-<id>")
    else:
        print("# durability: memory-only (path=None) everywhere: nothing is written to disk")
    datasets = [_items(n, b"r%d" % r) for r in range(args.repeat)]

    # routing alone: what DistributedCluster.batch_put does before sending —
    # one native pass from (key, value) tuples to packed buffers and slots —
    # and, for comparison, the native slot function on packed keys (what the
    # other cluster paths use) and a per-key Python loop.
    keys = [k for k, _ in datasets[0]]
    pairs_s = min(_time(lambda: pack_pairs(datasets[0], 1 << 16, 1 << 30)) for _ in range(3))
    buf, offsets = pack_pairs(datasets[0], 1 << 16, 1 << 30)[:2]
    route_s = min(_time(lambda: slots_of_packed(buf, offsets)) for _ in range(3))
    per_key_s = _time(lambda: [slot_of(k) for k in keys])
    routing = {"native_pack_pairs_keys_per_s": n / pairs_s, "native_slots_of_packed_keys_per_s": n / route_s,
               "per_key_slot_of_keys_per_s": n / per_key_s}
    print(f"routing: native pack_pairs (tuples -> packed buffers + slots) {n / pairs_s / 1e6:.1f} M keys/s; "
          f"native slots_of_packed {n / route_s / 1e6:.1f} M keys/s; "
          f"per-key slot_of loop {n / per_key_s / 1e6:.1f} M keys/s")

    results = {"items": n, "repeat": args.repeat, "cores": cores, "workers_total": workers,
               "durability": f"path={args.path} sync={args.sync}" if args.path else "memory-only (path=None)",
               "routing": routing, "rows": []}
    header = f"{'configuration':<60} {'items/s':>12} {'per node':>12} {'per core':>12} {'vs ParallelDB':>14}"
    rows = []
    bases = {}
    for durable in ([False, True] if args.path else [False]):
        times = []
        path = os.path.join(args.path, "baseline") if durable else None
        if path:
            shutil.rmtree(path, ignore_errors=True)
        with amdb.ParallelDB(path, workers=workers, **({"sync": args.sync} if durable else {})) as db:
            for items in datasets:
                times.append(_timed_batch_put(db, items))
        base = bases[durable] = n / statistics.median(times)
        label = f"ParallelDB(workers={workers}){' durable' if durable else ''} (baseline)"
        results["rows"].append({"config": label, "nodes": 0, "workers_per_node": workers, "durable": durable,
                                "items_per_s": base, "ratio": 1.0})
        rows.append(f"{label:<60} {base:>12,.0f} {'-':>12} {base / cores:>12,.0f} {1.0:>14.2f}")

    started_ray = False
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        started_ray = True
    try:
        for nodes in node_counts:
            per_node = max(1, workers // nodes)
            same_rf1 = {}
            memory_rate = None
            configs = [(False, 1)] + ([(True, 1)] if args.path else [])
            if args.replication > 1 and nodes >= args.replication:
                configs.append((bool(args.path), args.replication))
            for durable, rf in configs:
                times = []
                path = os.path.join(args.path, f"cluster-{nodes}") if durable else None
                if path:
                    shutil.rmtree(path, ignore_errors=True)
                options = {"sync": args.sync} if durable else None
                if rf > 1 and path:
                    path += f"-rf{rf}"
                    shutil.rmtree(path, ignore_errors=True)
                with DistributedCluster(node_count=nodes, workers_per_node=per_node, path=path,
                                        db_options=options, replication_factor=rf) as cluster:
                    cluster.batch_put(_items(1000, b"warm"))
                    for items in datasets:
                        times.append(_timed_batch_put(cluster, items))
                    assert len(cluster) == 1000 + n * len(datasets)
                rate = n / statistics.median(times)
                base = bases[durable]
                label = f"DistributedCluster({nodes} nodes x {per_node} workers){' durable' if durable else ''}"
                if rf > 1:
                    label += f" rf={rf} = {rate / same_rf1[durable]:.2f}x rf=1"
                elif durable:
                    label += f" = {rate / memory_rate:.2f}x memory-only"
                if rf == 1:
                    same_rf1[durable] = rate
                    memory_rate = memory_rate or rate
                rows.append(f"{label:<60} {rate:>12,.0f} {rate / nodes:>12,.0f} {rate / cores:>12,.0f} "
                            f"{rate / base:>14.2f}")
                results["rows"].append({"config": label, "nodes": nodes, "workers_per_node": per_node,
                                        "durable": durable, "replication_factor": rf,
                                        "items_per_s": rate, "per_node": rate / nodes,
                                        "per_core": rate / cores, "ratio": rate / base, "times_s": times})
    finally:
        if started_ray:
            ray.shutdown()
    print(header)
    print("\n".join(rows))
    if cores < max(node_counts) * 1:
        print(f"# note: {cores} cores for up to {max(node_counts)} nodes: node actors, their workers and "
              "this driver share the cores; figures on such a host measure contention, not scaling")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"# JSON written to {args.json}")
    return 0


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def info(args):
    import amdb
    from amdb import storage
    try:
        report = storage.describe(args.path)
    except amdb.Error as exc:
        print(f"amdb info: {exc}", file=sys.stderr)
        return 2
    if args.memory:
        try:
            # read_only, as verify: changes nothing on disk.
            with amdb.ParallelDB(args.path, workers=report["workers"], read_only=True) as db:
                report["memory"] = db.stats()["memory"]
        except amdb.Error as exc:
            print(f"amdb info: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    rec = report["recovery"]
    print(f"{report['path']}: AmDb format {report['format_version']}, {report['workers']} workers")
    print(f"  opening recovers every batch up to seq {report['recovered_seq']} "
          f"({rec['frames_replayed']} log frames, {rec['records_replayed']} records to replay)")
    for entry in rec["checkpoints_rejected"]:
        print(f"  checkpoint rejected: {entry['file']}: {entry['reason']}")
    for entry in rec["logs_cut"]:
        print(f"  log cut: {entry['file']} at offset {entry['offset']}: {entry['reason']}")
    for w in report["per_worker"]:
        print(f"  worker {w['worker']}: checkpoint {w['checkpoint_loaded'] or 'none'}, "
              f"{len(w['log_segments'])} log segment(s), {w['log_bytes']:,} log bytes")
    if report["client_channels"]:
        print(f"  {len(report['client_channels'])} client channel file(s): an open owner's clients write "
              "through them; what a dead owner left in them the next opening that writes applies")
    if args.memory:
        print(format_memory(report["memory"]))
    return 0


def format_memory(memory):
    """stats()["memory"] as a few lines (python -m amdb info --memory)."""
    total = memory["total"]
    keys = total["keys"] or 1
    lines = [f"  memory once opened: {total['shm_bytes'] / 2**20:.1f} MiB in {memory['shm_dir']} "
             f"({total['arena_used'] / 2**20:.1f} MiB arena used, {total['arena_committed'] / 2**20:.1f} MiB "
             f"committed, {total['ring_committed'] / 2**20:.1f} MiB of rings) for {total['keys']:,} keys"]
    parts = [(name, total[name]) for name in ("nodes", "versions", "hash_index", "alignment", "ledger",
                                             "garbage", "header")]
    lines.append("  arena bytes per key: " + ", ".join(f"{name} {size / keys:.1f}" for name, size in parts)
                 + f" = {(total['arena_used'] - total['released']) / keys:.1f} (keys {total['key_bytes'] / keys:.1f}, "
                   f"values {total['value_bytes'] / keys:.1f}; outgrown hash tables given back: "
                   f"{total['released'] / keys:.1f})")
    if memory["shm_size"]:
        lines.append(f"  {memory['shm_dir']}: {memory['shm_free'] / 2**20:.1f} MiB free of "
                     f"{memory['shm_size'] / 2**20:.1f} MiB")
    return "\n".join(lines)


def verify(args):
    import amdb
    from amdb import storage
    try:
        manifest = storage.read_manifest(args.path)
        if manifest is None:
            raise amdb.InvalidArgumentError(f"{args.path} is not an AmDb database (no MANIFEST)")
        # read_only: verifying changes nothing on disk (no new log segment, no repair).
        with amdb.ParallelDB(args.path, workers=manifest["workers"], read_only=True) as db:
            report = db.verify()
            digest = db.digest()
            recovery = db.stats()["durability"]["recovery"]
    except amdb.Error as exc:
        print(f"amdb verify: {exc}", file=sys.stderr)
        return 2
    print(f"{args.path}: {report.keys_checked:,} keys, {report.versions_checked:,} versions checked "
          f"in {report.seconds:.2f} s; seq {digest['seq']}; ledger root {digest['root']}")
    for entry in recovery["logs_cut"]:
        print(f"  recovery cut {entry['file']} at offset {entry['offset']}: {entry['reason']}")
    for brk in report.breaks[:20]:
        print(f"  BROKEN: {brk}")
    if not report.ok:
        print(f"  {report.breaks_total} break(s) found")
        return 1
    print("  ok")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m amdb", description="AmDb command line")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("cluster-bench", help="DistributedCluster batch_put throughput (1, 2, 4 nodes)")
    bench.add_argument("--items", type=int, default=1_000_000, help="items per batch_put (default 1,000,000)")
    bench.add_argument("--nodes", default="1,2,4", help="node counts to run (default 1,2,4)")
    bench.add_argument("--workers", type=int, default=None,
                       help="total ParallelDB workers (default: cpu count), split over the nodes")
    bench.add_argument("--repeat", type=int, default=3, help="timed batch_put calls per configuration")
    bench.add_argument("--json", default=None, help="also write the figures to this JSON file")
    bench.add_argument("--path", default=None,
                       help="also run every configuration durable, in this directory (emptied per configuration)")
    bench.add_argument("--replication", type=int, default=1, choices=[1, 2, 3],
                       help="also run each node count of at least this many nodes with replication_factor=N")
    bench.add_argument("--sync", default="none", choices=["none", "batch", "interval"],
                       help="sync= of the durable runs (default none)")
    info_parser = sub.add_parser("info", help="describe a database directory (changes nothing)")
    info_parser.add_argument("path")
    info_parser.add_argument("--json", action="store_true", help="print the raw report as JSON")
    info_parser.add_argument("--memory", action="store_true",
                             help="also open it read-only and show its memory use, by structure")
    verify_parser = sub.add_parser("verify", help="open a database directory and verify every chain")
    verify_parser.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info(args)
    if args.command == "verify":
        return verify(args)
    if args.command == "cluster-bench":
        return cluster_bench(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
