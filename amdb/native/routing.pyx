# cython: language_level=3
"""Hash-slot routing in bulk, for clients that spread keys over several
ParallelDBs (amdb.distributed): slots of many keys at once, (key, value)
pairs packed into buffers with their slots, and per-owner gathers from such
buffers — no Python object per item.

Packed layout (used here and by ParallelDB.put_packed): one uint8 buffer
holding every item's bytes back to back, and an int64 offsets array of n + 1
entries; item i is buffer[offsets[i]:offsets[i + 1]].
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from libc.stdint cimport uint8_t, uint16_t, int64_t, uint64_t
from libc.string cimport memcpy
from amdb.native.hashing cimport amdb_xxh64, SLOT_MASK

import numpy as np

from amdb.errors import InvalidArgumentError, InvalidTypeError, KeyTooLargeError, ValueTooLargeError


cdef int check_item(const int64_t[::1] offsets, Py_ssize_t i, Py_ssize_t size, str what) except -1:
    """REQUIRES 0 <= i < len(offsets) - 1. Item i lies inside a buffer of `size` bytes."""
    if offsets[i] < 0 or offsets[i] > offsets[i + 1] or offsets[i + 1] > size:
        raise InvalidArgumentError(f"{what}: offsets of item {i} are out of order or out of bounds "
                                   f"({offsets[i]}, {offsets[i + 1]}; the buffer has {size} bytes)")
    return 0


def slots_of_packed(const uint8_t[::1] data, const int64_t[::1] offsets):
    """uint16 array of the hash slot of every packed key (GIL released)."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    if n < 0:
        raise InvalidArgumentError("offsets must have n + 1 entries")
    for i in range(n):
        check_item(offsets, i, data.shape[0], "slots_of_packed")
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


def pack_pairs(items, Py_ssize_t max_key_size, Py_ssize_t max_value_size):
    """One pass over (key, value) pairs of bytes: (keys, key_offsets, values,
    value_offsets, slots) in the packed layout, slots as uint16. Checks
    types and sizes and raises before anything is sent anywhere."""
    cdef Py_ssize_t n, i, kl, vl, ktotal = 0, vtotal = 0
    try:
        iterator = iter(items)
    except TypeError:
        raise InvalidTypeError(f"pack_pairs takes an iterable of (key, value) pairs, not {type(items).__name__}",
                               hint="pass a list of 2-tuples of bytes") from None
    pairs = list(iterator)          # our own copy: the caller's code (an item's __len__) cannot change it
    n = len(pairs)
    key_offsets = np.empty(n + 1, dtype=np.int64)
    value_offsets = np.empty(n + 1, dtype=np.int64)
    slots = np.empty(n, dtype=np.uint16)
    cdef int64_t[::1] ko = key_offsets, vo = value_offsets
    cdef uint16_t[::1] sl = slots
    checked = [None] * n            # the pairs as checked: the copy pass reads these, not pairs[i] again
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
        checked[i] = (key, value)
    ko[n] = ktotal
    vo[n] = vtotal
    keys = np.empty(ktotal, dtype=np.uint8)
    values = np.empty(vtotal, dtype=np.uint8)
    cdef uint8_t *kout = <uint8_t *><size_t>keys.ctypes.data
    cdef uint8_t *vout = <uint8_t *><size_t>values.ctypes.data
    for i in range(n):
        key, value = <tuple>checked[i]
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
        check_item(offsets, j, data.shape[0], "take_packed")
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
