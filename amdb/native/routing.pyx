# cython: language_level=3
"""Hash-slot routing in bulk, for clients that spread keys over several
ParallelDBs (amdb.distributed): slots of many keys at once, and grouping of
(key, value) pairs per owner into packed buffers — no Python object per item.

Packed layout (used here and by ParallelDB.put_packed): one uint8 buffer
holding every item's bytes back to back, and an int64 offsets array of n + 1
entries; item i is buffer[offsets[i]:offsets[i + 1]].
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from libc.stdint cimport uint8_t, uint16_t, int64_t, uint64_t
from libc.string cimport memcpy
from amdb.native.hashing cimport amdb_xxh64, SLOT_MASK

import numpy as np

from amdb.errors import InvalidArgumentError, InvalidTypeError


def slots_of_packed(const uint8_t[::1] data, const int64_t[::1] offsets):
    """uint16 array of the hash slot of every packed key (GIL released)."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    if n < 0:
        raise InvalidArgumentError("offsets must have n + 1 entries")
    out_arr = np.empty(max(n, 0), dtype=np.uint16)
    cdef uint16_t[::1] out = out_arr
    cdef const uint8_t *base = &data[0] if data.shape[0] else <const uint8_t *>""
    with nogil:
        for i in range(n):
            out[i] = <uint16_t>(amdb_xxh64(base + offsets[i], <size_t>(offsets[i + 1] - offsets[i]), 0) & SLOT_MASK)
    return out_arr


def slots_of_keys(keys):
    """uint16 array of the hash slot of every bytes key in a list or tuple."""
    cdef Py_ssize_t n = len(keys), i
    out_arr = np.empty(n, dtype=np.uint16)
    cdef uint16_t[::1] out = out_arr
    for i in range(n):
        key = keys[i]
        if not PyBytes_Check(key):
            if isinstance(key, str):
                raise InvalidTypeError("keys must be bytes, not str", hint="encode it, e.g. key.encode('utf-8')")
            key = bytes(key)
        out[i] = <uint16_t>(amdb_xxh64(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key), 0) & SLOT_MASK)
    return out_arr


def group_pairs(items, const uint16_t[::1] slot_owner, int owners):
    """Split (key, value) pairs by the owner of their slot.

    Returns a list with one entry per owner: (keys, key_offsets, values,
    value_offsets) as numpy arrays in the packed layout, ready for
    ParallelDB.put_packed. Items keep their order within an owner.
    """
    cdef Py_ssize_t i, n
    cdef int owner
    cdef uint64_t h
    if slot_owner.shape[0] != SLOT_MASK + 1:
        raise InvalidArgumentError("slot_owner must have 16384 entries")
    pairs = items if isinstance(items, (list, tuple)) else list(items)
    n = len(pairs)
    owner_of = np.empty(n, dtype=np.int32)
    cdef int[::1] owner_view = owner_of
    key_bytes = np.zeros(owners, dtype=np.int64)
    value_bytes = np.zeros(owners, dtype=np.int64)
    counts = np.zeros(owners, dtype=np.int64)
    cdef int64_t[::1] kb = key_bytes, vb = value_bytes, cnt = counts
    for i in range(n):
        item = pairs[i]
        if type(item) is not tuple or len(<tuple>item) != 2:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InvalidArgumentError("items must be (key, value) pairs")
            item = tuple(item)
        key, value = item
        if not PyBytes_Check(key) or not PyBytes_Check(value):
            if isinstance(key, str) or isinstance(value, str):
                raise InvalidTypeError("keys and values must be bytes, not str",
                                       hint="encode them, e.g. key.encode('utf-8')")
            raise InvalidTypeError("keys and values must be bytes",
                                   hint="convert bytearray/memoryview with bytes(x)")
        h = amdb_xxh64(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key), 0)
        owner = slot_owner[h & SLOT_MASK]
        if owner < 0 or owner >= owners:
            raise InvalidArgumentError(f"slot table names owner {owner}, but there are {owners}")
        owner_view[i] = owner
        kb[owner] += PyBytes_GET_SIZE(key)
        vb[owner] += PyBytes_GET_SIZE(value)
        cnt[owner] += 1
    groups = []
    cdef list key_bufs = [], key_offs = [], value_bufs = [], value_offs = []
    for owner in range(owners):
        key_bufs.append(np.empty(kb[owner], dtype=np.uint8))
        value_bufs.append(np.empty(vb[owner], dtype=np.uint8))
        key_offs.append(np.empty(cnt[owner] + 1, dtype=np.int64))
        value_offs.append(np.empty(cnt[owner] + 1, dtype=np.int64))
    cdef int64_t[::1] kpos = np.zeros(owners, dtype=np.int64), vpos = np.zeros(owners, dtype=np.int64)
    cdef int64_t[::1] ipos = np.zeros(owners, dtype=np.int64)
    cdef uint8_t[::1] kbuf, vbuf
    cdef int64_t[::1] koff, voff
    cdef Py_ssize_t kl, vl
    for i in range(n):
        owner = owner_view[i]
        key, value = pairs[i]
        kbuf = key_bufs[owner]; vbuf = value_bufs[owner]
        koff = key_offs[owner]; voff = value_offs[owner]
        kl = PyBytes_GET_SIZE(key); vl = PyBytes_GET_SIZE(value)
        koff[ipos[owner]] = kpos[owner]
        voff[ipos[owner]] = vpos[owner]
        if kl:
            memcpy(&kbuf[kpos[owner]], PyBytes_AS_STRING(key), kl)
        if vl:
            memcpy(&vbuf[vpos[owner]], PyBytes_AS_STRING(value), vl)
        kpos[owner] += kl
        vpos[owner] += vl
        ipos[owner] += 1
    for owner in range(owners):
        koff = key_offs[owner]; voff = value_offs[owner]
        koff[cnt[owner]] = kpos[owner]
        voff[cnt[owner]] = vpos[owner]
        groups.append((key_bufs[owner], key_offs[owner], value_bufs[owner], value_offs[owner]))
    return groups
