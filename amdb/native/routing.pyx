# cython: language_level=3
"""Hash-slot routing in bulk, for clients that spread keys over several
ParallelDBs (amdb.distributed): slots of many keys at once, (key, value)
pairs packed into buffers with their slots, and per-owner gathers from such
buffers — no Python object per item.

Packed layout (used here and by ParallelDB.put_packed): one uint8 buffer
holding every item's bytes back to back, and an int64 offsets array of n + 1
entries; item i is buffer[offsets[i]:offsets[i + 1]].
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, int64_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
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


cdef struct GrowingBuffer:
    uint8_t *data
    size_t used
    size_t capacity


cdef int buffer_grow(GrowingBuffer *b, size_t n) except -1:
    """Make room for n more bytes in b, at least doubling its capacity."""
    cdef size_t capacity = b.capacity * 2 if b.capacity * 2 > b.used + n else b.used + n
    cdef uint8_t *grown = <uint8_t *>realloc(b.data, capacity if capacity else 1)
    if grown == NULL:
        raise MemoryError(f"pack_pairs: cannot hold {capacity} bytes")
    b.data = grown
    b.capacity = capacity
    return 0


cdef inline int buffer_append(GrowingBuffer *b, const char *src, size_t n) except -1:
    """Copy n bytes to the end of b."""
    if b.used + n > b.capacity:
        buffer_grow(b, n)
    memcpy(b.data + b.used, src, n)
    b.used += n
    return 0


cdef object buffer_to_array(GrowingBuffer *b):
    out = np.empty(b.used, dtype=np.uint8)
    if b.used:
        memcpy(<uint8_t *><size_t>out.ctypes.data, b.data, b.used)
    return out


cdef enum:
    PACKED_ALL = 0
    ODD_ITEM = 1        # an item that is not an exact 2-tuple, met while reading in place


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int pack_into(list pairs, Py_ssize_t n, bint in_place, Py_ssize_t max_key_size, Py_ssize_t max_value_size,
                   int64_t[::1] ko, int64_t[::1] vo, uint16_t[::1] sl,
                   GrowingBuffer *kbuf, GrowingBuffer *vbuf) except -1:
    """Check and copy pairs[0:n], each in one step from the same references.
    In place (the caller's own list), it runs no Python code, so nothing can
    change the list under it; it stops at the first item that would need
    some (ODD_ITEM): the caller starts again on a copy."""
    cdef Py_ssize_t i, kl, vl
    cdef object item, key, value
    if in_place and len(pairs) != n:      # changed since n was taken (a finalizer run by an allocation)
        return ODD_ITEM
    for i in range(n):
        item = pairs[i]
        if type(item) is not tuple or PyTuple_GET_SIZE(item) != 2:
            if in_place:
                return ODD_ITEM
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InvalidArgumentError(f"item {i} is not a (key, value) pair",
                                           hint="pass an iterable of 2-tuples, e.g. zip(keys, values)")
            item = tuple(item)
        key = <object>PyTuple_GET_ITEM(item, 0)
        value = <object>PyTuple_GET_ITEM(item, 1)
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
        ko[i] = <int64_t>kbuf.used
        vo[i] = <int64_t>vbuf.used
        sl[i] = <uint16_t>(amdb_xxh64(PyBytes_AS_STRING(key), <size_t>kl, 0) & SLOT_MASK)
        buffer_append(kbuf, PyBytes_AS_STRING(key), <size_t>kl)
        buffer_append(vbuf, PyBytes_AS_STRING(value), <size_t>vl)
    ko[n] = <int64_t>kbuf.used
    vo[n] = <int64_t>vbuf.used
    return PACKED_ALL


def pack_pairs(items, Py_ssize_t max_key_size, Py_ssize_t max_value_size):
    """One pass over (key, value) pairs of bytes: (keys, key_offsets, values,
    value_offsets, slots) in the packed layout, slots as uint16. Checks
    types and sizes and raises before anything is sent anywhere.

    Each pair is checked and copied in the same step, from the same
    references (an item cannot change between its check and its copy), with
    no Python call per item on the common path: a list of tuples of bytes is
    read in place; anything else from our own copy of it."""
    cdef Py_ssize_t n
    cdef list pairs
    cdef bint in_place = type(items) is list
    cdef GrowingBuffer kbuf, vbuf
    try:
        iterator = iter(items)
    except TypeError:
        raise InvalidTypeError(f"pack_pairs takes an iterable of (key, value) pairs, not {type(items).__name__}",
                               hint="pass a list of 2-tuples of bytes") from None
    pairs = <list>items if in_place else list(iterator)
    n = len(pairs)
    key_offsets = np.empty(n + 1, dtype=np.int64)
    value_offsets = np.empty(n + 1, dtype=np.int64)
    slots = np.empty(n, dtype=np.uint16)
    kbuf.used = vbuf.used = 0
    kbuf.capacity = <size_t>n * 16
    vbuf.capacity = <size_t>n * 64
    kbuf.data = <uint8_t *>malloc(kbuf.capacity if kbuf.capacity else 1)
    vbuf.data = <uint8_t *>malloc(vbuf.capacity if vbuf.capacity else 1)
    try:
        if kbuf.data == NULL or vbuf.data == NULL:
            raise MemoryError("pack_pairs: out of memory")
        if pack_into(pairs, n, in_place, max_key_size, max_value_size, key_offsets, value_offsets, slots,
                     &kbuf, &vbuf) == ODD_ITEM:
            # An item's len() or iteration may run the caller's code: from
            # here on, read our own copy (the list may have changed since n).
            pairs = list(items)
            n = len(pairs)
            key_offsets = np.empty(n + 1, dtype=np.int64)
            value_offsets = np.empty(n + 1, dtype=np.int64)
            slots = np.empty(n, dtype=np.uint16)
            kbuf.used = vbuf.used = 0
            pack_into(pairs, n, False, max_key_size, max_value_size, key_offsets, value_offsets, slots,
                      &kbuf, &vbuf)
        keys = buffer_to_array(&kbuf)
        values = buffer_to_array(&vbuf)
    finally:
        free(kbuf.data)
        free(vbuf.data)
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
