#!/usr/bin/env python3
"""Fuzz the readers of untrusted bytes: the worker's log replay (frame parser
+ ring record decoder + apply, native), the owner's log scanner, and the
checkpoint and manifest readers (amdb/storage.py).

    python tools/fuzz_logs.py --target framed --runs 100000     # atheris (pip install atheris)
    python tools/fuzz_logs.py --target all --runs 2000          # what `make test` runs, bounded

Targets (each a function of one bytes input; `check_*` raise AssertionError
on a wrong answer; a crash is a crash):
  raw      the bytes as a log segment: replay and scan must agree and not crash
  framed   the bytes cut into frames WITH valid checksums, so the record
           decoder and apply see arbitrary records: replay must refuse them
           (AMDB_STATUS_CORRUPT) or build an arena that verifies clean
  ckpt     the bytes as a checkpoint file: CorruptionError or a header
  manifest the bytes as a MANIFEST: CorruptionError or a manifest
Seeds: valid logs, a checkpoint and a manifest written by a real database.
"""
import argparse
import atexit
import os
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xxhash  # noqa: E402

from amdb import storage  # noqa: E402
from amdb.errors import CorruptionError  # noqa: E402
from amdb.native.constants import STATUS  # noqa: E402  (amdb/shm/layout.h)

STATUS_OK, STATUS_ARENA_FULL, STATUS_CORRUPT, STATUS_NO_MEMORY = (STATUS[name] for name in (
    "OK", "ARENA_FULL", "CORRUPT", "NO_MEMORY"))
SCRATCH = tempfile.mkdtemp(prefix="amdb-fuzz-")
atexit.register(shutil.rmtree, SCRATCH, True)     # a scratch directory per process, gone at exit


def frame(kind, seq, payload):
    header = struct.pack("<IIQQQ", storage.LOG_MAGIC, kind, seq, len(payload),
                         xxhash.xxh64_intdigest(payload, seed=seq))
    return header + struct.pack("<Q", xxhash.xxh64_intdigest(header)) + payload


def frames_from(data):
    """Cut fuzz bytes into well-framed frames: per frame, 1 byte kind, 1 byte
    seq step, 2 bytes length, then that many payload bytes."""
    out, seq, pos = [], 1, 0
    while pos + 4 <= len(data):
        kind = 1 + data[pos] % 3
        seq += data[pos + 1] % 3          # seqs mostly grow, sometimes repeat
        length = int.from_bytes(data[pos + 2:pos + 4], "little")
        payload = data[pos + 4:pos + 4 + length]
        pos += 4 + length
        payload += bytes(-len(payload) % 8)          # the format keeps frames 8-byte aligned
        out.append(frame(kind, seq, payload))
    return b"".join(out)


def check_replay(segment):
    from amdb.native.worker.replay import fuzz_replay
    status, frames, breaks = fuzz_replay(segment)
    assert status in (STATUS_OK, STATUS_CORRUPT, STATUS_ARENA_FULL, STATUS_NO_MEMORY), status
    if status == STATUS_OK:
        assert breaks == 0, f"replay accepted the log but built an arena with {breaks} breaks"
    return status, frames


def check_raw(data):
    scan = storage.scan_log_bytes(data)
    assert 0 <= scan.valid_bytes <= len(data)
    assert (scan.problem is None) == (scan.valid_bytes == len(data))
    check_replay(data)
    check_replay(data[:scan.valid_bytes])


def check_framed(data):
    check_replay(frames_from(data))


def check_ckpt(data):
    path = os.path.join(SCRATCH, storage.checkpoint_name(0, 1))
    with open(path, "wb") as f:
        f.write(data)
    try:
        info = storage.check_checkpoint(path, 0)
    except CorruptionError:
        return
    assert info.arena_used + storage.CHECKPOINT_HEADER.size <= len(data)


def check_manifest(data):
    os.makedirs(os.path.join(SCRATCH, "m"), exist_ok=True)
    with open(os.path.join(SCRATCH, "m", storage.MANIFEST), "wb") as f:
        f.write(data)
    try:
        manifest = storage.read_manifest(os.path.join(SCRATCH, "m"))
    except CorruptionError:
        return
    assert len(manifest["slot_owner"]) == storage.SLOT_COUNT


TARGETS = {"raw": check_raw, "framed": check_framed, "ckpt": check_ckpt, "manifest": check_manifest}


def seeds():
    """Real files from a small database: {target: [bytes]}."""
    import amdb
    directory = tempfile.mkdtemp(prefix="amdb-fuzz-seed-")
    try:
        path = os.path.join(directory, "db")
        with amdb.ParallelDB(path, workers=1, max_batch=16, ring_size=1 << 16, arena_size=8 << 20) as db:
            db.batch_put([(b"k%d" % i, b"v" * (i % 9)) for i in range(40)])
            db.batch_delete([b"k%d" % i for i in range(0, 40, 3)])
            try:
                db.batch_put([(b"x", b"y"), ("bad", b"z")])
            except amdb.InvalidTypeError:
                pass
            db.put(b"k1", b"again")
            logs = [open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path)) if n.endswith(".log")]
            db.checkpoint()
        ckpts = [open(os.path.join(path, n), "rb").read() for n in os.listdir(path) if n.endswith(".ckpt")]
        manifest = open(os.path.join(path, storage.MANIFEST), "rb").read()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    raw = [log for log in logs if log]
    return {"raw": raw, "framed": [b"\x00\x00" + len(x).to_bytes(2, "little") + x for x in raw[:1]],
            "ckpt": ckpts, "manifest": [manifest]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="all", choices=["all"] + list(TARGETS))
    parser.add_argument("--runs", type=int, default=10000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import atheris
    corpus = seeds()
    targets = list(TARGETS) if args.target == "all" else [args.target]
    for name in targets:
        corpus_dir = os.path.join(SCRATCH, "corpus-" + name)
        os.makedirs(corpus_dir, exist_ok=True)
        for i, data in enumerate(corpus[name]):
            with open(os.path.join(corpus_dir, f"seed{i}"), "wb") as f:
                f.write(data)
        if len(targets) > 1:
            # libFuzzer runs once per process: one child per target.
            import subprocess
            code = subprocess.call([sys.executable, __file__, "--target", name, "--runs", str(args.runs),
                                    "--seed", str(args.seed)])
            if code:
                return code
            continue
        # Coverage of the Python readers (instrument_all would take every
        # loaded module, numpy included: slow); the Cython code is not instrumented.
        for fn in (storage.scan_log_bytes, storage.check_checkpoint, storage.read_manifest, frames_from,
                   check_raw, check_framed, check_ckpt, check_manifest, check_replay):
            atheris.instrument_func(fn)
        atheris.Setup([sys.argv[0], f"-runs={args.runs}", f"-seed={args.seed}", "-max_len=65536",
                       corpus_dir], TARGETS[name])
        print(f"fuzz_logs: target {name}, {args.runs} runs", flush=True)
        atheris.Fuzz()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
