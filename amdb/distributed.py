"""DistributedCluster: AmDb across hosts, on Ray.

::

    from amdb.distributed import DistributedCluster
    with DistributedCluster(node_count=4) as cluster:
        success, results = cluster.batch_put(items)
        cluster.get(b"key_123")

Pieces (all Ray actors use ``num_cpus=0``, so they never starve Ray's scheduler):

* ``AmDbNode`` — one per node; owns a ``ParallelDB`` (memory only: its workers
  are fresh interpreters, ``python -m amdb._worker``, never forked) and a
  per-slot state: OWNED, FROZEN (moving out: reads served, writes refused),
  INCOMING (moving in: nothing served), LOST (restarted without a path), or
  not owned. It checks every request against the table version the client
  used and against its slot states, and refuses what it must not serve.
* ``AmDbCoordinator`` — holds the versioned slot -> node table (``SLOT_COUNT``
  slots), the node handles, the version at which each node's slot set last
  changed, and the record of slots that lost their data.
* ``DistributedCluster`` — the client: caches the table, routes
  ``slot = xxh64(key) % SLOT_COUNT`` (numpy, vectorised over packed buffers:
  amdb/_routing.py), sends one packed request per node in parallel, and on a
  refusal (stale version, wrong node, slot moving) refreshes the table and
  retries until ``retry_timeout``.

Membership changes move only the slots that change owner, a step of
``slots_per_step`` slots at a time: freeze at the source and copy, then flip
the table entries (new version), then release (delete) at the source and
activate at the target. Reads and writes go on meanwhile; a write to a slot in
flight waits (retries) for the few milliseconds of its step.
"""
import heapq
import itertools
import os
import threading
import time

import numpy as np

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "amdb.distributed needs Ray, which is an optional extra: pip install amdb[cluster] "
        f"(import failed: {_exc})") from _exc

from amdb import SLOT_COUNT
from amdb.native.routing import pack_pairs, take_packed
from amdb._routing import n_types_not_bytes, pack_keys, slots_of_packed
from amdb.errors import (ClosedError, Error, InvalidArgumentError, InvalidTypeError, KeyTooLargeError,
                         NodeUnavailableError, ValueTooLargeError)
from amdb.native.hashing import slot_of
from amdb.history import Break, VerifyReport, Version

__all__ = ["DistributedCluster", "ClusterBatchResult", "AmDbNode", "AmDbCoordinator"]

# ---- per-slot states (node side) and reply statuses ---------------------------------

NOT_OWNED, OWNED, FROZEN, INCOMING, LOST = 0, 1, 2, 3, 4
OK, STALE, WRONG_NODE, MOVING, DATA_LOST = "ok", "stale", "wrong_node", "moving", "data_lost"

DEFAULT_RETRY_TIMEOUT = 30.0       # seconds a call keeps retrying refused requests
DEFAULT_CALL_TIMEOUT = 300.0       # seconds one node call may take before node_timeout
DEFAULT_SLOTS_PER_STEP = 64        # slots moved per copy / flip / release step
SCAN_PAGE = 2048                   # keys per scan page and node


