"""One source for every number C, Cython and Python share (issue 13): the
headers define them, amdb.native.constants reads them when it is compiled,
and the modules that keep a copy (to import before the extensions are built)
must agree with it. Also checks the compiled numbers against the header
text, so that a renamed or renumbered enum cannot slip past."""
import os
import re

import amdb
from amdb import errors, history, options, storage
from amdb._worker import FAULT_ACTIONS, FAULT_POINTS
from amdb.native import constants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _header_enum(path, prefix):
    """{NAME: value} of `prefix`NAME = value entries in a C header."""
    text = open(os.path.join(ROOT, path)).read()
    return {m.group(1): int(m.group(2)) for m in re.finditer(rf"\b{prefix}([A-Z_0-9]+)\s*=\s*(\d+)", text)}


def test_status_numbers_agree():
    assert constants.STATUS == {name[len("STATUS_"):]: getattr(errors, name)
                                for name in dir(errors) if name.startswith("STATUS_")}
    assert _header_enum("amdb/shm/layout.h", "AMDB_STATUS_") == constants.STATUS
    # Every failure status maps to an exception class with its own code
    # (TIMEOUT never leaves native code: a wait that timed out checks liveness).
    for name, number in constants.STATUS.items():
        if number and name != "TIMEOUT":
            try:
                errors.raise_for_status(number)
            except errors.Error as exc:
                assert exc.code != f"status_{number}", name


def test_slot_count_worker_limit_and_layout_version_agree():
    assert amdb.SLOT_COUNT == storage.SLOT_COUNT == constants.SLOT_COUNT == 16384
    assert options.MAX_WORKERS == constants.MAX_WORKERS
    assert storage.LAYOUT_VERSION == constants.LAYOUT_VERSION
    text = open(os.path.join(ROOT, "amdb/shm/layout.h")).read()
    assert int(re.search(r"#define AMDB_SLOT_COUNT (\d+)", text).group(1)) == constants.SLOT_COUNT
    assert int(re.search(r"#define AMDB_MAX_WORKERS (\d+)", text).group(1)) == constants.MAX_WORKERS


def test_states_and_ops_agree_with_the_header():
    workers = _header_enum("amdb/shm/layout.h", "AMDB_WORKER_")
    assert {workers[name.upper()]: name for name in ("starting", "ready", "stopped", "failed")} \
        == constants.WORKER_STATES
    compact = _header_enum("amdb/shm/layout.h", "AMDB_COMPACT_")
    assert {compact[name.upper()]: name for name in ("idle", "building", "switching")} == constants.COMPACT_STATES
    ops = _header_enum("amdb/shm/layout.h", "AMDB_OP_")
    assert {ops[op]: name for op, name in (("CHUNK", "chunk"), ("ABORT", "abort"), ("COMMIT", "commit"),
                                            ("CHECKPOINT", "checkpoint"), ("COMPACT", "compaction"))} \
        == constants.RECORD_OPS


def test_fault_points_and_actions_agree():
    assert FAULT_POINTS is constants.FAULT_POINTS and FAULT_ACTIONS is constants.FAULT_ACTIONS
    points = _header_enum("amdb/native/faults.h", "AMDB_FAULT_")
    assert {name: points[name.upper()] for name in FAULT_POINTS} == FAULT_POINTS
    assert {name: points[name.upper()] for name in FAULT_ACTIONS} == FAULT_ACTIONS


def test_break_kinds_are_the_documented_ones():
    text = open(os.path.join(ROOT, "amdb/native/verify.pxd")).read()
    numbers = {m.group(1).lower(): int(m.group(2)) for m in re.finditer(r"BREAK_([A-Z_]+) = (\d+)", text)}
    assert {numbers[name]: name for name in numbers} == constants.BREAK_KINDS
    documented = re.search(r"kind: str\s+#(.*)", open(history.__file__).read()).group(1)
    assert set(re.findall(r'"(\w+)"', documented)) == set(constants.BREAK_KINDS.values())


def test_log_and_checkpoint_formats_agree_with_wal_h():
    text = open(os.path.join(ROOT, "amdb/native/wal.h")).read()
    assert int(re.search(r"#define AMDB_LOG_MAGIC (0x[0-9a-f]+)", text).group(1), 16) == storage.LOG_MAGIC
    assert int(re.search(r"#define AMDB_CHECKPOINT_MAGIC (0x[0-9a-f]+)", text).group(1), 16) \
        == storage.CHECKPOINT_MAGIC == 0x54504B4342444D41
    kinds = _header_enum("amdb/native/wal.h", "AMDB_LOG_")
    assert (storage.LOG_CHUNK, storage.LOG_COMMIT, storage.LOG_ABORT) == (kinds["CHUNK"], kinds["COMMIT"],
                                                                         kinds["ABORT"])
    assert storage.SYNC_MODES == {"none": 0, "batch": 1, "interval": 2}
