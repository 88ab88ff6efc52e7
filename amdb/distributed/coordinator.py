"""AmDbCoordinator: the versioned slot -> node table of a DistributedCluster.

One coordinator actor per cluster (a named Ray actor with ``num_cpus=0``,
created by ``amdb.distributed.client``'s ``DistributedCluster``) holds the
versioned slot -> node table (``SLOT_COUNT`` slots), the node handles, the
version at which each node's slot set last changed, and the record of slots
that lost their data.

Called through Ray by the client (``snapshot`` to refresh its cached table,
``register`` / ``unregister``, ``lost_slots`` ...), by
``amdb.distributed.rebalance`` (``set_slots`` flips a step of slots to their new
owner) and by the ``AmDbNode`` actors (``node_started``, ``node_view``,
``report_lost`` when a node comes back from a restart without its data).
"""
import json
import os

import numpy as np

from amdb import SLOT_COUNT
from amdb.errors import CorruptionError, Error
from amdb.storage import _write_atomically

CLUSTER_FILE = "CLUSTER"            # the slot table of a durable cluster, in its path
CLUSTER_FORMAT = 1


def read_cluster_file(path):
    """The stored state of a durable cluster at `path` ({"version", "table",
    "nodes", "next_node_id"}), or None when there is none yet."""
    name = os.path.join(path, CLUSTER_FILE)
    try:
        with open(name) as f:
            stored = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CorruptionError(f"{name} cannot be read: {exc}") from None
    if stored.get("format") != CLUSTER_FORMAT:
        raise CorruptionError(f"{name}: unknown format {stored.get('format')!r}")
    table = _from_ranges(stored["ranges"])
    replicas = np.full((SLOT_COUNT, max(0, stored.get("replication_factor", 1) - 1)), -1, dtype=np.int32)
    for column, ranges in enumerate(stored.get("replica_ranges", [])):
        replicas[:, column] = _from_ranges(ranges)
    return {"version": stored["version"], "table": table, "nodes": stored["nodes"],
            "next_node_id": stored["next_node_id"], "replicas": replicas,
            "replication_factor": stored.get("replication_factor", 1), "down": stored.get("down", [])}


def _ranges(column):
    edges = np.flatnonzero(np.diff(column)) + 1
    starts = [0] + edges.tolist()
    stops = edges.tolist() + [SLOT_COUNT]
    return [[a, b, int(column[a])] for a, b in zip(starts, stops)]


def _from_ranges(ranges):
    column = np.full(SLOT_COUNT, -1, dtype=np.int32)
    for start, stop, node in ranges:
        column[start:stop] = node
    return column


def write_cluster_file(path, version, table, nodes, next_node_id, replicas=None, down=()):
    """Replace the stored state atomically (write, fsync, rename, fsync the directory)."""
    replicas = np.zeros((SLOT_COUNT, 0), dtype=np.int32) if replicas is None else replicas
    data = json.dumps({"format": CLUSTER_FORMAT, "version": version, "nodes": sorted(nodes),
                       "next_node_id": next_node_id, "ranges": _ranges(table),
                       "replication_factor": 1 + replicas.shape[1],
                       "replica_ranges": [_ranges(replicas[:, c]) for c in range(replicas.shape[1])],
                       "down": sorted(down)})
    _write_atomically(os.path.join(path, CLUSTER_FILE), data.encode())