def _split(buf, offsets):
    """List of bytes objects of a packed buffer."""
    data = buf.tobytes() if isinstance(buf, np.ndarray) else bytes(buf)
    offs = offsets.tolist()
    return [data[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]


def _pack(objs):
    """(uint8 buffer, int64 offsets) of a list of bytes."""
    n = len(objs)
    offsets = np.zeros(n + 1, dtype=np.int64)
    if n:
        np.cumsum(np.fromiter(map(len, objs), dtype=np.int64, count=n), out=offsets[1:])
    return np.frombuffer(b"".join(objs), dtype=np.uint8), offsets


def _fixed_width(buf, offsets):
    """The items of a packed buffer as a numpy S<w> array without copying, when every
    item has the same length w and none ends in a NUL byte (put_array strips trailing
    NULs); else None."""
    n = len(offsets) - 1
    if n == 0 or int(offsets[0]) != 0:
        return None
    width = int(offsets[1] - offsets[0])
    if width == 0 or int(offsets[-1]) != n * width or not (np.diff(offsets) == width).all():
        return None
    if (buf[width - 1:n * width:width] == 0).any():
        return None
    return buf[:n * width].view(f"S{width}")


# ---- node actor ---------------------------------------------------------------------


class AmDbNode:
    """One node of a cluster: a ParallelDB plus the slot states it is allowed to serve."""

    def __init__(self, node_id, coordinator_name, namespace, db_options):
        import amdb
        self.node_id = node_id
        # Found by name (not passed as a handle) so that the constructor arguments are
        # plain values, which Ray can always replay when it restarts this actor.
        coordinator = ray.get_actor(coordinator_name, namespace=namespace)
        self.coordinator = coordinator
        self.db = amdb.ParallelDB(None, **db_options)
        self.state = np.zeros(SLOT_COUNT, dtype=np.uint8)
        self.version = 0
        self.incoming_per_slot = np.zeros(SLOT_COUNT, dtype=np.int64)
        self.incoming_count = 0
        self.track_mask = np.zeros(SLOT_COUNT, dtype=bool)
        self.tracking = None            # slot -> set of keys while slots are being moved out
        self.restarted = False
        self.lost_count = 0
        if ray.get(coordinator.node_started.remote(node_id)) > 1:
            # Ray restarted this actor after it died. There is no path, so the data
            # of every slot this node owned is gone: say so instead of serving empty.
            self.restarted = True
            version, owned = ray.get(coordinator.node_view.remote(node_id))
            self.version = version
            self.state[owned] = LOST
            self.lost_count = len(owned)
            ray.get(coordinator.report_lost.remote(node_id, owned, "the node actor died and was restarted"))

    # -- checks --------------------------------------------------------------

    def _refuse(self, version, slots, write):
        """None if the request may run, else (status, detail)."""
        if version < self.version:
            return STALE, self.version
        states = self.state[slots] if isinstance(slots, np.ndarray) else self.state[[slots]]
        if write:
            if (states == OWNED).all():
                return None
        elif ((states == OWNED) | (states == FROZEN)).all():
            return None
        if (states == LOST).any():
            lost = np.flatnonzero(self.state == LOST)
            return DATA_LOST, len(lost)
        if (states == NOT_OWNED).any():
            return WRONG_NODE, self.version
        return MOVING, self.version

    def _track(self, slots, kbuf, koffs):
        """Remember the keys written to slots that are being moved out."""
        if self.tracking is None:
            return
        hit = np.flatnonzero(self.track_mask[slots])
        if not len(hit):
            return
        offs = koffs.tolist()
        data = kbuf.tobytes()
        for i in hit.tolist():
            self.tracking[int(slots[i])].add(data[offs[i]:offs[i + 1]])

    def _write(self, kbuf, koffs, vbuf, voffs):
        put_packed = getattr(self.db, "put_packed", None)
        if put_packed is not None:
            # ParallelDB.put_packed (docs/API.md) takes this very layout: no conversion
            return put_packed(np.asarray(kbuf, dtype=np.uint8), np.asarray(koffs, dtype=np.int64),
                              np.asarray(vbuf, dtype=np.uint8), np.asarray(voffs, dtype=np.int64)).results.count
        # without it: put_array on fixed-width items (zero copy), else batch_put
        keys = _fixed_width(kbuf, koffs)
        values = _fixed_width(vbuf, voffs) if keys is not None else None
        if keys is not None and values is not None:
            return self.db.put_array(keys, values).results.count
        return self.db.batch_put(zip(_split(kbuf, koffs), _split(vbuf, voffs))).results.count

    # -- client requests ------------------------------------------------------

    def ping(self):
        return self.node_id

    def put_packed(self, version, slots, kbuf, koffs, vbuf, voffs):
        refused = self._refuse(version, slots, True)
        if refused:
            return refused
        self._track(slots, kbuf, koffs)
        return OK, self._write(kbuf, koffs, vbuf, voffs)

    def delete_packed(self, version, slots, kbuf, koffs):
        refused = self._refuse(version, slots, True)
        if refused:
            return refused
        self._track(slots, kbuf, koffs)
        return OK, self.db.batch_delete(_split(kbuf, koffs)).results.count

    def get_packed(self, version, slots, kbuf, koffs):
        refused = self._refuse(version, slots, False)
        if refused:
            return refused
        return OK, self.db.batch_get(_split(kbuf, koffs))

    def put_one(self, version, slot, key, value):
        refused = self._refuse(version, slot, True)
        if refused:
            return refused
        if self.tracking is not None and self.track_mask[slot]:
            self.tracking[slot].add(key)
        self.db.put(key, value)
        return OK, 1

    def delete_one(self, version, slot, key):
        refused = self._refuse(version, slot, True)
        if refused:
            return refused
        if self.tracking is not None and self.track_mask[slot]:
            self.tracking[slot].add(key)
        self.db.delete(key)
        return OK, 1

    def get_one(self, version, slot, key):
        refused = self._refuse(version, slot, False)
        if refused:
            return refused
        return OK, self.db.get(key)

    def history_one(self, version, slot, key):
        refused = self._refuse(version, slot, False)
        if refused:
            return refused
        return OK, [tuple(v) for v in self.db.history(key)]

    def verify(self):
        report = self.db.verify()
        return (report.keys_checked, report.versions_checked, report.breaks_total,
                [tuple(b) for b in report.breaks[:1000]], report.seconds)

    def digest(self):
        return self.db.digest()

    def scan_page(self, start, stop, reverse, keys_only, limit):
        """(node version, items of served slots, last key examined, exhausted)."""
        raw = list(itertools.islice(self.db.scan(start, stop, reverse=reverse, keys_only=keys_only), limit))
        exhausted = len(raw) < limit
        if not raw:
            return self.version, [], None, True
        keys = raw if keys_only else [k for k, _ in raw]
        buf, offs, _ = pack_keys(keys)
        served = self.state[slots_of_packed(buf, offs)]
        keep = np.flatnonzero((served == OWNED) | (served == FROZEN))
        if len(keep) != len(raw):
            raw = [raw[i] for i in keep.tolist()]
        return self.version, raw, keys[-1], exhausted

    def count(self):
        return self.version, len(self.db) - self.incoming_count

    # -- membership -------------------------------------------------------------

    def assign(self, version, slots):
        self.state[slots] = OWNED
        self.version = max(self.version, version)
        return int((self.state == OWNED).sum())

    def begin_export(self, slots):
        """Start tracking the keys of ``slots`` (which are about to move out)."""
        self.track_mask[:] = False
        self.track_mask[slots] = True
        self.tracking = {int(s): set() for s in np.asarray(slots).tolist()}
        found = 0
        for slot, key in self._keys_in(self.track_mask):
            self.tracking[slot].add(key)
            found += 1
        return found

    def _keys_in(self, slot_mask):
        """(slot, key) of every stored key whose slot is set in ``slot_mask``."""
        it = self.db.scan(keys_only=True)
        while True:
            chunk = list(itertools.islice(it, 1 << 16))
            if not chunk:
                return
            buf, offs, keys = pack_keys(chunk)
            sl = slots_of_packed(buf, offs)
            for i in np.flatnonzero(slot_mask[sl]).tolist():
                yield int(sl[i]), keys[i]

    def export_slots(self, slots):
        """Freeze ``slots`` (writes refused from now on) and return their data."""
        if not (self.state[slots] == OWNED).all():
            raise Error(f"node {self.node_id}: export of slots it does not own", code="cluster_state")
        self.state[slots] = FROZEN
        keys = []
        for s in np.asarray(slots).tolist():
            keys.extend(self.tracking.get(s, ()))
        values = self.db.batch_get(keys) if keys else []
        kept = [(k, v) for k, v in zip(keys, values) if v is not None]
        ks = [k for k, _ in kept]
        vs = [v for _, v in kept]
        kbuf, koffs = _pack(ks)
        vbuf, voffs = _pack(vs)
        return slots_of_packed(kbuf, koffs), kbuf, koffs, vbuf, voffs

    def import_slots(self, slots, payload):
        kslots, kbuf, koffs, vbuf, voffs = payload
        if not np.isin(self.state[slots], (NOT_OWNED, INCOMING)).all():
            raise Error(f"node {self.node_id}: import into slots it serves", code="cluster_state")
        self.state[slots] = INCOMING
        n = len(koffs) - 1
        if n:
            self._write(kbuf, koffs, vbuf, voffs)
            np.add.at(self.incoming_per_slot, kslots.astype(np.int64), 1)
            self.incoming_count += n
        return n

    def release_slots(self, version, slots):
        """The table moved ``slots`` away: stop serving them, delete their data."""
        self.state[slots] = NOT_OWNED
        self.version = max(self.version, version)
        keys = set()
        for s in np.asarray(slots).tolist():
            keys |= self.tracking.pop(s, set()) if self.tracking is not None else set()
        self.track_mask[slots] = False
        if keys:
            self.db.batch_delete(list(keys))
        return len(keys)

    def activate_slots(self, version, slots):
        self.state[slots] = OWNED
        self.version = max(self.version, version)
        self.incoming_count -= int(self.incoming_per_slot[slots].sum())
        self.incoming_per_slot[slots] = 0
        return int((self.state == OWNED).sum())

    def abort_export(self, slots):
        frozen = slots[self.state[slots] == FROZEN]
        self.state[frozen] = OWNED
        return len(frozen)

    def abort_import(self, slots):
        """Drop what was imported into ``slots`` (a step that failed before its flip)."""
        mask = np.zeros(SLOT_COUNT, dtype=bool)
        mask[slots[self.state[slots] == INCOMING]] = True
        doomed = [key for _, key in self._keys_in(mask)]
        if doomed:
            self.db.batch_delete(doomed)
        self.incoming_count -= int(self.incoming_per_slot[mask].sum())
        self.incoming_per_slot[mask] = 0
        self.state[mask] = NOT_OWNED
        return len(doomed)

    def end_export(self):
        self.tracking = None
        self.track_mask[:] = False

    def acknowledge_loss(self):
        lost = np.flatnonzero(self.state == LOST)
        self.state[lost] = OWNED
        self.lost_count = 0
        return lost

    # -- lifecycle ----------------------------------------------------------------

    def stats(self):
        ctx = ray.get_runtime_context()
        return {
            "node_id": self.node_id,
            "pid": os.getpid(),
            "ray_node_id": ctx.get_node_id(),
            "version": self.version,
            "restarted": self.restarted,
            "slots": {"owned": int((self.state == OWNED).sum()), "frozen": int((self.state == FROZEN).sum()),
                      "incoming": int((self.state == INCOMING).sum()), "lost": int((self.state == LOST).sum())},
            "keys": len(self.db) - self.incoming_count,
            "db": self.db.stats(),
        }

    def close(self):
        self.db.close()
        return True


class AmDbCoordinator:
    """The versioned slot -> node table and the membership record."""

    def __init__(self):
        self.version = 0
        self.table = np.full(SLOT_COUNT, -1, dtype=np.int32)
        self.nodes = {}
        self.node_versions = {}
        self.lost = {}                 # node_id -> (sorted slots, reason)
        self.starts = {}               # node_id -> how many times its actor started

    def snapshot(self):
        return self.version, self.table, dict(self.nodes), dict(self.node_versions)

    def node_started(self, node_id):
        """Count the starts of a node's actor: more than 1 means Ray restarted it."""
        self.starts[node_id] = self.starts.get(node_id, 0) + 1
        return self.starts[node_id]

    def register(self, node_id, handle):
        self.nodes[node_id] = handle
        self.node_versions[node_id] = 0        # owns nothing yet; its actor starts at version 0
        return self.version

    def unregister(self, node_id):
        if (self.table == node_id).any():
            raise Error(f"node {node_id} still owns slots", code="cluster_state")
        self.nodes.pop(node_id, None)
        self.node_versions.pop(node_id, None)
        self.lost.pop(node_id, None)
        self.version += 1
        return self.version

    def set_slots(self, slots, node_id):
        """Give ``slots`` to ``node_id``; returns the new table version."""
        slots = np.asarray(slots, dtype=np.int64)
        self.version += 1
        for old in np.unique(self.table[slots]).tolist():
            if old >= 0:
                self.node_versions[old] = self.version
        self.node_versions[node_id] = self.version
        self.table[slots] = node_id
        return self.version

    def node_view(self, node_id):
        return self.node_versions.get(node_id, self.version), np.flatnonzero(self.table == node_id)

    def report_lost(self, node_id, slots, reason):
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots):
            self.lost[node_id] = (np.sort(slots), reason)
        return True

    def lost_slots(self):
        return {node_id: (slots.tolist(), reason) for node_id, (slots, reason) in self.lost.items()}

    def clear_lost(self, node_id):
        self.lost.pop(node_id, None)
        return True


