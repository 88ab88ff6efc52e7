"""Type stubs of amdb/errors.py: the AmDb exception hierarchy."""
from typing import Final

__all__ = [
    "Error", "InvalidArgumentError", "InvalidTypeError", "KeyTooLargeError",
    "ValueTooLargeError", "ClosedError", "OwnerGoneError", "ArenaFullError", "WorkerCrashedError",
    "PoisonBatchError", "WorkerStartError", "NodeUnavailableError", "VersionReclaimedError",
    "ConditionFailedError", "StorageError", "LockedError", "CorruptionError", "raise_for_status",
]


class Error(Exception):
    code: str
    hint: str

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None: ...


class InvalidArgumentError(Error, ValueError): ...
class InvalidTypeError(Error, TypeError): ...
class KeyTooLargeError(InvalidArgumentError): ...
class ValueTooLargeError(InvalidArgumentError): ...
class ClosedError(Error): ...
class OwnerGoneError(ClosedError): ...
class ArenaFullError(Error): ...


class VersionReclaimedError(Error):
    key: bytes | None
    version: int | None
    at_seq: int | None
    oldest_version: int | None

    def __init__(self, message: str, *, key: bytes | None = None, version: int | None = None,
                 at_seq: int | None = None, oldest_version: int | None = None, hint: str | None = None,
                 code: str | None = None) -> None: ...


class ConditionFailedError(Error): ...


class WorkerCrashedError(Error):
    worker: int | None
    signal: int | None
    restarted: bool

    def __init__(self, message: str, *, worker: int | None = None, signal: int | None = None,
                 restarted: bool = False, hint: str | None = None, code: str | None = None) -> None: ...


class PoisonBatchError(WorkerCrashedError): ...


class NodeUnavailableError(Error):
    node_id: int | None

    def __init__(self, message: str, *, node_id: int | None = None, hint: str | None = None,
                 code: str | None = None) -> None: ...


class WorkerStartError(Error): ...
class StorageError(Error): ...
class LockedError(StorageError): ...
class CorruptionError(StorageError): ...


STATUS_OK: Final = 0
STATUS_ARENA_FULL: Final = 1
STATUS_SHM_FULL: Final = 2
STATUS_CORRUPT: Final = 3
STATUS_TIMEOUT: Final = 4
STATUS_NO_MEMORY: Final = 5
STATUS_IO_ERROR: Final = 6
STATUS_POISON: Final = 7
STATUS_CONDITION_FAILED: Final = 8
STATUS_NOT_COUNTER: Final = 9
STATUS_OVERFLOW: Final = 10
SHM_FULL_HINT: Final[str]


def shm_usage(directory: str = "/dev/shm") -> str: ...
def raise_for_status(status: int, context: str = "") -> None: ...