class AmDbCoordinator:
    """The versioned slot -> node table and the membership record. With a
    `path` (a durable cluster) the table and the member ids are written to
    path/CLUSTER at every change, before anything acts on the change: a
    cluster reopened from the path routes every slot to the node whose
    directory holds its data."""

    def __init__(self, path=None, replication_factor=1):
        self.path = path
        self.version = 0
        self.table = np.full(SLOT_COUNT, -1, dtype=np.int32)
        # replicas[slot]: the nodes that hold a copy of the slot besides its
        # primary (table[slot]), -1 = none; `down`: nodes failed over, whose
        # copies are gone until repair() gives them slots again.
        self.replicas = np.full((SLOT_COUNT, replication_factor - 1), -1, dtype=np.int32)
        self.down = set()
        self.nodes = {}
        self.node_versions = {}
        self.lost = {}                 # node_id -> (sorted slots, reason)
        self.starts = {}               # node_id -> how many times its actor started
        self.stored = read_cluster_file(path) if path is not None else None
        self.next_node_id = 0
        if self.stored is not None:
            self.version = self.stored["version"]
            self.table = self.stored["table"].copy()
            self.next_node_id = self.stored["next_node_id"]
            self.members = set(self.stored["nodes"])
            if self.stored["replicas"].shape[1] == self.replicas.shape[1]:
                self.replicas = self.stored["replicas"].copy()
            self.down = set(self.stored["down"])
        else:
            self.members = set()

    def stored_state(self):
        """What the path held when this coordinator started (None: a new cluster)."""
        if self.stored is None:
            return None
        return {"version": self.stored["version"], "nodes": list(self.stored["nodes"]),
                "next_node_id": self.stored["next_node_id"],
                "replication_factor": self.stored["replication_factor"],
                "owned": {n: np.flatnonzero(self.table == n) for n in self.stored["nodes"]}}

    def _persist(self):
        if self.path is not None:
            write_cluster_file(self.path, self.version, self.table, self.members, self.next_node_id,
                               self.replicas, self.down)

    # ---- replication (docs/CLUSTER.md) ----------------------------------------------

    def version_of(self):
        return self.version

    def replica_view(self):
        """(version, primary table, replicas table, {node: handle}, down nodes,
        {node: version at which the slots it is primary of last changed})."""
        return (self.version, self.table, self.replicas, dict(self.nodes), sorted(self.down),
                dict(self.node_versions))

    def set_replicas(self, slots, column, node_id):
        """Make node_id the copy number `column` of `slots` (initial placement,
        repair). Returns the new version."""
        slots = np.asarray(slots, dtype=np.int64)
        self.version += 1
        self.replicas[slots, column] = node_id
        self.down.discard(node_id)
        self._persist()
        return self.version

    def fail_over(self, node_id):
        """Node `node_id` died (its actor is gone): every slot it was primary of
        gets its first live replica as primary, and it is dropped from every
        slot's replicas. The acknowledged writes of those slots are all on the
        replica (a primary acknowledges a write once every live replica applied
        it). Returns (version, slots promoted, slots left without any copy)."""
        if self.replicas.shape[1] == 0:
            return self.version, 0, 0
        promoted = orphaned = 0
        mine = np.flatnonzero(self.table == node_id)
        for slot in mine.tolist():
            live = [int(r) for r in self.replicas[slot] if r >= 0 and r != node_id and r not in self.down]
            if live:
                self.table[slot] = live[0]
                rest = [r for r in self.replicas[slot].tolist() if r != live[0] and r != node_id]
                self.replicas[slot] = (rest + [-1] * self.replicas.shape[1])[:self.replicas.shape[1]]
                promoted += 1
            else:
                orphaned += 1
        gone = np.flatnonzero((self.replicas == node_id).any(axis=1))
        if not len(mine) and not len(gone):
            # It holds nothing: a failover asked again for a death already
            # handled (the node may be back and live): nothing to do.
            return self.version, 0, 0
        for slot in gone.tolist():                  # keep each row's copies first, then -1
            row = [r for r in self.replicas[slot].tolist() if r >= 0 and r != node_id]
            self.replicas[slot] = (row + [-1] * self.replicas.shape[1])[:self.replicas.shape[1]]
        self.down.add(node_id)
        self.version += 1
        for n in set(self.table[mine].tolist()) | {node_id}:
            self.node_versions[int(n)] = self.version
        self._persist()
        return self.version, promoted, orphaned

    def node_is_back(self, node_id):
        """A failed-over node's actor started again: it holds nothing now."""
        self.down.discard(node_id)
        self._persist()
        return self.version

    def snapshot(self):
        return self.version, self.table, dict(self.nodes), dict(self.node_versions)

    def node_started(self, node_id):
        """Count the starts of a node's actor: more than 1 means Ray restarted it."""
        self.starts[node_id] = self.starts.get(node_id, 0) + 1
        return self.starts[node_id]

    def register(self, node_id, handle):
        self.nodes[node_id] = handle
        if node_id not in self.members:
            self.node_versions[node_id] = 0    # owns nothing yet; its actor starts at version 0
        else:                                  # reopened: it owns what the stored table says
            self.node_versions[node_id] = self.version
        self.members.add(node_id)
        self.next_node_id = max(self.next_node_id, node_id + 1)
        self._persist()
        return self.version

    def unregister(self, node_id):
        if (self.table == node_id).any():
            raise Error(f"node {node_id} still owns slots", code="cluster_state")
        self.nodes.pop(node_id, None)
        self.node_versions.pop(node_id, None)
        self.lost.pop(node_id, None)
        self.members.discard(node_id)
        self.version += 1
        self._persist()
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
        self._persist()                 # before any node acts on it (release deletes the old copy)
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
