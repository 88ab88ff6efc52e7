"""AmDbNode: one node of a DistributedCluster, run as a Ray actor.

One ``AmDbNode`` actor per node (created by ``amdb.distributed.client``'s
``DistributedCluster`` with ``num_cpus=0``, so it never starves Ray's
scheduler); it owns a ``ParallelDB`` (memory only, or durable in
``path/node-<id>`` for a cluster with a path; its workers are fresh
interpreters, ``python -m amdb._worker``, never forked) and a per-slot state:
OWNED, FROZEN (moving out: reads served, writes refused), INCOMING (moving in:
nothing served), LOST (restarted without a path), or not owned. A durable node
that Ray restarts reopens its directory and serves its slots again. It checks every
request against the table version the client used and against its slot states,
and refuses what it must not serve.

Called through Ray by the client (requests: ``put_packed``, ``get_one``,
``scan_page`` ...) and by ``amdb.distributed.rebalance`` (membership:
``begin_export``, ``export_slots``, ``import_slots``, ``release_slots`` ...).
Keys are routed to slots with ``amdb.native.routing``.
"""
import itertools
import os

import numpy as np
import ray

from amdb import SLOT_COUNT
from amdb.distributed.packing import _fixed_width, _pack, _split, _take
from amdb.errors import Error
from amdb.native.routing import slots_of_keys, slots_of_packed

def node_directory(path, node_id):
    return os.path.join(path, f"node-{node_id}")


# ---- per-slot states (node side) and reply statuses ---------------------------------

NOT_OWNED, OWNED, FROZEN, INCOMING, LOST, REPLICA = 0, 1, 2, 3, 4, 5
OK, STALE, WRONG_NODE, MOVING, DATA_LOST = "ok", "stale", "wrong_node", "moving", "data_lost"


