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
from cpython.mem cimport PyMem_Malloc, PyMem_Calloc, PyMem_Free
from amdb.native.hashing cimport amdb_xxh64, SLOT_MASK

import numpy as np

from amdb.errors import InvalidArgumentError, InvalidTypeError, KeyTooLargeError, ValueTooLargeError


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
            raise InvalidTypeError("items must be 2-tuples for group_pairs",
                                   hint="pass a list of (key, value) tuples")
        key = (<tuple>item)[0]
        value = (<tuple>item)[1]
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
    # Second pass: copy into one packed buffer set per owner, through raw
    # pointers taken once per owner (no per-item memoryview).
    cdef list arrays = []
    cdef uint8_t **key_out = <uint8_t **>PyMem_Malloc(owners * sizeof(uint8_t *))
    cdef uint8_t **value_out = <uint8_t **>PyMem_Malloc(owners * sizeof(uint8_t *))
    cdef int64_t **key_off_out = <int64_t **>PyMem_Malloc(owners * sizeof(int64_t *))
    cdef int64_t **value_off_out = <int64_t **>PyMem_Malloc(owners * sizeof(int64_t *))
    cdef int64_t *kpos = <int64_t *>PyMem_Calloc(owners, sizeof(int64_t))
    cdef int64_t *vpos = <int64_t *>PyMem_Calloc(owners, sizeof(int64_t))
    cdef int64_t *ipos = <int64_t *>PyMem_Calloc(owners, sizeof(int64_t))
    cdef Py_ssize_t kl, vl
    cdef object key_obj, value_obj
    try:
        if not (key_out and value_out and key_off_out and value_off_out and kpos and vpos and ipos):
            raise MemoryError()
        for owner in range(owners):
            group = (np.empty(kb[owner], dtype=np.uint8), np.empty(cnt[owner] + 1, dtype=np.int64),
                     np.empty(vb[owner], dtype=np.uint8), np.empty(cnt[owner] + 1, dtype=np.int64))
            arrays.append(group)
            key_out[owner] = <uint8_t *><size_t>group[0].ctypes.data
            key_off_out[owner] = <int64_t *><size_t>group[1].ctypes.data
            value_out[owner] = <uint8_t *><size_t>group[2].ctypes.data
            value_off_out[owner] = <int64_t *><size_t>group[3].ctypes.data
        for i in range(n):
            owner = owner_view[i]
            item = pairs[i]
            key_obj = item[0]
            value_obj = item[1]
            kl = PyBytes_GET_SIZE(key_obj)
            vl = PyBytes_GET_SIZE(value_obj)
            key_off_out[owner][ipos[owner]] = kpos[owner]
            value_off_out[owner][ipos[owner]] = vpos[owner]
            if kl:
                memcpy(key_out[owner] + kpos[owner], PyBytes_AS_STRING(key_obj), kl)
            if vl:
                memcpy(value_out[owner] + vpos[owner], PyBytes_AS_STRING(value_obj), vl)
            kpos[owner] += kl
            vpos[owner] += vl
            ipos[owner] += 1
        for owner in range(owners):
            key_off_out[owner][cnt[owner]] = kpos[owner]
            value_off_out[owner][cnt[owner]] = vpos[owner]
    finally:
        PyMem_Free(key_out); PyMem_Free(value_out); PyMem_Free(key_off_out)
        PyMem_Free(value_off_out); PyMem_Free(kpos); PyMem_Free(vpos); PyMem_Free(ipos)
    groups = arrays
    return groups


