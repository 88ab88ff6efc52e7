# cython: language_level=3
"""Fault injection into the worker's apply path (crash tests; see faults.h).

Only amdb/native/worker/apply.pyx cimports this: the header's state is static,
one copy per extension module that includes it (loop.pyx calls through apply's
arm_fault and fault_check_* functions).
"""
from libc.stdint cimport uint64_t

cdef extern from "faults.h" nogil:
    # The checks placed in the apply path: one predictable branch while disarmed.
    void amdb_fault_check_after_records()
    void amdb_fault_check_mid_insert()
    void amdb_fault_check_mid_publish()
    void amdb_fault_check_mid_link()
    void amdb_fault_check_mid_compact()
    int amdb_fault_arm(int point, int action, uint64_t after, uint64_t worker_index, int owner_pid)


cdef inline int fault_arm_from_config(object fault, uint64_t worker_index, int owner_pid) except -1:
    """Arm this worker's fault. `fault` is None (no fault) or the ints
    (worker, point, action, after) that amdb/_worker.py parsed from AMDB_FAULT;
    worker -1 means every worker. Raises ValueError for an unknown point or
    action number."""
    cdef long worker
    if fault is None:
        return 0
    worker, point, action, after = fault
    if worker >= 0 and <uint64_t>worker != worker_index:
        return 0
    if amdb_fault_arm(point, action, after, worker_index, owner_pid) != 0:
        raise ValueError(f"unknown fault point {point} or action {action} (see amdb/native/faults.h)")
    return 0
