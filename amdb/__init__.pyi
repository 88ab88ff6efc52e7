"""Type stubs of the amdb package (PEP 561: amdb ships py.typed and a .pyi
beside each public module, compiled or not). ParallelDB, BatchOutcome,
BatchResult, backup and PrefixedDB are imported lazily at runtime."""
from typing import Final

from amdb.attach import Handle as Handle
from amdb.db import BatchOutcome as BatchOutcome
from amdb.db import BatchResult as BatchResult
from amdb.db import ParallelDB as ParallelDB
from amdb.db import backup as backup
from amdb.errors import ArenaFullError as ArenaFullError
from amdb.errors import ClosedError as ClosedError
from amdb.errors import ConditionFailedError as ConditionFailedError
from amdb.errors import CorruptionError as CorruptionError
from amdb.errors import Error as Error
from amdb.errors import InvalidArgumentError as InvalidArgumentError
from amdb.errors import InvalidTypeError as InvalidTypeError
from amdb.errors import KeyTooLargeError as KeyTooLargeError
from amdb.errors import LockedError as LockedError
from amdb.errors import NodeUnavailableError as NodeUnavailableError
from amdb.errors import OwnerGoneError as OwnerGoneError
from amdb.errors import PoisonBatchError as PoisonBatchError
from amdb.errors import StorageError as StorageError
from amdb.errors import ValueTooLargeError as ValueTooLargeError
from amdb.errors import VersionReclaimedError as VersionReclaimedError
from amdb.errors import WorkerCrashedError as WorkerCrashedError
from amdb.errors import WorkerStartError as WorkerStartError
from amdb.history import Break as Break
from amdb.history import Snapshot as Snapshot
from amdb.history import Version as Version
from amdb.history import VerifyReport as VerifyReport
from amdb.prefixed import PrefixedDB as PrefixedDB

SLOT_COUNT: Final = 16384
__version__: Final[str]
