"""AmDb: an embedded key-value database for Python that uses every core."""

from amdb.errors import (  # noqa: F401
    ArenaFullError, ClosedError, ConditionFailedError, CorruptionError, Error, InvalidArgumentError,
    InvalidTypeError, KeyTooLargeError, LockedError, NodeUnavailableError, OwnerGoneError, StorageError,
    ValueTooLargeError,
    PoisonBatchError, VersionReclaimedError, WorkerCrashedError, WorkerStartError,
)

from amdb.history import Break, Snapshot, Version, VerifyReport  # noqa: F401

SLOT_COUNT = 16384

__version__ = "0.1.0"


def __getattr__(name):
    # ParallelDB imports the compiled extensions; import lazily so that
    # `import amdb.errors` works in a tree that is not built yet.
    if name in ("ParallelDB", "BatchOutcome", "BatchResult"):
        from amdb import db
        return getattr(db, name)
    if name == "backup":
        from amdb.db import backup
        return backup
    if name == "Handle":
        from amdb.attach import Handle
        return Handle
    if name == "PrefixedDB":
        from amdb.prefixed import PrefixedDB
        return PrefixedDB
    raise AttributeError(f"module 'amdb' has no attribute {name!r}")
