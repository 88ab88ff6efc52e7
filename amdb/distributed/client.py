"""DistributedCluster: the client of an AmDb cluster on Ray, and its batch results.

The application creates a ``DistributedCluster`` (``amdb.distributed`` re-exports
it); ``python -m amdb cluster-bench`` does too. The client starts the
``AmDbCoordinator`` actor (``amdb.distributed.coordinator``) and one
``AmDbNode`` actor per node (``amdb.distributed.node``), all with
``num_cpus=0`` so that they never starve Ray's scheduler. It caches the slot
table, routes ``slot = xxh64(key) % SLOT_COUNT`` with the native, GIL-releasing
``amdb.native.routing`` (``pack_pairs`` for batch_put, ``slots_of_packed`` over
packed keys otherwise), sends one packed request per node in parallel, and on a
refusal (stale version, wrong node, slot moving) refreshes the table and
retries until ``retry_timeout``.

Scans are merged by ``amdb.distributed.scan``; ``add_node`` / ``remove_node``
move slots with ``amdb.distributed.rebalance``; packing helpers live in
``amdb.distributed.packing``.
"""
import itertools
import os
import threading
import time

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from amdb import SLOT_COUNT
from amdb.distributed.coordinator import AmDbCoordinator
from amdb.distributed.node import DATA_LOST, OK, WRONG_NODE, AmDbNode
from amdb.distributed.packing import _bound, _bytes_list, _key_bytes, _pack, _take
from amdb.distributed.rebalance import (DEFAULT_SLOTS_PER_STEP, move_slots, plan_add, plan_remove,
                                        plan_remove_replicated)
from amdb.distributed.scan import _prefix_stop, scan_merged
from amdb.errors import (ClosedError, Error, InvalidArgumentError, InvalidTypeError, KeyTooLargeError,
                         NodeUnavailableError, ValueTooLargeError)
from amdb.history import Break, VerifyReport, Version
from amdb.native.hashing import slot_of
from amdb.native.routing import pack_pairs, slots_of_packed

DEFAULT_RETRY_TIMEOUT = 30.0       # seconds a call keeps retrying refused requests
DEFAULT_CALL_TIMEOUT = 300.0       # seconds one node call may take before node_timeout
SCAN_PAGE = 2048                   # keys per scan page and node

# Replicated writes (replicate_packed) run in a thread of their own on the
# replica: a primary waiting on it never waits for that node's own requests.
_NodeActor = ray.remote(concurrency_groups={"replication": 1})(AmDbNode)
_CoordinatorActor = ray.remote(AmDbCoordinator)


# ---- client -------------------------------------------------------------------------


class ClusterBatchResult:
    """What a cluster batch did: ``count`` records written in all, ``per_node``
    {node_id: count}, ``failures`` {node_id: exception} (nothing silently dropped:
    ``failed`` counts the items not written), ``rounds`` (1 + refresh-and-retry rounds)."""

    __slots__ = ("count", "per_node", "failures", "failed", "rounds")

    def __init__(self):
        self.count = 0
        self.per_node = {}
        self.failures = {}
        self.failed = 0
        self.rounds = 0

    def as_dict(self):
        return {"count": self.count, "per_node": dict(self.per_node),
                "failures": {k: repr(v) for k, v in self.failures.items()},
                "failed": self.failed, "rounds": self.rounds}

    def __repr__(self):
        return (f"ClusterBatchResult(count={self.count}, per_node={self.per_node}, "
                f"failures={ {k: str(v) for k, v in self.failures.items()} }, failed={self.failed})")


