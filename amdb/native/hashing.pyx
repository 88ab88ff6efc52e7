# cython: language_level=3
"""XXH64 and the hash-slot function, exposed to Python for routing and tests."""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE

SLOTS = SLOT_COUNT


def xxh64(data, unsigned long long seed=0):
    """XXH64 of a bytes-like object; equal to ``xxhash.xxh64_intdigest(data, seed)``."""
    cdef Py_buffer view
    cdef uint64_t h
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            h = amdb_xxh64(view.buf, <size_t>view.len, seed)
    finally:
        PyBuffer_Release(&view)
    return h


def xxh64_stream(pieces, unsigned long long seed=0):
    """XXH64 of the concatenation of ``pieces``, fed through the streaming state."""
    cdef amdb_xxh64_state state
    cdef Py_buffer view
    amdb_xxh64_reset(&state, seed)
    for piece in pieces:
        PyObject_GetBuffer(piece, &view, PyBUF_SIMPLE)
        amdb_xxh64_update(&state, view.buf, <size_t>view.len)
        PyBuffer_Release(&view)
    return amdb_xxh64_digest(&state)


def slot_of(key):
    """The hash slot (0..16383) that owns ``key``."""
    return xxh64(key) & SLOT_MASK


def sha256(data):
    """SHA-256 of a bytes-like object with the ledger's implementation
    (equal to hashlib.sha256(data).digest())."""
    cdef Py_buffer view
    cdef amdb_sha256 state
    cdef unsigned char out[32]
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            amdb_sha256_init(&state)
            amdb_sha256_update(&state, view.buf, <size_t>view.len)
            amdb_sha256_final(&state, out)
    finally:
        PyBuffer_Release(&view)
    return bytes(out[:32])
