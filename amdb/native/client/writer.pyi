"""Type stubs of amdb/native/client/writer.pyx (compiled): the public
``BatchResult`` only (``amdb.BatchResult``); the ring producer ``Writer`` is
internal to ParallelDB."""
from typing import Any


class BatchResult:
    """What a batch write did (``db.batch_put(...).results``, ``wb.result``)."""

    count: int
    first_seq: int
    last_seq: int
    chunks: int
    per_worker: list[int]
    key_digest: int

    def __init__(self, count: int, first_seq: int, last_seq: int, chunks: int, per_worker: list[int],
                 key_digest: int = 0) -> None: ...
    @property
    def seq(self) -> int: ...
    def as_dict(self) -> dict[str, Any]: ...


def __getattr__(name: str) -> Any: ...     # the internal Writer and helpers: untyped