def pack_pairs(items, Py_ssize_t max_key_size, Py_ssize_t max_value_size):
    """One pass over (key, value) pairs of bytes: (keys, key_offsets, values,
    value_offsets, slots) in the packed layout, slots as uint16. Checks
    types and sizes and raises before anything is sent anywhere."""
    cdef Py_ssize_t n, i, kl, vl, ktotal = 0, vtotal = 0
    pairs = items if isinstance(items, (list, tuple)) else list(items)
    n = len(pairs)
    key_offsets = np.empty(n + 1, dtype=np.int64)
    value_offsets = np.empty(n + 1, dtype=np.int64)
    slots = np.empty(n, dtype=np.uint16)
    cdef int64_t[::1] ko = key_offsets, vo = value_offsets
    cdef uint16_t[::1] sl = slots
    for i in range(n):
        item = pairs[i]
        if type(item) is not tuple or len(<tuple>item) != 2:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InvalidArgumentError(f"item {i} is not a (key, value) pair",
                                           hint="pass an iterable of 2-tuples, e.g. zip(keys, values)")
            item = tuple(item)
        key = (<tuple>item)[0]
        value = (<tuple>item)[1]
        if not PyBytes_Check(key) or not PyBytes_Check(value):
            if isinstance(key, str) or isinstance(value, str):
                raise InvalidTypeError(f"item {i}: keys and values must be bytes, not str",
                                       hint="encode them, e.g. key.encode('utf-8')")
            raise InvalidTypeError(f"item {i}: keys and values must be bytes",
                                   hint="convert bytearray/memoryview with bytes(x)")
        kl = PyBytes_GET_SIZE(key)
        vl = PyBytes_GET_SIZE(value)
        if kl > max_key_size:
            raise KeyTooLargeError(f"key {i} has {kl} bytes, more than max_key_size={max_key_size}; nothing was written")
        if vl > max_value_size:
            raise ValueTooLargeError(f"value {i} has {vl} bytes, more than max_value_size={max_value_size}; nothing was written")
        ko[i] = ktotal
        vo[i] = vtotal
        ktotal += kl
        vtotal += vl
        sl[i] = <uint16_t>(amdb_xxh64(PyBytes_AS_STRING(key), <size_t>kl, 0) & SLOT_MASK)
    ko[n] = ktotal
    vo[n] = vtotal
    keys = np.empty(ktotal, dtype=np.uint8)
    values = np.empty(vtotal, dtype=np.uint8)
    cdef uint8_t *kout = <uint8_t *><size_t>keys.ctypes.data
    cdef uint8_t *vout = <uint8_t *><size_t>values.ctypes.data
    for i in range(n):
        item = pairs[i]
        key = item[0]
        value = item[1]
        if ko[i + 1] > ko[i]:
            memcpy(kout + ko[i], PyBytes_AS_STRING(key), ko[i + 1] - ko[i])
        if vo[i + 1] > vo[i]:
            memcpy(vout + vo[i], PyBytes_AS_STRING(value), vo[i + 1] - vo[i])
    return keys, key_offsets, values, value_offsets, slots


def take_packed(const uint8_t[::1] data, const int64_t[::1] offsets, const int64_t[::1] index):
    """The items `index` (in that order) of a packed buffer, as a new packed
    (buffer, offsets) pair; copied with the GIL released."""
    cdef Py_ssize_t n = index.shape[0], i, j, total = 0, items = offsets.shape[0] - 1
    out_offsets = np.empty(n + 1, dtype=np.int64)
    cdef int64_t[::1] oo = out_offsets
    for i in range(n):
        j = index[i]
        if j < 0 or j >= items:
            raise InvalidArgumentError(f"take_packed: index {j} out of range")
        oo[i] = total
        total += offsets[j + 1] - offsets[j]
    oo[n] = total
    out = np.empty(total, dtype=np.uint8)
    cdef uint8_t *dst = <uint8_t *><size_t>out.ctypes.data
    cdef const uint8_t *src = &data[0] if data.shape[0] else <const uint8_t *>""
    with nogil:
        for i in range(n):
            j = index[i]
            if oo[i + 1] > oo[i]:
                memcpy(dst + oo[i], src + offsets[j], oo[i + 1] - oo[i])
    return out, out_offsets
