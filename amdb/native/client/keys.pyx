# cython: language_level=3
"""Keys and values as the client takes them (see keys.pxd). Called by the
reader and the writer; no shared memory here."""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_CheckExact
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer, PyBUF_SIMPLE
from libc.stdint cimport uint8_t

from amdb.errors import InvalidArgumentError, InvalidTypeError


cdef int raise_not_bytes(object obj, str what) except -1:
    """Raise the error for a key/value that is not bytes-like."""
    if isinstance(obj, str):
        raise InvalidTypeError(f"{what} must be bytes-like, not str",
                               hint=f"encode it, e.g. {what}.encode('utf-8')")
    raise InvalidTypeError(f"{what} must be bytes-like (bytes, bytearray, memoryview), "
                           f"not {type(obj).__name__}",
                           hint="convert it to bytes first")


cdef int bytes_view_other(object obj, const uint8_t **data, Py_ssize_t *length,
                          Py_buffer *view, bint *held, str what) except -1:
    """bytes_view for anything but bytes: a buffer export, or the error."""
    held[0] = False
    if isinstance(obj, str) or not PyObject_CheckBuffer(obj):
        raise_not_bytes(obj, what)
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except (BufferError, ValueError) as exc:     # numpy and released memoryviews raise ValueError
        raise InvalidArgumentError(f"{what} must be a C-contiguous buffer: {exc}",
                                   hint="pass bytes(x) instead") from None
    held[0] = True
    data[0] = <const uint8_t *>view.buf
    length[0] = view.len
    return 0


cdef bytes as_key(obj, str what):
    """`obj` as an exact bytes object (a bytes subclass is copied: `bytes`-typed
    Cython variables refuse subclasses)."""
    if PyBytes_CheckExact(obj):
        return <bytes>obj
    cdef const uint8_t *p
    cdef Py_ssize_t n
    cdef Py_buffer view
    cdef bint held = False
    bytes_view(obj, &p, &n, &view, &held, what)
    try:
        return PyBytes_FromStringAndSize(<char *>p, n)
    finally:
        if held:
            PyBuffer_Release(&view)


def key_bytes(obj, str what="key"):
    """as_key for Python callers (amdb.prefixed): the same checks and errors
    as every other key argument."""
    return as_key(obj, what)


cdef object prefix_successor(bytes prefix):
    """Smallest key greater than every key starting with `prefix` (None: none)."""
    cdef bytearray b = bytearray(prefix)
    while len(b) and b[len(b) - 1] == 0xFF:
        b.pop()
    if not len(b):
        return None
    b[len(b) - 1] += 1
    return bytes(b)
