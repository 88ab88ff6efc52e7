"""Type stubs of amdb/native/routing.pyx (compiled): hash slots of many keys
and the packed layout of ParallelDB.put_packed (docs/API.md, "Routing
helpers"). A packed buffer is uint8 bytes back to back with int64 offsets of
n + 1 entries."""
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray
from typing_extensions import Buffer


def slots_of_packed(data: NDArray[np.uint8] | Buffer, offsets: NDArray[np.int64]) -> NDArray[np.uint16]: ...
def slots_of_keys(keys: Sequence[Buffer]) -> NDArray[np.uint16]: ...
def pack_pairs(items: Iterable[tuple[bytes, bytes]], max_key_size: int, max_value_size: int
               ) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.uint8], NDArray[np.int64],
                          NDArray[np.uint16]]: ...
def take_packed(data: NDArray[np.uint8] | Buffer, offsets: NDArray[np.int64], index: NDArray[np.int64]
                ) -> tuple[NDArray[np.uint8], NDArray[np.int64]]: ...
