"""DistributedCluster on one module-scoped local Ray cluster (ray.cluster_utils.Cluster).

Two Ray nodes (raylets) on this host, each with 1 CPU and 100 MB of object
store, token authentication off (RAY_AUTH_MODE set explicitly). AmDb actors use
num_cpus=0. Everything waits by polling with a deadline, never by sleeping.
Skipped when Ray is not installed (pip install amdb[cluster]).
"""
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

import amdb  # noqa: E402
from amdb import SLOT_COUNT  # noqa: E402
from amdb.distributed import DistributedCluster  # noqa: E402
from amdb.native.hashing import slot_of, xxh64  # noqa: E402
from amdb.native.routing import slots_of_packed  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from amdb_testutil import is_alive, proc_cmdline, wait_until  # noqa: E402
from xxh64_oracle import pack_keys, xxh64_packed  # noqa: E402
from xxh64_oracle import slots_of_packed as oracle_slots_of_packed  # noqa: E402

OBJECT_STORE = 100 << 20
DB_OPTIONS = {"ring_size": 1 << 20}
DEADLINE = 60.0          # seconds any polled condition may take on a loaded 2-core host


@pytest.fixture(scope="module")
def ray_cluster():
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert wait_until(lambda: not ray.is_initialized(), 5)


def amdb_workers_of(owner_pids):
    """Live `python -m amdb._worker` processes whose owner is one of ``owner_pids``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        cmd = proc_cmdline(int(name)).split()
        if "amdb._worker" in cmd and cmd[-1] in {str(p) for p in owner_pids} and is_alive(int(name)):
            found.append(int(name))
    return found


def shm_of(owner_pids):
    return [n for n in os.listdir("/dev/shm") if any(n.startswith(f"amdb_{p}_") for p in owner_pids)]


def assert_nothing_left(pids):
    assert wait_until(lambda: not [p for p in pids if is_alive(p)], DEADLINE), \
        f"node actors still alive: {[p for p in pids if is_alive(p)]}"
    assert wait_until(lambda: not amdb_workers_of(pids), DEADLINE), \
        f"amdb workers still alive: {amdb_workers_of(pids)}"
    assert wait_until(lambda: not shm_of(pids), DEADLINE), f"segments left: {shm_of(pids)}"


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    c = DistributedCluster(node_count=2, address=ray_cluster.address, workers_per_node=1,
                           db_options=DB_OPTIONS, retry_timeout=DEADLINE)
    yield c
    c.close()


def random_keys(rng, n, prefix=b""):
    return [prefix + rng.randbytes(rng.randrange(0, 40)) for _ in range(n)]


# ---- routing --------------------------------------------------------------------------


def test_native_routing_matches_numpy_oracle_and_native_hash():
    rng = random.Random(7)
    keys = random_keys(rng, 3000) + [b"", b"\x00", b"x" * 31, b"y" * 32, b"z" * 33, b"w" * 100]
    keys += [b"%016d" % i for i in range(500)]
    buf, offsets, _ = pack_keys(keys)
    assert xxh64_packed(buf, offsets).tolist() == [xxh64(k) for k in keys]
    assert oracle_slots_of_packed(buf, offsets).tolist() == [slot_of(k) for k in keys]
    assert slots_of_packed(buf, offsets).tolist() == [slot_of(k) for k in keys]
    fixed = [b"%016d" % i for i in range(2000)]           # the oracle's reshape fast path
    buf, offsets, _ = pack_keys(fixed)
    assert oracle_slots_of_packed(buf, offsets).tolist() == [xxh64(k) % SLOT_COUNT for k in fixed]
    assert slots_of_packed(buf, offsets).tolist() == [xxh64(k) % SLOT_COUNT for k in fixed]


def test_fixed_width_fallback_keeps_trailing_nuls_out_of_put_array():
    from amdb.distributed import _fixed_width, _pack
    buf, offsets = _pack([b"ab", b"cd", b"ef"])
    assert _fixed_width(buf, offsets).tolist() == [b"ab", b"cd", b"ef"]
    buf, offsets = _pack([b"ab", b"c\x00", b"ef"])
    assert _fixed_width(buf, offsets) is None          # put_array would strip the NUL
    buf, offsets = _pack([b"ab", b"c", b"ef"])
    assert _fixed_width(buf, offsets) is None          # not fixed width


def test_import_error_names_the_extra():
    code = "import sys; sys.modules['ray'] = None\ntry:\n import amdb.distributed\nexcept ImportError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install amdb[cluster]" in out.stdout, out


def test_a_bad_path_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(amdb.InvalidTypeError):
        DistributedCluster(node_count=2, path=3)
    (tmp_path / "file").write_text("")
    with pytest.raises(amdb.InvalidArgumentError, match="not a directory"):
        DistributedCluster(node_count=2, path=str(tmp_path / "file"))


def test_placement_and_routing_against_a_model(cluster):
    stats = cluster.stats()
    assert stats["placement"] == "STRICT_SPREAD" and stats["hosts"] == 2
    assert len({n["ray_node_id"] for n in stats["nodes"]}) == 2      # one node per Ray host
    # the model: node i owns the i-th contiguous range of slots
    bounds = np.linspace(0, SLOT_COUNT, 3).astype(int)
    model = np.searchsorted(bounds, np.arange(SLOT_COUNT), side="right") - 1
    version, table = cluster.slot_table()
    assert (table == model).all()
    rng = random.Random(1)
    keys = sorted(set(random_keys(rng, 4000, b"route/")))
    expected = {0: 0, 1: 0}
    for k in keys:
        node = int(model[xxh64(k) % SLOT_COUNT])
        assert cluster.node_of(k) == node
        expected[node] += 1
    before = {n["node_id"]: n["keys"] for n in stats["nodes"]}
    success, results = cluster.batch_put([(k, k[::-1]) for k in keys])
    assert success and results.count == len(keys) and results.per_node == expected
    after = {n["node_id"]: n["keys"] for n in cluster.stats()["nodes"]}
    assert {n: after[n] - before[n] for n in after} == expected


def test_batch_put_get_scan_across_nodes(cluster):
    rng = random.Random(2)
    model = {b"bps/" + rng.randbytes(rng.randrange(0, 20)): rng.randbytes(rng.randrange(0, 30))
             for _ in range(5000)}
    model[b"bps/"] = b""                                   # empty key suffix, empty value
    model[b"bps/nul\x00"] = b"ends in NUL\x00"             # not representable by put_array
    start_len = len(cluster)
    success, results = cluster.batch_put(list(model.items()))
    assert success and results.count == len(model) and not results.failures
    assert sum(results.per_node.values()) == len(model) and len(results.per_node) == 2
    keys = list(model)
    assert cluster.batch_get(keys + [b"bps-missing"]) == [model[k] for k in keys] + [None]
    assert cluster.get(b"bps/nul\x00") == b"ends in NUL\x00"
    assert cluster.get(b"bps-missing", b"?") == b"?"
    assert b"bps/" in cluster and b"bps-missing" not in cluster
    assert len(cluster) == start_len + len(model)
    ordered = sorted(model.items())
    assert list(cluster.scan(prefix=b"bps/", page_size=97)) == ordered
    assert list(cluster.scan(prefix=b"bps/", reverse=True, keys_only=True)) == [k for k, _ in reversed(ordered)]
    lo, hi = ordered[100][0], ordered[3000][0]
    assert list(cluster.scan(lo, hi, page_size=50)) == [kv for kv in ordered if lo <= kv[0] < hi]
    # fixed-width items take put_array on the nodes, except a batch with a value ending in NUL
    fixed = [(b"bpsF/%04d" % i, b"v%03d" % i) for i in range(1000)]
    assert cluster.batch_put(fixed).success
    fixed[7] = (fixed[7][0], b"v\x00\x00\x00")
    assert cluster.batch_put(fixed).success
    assert cluster.batch_get([k for k, _ in fixed]) == [v for _, v in fixed]
    assert cluster.batch_delete([k for k, _ in fixed]).results.count == 1000
    # single-key writes and deletes
    cluster.put(b"bps/one", b"1")
    cluster.delete(ordered[5][0])
    outcome = cluster.batch_delete([k for k, _ in ordered[10:20]])
    assert outcome.success and outcome.results.count == 10
    assert cluster.get(b"bps/one") == b"1" and cluster.get(ordered[5][0]) is None
    assert len(cluster) == start_len + len(model) + 1 - 11
    # bad input raises before anything is written
    with pytest.raises(amdb.InvalidTypeError):
        cluster.batch_put([(b"bps/ok", b"v"), ("bps/str", b"v")])
    with pytest.raises(amdb.KeyTooLargeError):
        cluster.batch_put([(b"bps/ok", b"v"), (b"k" * 5000, b"v")])
    assert cluster.get(b"bps/ok") is None
    ok, res = cluster.batch_put([])
    assert ok and res.count == 0 and res.per_node == {}


def test_history_verify_and_digest_across_nodes(cluster):
    keys = [b"hist-%04d" % i for i in range(300)]
    cluster.batch_put([(k, b"one") for k in keys])
    cluster.batch_put([(k, b"two") for k in keys[::2]])
    cluster.delete(keys[1])
    history = cluster.history(keys[0])
    assert [(v.version, v.value) for v in history] == [(2, b"two"), (1, b"one")]
    assert history[0].prev_hash == history[1].hash
    assert cluster.history(keys[1], oldest_first=True)[-1].deleted
    assert cluster.history(b"hist-never") == []
    report = cluster.verify()
    assert report["ok"] and report["breaks_total"] == 0
    assert report["keys_checked"] >= len(keys)
    assert set(report["nodes"]) == set(cluster.nodes)
    before = cluster.digest()
    assert before == cluster.digest()
    assert set(before["nodes"]) == set(cluster.nodes)
    cluster.put(keys[2], b"three")
    after = cluster.digest()
    assert after["root"] != before["root"]
    assert sum(after["nodes"][n]["root"] != before["nodes"][n]["root"] for n in cluster.nodes) == 1


def test_add_and_remove_node_under_concurrent_writes(cluster):
    rng = random.Random(3)
    fixed = {b"mv/fixed/%06d" % i: b"f%d" % i for i in range(3000)}
    assert cluster.batch_put(list(fixed.items())).success
    model = dict(fixed)
    lock = threading.Lock()
    stop = threading.Event()
    rounds = [0]
    errors = []
    scans = [0]

    def writer():
        r = 0
        try:
            while not stop.is_set():
                new = [(b"mv/new/%06d/%03d" % (r, i), b"n%d" % r) for i in range(100)]
                old = [(k, b"o%d" % r) for k in rng.sample(sorted(fixed), 50)]
                ok, res = cluster.batch_put(new + old)
                assert ok and res.count == 150, res
                cluster.put(b"mv/single/%06d" % r, b"s%d" % r)
                with lock:
                    model.update(new)
                    model.update(old)
                    model[b"mv/single/%06d" % r] = b"s%d" % r
                r += 1
                rounds[0] = r
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def reader():
        try:
            keys = sorted(fixed)
            while not stop.is_set():
                sample = rng.sample(keys, 20)
                assert None not in cluster.batch_get(sample)
                assert cluster.get(sample[0]) is not None
                seen = list(cluster.scan(prefix=b"mv/fixed/", keys_only=True, page_size=500))
                assert seen == keys, "a scan during a move missed or repeated keys"
                scans[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: rounds[0] >= 1 and scans[0] >= 1 or errors, DEADLINE)
        v0, table0 = cluster.slot_table()
        r0 = rounds[0]
        new_node = cluster.add_node(slots_per_step=128)
        v1, table1 = cluster.slot_table()
        moved = table0 != table1
        assert (table1[moved] == new_node).all()                  # only slots for the new node moved
        assert abs(int(moved.sum()) - SLOT_COUNT // 3) <= 2       # about 1/N of them
        assert v1 > v0
        r1 = rounds[0]
        gone = min(n for n in cluster.nodes if n != new_node)
        cluster.remove_node(gone, slots_per_step=128)
        v2, table2 = cluster.slot_table()
        moved = table1 != table2
        assert (table1[moved] == gone).all() and not (table2 == gone).any()
        assert set(cluster.nodes) == set(np.unique(table2).tolist()) and gone not in cluster.nodes
        assert wait_until(lambda: rounds[0] >= r1 + 1 or errors, DEADLINE)
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE)
    assert not errors, errors
    assert r1 > r0, "no write finished while the node was being added"
    # key by key: every acknowledged write is there, once
    keys = sorted(model)
    assert cluster.batch_get(keys) == [model[k] for k in keys]
    assert list(cluster.scan(prefix=b"mv/")) == [(k, model[k]) for k in keys]
    counts = cluster.stats()["slots_per_node"]
    assert sum(counts.values()) == SLOT_COUNT and len(counts) == 2


def test_killed_node_reports_lost_slots_and_a_clear_error(ray_cluster):
    c = DistributedCluster(node_count=2, address=ray_cluster.address, workers_per_node=1,
                           db_options=DB_OPTIONS, max_restarts=2, retry_timeout=DEADLINE)
    pids = []
    try:
        items = [(b"kill/%05d" % i, b"v%d" % i) for i in range(2000)]
        assert c.batch_put(items).success
        _, table = c.slot_table()
        victim = 1
        victim_slots = np.flatnonzero(table == victim).tolist()
        on_victim = [k for k, _ in items if c.node_of(k) == victim]
        on_other = [(k, v) for k, v in items if c.node_of(k) != victim]
        stats = {n["node_id"]: n for n in c.stats()["nodes"]}
        pids = [n["pid"] for n in stats.values()]
        worker_pids = [w["pid"] for n in stats.values() for w in n["db"]["workers"]]
        os.kill(stats[victim]["pid"], signal.SIGKILL)

        with pytest.raises(amdb.NodeUnavailableError) as info:
            c.get(on_victim[0])
        assert info.value.node_id == victim and f"node {victim}" in str(info.value)
        assert info.value.code in ("node_unavailable", "node_data_lost")
        # Ray restarts the actor; with no path it comes back empty and says so
        assert wait_until(lambda: c.lost_slots() == {victim: victim_slots}, DEADLINE), c.lost_slots()
        with pytest.raises(amdb.NodeUnavailableError) as info:
            c.batch_get(on_victim[:10])
        assert info.value.node_id == victim and info.value.code == "node_data_lost"
        # the other node is untouched
        assert c.batch_get([k for k, _ in on_other]) == [v for _, v in on_other]
        success, results = c.batch_put(items[:200])
        assert not success and victim in results.failures and results.failed > 0
        assert results.count == results.per_node.get(0, 0) == sum(1 for k, _ in items[:200] if c.node_of(k) == 0)
        # the killed node's amdb workers go away with their owner
        assert wait_until(lambda: not [p for p in worker_pids if is_alive(p) and
                                       proc_cmdline(p).split()[-1] == str(stats[victim]["pid"])], DEADLINE)
        restarted = {n["node_id"]: n for n in c.stats()["nodes"]}[victim]
        assert restarted["restarted"] and restarted["slots"]["lost"] == len(victim_slots)
        pids.append(restarted["pid"])
        c.acknowledge_data_loss(victim)
        assert c.lost_slots() == {}
        assert c.get(on_victim[0]) is None                     # lost, and now served as empty
        assert c.batch_put(items).success
        assert c.batch_get([k for k, _ in items]) == [v for _, v in items]
    finally:
        c.close()
    assert c.closed
    with pytest.raises(amdb.ClosedError):
        c.get(b"x")
    assert_nothing_left(pids)


def _read_back(c, items):
    """Every key of `items` read back through the cluster, retrying while a
    node is being restarted."""
    def readable():
        try:
            return c.batch_get([k for k, _ in items]) == [v for _, v in items]
        except amdb.NodeUnavailableError:
            return False
    return wait_until(readable, DEADLINE)


def test_a_killed_durable_node_comes_back_with_its_slots(ray_cluster, tmp_path):
    path = str(tmp_path / "cluster")
    c = DistributedCluster(node_count=2, address=ray_cluster.address, workers_per_node=1, path=path,
                           db_options=DB_OPTIONS, max_restarts=2, retry_timeout=DEADLINE)
    pids = []
    try:
        items = [(b"durable/%05d" % i, b"v%d" % i) for i in range(2000)]
        assert c.batch_put(items).success
        c.put(b"single", b"one")
        items.append((b"single", b"one"))
        stats = {n["node_id"]: n for n in c.stats()["nodes"]}
        assert stats[1]["path"] == os.path.join(path, "node-1")
        pids = [n["pid"] for n in stats.values()]
        os.kill(stats[1]["pid"], signal.SIGKILL)
        # Ray restarts the actor; it reopens node-1 and serves its slots again:
        # every acknowledged write is there, nothing is reported lost.
        assert _read_back(c, items)
        assert c.lost_slots() == {}
        restarted = {n["node_id"]: n for n in c.stats()["nodes"]}[1]
        assert restarted["restarted"] and restarted["slots"]["lost"] == 0 and restarted["pid"] != stats[1]["pid"]
        pids.append(restarted["pid"])
        assert c.batch_put([(k, b"again") for k, _ in items]).success
        assert c.batch_get([k for k, _ in items]) == [b"again"] * len(items)
    finally:
        c.close()
    assert_nothing_left(pids)


def test_a_durable_cluster_reopens_with_any_node_count(ray_cluster, tmp_path):
    path = str(tmp_path / "cluster")
    items = {b"reopen/%05d" % i: b"v%d" % i for i in range(3000)}

    def cluster(nodes):
        return DistributedCluster(node_count=nodes, address=ray_cluster.address, workers_per_node=1, path=path,
                                  db_options=DB_OPTIONS, retry_timeout=DEADLINE)

    with cluster(2) as c:
        assert c.batch_put(list(items.items())).success
        c.batch_delete([b"reopen/00000", b"reopen/00001"])
        del items[b"reopen/00000"], items[b"reopen/00001"]
        stray = next(k for k in items if c.node_of(k) == 1)
        ghost = next(k for k in (b"ghost/%d" % i for i in range(1000)) if c.node_of(k) == 1)
    # What a move interrupted by the cluster's death leaves: node 0's directory
    # holds copies of keys of node 1's slots (imported, never activated).
    with amdb.ParallelDB(os.path.join(path, "node-0")) as node0:
        node0.put(stray, b"stale copy")
        node0.put(ghost, b"deleted long ago")
    for nodes, strays in ((2, 2), (3, 0), (1, 0)):
        with cluster(nodes) as c:
            assert len(c.nodes) == nodes
            assert c.get(b"reopen/00000") is None and c.get(ghost) is None
            assert dict(c.scan(prefix=b"reopen/")) == items
            stats = c.stats()
            assert stats["keys"] == len(items) and stats["path"] == path
            assert sum(n["strays_deleted"] for n in stats["nodes"]) == strays
            assert sorted(os.listdir(path)) == ["CLUSTER"] + sorted(f"node-{n}" for n in c.nodes)


def _node_pids(c):
    """{node_id: actor pid} once every node answers (some may be restarting)."""
    box = {}

    def answered():
        try:
            stats = c.stats()
        except amdb.NodeUnavailableError:
            return False
        if stats["unavailable"]:
            return False
        box.update({n["node_id"]: n["pid"] for n in stats["nodes"]})
        return True
    assert wait_until(answered, DEADLINE)
    return box


def _replicated_kills(ray_cluster, kills, path=None):
    """Kill a node actor (SIGKILL) `kills` times while batches are written to
    a 3-node cluster with replication_factor=2: after each death the next
    batch succeeds (failover), repair() restores two copies of every slot, and
    at the end every key holds its last acknowledged value."""
    import time
    c = DistributedCluster(node_count=3, address=ray_cluster.address, workers_per_node=1, path=path,
                           db_options=DB_OPTIONS, max_restarts=kills + 1, retry_timeout=DEADLINE,
                           replication_factor=2)
    keys = [b"rep/%05d" % i for i in range(1500)]
    acked = {}
    failover_s = []
    pids = []
    try:
        assert c.batch_put([(k, b"r0") for k in keys]).success
        acked = dict.fromkeys(keys, b"r0")
        repaired_before = 0
        for round_ in range(1, kills + 1):
            victim_pids = _node_pids(c)
            pids += victim_pids.values()
            victim = round_ % 3
            os.kill(victim_pids[victim], signal.SIGKILL)
            started = time.monotonic()
            value = b"r%d" % round_
            success, results = c.batch_put([(k, value) for k in keys])
            assert success, results
            failover_s.append(time.monotonic() - started)
            acked = dict.fromkeys(keys, value)
            c.put(keys[round_], b"single%d" % round_)
            acked[keys[round_]] = b"single%d" % round_
            _node_pids(c)                               # the victim is back (empty, or its directory)
            # The failover started an automatic repair: every slot gets its copies back.

            def repaired():
                stats = c.stats()["replication"]
                return stats["slots_short_of_copies"] == 0 and stats["automatic_repair_copies"] > repaired_before
            assert wait_until(repaired, DEADLINE), c.stats()["replication"]
            repaired_before = c.stats()["replication"]["automatic_repair_copies"]
            assert c.repair() == 0                      # nothing left to do
            assert c.batch_get(keys) == [acked[k] for k in keys]
        primary, copies = c.slot_copies(slot_of(keys[0]))
        assert len(copies) == 1 and copies[0] != primary
    finally:
        pids += [n for n in _node_pids(c).values()] if not c.closed else []
        c.close()
    assert_nothing_left(pids)
    return failover_s


def test_a_replicated_cluster_loses_no_acknowledged_write_when_nodes_die(ray_cluster):
    failover_s = _replicated_kills(ray_cluster, 5)
    assert max(failover_s) < DEADLINE


@pytest.mark.slow
def test_replicated_kill_soak(ray_cluster, tmp_path):
    failover_s = sorted(_replicated_kills(ray_cluster, 100, path=str(tmp_path / "cluster")))
    print(f"failover (death to the next acknowledged batch): median {failover_s[50]:.3f} s, "
          f"p90 {failover_s[90]:.3f} s, max {failover_s[-1]:.3f} s")


def test_membership_changes_keep_the_replication_factor(ray_cluster):
    c = DistributedCluster(node_count=2, address=ray_cluster.address, workers_per_node=1, db_options=DB_OPTIONS,
                           max_restarts=2, retry_timeout=DEADLINE, replication_factor=2)
    pids = []
    keys = [b"member/%05d" % i for i in range(1500)]

    def copies_are_whole():
        stats = c.stats()
        assert stats["replication"]["slots_short_of_copies"] == 0, stats["replication"]
        assert stats["keys"] == len(keys)
        for slot in range(0, SLOT_COUNT, 997):
            primary, replicas = c.slot_copies(slot)
            assert len(replicas) == 1 and replicas[0] != primary and primary in c.nodes and replicas[0] in c.nodes

    try:
        assert c.batch_put([(k, b"a") for k in keys]).success
        new = c.add_node()
        assert c.nodes == [0, 1, new] and c.stats()["slots_per_node"][new] > 0
        copies_are_whole()
        assert c.batch_put([(k, b"b") for k in keys]).success
        with pytest.raises(amdb.InvalidArgumentError):
            DistributedCluster.remove_node(c, 99)
        c.remove_node(0)
        assert c.nodes == [1, new]
        copies_are_whole()
        assert c.batch_get(keys) == [b"b"] * len(keys)
        with pytest.raises(amdb.InvalidArgumentError, match="replication_factor"):
            c.remove_node(1)                        # one node left for two copies
        # The copies the moves made are good ones: kill a node, its slots fail over.
        victim = {n["node_id"]: n["pid"] for n in c.stats()["nodes"]}
        pids += victim.values()
        os.kill(victim[new], signal.SIGKILL)
        success, results = c.batch_put([(k, b"c") for k in keys[:500]])
        assert success, results
        assert c.batch_get(keys) == [b"c"] * 500 + [b"b"] * (len(keys) - 500)
    finally:
        pids += [n for n in _node_pids(c).values()]
        c.close()
    assert_nothing_left(pids)


def test_reads_from_replicas_see_every_acknowledged_write(ray_cluster):
    c = DistributedCluster(node_count=2, address=ray_cluster.address, workers_per_node=1, db_options=DB_OPTIONS,
                           retry_timeout=DEADLINE, replication_factor=2, read_from="replica")
    try:
        keys = [b"spread/%05d" % i for i in range(1000)]
        for round_ in range(3):
            assert c.batch_put([(k, b"v%d" % round_) for k in keys]).success
            assert c.batch_get(keys) == [b"v%d" % round_] * len(keys)
            assert all(c.get(k) == b"v%d" % round_ for k in keys[:50])
        per_node = {n["node_id"]: n["replica_reads"] for n in c.stats()["nodes"]}
        assert all(count > 0 for count in per_node.values()), per_node    # both nodes served copies
        assert c.stats()["keys"] == len(keys)
    finally:
        c.close()


def test_replication_arguments_are_checked(ray_cluster):
    with pytest.raises(amdb.InvalidArgumentError, match="at least as many nodes"):
        DistributedCluster(node_count=1, address=ray_cluster.address, replication_factor=2)
    with pytest.raises(amdb.InvalidArgumentError):
        DistributedCluster(node_count=2, address=ray_cluster.address, replication_factor=4)
    with pytest.raises(amdb.InvalidArgumentError, match="read_from"):
        DistributedCluster(node_count=2, address=ray_cluster.address, read_from="nearest")


def test_node_that_ray_does_not_restart_is_reported_dead(ray_cluster):
    c = DistributedCluster(node_count=2, address=ray_cluster.address, workers_per_node=1,
                           db_options=DB_OPTIONS, max_restarts=0, retry_timeout=DEADLINE)
    try:
        items = [(b"dead/%04d" % i, b"v") for i in range(500)]
        assert c.batch_put(items).success
        _, table = c.slot_table()
        key = next(k for k, _ in items if c.node_of(k) == 0)
        stats = {n["node_id"]: n for n in c.stats()["nodes"]}
        pids = [n["pid"] for n in stats.values()]
        os.kill(stats[0]["pid"], signal.SIGKILL)
        with pytest.raises(amdb.NodeUnavailableError, match="node 0") as info:
            c.get(key)
        assert info.value.node_id == 0 and info.value.code == "node_unavailable"
        assert wait_until(lambda: c.check_nodes() == {0: "dead", 1: "alive"}, DEADLINE)
        assert c.lost_slots() == {0: np.flatnonzero(table == 0).tolist()}
        success, results = c.batch_put(items)
        assert not success and set(results.failures) == {0}
        assert results.count == sum(1 for k, _ in items if c.node_of(k) == 1)
    finally:
        c.close()
    assert_nothing_left(pids)


def test_close_leaves_nothing_behind(cluster):
    pids = [n["pid"] for n in cluster.stats()["nodes"]]
    cluster.close()
    cluster.close()                                            # idempotent
    assert_nothing_left(pids)
    assert ray.is_initialized()        # this Ray was not started by the cluster: left running


def test_local_ray_is_started_and_shut_down(tmp_path):
    """Without address= and without a running Ray, the cluster starts a local Ray
    and close() shuts it down: no process is left behind (checked in a child)."""
    script = textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, sys.argv[1])
        import ray
        from amdb.distributed import DistributedCluster
        from amdb_testutil import children_of, wait_until
        c = DistributedCluster(node_count=1, workers_per_node=1, db_options={"ring_size": 1 << 20},
                               ray_init_kwargs={"num_cpus": 1, "object_store_memory": 80 << 20})
        c.put(b"k", b"v")
        assert c.get(b"k") == b"v"
        assert c.stats()["placement"] == "single-host"
        c.close()
        assert not ray.is_initialized()
        assert wait_until(lambda: not children_of(os.getpid()), 60), children_of(os.getpid())
        print("CLEAN")
    """)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-c", script, os.path.dirname(os.path.abspath(__file__))],
                          capture_output=True, text=True, timeout=170, env=env, cwd=str(tmp_path))
    assert "CLEAN" in proc.stdout, proc.stderr[-3000:]
