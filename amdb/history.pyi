"""Type stubs of amdb/history.py: version records, snapshots, verification reports."""
from collections import abc
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar, overload

from typing_extensions import Buffer, Self

from amdb.db import ParallelDB
from amdb.native.client.iterator import Iterator
from amdb.views import MappingViews

_T = TypeVar("_T")


class Version(NamedTuple):
    version: int
    seq: int
    timestamp: float
    value: bytes | None
    deleted: bool
    hash: int
    prev_hash: int


class Break(NamedTuple):
    worker: int
    key: bytes | None
    version: int | None
    kind: str
    expected: int | None
    stored: int | None


class VerifyReport(NamedTuple):
    keys_checked: int
    versions_checked: int
    breaks: list[Break]
    breaks_total: int
    seconds: float

    @property
    def ok(self) -> bool: ...


class Snapshot(MappingViews, abc.Mapping[bytes, bytes]):
    """Reads as of one sequence number (db.snapshot()); a read-only Mapping."""

    seq: int

    def __init__(self, db: ParallelDB, seq: int,
                 pin: tuple[Callable[[int], None], Callable[[int], None]] | None = None) -> None: ...
    def close(self) -> None: ...
    def __del__(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def __getitem__(self, key: Buffer) -> bytes: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    @overload
    def get(self, key: Buffer, default: None = None) -> bytes | None: ...
    @overload
    def get(self, key: Buffer, default: bytes) -> bytes: ...
    @overload
    def get(self, key: Buffer, default: _T) -> bytes | _T: ...
    def batch_get(self, keys: abc.Iterable[Buffer]) -> list[bytes | None]: ...
    @overload
    def scan(self, start: Buffer | None = None, stop: Buffer | None = None, *, prefix: Buffer | None = None,
             reverse: bool = False, keys_only: Literal[False] = False) -> Iterator[tuple[bytes, bytes]]: ...
    @overload
    def scan(self, start: Buffer | None = None, stop: Buffer | None = None, *, prefix: Buffer | None = None,
             reverse: bool = False, keys_only: Literal[True]) -> Iterator[bytes]: ...
    @overload
    def scan(self, start: Buffer | None = None, stop: Buffer | None = None, *, prefix: Buffer | None = None,
             reverse: bool = False, keys_only: bool = False) -> Iterator[Any]: ...
    def history(self, key: Buffer, *, oldest_first: bool = False) -> list[Version]: ...
