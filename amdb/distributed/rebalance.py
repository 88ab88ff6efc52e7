"""Membership changes of a DistributedCluster: which slots move, and moving them.

``DistributedCluster.add_node`` / ``remove_node`` (``amdb.distributed.client``)
hold the cluster's lock, start or stop the node actor, and call
:func:`plan_add` / :func:`plan_remove` (which slots change owner) and
:func:`move_slots` (move them). The functions here drive the ``AmDbNode``
actors (``begin_export``, ``export_slots``, ``import_slots``,
``release_slots``, ``activate_slots``, ``abort_*``, ``end_export``) and the
``AmDbCoordinator`` (``set_slots``) through Ray, using the cluster's plumbing
(``_view``, ``_get``, ``_refresh``, ``_coordinator``, ``_call_timeout``).

Membership changes move only the slots that change owner, a step of
``slots_per_step`` slots at a time: freeze at the source and copy, then flip
the table entries (new version), then release (delete) at the source and
activate at the target. Reads and writes go on meanwhile; a write to a slot in
flight waits (retries) for the few milliseconds of its step.
"""
import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from amdb import SLOT_COUNT
from amdb.errors import InvalidArgumentError

DEFAULT_SLOTS_PER_STEP = 64        # slots moved per copy / flip / release step


def plan_add(table, members, node_id):
    """Moves (donor, ``node_id``, slots) that give the new node ``node_id`` its share
    (``SLOT_COUNT // len(members)`` slots) from the nodes that own more than theirs,
    the fullest first. ``members``: every node id in the table, sorted."""
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
    return moves


def plan_remove(table, node_id, others):
    """Moves (``node_id``, target, slots) that spread every slot of ``node_id`` over
    ``others`` (the remaining node ids, sorted, at least one), the emptiest first."""
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
    return moves


def plan_remove_replicated(table, replicas, node_id, others):
    """plan_remove for a replicated cluster: every slot of ``node_id`` goes to
    a node of ``others`` that holds no copy of it (a node is never primary
    and replica of one slot), the emptiest first."""
    counts = {n: int((table == n).sum()) for n in others}
    groups = {}
    for slot in np.flatnonzero(table == node_id).tolist():
        holders = {int(r) for r in replicas[slot] if r >= 0}
        choices = [n for n in others if n not in holders] or list(others)
        target = min(choices, key=lambda n: counts[n])
        counts[target] += 1
        groups.setdefault(target, []).append(slot)
    return [(node_id, target, np.asarray(slots, dtype=np.int64)) for target, slots in sorted(groups.items())]


def move_slots(cluster, moves, slots_per_step):
    """Carry out ``moves`` ((source node id, target node id, slots) triples) on
    ``cluster`` (a DistributedCluster), ``slots_per_step`` slots per step; then
    refresh the cluster's cached table."""
    if isinstance(slots_per_step, bool) or not isinstance(slots_per_step, int) or slots_per_step < 1:
        raise InvalidArgumentError(f"slots_per_step={slots_per_step!r} must be a positive int")
    nodes = cluster._view[2]
    for src, dst, slots in moves:
        source, target = nodes[src], nodes[dst]
        cluster._get(src, source.begin_export.remote(np.asarray(slots, dtype=np.int64)))
        try:
            for lo in range(0, len(slots), slots_per_step):
                step = np.asarray(slots[lo:lo + slots_per_step], dtype=np.int64)
                _move_step(cluster, src, source, dst, target, step)
        finally:
            try:
                ray.get(source.end_export.remote(), timeout=cluster._call_timeout)
            except (RayActorError, GetTimeoutError):
                pass
    cluster._refresh()


def _move_step(cluster, src, source, dst, target, step):
    """Move one step of slots from ``source`` to ``target``: freeze and copy, flip
    the table, release at the source, activate at the target. A step that fails
    before its flip is undone at both ends; after it, it stays done."""
    flipped = False
    try:
        exported = source.export_slots.remote(step)            # freezes the step at the source
        cluster._get(dst, target.import_slots.remote(step, exported))
        version = ray.get(cluster._coordinator.set_slots.remote(step, dst))
        flipped = True
        # Release at the source first, then activate at the target: no client can
        # read the old copy after the target has taken a write.
        cluster._get(src, source.release_slots.remote(version, step))
        if cluster._rf > 1:
            # The new primary sends the step's writes to its replicas from its
            # first one: it takes the table (and the replicas) before it serves.
            cluster._get(dst, target.sync_view.remote())
        cluster._get(dst, target.activate_slots.remote(version, step))
    except BaseException:
        if not flipped:
            for node_id, call in ((src, lambda: source.abort_export.remote(step)),
                                  (dst, lambda: target.abort_import.remote(step))):
                try:
                    ray.get(call(), timeout=cluster._call_timeout)
                except Exception:
                    pass
        raise
