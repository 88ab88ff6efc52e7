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
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_GetContext, PyCapsule_SetContext
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, int64_t, uint64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy
from posix.mman cimport (mmap, mremap, munmap, madvise, MAP_FAILED, MAP_PRIVATE, MAP_ANONYMOUS, PROT_READ,
                         PROT_WRITE, MADV_HUGEPAGE)
cimport numpy as cnp
from amdb.native.hashing cimport amdb_xxh64, SLOT_MASK

import numpy as np

cnp.import_array()

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


# ---- pack_pairs ---------------------------------------------------------------------------
#
# Safety property (db4f57c): every pair is checked and copied in the same step,
# from the same references, into memory the caller cannot reach; the result
# never aliases the caller's objects and no pair is read twice. Speed (issue
# 18): one pass, no Python call per item on the common path (a list or tuple of
# exact 2-tuples of bytes), and the bytes are written once, straight into the
# memory the returned arrays own.

cdef extern from "Python.h":
    # Borrowed references, no checks: each caller states what it REQUIRES.
    PyObject *list_item "PyList_GET_ITEM" (PyObject *lst, Py_ssize_t i)
    Py_ssize_t list_size "PyList_GET_SIZE" (PyObject *lst)
    PyObject *sequence_item "PySequence_Fast_GET_ITEM" (PyObject *seq, Py_ssize_t i)
    PyObject *tuple_item "PyTuple_GET_ITEM" (PyObject *tup, Py_ssize_t i)
    Py_ssize_t tuple_size "PyTuple_GET_SIZE" (PyObject *tup)
    bint tuple_check_exact "PyTuple_CheckExact" (PyObject *o)
    bint bytes_check "PyBytes_Check" (PyObject *o)
    const char *bytes_data "PyBytes_AS_STRING" (PyObject *o)
    Py_ssize_t bytes_size "PyBytes_GET_SIZE" (PyObject *o)


cdef extern from "<sys/mman.h>" nogil:
    enum: MREMAP_MAYMOVE


cdef enum:
    PAGE = 4096
    MAPPED_BUFFER = 4 << 20         # from here on a buffer is a mapping of its own (see OutBuffer)


cdef struct OutBuffer:
    # The bytes of one output array, handed to it at the end (out_to_array).
    # A small buffer is malloc'ed. A large one is an anonymous mapping of its
    # own, advised to use transparent huge pages (with 4 KiB pages, faulting
    # the fresh pages in cost more than the copy: 11 against 27 M keys/s for
    # 100-byte values), and grown by mremap: its pages are moved, not copied,
    # and pages nothing wrote to yet cost nothing. (realloc cannot do that with
    # advised memory: the advice splits malloc's mapping in two, so realloc's
    # mremap fails and it copies everything.)
    char *data
    size_t used
    size_t capacity
    bint mapped


