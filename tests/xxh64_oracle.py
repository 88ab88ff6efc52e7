"""Test oracle: xxh64 and hash slots over packed key buffers in plain numpy.

A key belongs to slot ``xxh64(key, seed=0) % 16384`` (``amdb.SLOT_COUNT``),
exactly as :func:`amdb.native.hashing.slot_of` computes it for one key and
``amdb.native.routing.slots_of_packed`` for many. This module computes the same
hashes and slots independently of the native code, for tests to check it
against (the cluster routes with ``amdb.native.routing``; this numpy version
used to be amdb/_routing.py). Keys come in the *packed* layout used by the
cluster: one ``uint8`` buffer holding every key back to back and an ``int64``
array of ``n + 1`` offsets (key ``i`` is ``buf[offsets[i]:offsets[i+1]]``).

xxh64 is evaluated column by column over ``uint64`` arrays (numpy integer
arithmetic wraps modulo 2**64, which is what xxh64 needs). Keys are grouped by
length (a stable radix sort of the lengths) so that every group runs the same
sequence of rounds; 8-byte words are read at any byte offset from two aligned
loads and two shifts. When every key has the same length and the keys are
contiguous (the common case of fixed-width keys), the buffer is simply
reshaped and no gather is needed.

Itself checked bit for bit against ``amdb.native.hashing.xxh64`` in
tests/test_distributed.py.
"""
import numpy as np

from amdb import SLOT_COUNT
from amdb.errors import InvalidArgumentError

__all__ = ["xxh64_packed", "slots_of_packed", "pack_keys", "SLOT_MASK"]

SLOT_MASK = SLOT_COUNT - 1          # SLOT_COUNT is a power of two: % == &
assert SLOT_COUNT & SLOT_MASK == 0

_U64 = np.uint64
P1 = _U64(0x9E3779B185EBCA87)
P2 = _U64(0xC2B2AE3D27D4EB4F)
P3 = _U64(0x165667B19E3779F9)
P4 = _U64(0x85EBCA77C2B2AE63)
P5 = _U64(0x27D4EB2F165667C5)
_MASK64 = (1 << 64) - 1
_CHUNK = 1 << 16                    # keys per pass: keeps the temporaries in cache


def _rotl(x, r):
    return (x << _U64(r)) | (x >> _U64(64 - r))


def _round(acc, lane):
    acc = acc + lane * P2
    return _rotl(acc, 31) * P1


def _merge(h, v):
    h = h ^ _round(np.zeros_like(v), v)
    return h * P1 + P4


def _avalanche(h):
    h = h ^ (h >> _U64(33))
    h = h * P2
    h = h ^ (h >> _U64(29))
    h = h * P3
    return h ^ (h >> _U64(32))


class _Words:
    """Little-endian 8-, 4- and 1-byte reads at arbitrary byte offsets of a buffer."""

    def __init__(self, buf):
        padded = np.zeros(len(buf) + 16, dtype=np.uint8)
        padded[:len(buf)] = buf
        self.bytes = padded
        self.words = padded[:(len(padded) // 8) * 8].view("<u8")

    def u64(self, pos):
        q = pos >> 3
        r = (pos & 7).astype(np.uint64) << _U64(3)
        # a shift by 64 gives 0 in numpy, so r == 0 needs no special case
        return (self.words[q] >> r) | (self.words[q + 1] << (_U64(64) - r))

    def u32(self, pos):
        return self.u64(pos) & _U64(0xFFFFFFFF)

    def u8(self, pos):
        return self.bytes[pos].astype(np.uint64)


def _hash_group(length, word, byte, n, seed):
    """xxh64 of n keys of the same ``length``; word(p)/byte(p) read at key offset p."""
    p = 0
    if length >= 32:
        v1 = np.full(n, (seed + int(P1) + int(P2)) & _MASK64, dtype=np.uint64)
        v2 = np.full(n, (seed + int(P2)) & _MASK64, dtype=np.uint64)
        v3 = np.full(n, seed & _MASK64, dtype=np.uint64)
        v4 = np.full(n, (seed - int(P1)) & _MASK64, dtype=np.uint64)
        while p + 32 <= length:
            v1 = _round(v1, word(p))
            v2 = _round(v2, word(p + 8))
            v3 = _round(v3, word(p + 16))
            v4 = _round(v4, word(p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = np.full(n, (seed + int(P5)) & _MASK64, dtype=np.uint64)
    h = h + _U64(length)
    while p + 8 <= length:
        h = h ^ _round(np.zeros(n, dtype=np.uint64), word(p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= length:
        h = h ^ ((word(p) & _U64(0xFFFFFFFF)) * P1)
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < length:
        h = h ^ (byte(p) * P5)
        h = _rotl(h, 11) * P1
        p += 1
    return _avalanche(h)


def _as_u8(buf):
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8 or buf.ndim != 1:
            buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        return buf
    return np.frombuffer(buf, dtype=np.uint8)


def xxh64_packed(buf, offsets, seed=0):
    """xxh64 of every key of a packed buffer, as a ``uint64`` array of n entries."""
    buf = _as_u8(buf)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    if n < 0:
        raise InvalidArgumentError("offsets must have n + 1 entries")
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    lengths = np.diff(offsets)
    if lengths.size and lengths.min() < 0:
        raise InvalidArgumentError("offsets must not decrease")
    first = int(lengths[0])
    uniform = bool((lengths == first).all()) and int(offsets[0]) == 0 and int(offsets[-1]) == n * first
    if uniform:
        if first == 0:
            out[:] = _hash_group(0, None, None, n, seed)
            return out
        matrix = buf[:n * first].reshape(n, first)
        width = ((first + 7) // 8) * 8 + 8
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            block = np.zeros((hi - lo, width), dtype=np.uint8)
            block[:, :first] = matrix[lo:hi]

            def word(p, block=block):
                return np.ascontiguousarray(block[:, p:p + 8]).view("<u8").reshape(-1)

            def byte(p, block=block):
                return block[:, p].astype(np.uint64)

            out[lo:hi] = _hash_group(first, word, byte, hi - lo, seed)
        return out
    reader = _Words(buf)
    small = lengths.max() < 65536
    order = np.argsort(lengths.astype(np.uint16 if small else np.int64), kind="stable")
    sorted_lengths = lengths[order]
    bounds = np.flatnonzero(np.diff(sorted_lengths)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [n]))
    for s, e in zip(starts.tolist(), ends.tolist()):
        length = int(sorted_lengths[s])
        for lo in range(s, e, _CHUNK):
            hi = min(e, lo + _CHUNK)
            idx = order[lo:hi]
            base = offsets[idx]
            out[idx] = _hash_group(length, lambda p, base=base: reader.u64(base + p),
                                   lambda p, base=base: reader.u8(base + p), hi - lo, seed)
    return out


def slots_of_packed(buf, offsets):
    """Slot (``xxh64(key) % SLOT_COUNT``) of every key of a packed buffer, as uint16."""
    return (xxh64_packed(buf, offsets) & _U64(SLOT_MASK)).astype(np.uint16)


def pack_keys(keys):
    """(uint8 buffer, int64 offsets of n + 1 entries, list of bytes) for a sequence of
    bytes-like keys."""
    keys = [k if isinstance(k, bytes) else bytes(k) for k in keys]
    n = len(keys)
    offsets = np.zeros(n + 1, dtype=np.int64)
    if n:
        np.cumsum(np.fromiter(map(len, keys), dtype=np.int64, count=n), out=offsets[1:])
    buf = np.frombuffer(b"".join(keys), dtype=np.uint8)
    return buf, offsets, keys