class AmDbNode:
    """One node of a cluster: a ParallelDB plus the slot states it is allowed to serve."""

    def __init__(self, node_id, coordinator_name, namespace, db_options, path=None, replication_factor=1):
        import threading

        import amdb
        self.node_id = node_id
        self.rf = replication_factor
        self._lock = threading.Lock()       # slot states: the replication thread and the others
        self.view_table = None              # replication: the coordinator's table as last seen
        self.view_version = 0
        self.view_replicas = None
        self.peers = {}
        # Found by name (not passed as a handle) so that the constructor arguments are
        # plain values, which Ray can always replay when it restarts this actor.
        coordinator = ray.get_actor(coordinator_name, namespace=namespace)
        self.coordinator = coordinator
        # A durable cluster: this node's data lives in path/node-<id> on its host.
        self.path = None if path is None else node_directory(path, node_id)
        self.db = amdb.ParallelDB(self.path, **db_options)
        self.state = np.zeros(SLOT_COUNT, dtype=np.uint8)
        self.version = 0
        self.incoming_per_slot = np.zeros(SLOT_COUNT, dtype=np.int64)
        self.incoming_count = 0
        self.track_mask = np.zeros(SLOT_COUNT, dtype=bool)
        self.tracking = None            # slot -> set of keys while slots are being moved out
        self.restarted = False
        self.lost_count = 0
        self.swept = 0
        self.replicated = 0                 # writes this node applied as a replica
        self.replica_reads = 0              # keys it read for clients as a replica
        if ray.get(coordinator.node_started.remote(node_id)) > 1:
            self.restarted = True
            if self.rf > 1:
                # Replicated: whatever this node held is served by the replicas
                # now (fail_over is idempotent: a client may have done it
                # already); it comes back holding only the slots no replica
                # had, and repair() gives it copies again.
                ray.get(coordinator.fail_over.remote(node_id))
                ray.get(coordinator.node_is_back.remote(node_id))
            version, owned = ray.get(coordinator.node_view.remote(node_id))
            self.version = version
            if self.path is not None:
                # Ray restarted this actor after it died; its directory kept every
                # acknowledged write: serve what the table says it owns.
                self.assign(version, owned)
            else:
                # No path: the data of every slot this node owned is gone. Say so
                # instead of serving empty.
                self.state[owned] = LOST
                self.lost_count = len(owned)
                ray.get(coordinator.report_lost.remote(node_id, owned, "the node actor died and was restarted"))

    # -- checks --------------------------------------------------------------

    def _refuse(self, version, slots, write):
        """None if the request may run, else (status, detail). Reads are
        served by a replica too (read_from="replica": it holds every
        acknowledged write of its slots)."""
        if self.rf > 1 and version > self.view_version:
            self.sync_view()                # a failover may have made this node primary
        if version < self.version:
            return STALE, self.version
        states = self.state[slots] if isinstance(slots, np.ndarray) else self.state[[slots]]
        if write:
            if (states == OWNED).all():
                return None
        elif ((states == OWNED) | (states == FROZEN) | (states == REPLICA)).all():
            if (states == REPLICA).any():
                self.replica_reads += len(states)
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
        sent = self._replicate_send("replicate_packed", slots, kbuf, koffs, vbuf, voffs)
        count = self._write(kbuf, koffs, vbuf, voffs)          # while the replicas apply it
        return self._replicate_wait(sent) or (OK, count)

    def delete_packed(self, version, slots, kbuf, koffs):
        refused = self._refuse(version, slots, True)
        if refused:
            return refused
        self._track(slots, kbuf, koffs)
        sent = self._replicate_send("replicate_packed", slots, kbuf, koffs, None, None)
        count = self.db.batch_delete(_split(kbuf, koffs)).results.count
        return self._replicate_wait(sent) or (OK, count)

    # -- replication (docs/CLUSTER.md) ---------------------------------------------

    def sync_view(self):
        """Take the coordinator's table: slots it made this node primary of (a
        failover) are served from now on; the replicas of this node's slots are
        who its writes go to."""
        version, table, replicas, nodes, down, node_versions = ray.get(self.coordinator.replica_view.remote())
        with self._lock:
            mine = table == self.node_id
            promote = mine & ((self.state == REPLICA) | (self.state == NOT_OWNED))
            self.state[promote] = OWNED
            deposed = ~mine & (self.state == OWNED)
            self.state[deposed] = NOT_OWNED
            dropped = (self.state == REPLICA) & ~(replicas == self.node_id).any(axis=1)
            self.state[dropped] = NOT_OWNED
            self.view_table, self.view_replicas, self.peers = table, replicas, nodes
            # Two versions: the table as seen (requests newer than it make this
            # node look again), and the one its primary slots last changed at
            # (what its replies carry: scans and len() check it).
            self.view_version = max(self.view_version, version)
            self.version = max(self.version, node_versions.get(self.node_id, 0))
        return self.version

    def _replicate(self, method, slots, kbuf, koffs, vbuf, voffs):
        """Send a write this node applies as primary to every live replica of
        its slots and wait for them: the write is acknowledged only then.
        None when done; (STALE, version) when a replica says this node is not
        the primary of those slots any more. A replica that died is failed
        over (dropped from its slots' copies): the others go on."""
        return self._replicate_wait(self._replicate_send(method, slots, kbuf, koffs, vbuf, voffs))

    def _replicate_send(self, method, slots, kbuf, koffs, vbuf, voffs):
        """The first half of _replicate: [(replica, ref)] of the calls sent."""
        if self.rf == 1:
            return []
        if self.view_replicas is None:
            self.sync_view()
        slots = np.asarray(slots, dtype=np.int64)
        sent = []
        for column in range(self.view_replicas.shape[1]):
            targets = self.view_replicas[slots, column]
            for target in np.unique(targets[targets >= 0]).tolist():
                idx = np.flatnonzero(targets == target)
                peer = self.peers.get(target)
                if peer is None:
                    continue
                kb, ko = _take(kbuf, koffs, idx)
                vb, vo = _take(vbuf, voffs, idx) if vbuf is not None else (None, None)
                sent.append((target, getattr(peer, method).remote(self.node_id, self.view_version, slots[idx],
                                                                   kb, ko, vb, vo)))
        return sent

    def _replicate_wait(self, sent):
        """The second half of _replicate: wait for the calls sent."""
        stale = None
        for target, ref in sent:
            try:
                status, payload = ray.get(ref)
            except ray.exceptions.RayActorError:
                ray.get(self.coordinator.fail_over.remote(target))     # a dead replica: drop it
                self.sync_view()
                continue
            if status != OK:
                stale = (STALE, payload)
        return stale

    @ray.method(concurrency_group="replication")
    def replicate_packed(self, sender, version, slots, kbuf, koffs, vbuf, voffs):
        """A primary's write, applied here as a replica (its own thread: a
        primary waiting on this node's replication never blocks this node's
        own requests, which may be waiting on that primary)."""
        if version > self.view_version:
            self.sync_view()
        with self._lock:
            if (not (self.state[slots] == REPLICA).all()
                    or not (self.view_table is not None and (self.view_table[slots] == sender).all())):
                return STALE, self.version
            if vbuf is None:
                count = self.db.batch_delete(_split(kbuf, koffs)).results.count
            else:
                count = self._write(kbuf, koffs, vbuf, voffs)
            self.replicated += count
            return OK, count

    def assign_replicas(self, version, slots):
        """Hold copies of `slots` from now on (a new cluster: they are empty)."""
        with self._lock:
            self.state[slots] = REPLICA
            self.view_version = max(self.view_version, version)
        return int((self.state == REPLICA).sum())

    def import_replica(self, version, slots, payload):
        """Become a replica of `slots` holding exactly `payload` (the primary's
        data, taken while the slots are frozen there): what this node held of
        them before (an older life) goes first."""
        kslots, kbuf, koffs, vbuf, voffs = payload
        with self._lock:
            mask = np.zeros(SLOT_COUNT, dtype=bool)
            mask[slots] = True
            old = [key for _, key in self._keys_in(mask)]
            if old:
                self.db.batch_delete(old)
            if len(koffs) - 1:
                self._write(kbuf, koffs, vbuf, voffs)
            self.state[slots] = REPLICA
            self.view_version = max(self.view_version, version)
        return len(koffs) - 1

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
        if self.rf > 1:
            kbuf, koffs = _pack([key])
            vbuf, voffs = _pack([value])
            return self._replicate("replicate_packed", [slot], kbuf, koffs, vbuf, voffs) or (OK, 1)
        return OK, 1

    def delete_one(self, version, slot, key):
        refused = self._refuse(version, slot, True)
        if refused:
            return refused
        if self.tracking is not None and self.track_mask[slot]:
            self.tracking[slot].add(key)
        self.db.delete(key)
        if self.rf > 1:
            kbuf, koffs = _pack([key])
            return self._replicate("replicate_packed", [slot], kbuf, koffs, None, None) or (OK, 1)
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
        served = self.state[slots_of_keys(keys)]
        keep = np.flatnonzero((served == OWNED) | (served == FROZEN))
        if len(keep) != len(raw):
            raw = [raw[i] for i in keep.tolist()]
        return self.version, raw, keys[-1], exhausted

    def count(self):
        if self.rf > 1:                     # the copies it holds are counted by their primaries
            served = (self.state == OWNED) | (self.state == FROZEN)
            return self.version, sum(1 for _ in self._keys_in(served))
        return self.version, len(self.db) - self.incoming_count

    # -- membership -------------------------------------------------------------

    def assign(self, version, slots):
        """Serve `slots` from table version `version` on. A durable node first
        deletes what its directory holds of other slots: a move that the
        cluster's death interrupted may have left copies (imported, not yet
        activated; or released in the table, not yet deleted), and they must
        not come back should those slots move here later."""
        self.state[slots] = OWNED
        self.version = max(self.version, version)
        if self.path is not None:
            strays = [key for _, key in self._keys_in((self.state != OWNED) & (self.state != REPLICA))]
            if strays:
                self.db.batch_delete(strays)
            self.swept += len(strays)
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
            sl = slots_of_keys(chunk)
            for i in np.flatnonzero(slot_mask[sl]).tolist():
                yield int(sl[i]), chunk[i]

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
            "path": self.path,
            "strays_deleted": self.swept,
            "replicated_writes": self.replicated,
            "replica_reads": self.replica_reads,
            "slots": {"owned": int((self.state == OWNED).sum()), "replica": int((self.state == REPLICA).sum()),
                      "frozen": int((self.state == FROZEN).sum()),
                      "incoming": int((self.state == INCOMING).sum()), "lost": int((self.state == LOST).sum())},
            "keys": self.count()[1],
            "db": self.db.stats(),
        }

    def close(self):
        self.db.close()
        return True

    def destroy(self):
        """Close, and delete this node's directory (it was removed from the
        cluster: the other nodes hold its slots now)."""
        self.db.close()
        if self.path is not None:
            import shutil
            shutil.rmtree(self.path, ignore_errors=True)
        return True
