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
import numpy as np

from amdb import SLOT_COUNT
from amdb.errors import Error


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
