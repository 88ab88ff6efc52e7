"""Packed key buffers and key checks shared by the cluster's client and node.

The cluster moves keys and values in the *packed* layout of
``amdb.native.routing`` and ``ParallelDB.put_packed``: one ``uint8`` buffer
holding every item back to back and an ``int64`` array of ``n + 1`` offsets
(item ``i`` is ``buf[offsets[i]:offsets[i + 1]]``). The hashing, slot
computation and gathers are native (``amdb.native.routing``); this module holds
the small pure-Python helpers around them that have no native equivalent:
packing and splitting lists of bytes, the zero-copy fixed-width view, and the
conversion of bytes-like keys (with the cluster API's error messages).

Called by ``amdb.distributed.client`` (``DistributedCluster``: batches, scans,
key checks) and ``amdb.distributed.node`` (``AmDbNode``: writes and exports).
No Ray here.
"""
import numpy as np

from amdb.errors import InvalidTypeError
from amdb.native.routing import take_packed


def _split(buf, offsets):
    """List of bytes objects of a packed buffer."""
    data = buf.tobytes() if isinstance(buf, np.ndarray) else bytes(buf)
    offs = offsets.tolist()
    return [data[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]


def _pack(objs):
    """(uint8 buffer, int64 offsets) of a list of bytes."""
    n = len(objs)
    offsets = np.zeros(n + 1, dtype=np.int64)
    if n:
        np.cumsum(np.fromiter(map(len, objs), dtype=np.int64, count=n), out=offsets[1:])
    return np.frombuffer(b"".join(objs), dtype=np.uint8), offsets


def _fixed_width(buf, offsets):
    """The items of a packed buffer as a numpy S<w> array without copying, when every
    item has the same length w and none ends in a NUL byte (put_array strips trailing
    NULs); else None."""
    n = len(offsets) - 1
    if n == 0 or int(offsets[0]) != 0:
        return None
    width = int(offsets[1] - offsets[0])
    if width == 0 or int(offsets[-1]) != n * width or not (np.diff(offsets) == width).all():
        return None
    if (buf[width - 1:n * width:width] == 0).any():
        return None
    return buf[:n * width].view(f"S{width}")


def _take(buf, offsets, idx):
    """The items `idx` of a packed buffer: the buffer itself when idx is all
    of it in order (routing rounds pass sorted, unique indices), else a
    native gather."""
    if len(idx) == len(offsets) - 1:
        return buf, offsets
    return take_packed(buf, offsets, idx)


# ---- keys given by the caller ---------------------------------------------------------


def _key_bytes(key, what="key"):
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        raise InvalidTypeError(f"{what} must be bytes-like, not str",
                               hint=f"encode it, e.g. {what}.encode('utf-8')")
    try:
        return memoryview(key).cast("B").tobytes()
    except TypeError:
        raise InvalidTypeError(f"{what} must be bytes-like, not {type(key).__name__}",
                               hint="use bytes, bytearray, memoryview or a C-contiguous buffer") from None


def n_types_not_bytes(seq):
    """True if some element of ``seq`` is not exactly ``bytes`` (C-speed check)."""
    types = set(map(type, seq))
    return bool(types - {bytes})


def _bytes_list(seq, what):
    seq = list(seq)
    if n_types_not_bytes(seq):
        seq = [_key_bytes(x, what) for x in seq]
    return seq


def _bound(key, what):
    if isinstance(key, bytes):
        return key
    return _key_bytes(key, what)
