"""DistributedCluster: AmDb across hosts, on Ray.

::

    from amdb.distributed import DistributedCluster
    with DistributedCluster(node_count=4) as cluster:
        success, results = cluster.batch_put(items)
        cluster.get(b"key_123")

Imported by applications, by ``python -m amdb cluster-bench`` and by
tests/test_distributed.py. Ray is an optional extra: importing this package
without it raises an ImportError that says ``pip install amdb[cluster]``.

Pieces (all Ray actors use ``num_cpus=0``, so they never starve Ray's scheduler),
one module each:

* ``AmDbNode`` (node.py) — one per node; owns a ``ParallelDB`` (memory only: its
  workers are fresh interpreters, ``python -m amdb._worker``, never forked) and
  a per-slot state: OWNED, FROZEN (moving out: reads served, writes refused),
  INCOMING (moving in: nothing served), LOST (restarted without a path), or
  not owned. It checks every request against the table version the client
  used and against its slot states, and refuses what it must not serve.
* ``AmDbCoordinator`` (coordinator.py) — holds the versioned slot -> node table
  (``SLOT_COUNT`` slots), the node handles, the version at which each node's
  slot set last changed, and the record of slots that lost their data.
* ``DistributedCluster`` (client.py) — the client: caches the table, routes
  ``slot = xxh64(key) % SLOT_COUNT`` (native and vectorised over packed
  buffers: ``amdb.native.routing``), sends one packed request per node in
  parallel, and on a refusal (stale version, wrong node, slot moving) refreshes
  the table and retries until ``retry_timeout``. Its scans are merged across
  nodes by scan.py.
* Membership changes (rebalance.py, called by ``add_node`` / ``remove_node``)
  move only the slots that change owner, a step of ``slots_per_step`` slots at
  a time: freeze at the source and copy, then flip the table entries (new
  version), then release (delete) at the source and activate at the target.
  Reads and writes go on meanwhile; a write to a slot in flight waits (retries)
  for the few milliseconds of its step.
* packing.py — packed-buffer and key-type helpers shared by client and node.
"""
try:
    # checked here once, so that a missing Ray says what to install; the modules below import it plainly
    import ray  # noqa: F401
    import ray.exceptions  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "amdb.distributed needs Ray, which is an optional extra: pip install amdb[cluster] "
        f"(import failed: {_exc})") from _exc

from amdb.distributed.client import (DEFAULT_CALL_TIMEOUT, DEFAULT_RETRY_TIMEOUT, SCAN_PAGE,  # noqa: F401
                                     ClusterBatchResult, DistributedCluster)
from amdb.distributed.coordinator import AmDbCoordinator
from amdb.distributed.node import (DATA_LOST, FROZEN, INCOMING, LOST, MOVING, NOT_OWNED, OK,  # noqa: F401
                                   OWNED, STALE, WRONG_NODE, AmDbNode)
from amdb.distributed.packing import _fixed_width, _pack, _split, _take  # noqa: F401
from amdb.distributed.rebalance import DEFAULT_SLOTS_PER_STEP  # noqa: F401

__all__ = ["DistributedCluster", "ClusterBatchResult", "AmDbNode", "AmDbCoordinator"]
