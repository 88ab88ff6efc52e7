# cython: language_level=3
"""Keys and values as the client takes them: any C-contiguous bytes-like
object, read in place (no copy). The bytes fast path is inline; everything
else (buffers, errors) is in keys.pyx."""
from cpython.bytes cimport PyBytes_Check, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t

cdef int bytes_view_other(object obj, const uint8_t **data, Py_ssize_t *length,
                          Py_buffer *view, bint *held, str what) except -1
cdef int raise_not_bytes(object obj, str what) except -1
cdef bytes as_key(obj, str what)
cdef object prefix_successor(bytes prefix)


cdef inline int bytes_view(object obj, const uint8_t **data, Py_ssize_t *length,
                           Py_buffer *view, bint *held, str what) except -1:
    """Point at the bytes of a bytes-like object (no copy). `held` says whether
    `view` must be released with PyBuffer_Release."""
    if PyBytes_Check(obj):
        held[0] = False
        data[0] = <const uint8_t *>PyBytes_AS_STRING(obj)
        length[0] = PyBytes_GET_SIZE(obj)
        return 0
    return bytes_view_other(obj, data, length, view, held, what)