cdef int out_reserve(OutBuffer *b, size_t capacity) except -1:
    """Make b hold at least `capacity` bytes, keeping its contents."""
    cdef void *grown
    if capacity < MAPPED_BUFFER:
        grown = realloc(b.data, capacity if capacity else 1)
        if grown == NULL:
            raise MemoryError(f"pack_pairs: cannot hold {capacity} bytes")
    else:
        capacity = (capacity + PAGE - 1) & ~(<size_t>PAGE - 1)
        if b.mapped:
            grown = mremap(b.data, b.capacity, capacity, MREMAP_MAYMOVE)
        else:
            grown = mmap(NULL, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if grown == MAP_FAILED:
            raise MemoryError(f"pack_pairs: cannot map {capacity} bytes")
        madvise(grown, capacity, MADV_HUGEPAGE)         # a hint: no matter if it is refused
        if not b.mapped:
            if b.used:
                memcpy(grown, b.data, b.used)
            free(b.data)
            b.mapped = True
    b.data = <char *>grown
    b.capacity = capacity
    return 0


cdef void out_release(OutBuffer *b) noexcept:
    if b.mapped:
        munmap(b.data, b.capacity)
    else:
        free(b.data)
    b.data = NULL


cdef inline int out_append(OutBuffer *b, const char *src, size_t n) except -1:
    """Copy n bytes to the end of b (at least doubling it when full)."""
    if n > b.capacity - b.used:
        out_reserve(b, b.capacity * 2 if b.capacity * 2 > b.used + n else b.used + n)
    memcpy(b.data + b.used, src, n)
    b.used += n
    return 0


cdef void free_capsule(object capsule) noexcept:
    free(PyCapsule_GetPointer(capsule, NULL))


cdef void unmap_capsule(object capsule) noexcept:
    munmap(PyCapsule_GetPointer(capsule, NULL), <size_t>PyCapsule_GetContext(capsule))


cdef object out_to_array(OutBuffer *b):
    """A uint8 array of b's bytes that owns b's memory (no copy); b holds
    nothing afterwards."""
    cdef void *data
    cdef size_t keep
    cdef cnp.npy_intp size = <cnp.npy_intp>b.used
    if b.data == NULL:              # nothing was reserved (no items)
        out_reserve(b, 0)
    if b.mapped:                    # give the slack back (shrinking never moves a mapping)
        keep = (b.used + PAGE - 1) & ~(<size_t>PAGE - 1)
        if keep < b.capacity and mremap(b.data, b.capacity, keep if keep else PAGE, 0) != MAP_FAILED:
            b.capacity = keep if keep else PAGE
        owner = PyCapsule_New(b.data, NULL, unmap_capsule)
        PyCapsule_SetContext(owner, <void *>b.capacity)
    else:
        if b.used < b.capacity:
            data = realloc(b.data, b.used if b.used else 1)
            if data != NULL:
                b.data = <char *>data
                b.capacity = b.used
        owner = PyCapsule_New(b.data, NULL, free_capsule)
    data = b.data
    b.data = NULL                   # the capsule lets go of it now
    array = cnp.PyArray_SimpleNewFromData(1, &size, cnp.NPY_UINT8, data)
    cnp.set_array_base(array, owner)
    return array


cdef struct Packer:
    int64_t *key_offsets            # n + 1 entries
    int64_t *value_offsets          # n + 1 entries
    uint16_t *slots                 # n entries
    Py_ssize_t max_key_size
    Py_ssize_t max_value_size
    OutBuffer keys
    OutBuffer values


cdef int refuse_pair(Py_ssize_t i, PyObject *key_ref, PyObject *value_ref, Py_ssize_t max_key_size,
                     Py_ssize_t max_value_size) except -1:
    """Raise the error pair i deserves (the fast path's checks failed)."""
    cdef object key = <object>key_ref, value = <object>value_ref    # owned: isinstance may run code
    if not PyBytes_Check(key) or not PyBytes_Check(value):
        if isinstance(key, str) or isinstance(value, str):
            raise InvalidTypeError(f"item {i}: keys and values must be bytes, not str",
                                   hint="encode them, e.g. key.encode('utf-8')")
        raise InvalidTypeError(f"item {i}: keys and values must be bytes",
                               hint="convert bytearray/memoryview with bytes(x)")
    if PyBytes_GET_SIZE(key) > max_key_size:
        raise KeyTooLargeError(f"key {i} has {PyBytes_GET_SIZE(key)} bytes, more than max_key_size={max_key_size}; "
                               f"nothing was written")
    raise ValueTooLargeError(f"value {i} has {PyBytes_GET_SIZE(value)} bytes, more than "
                             f"max_value_size={max_value_size}; nothing was written")


cdef inline int pack_pair(Packer *p, Py_ssize_t i, PyObject *key, PyObject *value) except -1:
    """Check pair i and copy it, both from these references. REQUIRES: key
    and value stay alive during the call (it runs no Python code unless it
    raises)."""
    cdef Py_ssize_t kl, vl
    if not bytes_check(key) or not bytes_check(value):
        return refuse_pair(i, key, value, p.max_key_size, p.max_value_size)
    kl = bytes_size(key)
    vl = bytes_size(value)
    if kl > p.max_key_size or vl > p.max_value_size:
        return refuse_pair(i, key, value, p.max_key_size, p.max_value_size)
    p.key_offsets[i] = <int64_t>p.keys.used
    p.value_offsets[i] = <int64_t>p.values.used
    p.slots[i] = <uint16_t>(amdb_xxh64(bytes_data(key), <size_t>kl, 0) & SLOT_MASK)
    out_append(&p.keys, bytes_data(key), <size_t>kl)
    out_append(&p.values, bytes_data(value), <size_t>vl)
    return 0


cdef Py_ssize_t pack_list_in_place(Packer *p, list pairs, Py_ssize_t n) except -1:
    """Pack pairs[0:n] straight from the caller's list; returns how many it
    packed: n, or less at the first item that is not an exact 2-tuple (reading
    it would run the caller's code: len(), iteration), or 0 when the list no
    longer has n items. It runs no Python code and releases nothing, so
    nothing can change the list, or free what it holds, while it reads."""
    cdef PyObject *lst = <PyObject *>pairs
    cdef PyObject *item
    cdef Py_ssize_t i
    if list_size(lst) != n:             # changed since n was taken (a finalizer, run by an allocation)
        return 0
    for i in range(n):
        item = list_item(lst, i)
        if not tuple_check_exact(item) or tuple_size(item) != 2:
            return i
        pack_pair(p, i, tuple_item(item, 0), tuple_item(item, 1))
    return n


cdef int pack_sequence(Packer *p, object sequence, Py_ssize_t n) except -1:
    """Pack sequence[0:n]. REQUIRES: sequence is an exact tuple, or a list of
    our own, with n items: the caller's code that reading an odd item runs
    cannot change it."""
    cdef PyObject *seq = <PyObject *>sequence
    cdef PyObject *item
    cdef Py_ssize_t i
    cdef tuple pair
    for i in range(n):
        item = sequence_item(seq, i)
        if tuple_check_exact(item) and tuple_size(item) == 2:
            pack_pair(p, i, tuple_item(item, 0), tuple_item(item, 1))
        else:
            pair = as_pair(i, <object>item)
            pack_pair(p, i, tuple_item(<PyObject *>pair, 0), tuple_item(<PyObject *>pair, 1))
    return 0


cdef tuple as_pair(Py_ssize_t i, object item):
    """An exact 2-tuple of a 2-item tuple or list (subclasses too), or raise."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise InvalidArgumentError(f"item {i} is not a (key, value) pair",
                                   hint="pass an iterable of 2-tuples, e.g. zip(keys, values)")
    pair = tuple(item)
    if PyTuple_GET_SIZE(pair) != 2:     # its len() and its iteration disagree
        raise InvalidArgumentError(f"item {i} is not a (key, value) pair: len() gave 2, iterating it "
                                   f"{PyTuple_GET_SIZE(pair)} items",
                                   hint="pass an iterable of 2-tuples, e.g. zip(keys, values)")
    return pair


cdef int packer_start(Packer *p, Py_ssize_t n, object key_offsets, object value_offsets, object slots) except -1:
    """Point p at fresh output arrays for n items and empty buffers."""
    p.key_offsets = <int64_t *>cnp.PyArray_DATA(key_offsets)
    p.value_offsets = <int64_t *>cnp.PyArray_DATA(value_offsets)
    p.slots = <uint16_t *>cnp.PyArray_DATA(slots)
    p.keys.used = p.values.used = 0
    if p.keys.capacity < <size_t>n * 16:
        out_reserve(&p.keys, <size_t>n * 16)
    if p.values.capacity < <size_t>n * 64:
        out_reserve(&p.values, <size_t>n * 64)
    return 0


def pack_pairs(items, Py_ssize_t max_key_size, Py_ssize_t max_value_size):
    """One pass over (key, value) pairs of bytes: (keys, key_offsets, values,
    value_offsets, slots) in the packed layout, slots as uint16. Checks
    types and sizes and raises before anything is sent anywhere.

    Each pair is checked and copied in the same step, from the same
    references, into memory the result owns (an item cannot change between
    its check and its copy, and the result shares nothing with the caller).
    A list of exact 2-tuples of bytes is read in place with no Python call
    per item; at the first item whose reading runs the caller's code (a list
    or a tuple subclass as a pair) it starts again from a private copy. A
    tuple is read as it is (nothing can change it); any other iterable is
    copied to a private list first."""
    cdef Packer p
    cdef Py_ssize_t n
    cdef bint in_place = type(items) is list
    if in_place or type(items) is tuple:
        sequence = items
    else:
        try:
            iterator = iter(items)
        except TypeError:
            raise InvalidTypeError(f"pack_pairs takes an iterable of (key, value) pairs, not {type(items).__name__}",
                                   hint="pass a list of 2-tuples of bytes") from None
        sequence = list(iterator)
    n = len(sequence)
    p.max_key_size = max_key_size
    p.max_value_size = max_value_size
    p.keys.data = p.values.data = NULL
    p.keys.capacity = p.values.capacity = 0
    p.keys.mapped = p.values.mapped = False
    try:
        key_offsets = np.empty(n + 1, dtype=np.int64)
        value_offsets = np.empty(n + 1, dtype=np.int64)
        slots = np.empty(n, dtype=np.uint16)
        packer_start(&p, n, key_offsets, value_offsets, slots)
        if not in_place:
            pack_sequence(&p, sequence, n)
        elif pack_list_in_place(&p, <list>sequence, n) != n:
            # Reading on runs the caller's code, which may change the list:
            # start again from a private copy of it, as it is now.
            sequence = list(items)
            if len(sequence) != n:
                n = len(sequence)
                key_offsets = np.empty(n + 1, dtype=np.int64)
                value_offsets = np.empty(n + 1, dtype=np.int64)
                slots = np.empty(n, dtype=np.uint16)
            packer_start(&p, n, key_offsets, value_offsets, slots)
            pack_sequence(&p, sequence, n)
        p.key_offsets[n] = <int64_t>p.keys.used
        p.value_offsets[n] = <int64_t>p.values.used
        keys = out_to_array(&p.keys)
        values = out_to_array(&p.values)
    finally:
        if p.keys.data != NULL:
            out_release(&p.keys)
        if p.values.data != NULL:
            out_release(&p.values)
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