class DistributedCluster:
    """A cluster of ParallelDB nodes on Ray with hash-slot routing (see the package doc).

    Parameters: ``node_count`` nodes (one ``AmDbNode`` actor each); ``address`` of a
    Ray cluster to join (None: use the Ray already initialised in this process, or
    start a local one, which ``close()`` then shuts down); ``workers_per_node``
    (default: the host's cpu count divided by the number of nodes on it, at least
    1); ``path`` (None: memory-only nodes; a directory: each node's ParallelDB is
    durable in ``path/node-<id>`` and the slot table in ``path/CLUSTER``, so a
    node restarted by Ray recovers its slots, and a cluster reopened from the path,
    with any node_count, finds every key; on several hosts the path must name the
    same storage for every node, e.g. a shared file system); ``replication_factor``
    (copies of every slot, on distinct nodes; docs/CLUSTER.md); ``read_from``
    ("primary", or "replica": get and batch_get spread over every copy);
    ``db_options`` (more ParallelDB options, e.g. ``{"ring_size": 1 << 20}``);
    ``max_restarts`` for the node actors; ``retry_timeout`` for refused requests;
    ``call_timeout`` for one node call; ``ray_init_kwargs`` for a local start.
    """

    def __init__(self, node_count=4, *, address=None, workers_per_node=None, path=None, db_options=None,
                 max_restarts=3, retry_timeout=DEFAULT_RETRY_TIMEOUT, call_timeout=DEFAULT_CALL_TIMEOUT,
                 ray_init_kwargs=None, start_timeout=120.0, replication_factor=1, read_from="primary"):
        if path is not None:
            if not isinstance(path, (str, bytes, os.PathLike)):
                raise InvalidTypeError(f"path= must be a directory path or None, not {type(path).__name__}")
            path = os.fsdecode(os.path.abspath(path))
            if os.path.exists(path) and not os.path.isdir(path):
                raise InvalidArgumentError(f"path={path!r} exists and is not a directory")
        if isinstance(node_count, bool) or not isinstance(node_count, int) or not 1 <= node_count <= 1024:
            raise InvalidArgumentError(f"node_count={node_count!r} must be an int in 1..1024")
        if (isinstance(replication_factor, bool) or not isinstance(replication_factor, int)
                or not 1 <= replication_factor <= 3):
            raise InvalidArgumentError(f"replication_factor={replication_factor!r} must be 1, 2 or 3")
        if replication_factor > node_count:
            raise InvalidArgumentError(f"replication_factor={replication_factor} needs at least as many nodes "
                                       f"(node_count={node_count}): each copy of a slot is on another node")
        self._rf = replication_factor
        if read_from not in ("primary", "replica"):
            raise InvalidArgumentError(f"read_from={read_from!r} must be 'primary' or 'replica'")
        self._read_from = read_from
        self._read_table = None         # read_from="replica": the copy each slot's reads go to
        if workers_per_node is not None and (isinstance(workers_per_node, bool)
                                             or not isinstance(workers_per_node, int)
                                             or not 1 <= workers_per_node <= 256):
            raise InvalidArgumentError(f"workers_per_node={workers_per_node!r} must be an int in 1..256")
        self._closed = False
        self._failovers = 0
        self._repair_guard = threading.Lock()
        self._repairer = None           # the thread of _repair_later, if one ran
        self.repairs = 0                # copies made by automatic repairs
        self.repair_error = None        # what stopped the last automatic repair attempt
        self._path = path
        self._lock = threading.RLock()          # membership changes, close
        self._retry_timeout = retry_timeout
        self._call_timeout = call_timeout
        self._max_restarts = max_restarts
        self._db_options = dict(db_options or {})
        self._db_options.pop("workers", None)
        self._owns_ray = False
        self._nodes_created = []
        self._coordinator = None
        self._placement_group = None
        if not ray.is_initialized():
            # address="local" always starts a new local Ray: never join, by surprise, a
            # cluster that happens to run on this machine (RAY_ADDRESS, /tmp/ray).
            kwargs = {"include_dashboard": False, "logging_level": "WARNING",
                      "address": "local" if address is None else address}
            kwargs.update(ray_init_kwargs or {})
            ray.init(**kwargs)
            self._owns_ray = address is None
        try:
            self._start(node_count, workers_per_node, start_timeout)
        except BaseException:
            self._teardown()
            raise

    # ---- start -------------------------------------------------------------------

    def _start(self, node_count, workers_per_node, start_timeout):
        hosts = [n for n in ray.nodes() if n.get("Alive")]
        self._hosts = len(hosts)
        if workers_per_node is None:
            cpus = min(int(n.get("Resources", {}).get("CPU", 1)) for n in hosts) or 1
            per_host = max(1, -(-node_count // max(1, self._hosts)))
            workers_per_node = max(1, cpus // per_host)
        self._workers_per_node = workers_per_node
        self._db_options["workers"] = workers_per_node
        import uuid
        self._namespace = ray.get_runtime_context().namespace
        self._coordinator_name = f"amdb-coordinator-{uuid.uuid4().hex}"
        if self._path is not None:
            os.makedirs(self._path, exist_ok=True)
        self._coordinator = _CoordinatorActor.options(
            num_cpus=0, name=self._coordinator_name, namespace=self._namespace).remote(self._path, self._rf)
        stored = ray.get(self._coordinator.stored_state.remote(), timeout=start_timeout)
        if stored is not None and stored["replication_factor"] != self._rf:
            raise InvalidArgumentError(f"{self._path} holds a cluster with replication_factor="
                                       f"{stored['replication_factor']}, not {self._rf}",
                                       hint=f"open it with replication_factor={stored['replication_factor']}")
        if stored is not None:
            self._reopen(stored, node_count, start_timeout)
            return
        strategies = [None] * node_count
        if self._hosts > 1 and node_count <= self._hosts:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
            # Bundles cannot be empty: a hundredth of a CPU each pins one node per host.
            self._placement_group = placement_group([{"CPU": 0.01}] * node_count, strategy="STRICT_SPREAD")
            ray.get(self._placement_group.ready(), timeout=start_timeout)
            strategies = [PlacementGroupSchedulingStrategy(self._placement_group, placement_group_bundle_index=i)
                          for i in range(node_count)]
            self._placement = "STRICT_SPREAD"
        elif self._hosts > 1:
            self._placement = "SPREAD"
            strategies = ["SPREAD"] * node_count
        else:
            self._placement = "single-host"
        self._next_node_id = 0
        handles = [self._create_node(strategy) for strategy in strategies]
        ray.get([h.ping.remote() for _, h in handles], timeout=start_timeout)
        bounds = np.linspace(0, SLOT_COUNT, node_count + 1).astype(np.int64)
        refs = []
        for i, (node_id, handle) in enumerate(handles):
            slots = np.arange(bounds[i], bounds[i + 1])
            version = ray.get(self._coordinator.set_slots.remote(slots, node_id))
            refs.append(handle.assign.remote(version, slots))
        ray.get(refs, timeout=start_timeout)
        # Copies: the slots of node i also live on nodes i+1 .. i+rf-1 (all empty yet).
        for column in range(self._rf - 1):
            refs = []
            for i in range(node_count):
                slots = np.arange(bounds[i], bounds[i + 1])
                node_id, handle = handles[(i + 1 + column) % node_count]
                version = ray.get(self._coordinator.set_replicas.remote(slots, column, node_id))
                refs.append(handle.assign_replicas.remote(version, slots))
            ray.get(refs, timeout=start_timeout)
        self._nodes_ready(handles, start_timeout)

    def _nodes_ready(self, handles, start_timeout):
        """The nodes have their slots: let them take the table (replicas), cache
        it here, and learn the size limits."""
        if self._rf > 1:
            ray.get([h.sync_view.remote() for _, h in handles], timeout=start_timeout)
        self._refresh()
        options = ray.get(handles[0][1].stats.remote(), timeout=start_timeout)["db"]["options"]
        self._max_key_size = options["max_key_size"]
        self._max_value_size = options["max_value_size"]

    def _reopen(self, stored, node_count, start_timeout):
        """A durable cluster's path holds a cluster: start its nodes again (each
        reopens its directory), give each the slots the stored table says, then
        add or remove nodes until there are node_count (slots move as in
        add_node / remove_node)."""
        self._placement = "single-host" if self._hosts == 1 else "SPREAD"
        strategy = "SPREAD" if self._hosts > 1 else None
        self._next_node_id = stored["next_node_id"]
        handles = [self._create_node(strategy, node_id) for node_id in stored["nodes"]]
        ray.get([h.ping.remote() for _, h in handles], timeout=start_timeout)
        version = stored["version"]
        if self._rf > 1:
            _, _, replicas, _, _, _ = ray.get(self._coordinator.replica_view.remote(), timeout=start_timeout)
            ray.get([h.assign_replicas.remote(version, np.flatnonzero((replicas == node_id).any(axis=1)))
                     for node_id, h in handles], timeout=start_timeout)
        ray.get([h.assign.remote(version, stored["owned"][node_id]) for node_id, h in handles],
                timeout=start_timeout)
        self._nodes_ready(handles, start_timeout)
        while len(self._view[2]) < node_count:
            self.add_node()
        while len(self._view[2]) > node_count:
            self.remove_node(max(self._view[2]))

    def _create_node(self, strategy=None, node_id=None):
        if node_id is None:
            node_id = self._next_node_id
            self._next_node_id += 1
        options = {"num_cpus": 0, "max_restarts": self._max_restarts, "max_task_retries": 0}
        if strategy is not None:
            options["scheduling_strategy"] = strategy
        handle = _NodeActor.options(**options).remote(node_id, self._coordinator_name, self._namespace,
                                                      dict(self._db_options), self._path, self._rf)
        self._nodes_created.append((node_id, handle))
        ray.get(self._coordinator.register.remote(node_id, handle))
        return node_id, handle

    # ---- plumbing ------------------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise ClosedError("the cluster is closed", hint="create a new DistributedCluster")

    def _refresh(self):
        self._view = ray.get(self._coordinator.snapshot.remote(), timeout=self._call_timeout)
        if self._read_from == "replica" and self._rf > 1:
            # Reads spread over every copy of a slot: copy number slot % copies.
            _, table, replicas, _, _, _ = ray.get(self._coordinator.replica_view.remote(),
                                                  timeout=self._call_timeout)
            copies = np.concatenate([table[:, None], replicas], axis=1)
            count = (copies >= 0).sum(axis=1)
            pick = np.arange(SLOT_COUNT) % np.maximum(count, 1)
            self._read_table = copies[np.arange(SLOT_COUNT), pick]
        return self._view

    def _get(self, node_id, ref):
        """ray.get of a node call, with Ray's errors turned into amdb errors naming the node."""
        try:
            return ray.get(ref, timeout=self._call_timeout)
        except RayActorError as exc:
            raise NodeUnavailableError(
                f"node {node_id} is unavailable: its actor died or is restarting "
                f"({type(exc).__name__}); " + ("a restarted node reopens its directory" if self._path else
                                                "without path= the data of its slots is lost"),
                node_id=node_id) from exc
        except GetTimeoutError as exc:
            raise NodeUnavailableError(f"node {node_id} did not answer within {self._call_timeout}s",
                                       node_id=node_id, code="node_timeout") from exc
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def _gone(self, node_id, exc=None):
        """After a node call failed: True if the node left the table meanwhile (it was
        removed), or, in a replicated cluster, died and its slots were failed over
        to their replicas, so the call should be re-routed rather than reported."""
        try:
            if (self._rf > 1 and exc is not None and exc.code == "node_unavailable"
                    and isinstance(exc.__cause__, RayActorError)):
                # Idempotent: the node's restarted actor may have done it already.
                ray.get(self._coordinator.fail_over.remote(node_id), timeout=self._call_timeout)
                self._failovers += 1
                self._refresh()
                self._repair_later()
                return True                 # resend to the slots' primaries now (until retry_timeout)
            return node_id not in self._refresh()[2]
        except Exception:
            return False

    def _lost_error(self, node_id, count):
        return NodeUnavailableError(
            f"node {node_id} was restarted without a path: {count} slots it owned lost their data "
            "and are refused until cluster.acknowledge_data_loss() (cluster.lost_slots() lists them)",
            node_id=node_id, code="node_data_lost")

    def _retry_wait(self, attempt, deadline, what):
        if time.monotonic() >= deadline:
            raise Error(f"{what}: still refused after {self._retry_timeout}s (slots kept moving or "
                        "a node kept refusing the table version)", code="cluster_timeout",
                        hint="raise retry_timeout= or check cluster.stats()")
        if attempt:
            time.sleep(min(0.05, 0.0005 * (2 ** min(attempt, 7))))
        self._refresh()

    # ---- single keys -------------------------------------------------------------------

    def _one(self, method, key, *args):
        self._check_open()
        slot = slot_of(key)
        deadline = time.monotonic() + self._retry_timeout
        for attempt in itertools.count():
            version, table, nodes, _ = self._view
            if method == "get_one" and self._read_table is not None:
                table = self._read_table    # read_from="replica"
            node_id = int(table[slot])
            try:
                status, payload = self._get(node_id, getattr(nodes[node_id], method).remote(version, slot, key, *args))
            except NodeUnavailableError as exc:
                if not self._gone(node_id, exc):
                    raise
                status, payload = WRONG_NODE, None
            if status == OK:
                return payload
            if status == DATA_LOST:
                raise self._lost_error(node_id, payload)
            self._retry_wait(attempt, deadline, f"{method} on node {node_id}")

    def _check_key(self, key, what="key"):
        if isinstance(key, str):
            raise InvalidTypeError(f"{what} must be bytes-like, not str",
                                   hint=f"encode it, e.g. {what}.encode('utf-8')")
        if not isinstance(key, bytes):
            key = _key_bytes(key, what)
        limit = self._max_key_size if what == "key" else self._max_value_size
        if len(key) > limit:
            cls = KeyTooLargeError if what == "key" else ValueTooLargeError
            raise cls(f"{what} of {len(key)} bytes is longer than the limit of {limit}")
        return key

    def put(self, key, value):
        self._one("put_one", self._check_key(key), self._check_key(value, "value"))

    def delete(self, key):
        self._one("delete_one", self._check_key(key))

    def get(self, key, default=None):
        value = self._one("get_one", self._check_key(key))
        return default if value is None else value

    def __contains__(self, key):
        return self.get(key) is not None

    def history(self, key, *, oldest_first=False):
        """Every version of ``key`` on the node that owns it (amdb.Version, newest
        first). A key whose slot moved to another node starts a new history
        there: a move copies the latest value, not the versions."""
        rows = self._one("history_one", self._check_key(key))
        versions = [Version(*row) for row in rows]
        if oldest_first:
            versions.reverse()
        return versions

    def verify(self):
        """Verify every node's hash chains and ledgers in parallel:
        {"ok", "keys_checked", "versions_checked", "breaks_total", "nodes": {id: VerifyReport}}."""
        self._check_open()
        nodes = self._view[2]
        refs = [(n, h.verify.remote()) for n, h in nodes.items()]
        reports = {}
        for n, ref in refs:
            keys, versions, total, breaks, seconds = self._get(n, ref)
            reports[n] = VerifyReport(keys, versions, [Break(*b) for b in breaks], total, seconds)
        return {"ok": all(r.ok for r in reports.values()),
                "keys_checked": sum(r.keys_checked for r in reports.values()),
                "versions_checked": sum(r.versions_checked for r in reports.values()),
                "breaks_total": sum(r.breaks_total for r in reports.values()),
                "nodes": reports}

    def digest(self):
        """Every node's ledger digest and a root over them (SHA-256 of the node
        ids and roots in node order): {"root", "nodes": {id: digest}}."""
        import hashlib
        self._check_open()
        nodes = self._view[2]
        refs = [(n, h.digest.remote()) for n, h in nodes.items()]
        digests = {n: self._get(n, ref) for n, ref in refs}
        root = hashlib.sha256(b"amdb-cluster-ledger-v1")
        for n in sorted(digests):
            root.update(int(n).to_bytes(8, "little") + bytes.fromhex(digests[n]["root"]))
        return {"root": root.hexdigest(), "nodes": digests}

    def node_of(self, key):
        """The node that owns ``key`` in the cached table."""
        return int(self._view[1][slot_of(self._check_key(key))])

    # ---- batches -----------------------------------------------------------------------

    def _route_rounds(self, slots, send, result, what, read=False):
        """Send every index of the batch to its node, refreshing and resending what
        was refused, until all is done or has failed. ``send(node, handle, version,
        idx)`` returns an object ref; replies are ``(status, payload)``; the payload
        of every accepted request is handed to ``result(node_id, idx, payload)``."""
        pending = np.arange(len(slots), dtype=np.int64)
        failures = {}
        deadline = time.monotonic() + self._retry_timeout
        rounds = 0
        for attempt in itertools.count():
            if not len(pending):
                break
            rounds += 1
            version, table, nodes, _ = self._view
            if read and self._read_table is not None:
                table = self._read_table
            owners = table[slots[pending]]
            order = np.argsort(owners, kind="stable")
            cuts = np.flatnonzero(np.diff(owners[order])) + 1
            sent = []
            for group in np.split(order, cuts):
                if not len(group):
                    continue
                node_id = int(owners[group[0]])
                idx = pending[group]
                if node_id in failures or node_id not in nodes:
                    failures.setdefault(node_id, NodeUnavailableError(
                        f"node {node_id} is not in the table any more", node_id=node_id))
                    continue
                try:
                    sent.append((node_id, idx, send(node_id, nodes[node_id], version, idx)))
                except RayActorError as exc:
                    failures[node_id] = NodeUnavailableError(f"node {node_id} is unavailable ({exc})",
                                                             node_id=node_id)
            refused = []
            for node_id, idx, ref in sent:
                try:
                    status, payload = self._get(node_id, ref)
                except NodeUnavailableError as exc:
                    if self._gone(node_id, exc):
                        refused.append(idx)
                    else:
                        failures[node_id] = exc
                    continue
                except Error as exc:
                    failures[node_id] = exc
                    continue
                if status == OK:
                    result(node_id, idx, payload)
                elif status == DATA_LOST:
                    failures[node_id] = self._lost_error(node_id, payload)
                else:
                    refused.append(idx)
            pending = np.concatenate(refused) if refused else pending[:0]
            if len(pending):
                self._retry_wait(attempt, deadline, what)
        return failures, rounds

    def batch_put(self, items):
        """Write ``items`` ((key, value) pairs) across the nodes, one request per node
        in parallel. Returns ``BatchOutcome(success, ClusterBatchResult)``; ``success``
        is False if any node failed (``results.failures`` names it, ``results.failed``
        counts what was not written). Atomic per node, not across nodes."""
        from amdb.db import BatchOutcome
        self._check_open()
        items = items if isinstance(items, list) else list(items)
        outcome = ClusterBatchResult()
        if not items:
            return BatchOutcome(True, outcome)
        # One native pass: packed keys and values and every key's slot; it
        # checks types and sizes before anything is sent.
        try:
            packed = pack_pairs(items, self._max_key_size, self._max_value_size)
        except InvalidTypeError:
            # bytearray / memoryview items: convert them (str still raises, with a hint).
            items = [(_bound(item[0], "key"), _bound(item[1], "value"))
                     if isinstance(item, (tuple, list)) and len(item) == 2 else item for item in items]
            packed = pack_pairs(items, self._max_key_size, self._max_value_size)
        kbuf, koffs, vbuf, voffs, slots = packed

        def send(node_id, handle, version, idx):
            kb, ko = _take(kbuf, koffs, idx)
            vb, vo = _take(vbuf, voffs, idx)
            return handle.put_packed.remote(version, slots[idx], kb, ko, vb, vo)

        def result(node_id, idx, count):
            outcome.count += count
            outcome.per_node[node_id] = outcome.per_node.get(node_id, 0) + count

        failures, outcome.rounds = self._route_rounds(slots, send, result, "batch_put")
        outcome.failures = failures
        outcome.failed = len(items) - outcome.count
        return BatchOutcome(not failures and outcome.failed == 0, outcome)

    def _check_sizes(self, klens, vlens):
        if len(klens) and klens.max() > self._max_key_size:
            i = int(np.argmax(klens))
            raise KeyTooLargeError(f"key {i} of the batch has {int(klens[i])} bytes, more than "
                                   f"max_key_size={self._max_key_size}; nothing was written")
        if vlens is not None:
            if len(vlens) and vlens.max() > self._max_value_size:
                i = int(np.argmax(vlens))
                raise ValueTooLargeError(f"value {i} of the batch has {int(vlens[i])} bytes, more than "
                                         f"max_value_size={self._max_value_size}; nothing was written")

    def batch_delete(self, keys):
        """Delete ``keys`` across the nodes; returns ``BatchOutcome`` like batch_put."""
        from amdb.db import BatchOutcome
        self._check_open()
        ks = _bytes_list(keys, "key")
        outcome = ClusterBatchResult()
        if not ks:
            return BatchOutcome(True, outcome)
        kbuf, koffs = _pack(ks)
        self._check_sizes(np.diff(koffs), None)
        slots = slots_of_packed(kbuf, koffs)

        def send(node_id, handle, version, idx):
            kb, ko = _take(kbuf, koffs, idx)
            return handle.delete_packed.remote(version, slots[idx], kb, ko)

        def result(node_id, idx, count):
            outcome.count += count
            outcome.per_node[node_id] = outcome.per_node.get(node_id, 0) + count

        outcome.failures, outcome.rounds = self._route_rounds(slots, send, result, "batch_delete")
        outcome.failed = len(ks) - outcome.count
        return BatchOutcome(not outcome.failures and outcome.failed == 0, outcome)

    def batch_get(self, keys):
        """Values (or None) of ``keys``, in order; raises NodeUnavailableError naming
        the first node that could not answer."""
        self._check_open()
        ks = _bytes_list(keys, "key")
        out = [None] * len(ks)
        if not ks:
            return out
        kbuf, koffs = _pack(ks)
        slots = slots_of_packed(kbuf, koffs)

        def send(node_id, handle, version, idx):
            kb, ko = _take(kbuf, koffs, idx)
            return handle.get_packed.remote(version, slots[idx], kb, ko)

        def result(node_id, idx, values):
            for i, v in zip(idx.tolist(), values):
                out[i] = v

        failures, _ = self._route_rounds(slots, send, result, "batch_get", read=True)
        if failures:
            raise next(iter(failures.values()))
        return out

    # ---- scans and counts ---------------------------------------------------------------

    def _validated(self, view, node_id, reply_version):
        """0 if a node's reply matches the table snapshot, <0 if the node lags
        (not yet told of a flip), >0 if the table moved on since the snapshot."""
        expected = view[3].get(node_id)
        if expected is None:
            return 1
        return (reply_version > expected) - (reply_version < expected)

    def scan(self, start=None, stop=None, *, prefix=None, reverse=False, keys_only=False, page_size=SCAN_PAGE):
        """Yield ``(key, value)`` (or keys) of the whole cluster in bytewise key order,
        merged across nodes page by page. Not a snapshot across nodes, but every key
        that exists for the whole scan is seen exactly once, also while slots move."""
        self._check_open()
        if prefix is not None:
            if start is not None or stop is not None:
                raise InvalidArgumentError("scan: prefix= cannot be combined with start= or stop=")
            prefix = _bound(prefix, "prefix")
            start, stop = prefix, _prefix_stop(prefix)
        start = None if start is None else _bound(start, "start")
        stop = None if stop is None else _bound(stop, "stop")
        return scan_merged(self, start, stop, reverse, keys_only, page_size)

    def keys(self):
        return self.scan(keys_only=True)

    def items(self):
        return self.scan()

    def __iter__(self):
        return self.keys()

    def __len__(self):
        self._check_open()
        deadline = time.monotonic() + self._retry_timeout
        for attempt in itertools.count():
            view = self._view
            refs = [(n, h.count.remote()) for n, h in view[2].items()]
            total, stale = 0, False
            for n, ref in refs:
                try:
                    version, count = self._get(n, ref)
                except NodeUnavailableError:
                    if not self._gone(n):
                        raise
                    stale = True
                    continue
                if self._validated(view, n, version):
                    stale = True
                total += count
            if not stale:
                return total
            self._retry_wait(attempt, deadline, "len")

    # ---- membership --------------------------------------------------------------------

    @property
    def nodes(self):
        """Node ids in the table, sorted."""
        return sorted(self._view[2])

    def slot_table(self):
        """(version, copy of the slot -> node id table) as cached by this client."""
        return self._view[0], np.array(self._view[1])

    def add_node(self, *, slots_per_step=DEFAULT_SLOTS_PER_STEP):
        """Start one more node and move to it its share of the slots (about 1/N of
        the keys) from the others; only those slots move. Returns its node id."""
        with self._lock:
            self._check_open()
            strategy = "SPREAD" if self._hosts > 1 else None
            node_id, handle = self._create_node(strategy)
            self._get(node_id, handle.ping.remote())
            version, table, nodes, _ = self._refresh()
            move_slots(self, plan_add(table, sorted(nodes), node_id), slots_per_step)
            return node_id

    def remove_node(self, node_id, *, slots_per_step=DEFAULT_SLOTS_PER_STEP):
        """Move every slot of ``node_id`` to the other nodes (evenly), then stop it."""
        with self._lock:
            self._check_open()
            version, table, nodes, _ = self._refresh()
            if node_id not in nodes:
                raise InvalidArgumentError(f"remove_node: no node {node_id!r} (nodes: {sorted(nodes)})")
            others = sorted(n for n in nodes if n != node_id)
            if not others:
                raise InvalidArgumentError("remove_node: cannot remove the last node")
            if self._rf > 1:
                if len(others) < self._rf:
                    raise InvalidArgumentError(
                        f"remove_node: {len(others)} nodes would be left for replication_factor={self._rf}",
                        hint="add a node first, or keep this one")
                # Copies first (the replication factor holds throughout): each
                # copy this node holds is made again on a node that holds none
                # of its slot, then its primary slots move to nodes that hold
                # no copy of them.
                self._replace_copies_of(node_id, others, slots_per_step)
                _, table, replicas, _, _, _ = ray.get(self._coordinator.replica_view.remote(),
                                                      timeout=self._call_timeout)
                move_slots(self, plan_remove_replicated(table, replicas, node_id, others), slots_per_step)
            else:
                move_slots(self, plan_remove(table, node_id, others), slots_per_step)
            ray.get(self._coordinator.unregister.remote(node_id))
            self._refresh()
            handle = nodes[node_id]
            try:
                # Its directory goes too (durable): the others hold its slots now.
                ray.get(handle.destroy.remote(), timeout=self._call_timeout)
            except (RayActorError, GetTimeoutError):
                pass
            ray.kill(handle, no_restart=True)
            self._nodes_created = [(n, h) for n, h in self._nodes_created if n != node_id]

    def _replace_copies_of(self, node_id, others, slots_per_step):
        """remove_node's first half: every copy `node_id` holds is made on
        another node of `others` that holds none of its slot (a repair step
        per group, replacing node_id in its column)."""
        version, table, replicas, nodes, down, _ = ray.get(self._coordinator.replica_view.remote(),
                                                           timeout=self._call_timeout)
        live = [n for n in others if n not in down]
        plan = {}
        for slot, column in zip(*np.nonzero(replicas == node_id)):
            holders = {int(table[slot])} | {int(r) for r in replicas[slot] if r >= 0}
            choices = [n for n in live if n not in holders]
            if not choices:
                raise Error(f"remove_node: no live node can take the copy of slot {slot}", code="cluster_state")
            target = choices[int(slot) % len(choices)]
            plan.setdefault((int(table[slot]), target, int(column)), []).append(int(slot))
        for (primary, target, column), group in sorted(plan.items()):
            for start in range(0, len(group), slots_per_step):
                self._copy_step(nodes, primary, target, column,
                                np.asarray(group[start:start + slots_per_step], dtype=np.int64))

    # ---- replication (docs/CLUSTER.md) -------------------------------------------------

    def repair(self, *, slots_per_step=DEFAULT_SLOTS_PER_STEP):
        """Give every slot back its replication_factor copies after failovers:
        a slot short of copies gets one on a live node that holds none of it,
        copied from its primary while the slot is frozen there (writes to it
        wait and retry; reads go on). Returns the number of copies made."""
        with self._lock:
            self._check_open()
            if self._rf == 1:
                return 0
            made = 0
            version, table, replicas, nodes, down, _ = ray.get(self._coordinator.replica_view.remote(),
                                                            timeout=self._call_timeout)
            live = [n for n in sorted(nodes) if n not in down]
            for column in range(self._rf - 1):
                version, table, replicas, nodes, down, _ = ray.get(self._coordinator.replica_view.remote(),
                                                                timeout=self._call_timeout)
                short = np.flatnonzero(replicas[:, column] < 0)
                if not len(short):
                    continue
                # Candidates per slot: live nodes that are neither its primary nor a copy.
                plan = {}
                for slot in short.tolist():
                    holders = {int(table[slot])} | {int(r) for r in replicas[slot] if r >= 0}
                    choices = [n for n in live if n not in holders]
                    if choices:
                        target = choices[slot % len(choices)]
                        plan.setdefault((int(table[slot]), target), []).append(slot)
                for (primary, target), group in sorted(plan.items()):
                    for start in range(0, len(group), slots_per_step):
                        step = np.asarray(group[start:start + slots_per_step], dtype=np.int64)
                        self._copy_step(nodes, primary, target, column, step)
                        made += len(step)
            self._refresh()
            return made

    def _repair_later(self):
        """After a failover: a daemon thread waits until no node is restarting
        (Ray brings the dead one back, or gave up on it), then repair()s, so
        the slots get their copies back without the caller asking."""
        with self._repair_guard:
            if self._repairer is None or not self._repairer.is_alive():
                self._repairer = threading.Thread(target=self._auto_repair, name="amdb-cluster-repair",
                                                  daemon=True)
                self._repairer.start()

    def _auto_repair(self):
        deadline = time.monotonic() + max(60.0, 4 * self._retry_timeout)
        while not self._closed and time.monotonic() < deadline:
            try:
                if "unavailable" not in self.check_nodes(timeout=5.0).values():
                    self.repairs += self.repair()
                    return
            except Exception as exc:        # closed meanwhile, a node died again: try again
                self.repair_error = repr(exc)
            time.sleep(0.2)                 # a poll of the nodes' restart, in this thread only

    def _copy_step(self, nodes, primary, target, column, step):
        """One repair step: freeze `step` at its primary and copy it to `target`,
        record the copy, let the primary know, unfreeze."""
        source, sink = nodes[primary], nodes[target]
        self._get(primary, source.begin_export.remote(step))
        try:
            payload = self._get(primary, source.export_slots.remote(step))
            try:
                version = ray.get(self._coordinator.version_of.remote(), timeout=self._call_timeout)
                self._get(target, sink.import_replica.remote(version, step, payload))
                version = ray.get(self._coordinator.set_replicas.remote(step, column, target),
                                  timeout=self._call_timeout)
                # The primary sends the step's writes to the new copy before it takes any.
                self._get(primary, source.sync_view.remote())
                self._get(target, sink.sync_view.remote())
            finally:
                self._get(primary, source.abort_export.remote(step))
        finally:
            self._get(primary, source.end_export.remote())

    # ---- failures ----------------------------------------------------------------------

    def lost_slots(self):
        """{node_id: sorted list of slots whose data was lost} (a node restarted by Ray
        without a path comes back empty; its slots are refused until acknowledged)."""
        self._check_open()
        return {n: slots for n, (slots, _) in ray.get(self._coordinator.lost_slots.remote()).items()}

    def acknowledge_data_loss(self, node_id=None):
        """Let the lost slots of ``node_id`` (None: every node) serve again, empty."""
        self._check_open()
        lost = ray.get(self._coordinator.lost_slots.remote())
        for n in ([node_id] if node_id is not None else list(lost)):
            handle = self._view[2].get(n)
            if handle is None:
                continue
            self._get(n, handle.acknowledge_loss.remote())
            ray.get(self._coordinator.clear_lost.remote(n))

    def check_nodes(self, timeout=10.0):
        """{node_id: "alive" | "unavailable" | "dead"} by pinging every node; a dead
        node (Ray will not restart it) has its slots reported by lost_slots()."""
        self._check_open()
        from ray.exceptions import ActorDiedError
        out = {}
        version, table, nodes, _ = self._refresh()
        refs = {n: h.ping.remote() for n, h in nodes.items()}
        for n, ref in refs.items():
            try:
                ray.get(ref, timeout=timeout)
                out[n] = "alive"
            except ActorDiedError:
                # Ray gave up restarting it (max_restarts): its slots' data is gone for good
                out[n] = "dead"
                ray.get(self._coordinator.report_lost.remote(
                    n, np.flatnonzero(table == n), "the node actor died and Ray did not restart it"))
            except (RayActorError, GetTimeoutError):
                out[n] = "unavailable"
        return out

    # ---- introspection and lifecycle -------------------------------------------------

    def stats(self):
        self._check_open()
        version, table, nodes, node_versions = self._refresh()
        per_node, errors = [], {}
        refs = {n: h.stats.remote() for n, h in nodes.items()}
        for n, ref in sorted(refs.items()):
            try:
                per_node.append(self._get(n, ref))
            except NodeUnavailableError as exc:
                errors[n] = str(exc)
        lost = ray.get(self._coordinator.lost_slots.remote())
        return {
            "nodes": per_node,
            "unavailable": errors,
            "keys": sum(s["keys"] for s in per_node),
            "table_version": version,
            "slots_per_node": {n: int((table == n).sum()) for n in sorted(nodes)},
            "lost_slots": {n: len(s) for n, (s, _) in lost.items()},
            "placement": self._placement,
            "hosts": self._hosts,
            "workers_per_node": self._workers_per_node,
            "replication": self._replication_stats(nodes),
            "durability": ("memory-only (path=None)" if self._path is None else
                           f"durable: {self._path}/node-<id> (sync={self._db_options.get('sync', 'none')})"),
            "path": self._path,
            "closed": False,
        }

    def _replication_stats(self, nodes):
        """Copies per slot: who is primary, who holds the copies. Replication is
        synchronous, so a live replica is never behind; a slot is short of
        copies after a failover until repair()."""
        version, table, replicas, _, down, _ = ray.get(self._coordinator.replica_view.remote(),
                                                    timeout=self._call_timeout)
        copies = 1 + (replicas >= 0).sum(axis=1)
        return {"factor": self._rf, "failovers": self._failovers, "down": down,
                "automatic_repair_copies": self.repairs, "repair_error": self.repair_error,
                "primary_slots": {n: int((table == n).sum()) for n in sorted(nodes)},
                "replica_slots": {n: int((replicas == n).sum()) for n in sorted(nodes)},
                "slots_short_of_copies": int((copies < self._rf).sum()),
                "replica_lag": "none: a write is acknowledged once every live replica applied it"}

    def slot_copies(self, slot):
        """(primary, [replicas]) of hash slot `slot` as the coordinator has them."""
        version, table, replicas, _, _, _ = ray.get(self._coordinator.replica_view.remote(),
                                                 timeout=self._call_timeout)
        return int(table[slot]), [int(r) for r in replicas[slot] if r >= 0]

    @property
    def closed(self):
        return self._closed

    def close(self):
        """Close every node's ParallelDB, stop the actors, and shut Ray down if this
        cluster started it. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._teardown()

    def _teardown(self):
        refs = []
        for _, handle in self._nodes_created:
            try:
                refs.append(handle.close.remote())
            except Exception:
                pass
        for ref in refs:
            try:
                ray.get(ref, timeout=30)
            except Exception:
                pass
        for _, handle in self._nodes_created:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                pass
        self._nodes_created = []
        if self._coordinator is not None:
            try:
                ray.kill(self._coordinator, no_restart=True)
            except Exception:
                pass
        if self._placement_group is not None:
            try:
                from ray.util.placement_group import remove_placement_group
                remove_placement_group(self._placement_group)
            except Exception:
                pass
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if self._closed:
            return "<amdb.DistributedCluster closed>"
        return f"<amdb.DistributedCluster nodes={self.nodes} table_version={self._view[0]}>"
