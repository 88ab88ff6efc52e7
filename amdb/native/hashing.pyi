"""Type stubs of amdb/native/hashing.pyx (compiled): XXH64, the hash slot of
a key, and the ledger's SHA-256."""
from collections.abc import Iterable
from typing import Final

from typing_extensions import Buffer

SLOTS: Final[int]            # 16384 hash slots (amdb.SLOT_COUNT)


def xxh64(data: Buffer, seed: int = 0) -> int: ...
def xxh64_stream(pieces: Iterable[Buffer], seed: int = 0) -> int: ...
def slot_of(key: Buffer) -> int: ...
def sha256(data: Buffer) -> bytes: ...