_NodeActor = ray.remote(AmDbNode)
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


def _successor(key):
    """The smallest key greater than ``key`` in bytewise order."""
    return key + b"\x00"


def _prefix_stop(prefix):
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _take(buf, offsets, idx):
    """The items `idx` of a packed buffer: the buffer itself when idx is all
    of it in order (routing rounds pass sorted, unique indices), else a
    native gather."""
    if len(idx) == len(offsets) - 1:
        return buf, offsets
    return take_packed(buf, offsets, idx)


def _bytes_list(seq, what):
    seq = list(seq)
    if n_types_not_bytes(seq):
        from amdb._routing import _key_bytes
        seq = [_key_bytes(x, what) for x in seq]
    return seq


def _bound(key, what):
    if isinstance(key, bytes):
        return key
    from amdb._routing import _key_bytes
    return _key_bytes(key, what)


class DistributedCluster:
    """A cluster of ParallelDB nodes on Ray with hash-slot routing (see the module doc).

    Parameters: ``node_count`` nodes (one ``AmDbNode`` actor each); ``address`` of a
    Ray cluster to join (None: use the Ray already initialised in this process, or
    start a local one, which ``close()`` then shuts down); ``workers_per_node``
    (default: the host's cpu count divided by the number of nodes on it, at least
    1); ``path`` (must be None: durable cluster nodes are not supported yet);
    ``db_options`` (more ParallelDB options, e.g. ``{"ring_size": 1 << 20}``);
    ``max_restarts`` for the node actors; ``retry_timeout`` for refused requests;
    ``call_timeout`` for one node call; ``ray_init_kwargs`` for a local start.
    """

    def __init__(self, node_count=4, *, address=None, workers_per_node=None, path=None, db_options=None,
                 max_restarts=3, retry_timeout=DEFAULT_RETRY_TIMEOUT, call_timeout=DEFAULT_CALL_TIMEOUT,
                 ray_init_kwargs=None, start_timeout=120.0):
        if path is not None:
            raise InvalidArgumentError(
                "DistributedCluster(path=...) is not available yet: a ParallelDB can be durable, but "
                "cluster nodes do not yet keep their slots' data in a directory to recover from",
                hint="pass path=None; a node that dies loses its slots' data, reported by lost_slots()")
        if isinstance(node_count, bool) or not isinstance(node_count, int) or not 1 <= node_count <= 1024:
            raise InvalidArgumentError(f"node_count={node_count!r} must be an int in 1..1024")
        if workers_per_node is not None and (isinstance(workers_per_node, bool)
                                             or not isinstance(workers_per_node, int)
                                             or not 1 <= workers_per_node <= 256):
            raise InvalidArgumentError(f"workers_per_node={workers_per_node!r} must be an int in 1..256")
        self._closed = False
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
        self._coordinator = _CoordinatorActor.options(
            num_cpus=0, name=self._coordinator_name, namespace=self._namespace).remote()
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
        self._refresh()
        options = ray.get(handles[0][1].stats.remote(), timeout=start_timeout)["db"]["options"]
        self._max_key_size = options["max_key_size"]
        self._max_value_size = options["max_value_size"]

    def _create_node(self, strategy=None):
        node_id = self._next_node_id
        self._next_node_id += 1
        options = {"num_cpus": 0, "max_restarts": self._max_restarts, "max_task_retries": 0}
        if strategy is not None:
            options["scheduling_strategy"] = strategy
        handle = _NodeActor.options(**options).remote(node_id, self._coordinator_name, self._namespace,
                                                      dict(self._db_options))
        self._nodes_created.append((node_id, handle))
        ray.get(self._coordinator.register.remote(node_id, handle))
        return node_id, handle

    # ---- plumbing ------------------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise ClosedError("the cluster is closed", hint="create a new DistributedCluster")

    def _refresh(self):
        self._view = ray.get(self._coordinator.snapshot.remote(), timeout=self._call_timeout)
        return self._view

    def _get(self, node_id, ref):
        """ray.get of a node call, with Ray's errors turned into amdb errors naming the node."""
        try:
            return ray.get(ref, timeout=self._call_timeout)
        except RayActorError as exc:
            raise NodeUnavailableError(
                f"node {node_id} is unavailable: its actor died or is restarting "
                f"({type(exc).__name__}); without path= the data of its slots is lost",
                node_id=node_id) from exc
        except GetTimeoutError as exc:
            raise NodeUnavailableError(f"node {node_id} did not answer within {self._call_timeout}s",
                                       node_id=node_id, code="node_timeout") from exc
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def _gone(self, node_id):
        """After a node call failed: True if the node left the table meanwhile (it was
        removed), so the call should be re-routed rather than reported."""
        try:
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
            node_id = int(table[slot])
            try:
                status, payload = self._get(node_id, getattr(nodes[node_id], method).remote(version, slot, key, *args))
            except NodeUnavailableError:
                if not self._gone(node_id):
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
            from amdb._routing import _key_bytes
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

    def _route_rounds(self, slots, send, result, what):
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
                    if self._gone(node_id):
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

        failures, _ = self._route_rounds(slots, send, result, "batch_get")
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
        return self._scan(start, stop, reverse, keys_only, page_size)

    def _scan(self, lo, hi, reverse, keys_only, page_size):
        cursor = None                       # last key yielded
        deadline = time.monotonic() + self._retry_timeout
        lags = 0

        def key_of(item):
            return item if keys_only else item[0]

        while True:
            view = self._view
            nodes = view[2]
            buffers = {n: [] for n in nodes}
            last = {n: None for n in nodes}      # last key a node examined
            done = {n: False for n in nodes}
            restart = False
            while not restart:
                wanted = [n for n in nodes if not buffers[n] and not done[n]]
                refs = []
                for n in wanted:
                    edge = last[n]
                    if edge is None:
                        s, e = lo, hi
                    elif reverse:
                        s, e = lo, edge
                    else:
                        s, e = _successor(edge), hi
                    if s is not None and e is not None and s >= e:
                        done[n] = True
                        continue
                    refs.append((n, nodes[n].scan_page.remote(s, e, reverse, keys_only, page_size)))
                for n, ref in refs:
                    try:
                        reply_version, items, last_key, exhausted = self._get(n, ref)
                    except NodeUnavailableError:
                        if not self._gone(n):
                            raise
                        restart = True
                        continue
                    check = self._validated(view, n, reply_version)
                    if check:
                        restart = True
                        if check < 0:
                            lags += 1
                        continue
                    buffers[n] = items
                    if last_key is not None:
                        last[n] = last_key
                    done[n] = exhausted
                if restart:
                    break
                live = [last[n] for n in nodes if not done[n]]
                if live:
                    bound = max(live) if reverse else min(live)
                else:
                    bound = None
                heads = []
                for n in nodes:
                    buf = buffers[n]
                    if bound is None:
                        take = len(buf)
                    elif reverse:
                        take = next((i for i, it in enumerate(buf) if key_of(it) < bound), len(buf))
                    else:
                        take = next((i for i, it in enumerate(buf) if key_of(it) > bound), len(buf))
                    heads.append(buf[:take])
                    buffers[n] = buf[take:]
                merged = heapq.merge(*heads, key=key_of, reverse=reverse)
                for item in merged:
                    cursor = key_of(item)
                    yield item
                if bound is None and all(done.values()):
                    return
            if time.monotonic() >= deadline:
                raise Error("scan: the table kept changing (or a node lagged) for "
                            f"{self._retry_timeout}s", code="cluster_timeout")
            if lags:
                time.sleep(min(0.05, 0.0005 * (2 ** min(lags, 7))))
            self._refresh()
            # resume after the cursor: lo/hi shrink to what is left
            if cursor is not None:
                if reverse:
                    hi = cursor
                else:
                    lo = _successor(cursor)

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
            members = sorted(nodes)
            share = SLOT_COUNT // len(members)
            moves = []
            counts = {n: int((table == n).sum()) for n in members}
            need = share
            for donor in sorted(members, key=lambda n: -counts[n]):
                if donor == node_id or need <= 0:
                    continue
                surplus = min(need, counts[donor] - share)
                if surplus > 0:
                    own = np.flatnonzero(table == donor)
                    moves.append((donor, node_id, own[-surplus:]))
                    need -= surplus
            self._move(moves, slots_per_step)
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
            own = np.flatnonzero(table == node_id)
            counts = {n: int((table == n).sum()) for n in others}
            target = (SLOT_COUNT + len(others) - 1) // len(others)
            moves, pos = [], 0
            for n in sorted(others, key=lambda n: counts[n]):
                take = min(len(own) - pos, max(0, target - counts[n]))
                if take > 0:
                    moves.append((node_id, n, own[pos:pos + take]))
                    pos += take
            if pos < len(own):
                moves.append((node_id, others[0], own[pos:]))
            self._move(moves, slots_per_step)
            ray.get(self._coordinator.unregister.remote(node_id))
            self._refresh()
            handle = nodes[node_id]
            try:
                ray.get(handle.close.remote(), timeout=self._call_timeout)
            except (RayActorError, GetTimeoutError):
                pass
            ray.kill(handle, no_restart=True)
            self._nodes_created = [(n, h) for n, h in self._nodes_created if n != node_id]

    def _move(self, moves, slots_per_step):
        if isinstance(slots_per_step, bool) or not isinstance(slots_per_step, int) or slots_per_step < 1:
            raise InvalidArgumentError(f"slots_per_step={slots_per_step!r} must be a positive int")
        nodes = self._view[2]
        for src, dst, slots in moves:
            source, target = nodes[src], nodes[dst]
            self._get(src, source.begin_export.remote(np.asarray(slots, dtype=np.int64)))
            try:
                for lo in range(0, len(slots), slots_per_step):
                    step = np.asarray(slots[lo:lo + slots_per_step], dtype=np.int64)
                    self._move_step(src, source, dst, target, step)
            finally:
                try:
                    ray.get(source.end_export.remote(), timeout=self._call_timeout)
                except (RayActorError, GetTimeoutError):
                    pass
        self._refresh()

    def _move_step(self, src, source, dst, target, step):
        flipped = False
        try:
            exported = source.export_slots.remote(step)            # freezes the step at the source
            self._get(dst, target.import_slots.remote(step, exported))
            version = ray.get(self._coordinator.set_slots.remote(step, dst))
            flipped = True
            # Release at the source first, then activate at the target: no client can
            # read the old copy after the target has taken a write.
            self._get(src, source.release_slots.remote(version, step))
            self._get(dst, target.activate_slots.remote(version, step))
        except BaseException:
            if not flipped:
                for node_id, call in ((src, lambda: source.abort_export.remote(step)),
                                      (dst, lambda: target.abort_import.remote(step))):
                    try:
                        ray.get(call(), timeout=self._call_timeout)
                    except Exception:
                        pass
            raise

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
            "durability": "memory-only (path=None)",
            "closed": False,
        }

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
