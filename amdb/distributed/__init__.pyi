"""Type stubs of amdb.distributed (needs Ray: ``pip install amdb[cluster]``).
Typed: the client, DistributedCluster, and its batch result; the actors and
helpers the package also exports are internal and left untyped."""
from typing import Any

from amdb.distributed.client import DEFAULT_CALL_TIMEOUT as DEFAULT_CALL_TIMEOUT
from amdb.distributed.client import DEFAULT_RETRY_TIMEOUT as DEFAULT_RETRY_TIMEOUT
from amdb.distributed.client import SCAN_PAGE as SCAN_PAGE
from amdb.distributed.client import ClusterBatchResult as ClusterBatchResult
from amdb.distributed.client import DistributedCluster as DistributedCluster

__all__ = ["DistributedCluster", "ClusterBatchResult", "AmDbNode", "AmDbCoordinator"]

AmDbNode: Any
AmDbCoordinator: Any
DEFAULT_SLOTS_PER_STEP: int


def __getattr__(name: str) -> Any: ...      # the slot states and packing helpers: internal, untyped
