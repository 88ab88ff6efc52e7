"""Fuzzing the readers of untrusted bytes (tools/fuzz_logs.py): the worker's
log replay — frame parser, ring record decoder, apply — and the owner's log,
checkpoint and manifest readers. Hypothesis builds well-framed logs of
arbitrary records (valid checksums, hostile contents); atheris runs the
coverage-guided harness for a bounded number of inputs per target."""
import importlib.util
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import fuzz_logs  # noqa: E402

EXAMPLES = int(os.environ.get("AMDB_FUZZ_LOG_EXAMPLES", "150"))
COUNTS = {"cases": 0, "refused": 0}

record = st.tuples(
    st.sampled_from([1, 1, 1, 2, 5, 0, 7]),               # op: put, delete, wrap, junk
    st.binary(max_size=24),                                 # key
    st.binary(max_size=40),                                 # value
    st.integers(0, 3),                                      # 0: honest lengths, else lie
    st.integers(0, 2 ** 32 - 1),                            # the lie
)


def record_bytes(op, key, value, lie, number):
    key_len, value_len = len(key), len(value)
    if lie == 1:
        key_len = number
    elif lie == 2:
        value_len = number
    body = struct.pack("<IIIIQ", op, key_len, value_len, 0, number) + key + value
    return body + bytes(-len(body) % 8)


chunk = st.tuples(st.integers(0, 3), st.integers(0, 2), st.lists(record, max_size=12),
                  st.integers(-2, 2))                         # flags, seq step, records, count error
frame_kind = st.one_of(chunk, st.tuples(st.just("commit"), st.integers(0, 4)), st.just("abort"))


def build(frames):
    out, seq = [], 1
    for item in frames:
        if item == "abort":
            out.append(fuzz_logs.frame(3, seq, b""))
        elif item[0] == "commit":
            out.append(fuzz_logs.frame(2, seq, struct.pack("<Q", item[1])))
        else:
            flags, step, records, count_error = item
            seq += step
            body = b"".join(record_bytes(*r) for r in records)
            meta = struct.pack("<QQII", 1, max(0, len(records) + count_error), flags, 0)
            out.append(fuzz_logs.frame(1, seq, meta + body))
    return b"".join(out)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_kind, max_size=10))
def test_well_framed_hostile_records_are_refused_or_verify_clean(frames):
    status, _ = fuzz_logs.check_replay(build(frames))
    COUNTS["cases"] += 1
    COUNTS["refused"] += status != fuzz_logs.STATUS_OK


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_as_log_checkpoint_and_manifest(data):
    for check in (fuzz_logs.check_raw, fuzz_logs.check_framed, fuzz_logs.check_ckpt, fuzz_logs.check_manifest):
        check(data)
    COUNTS["cases"] += 4


def test_honest_log_replays_and_verifies():
    seeds = fuzz_logs.seeds()
    for log in seeds["raw"]:
        status, frames = fuzz_logs.check_replay(log)
        assert status == fuzz_logs.STATUS_OK and frames == len(fuzz_logs.storage.scan_log_bytes(log).frames)
        # Every cut of a real log: refused at the cut, never a crash.
        for cut in range(0, len(log), max(1, len(log) // 50)):
            fuzz_logs.check_raw(log[:cut])
    for ckpt in seeds["ckpt"]:
        fuzz_logs.check_ckpt(ckpt)
        damaged = bytearray(ckpt)
        damaged[len(damaged) // 2] ^= 1
        with pytest.raises(fuzz_logs.CorruptionError):
            path = os.path.join(fuzz_logs.SCRATCH, "c.ckpt")
            with open(path, "wb") as f:
                f.write(bytes(damaged))
            fuzz_logs.storage.check_checkpoint(path, 0)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="make asan-test: atheris's libFuzzer clashes with a preloaded ASan runtime; "
                           "the hypothesis fuzz tests above run the same checks under ASan")
def test_atheris_bounded_run(capsys):
    runs = int(os.environ.get("AMDB_ATHERIS_RUNS", "2000"))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fuzz_logs.py"), "--target", "all",
                          "--runs", str(runs)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    done = [line for line in out.stderr.splitlines() if "DONE" in line]
    assert len(done) == 4, out.stderr[-2000:]
    with capsys.disabled():
        print(f"\n[atheris] 4 targets x {runs} runs, no crash; "
              f"[hypothesis] {COUNTS['cases']} cases, {COUNTS['refused']} well-framed logs refused")
