"""Durable databases (ParallelDB(path)): reopening, checkpoints, damaged files,
the directory lock, sync modes, a full disk, backups, the command line, and
kill -9 of the owner or a worker in the middle of acknowledged batches."""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import amdb
from amdb import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(workers=2, max_batch=64, ring_size=1 << 16, arena_size=64 << 20)


def random_batches(rng, model, count, keys=400):
    """Yield `count` random batches: ("put", items), ("delete", keys) or
    ("fail", items ending in a bad key). `model` is updated for a batch meant
    to succeed before it is yielded."""
    for _ in range(count):
        kind = rng.random()
        if kind < 0.15:
            dels = [b"k%04d" % rng.randrange(keys) for _ in range(rng.randrange(1, 40))]
            for k in dels:
                model.pop(k, None)
            yield "delete", dels
        elif kind < 0.25:
            items = [(b"k%04d" % rng.randrange(keys), b"doomed") for _ in range(rng.randrange(1, 300))]
            yield "fail", items + [("not bytes", b"x")]
        else:
            items = [(b"k%04d" % rng.randrange(keys), b"v%d" % rng.randrange(10 ** 6) * rng.randrange(0, 4))
                     for _ in range(rng.randrange(1, 300))]
            model.update(items)
            yield "put", items


def write_random(db, rng, model, count):
    for kind, payload in random_batches(rng, model, count):
        if kind == "delete":
            db.batch_delete(payload)
        elif kind == "put":
            db.batch_put(payload)
        else:
            with pytest.raises(amdb.InvalidTypeError):
                db.batch_put(payload)


def contents(db):
    return dict(db.scan())


def test_reopen_keeps_contents_history_and_digest(tmp_path):
    rng = random.Random(1)
    model = {}
    path = tmp_path / "db"
    with amdb.ParallelDB(path, **SMALL) as db:
        write_random(db, rng, model, 60)
        digest, history = db.digest(), db.history(b"k0001")
        assert contents(db) == model
    with amdb.ParallelDB(path, **SMALL) as db:
        assert contents(db) == model and len(db) == len(model)
        assert db.digest() == digest
        assert db.history(b"k0001") == history
        assert db.verify().ok
        recovery = db.stats()["durability"]["recovery"]
        assert recovery["recovered_seq"] == digest["seq"] and not recovery["logs_cut"]
        write_random(db, rng, model, 30)                # and it keeps going
        digest = db.digest()
    with amdb.ParallelDB(path, workers=None, max_batch=64, ring_size=1 << 16) as db:
        assert db.workers == 2                           # from the manifest
        assert contents(db) == model and db.digest() == digest


def test_checkpoints_reopen_and_remove_obsolete_files(tmp_path):
    rng = random.Random(2)
    model = {}
    path = tmp_path / "db"
    with amdb.ParallelDB(path, **SMALL) as db:
        for _ in range(4):
            write_random(db, rng, model, 10)
            seq = db.checkpoint()
            assert seq == db.digest()["seq"]
        write_random(db, rng, model, 10)
        digest = db.digest()
        assert db.stats()["durability"]["checkpoint_seq"] == seq
    names = os.listdir(path)
    for w in range(2):
        assert len([n for n in names if n.startswith(f"ckpt-{w:04d}-")]) == 2
    with amdb.ParallelDB(path, **SMALL) as db:
        assert contents(db) == model and db.digest() == digest and db.verify().ok
        plan = db.stats()["durability"]["recovery"]
        assert plan["frames_replayed"] > 0               # the writes after the last checkpoint


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    rng = random.Random(3)
    model = {}
    path = tmp_path / "db"
    with amdb.ParallelDB(path, **SMALL) as db:
        write_random(db, rng, model, 10)
        db.checkpoint()
        write_random(db, rng, model, 10)
        newest = db.checkpoint()
        write_random(db, rng, model, 5)
        digest = db.digest()
    victim = path / storage.checkpoint_name(0, newest)
    data = bytearray(victim.read_bytes())
    data[storage.CHECKPOINT_HEADER.size + len(data) // 3] ^= 0x40     # inside the arena bytes
    victim.write_bytes(bytes(data))
    with amdb.ParallelDB(path, **SMALL) as db:
        rejected = db.stats()["durability"]["recovery"]["checkpoints_rejected"]
        assert [r["file"] for r in rejected] == [victim.name] and "checksum" in rejected[0]["reason"]
        assert contents(db) == model and db.digest() == digest and db.verify().ok
    assert not victim.exists() and (path / (victim.name + ".rejected")).exists()


def test_no_usable_checkpoint_and_no_full_log_is_refused(tmp_path):
    path = tmp_path / "db"
    with amdb.ParallelDB(path, **SMALL) as db:
        db.batch_put([(b"k%d" % i, b"v") for i in range(100)])
        db.checkpoint()
        db.checkpoint()
        db.put(b"after", b"x")
    for name in os.listdir(path):
        if name.endswith(".ckpt") and name.startswith("ckpt-0000"):
            (path / name).write_bytes(b"garbage")
    with pytest.raises(amdb.CorruptionError) as info:
        amdb.ParallelDB(path, **SMALL)
    assert "would lose data" in str(info.value)


def committed_states(tmp_path, batches):
    """Write `batches` acknowledged batches; return the directory and the
    model after every seq (seq -> dict)."""
    rng = random.Random(4)
    model, states = {}, {0: {}}
    path = tmp_path / "db"
    with amdb.ParallelDB(path, **SMALL) as db:
        for kind, payload in random_batches(rng, model, batches):
            if kind == "fail":
                with pytest.raises(amdb.InvalidTypeError):
                    db.batch_put(payload)
                continue
            result = (db.batch_delete if kind == "delete" else db.batch_put)(payload).results
            states[db.digest()["seq"]] = dict(model)
            assert result.count == len(payload)
    return path, states


@pytest.mark.parametrize("damage", ["truncate", "flip", "zero-run"])
def test_damaged_logs_recover_a_whole_prefix_of_batches(tmp_path, damage):
    source, states = committed_states(tmp_path, 40)
    last = max(states)
    segments = sorted(n for n in os.listdir(source) if n.endswith(".log"))
    rng = random.Random(damage)
    cut_somewhere = 0
    for trial in range(8):
        path = tmp_path / f"trial{trial}"
        shutil.copytree(source, path)
        victim = path / rng.choice(segments)
        data = bytearray(victim.read_bytes())
        at = rng.randrange(len(data))
        if damage == "truncate":
            del data[at:]
        elif damage == "flip":
            data[at] ^= 1 << rng.randrange(8)
        else:
            data[at:at + 64] = bytes(len(data[at:at + 64]))
        victim.write_bytes(bytes(data))
        with amdb.ParallelDB(path, **SMALL) as db:              # never a crash
            recovery = db.stats()["durability"]["recovery"]
            seq = recovery["recovered_seq"]
            assert seq in states and seq <= last
            assert contents(db) == states[seq]                 # whole batches, a prefix of them
            assert db.verify().ok and db.digest()["seq"] == seq
            if seq < last:
                cut_somewhere += 1
                assert recovery["logs_cut"], "a lost batch must be reported"
            db.put(b"after-recovery", b"ok")                   # and it takes writes again
        with amdb.ParallelDB(path, **SMALL) as db:
            assert db.get(b"after-recovery") == b"ok" and db.verify().ok
    assert cut_somewhere >= 1


def test_lock_refuses_a_second_owner(tmp_path):
    path = tmp_path / "db"
    db = amdb.ParallelDB(path, workers=1)
    try:
        with pytest.raises(amdb.LockedError) as info:
            amdb.ParallelDB(path, workers=1)
        assert str(os.getpid()) in str(info.value)
        # Another process attaches to the owner instead (a client that writes).
        code = subprocess.run([sys.executable, "-c", (
            "import amdb, sys\n"
            "db = amdb.ParallelDB(sys.argv[1], workers=1)\nprint(db._client is not None)\n"), str(path)],
            cwd=ROOT, capture_output=True, text=True)
        assert code.returncode == 0 and code.stdout.strip() == "True", code.stderr
    finally:
        db.close()
    with amdb.ParallelDB(path, workers=1) as db:           # free again once closed
        assert db.get(b"x") is None


def test_reopening_with_another_worker_count_moves_only_changed_slots(tmp_path):
    path = tmp_path / "db"
    rng = random.Random(11)
    model = {}
    with amdb.ParallelDB(path, **SMALL) as db:
        write_random(db, rng, model, 30)
    tables = [storage.read_manifest(path)["slot_owner"]]
    for workers in (3, 1, 4, 2):
        with amdb.ParallelDB(path, workers=workers, max_batch=64, ring_size=1 << 16) as db:
            assert db.workers == workers
            assert contents(db) == model and len(db) == len(model) and db.verify().ok
            assert all(db.get(k) == v for k, v in list(model.items())[:50])
            write_random(db, rng, model, 5)
        manifest = storage.read_manifest(path)
        assert manifest["workers"] == workers and "sweep" not in manifest
        old, new = tables[-1], manifest["slot_owner"]
        moved = sum(a != b for a, b in zip(old, new))
        old_workers = max(old) + 1
        # Only what must move: the slots of workers that went, or an even share for new ones.
        must = sum(1 for w in old if w >= workers) if workers < old_workers else 16384 - sum(
            min(old.count(w), 16384 // workers + 1) for w in range(old_workers))
        assert moved <= must + workers, (old_workers, workers, moved, must)
        assert sorted(set(new)) == list(range(workers))
        assert max(new.count(w) for w in range(workers)) - min(new.count(w) for w in range(workers)) <= 1
        tables.append(new)
        assert not [n for n in os.listdir(path) if n.endswith((".log", ".ckpt"))
                    and int(n.split("-")[1]) >= workers]
    with amdb.ParallelDB(path) as db:
        assert db.workers == 2 and contents(db) == model


def test_interrupted_reshard_is_finished_or_undone_by_the_next_opening(tmp_path, monkeypatch):
    path = tmp_path / "db"
    model = {}
    with amdb.ParallelDB(path, **SMALL) as db:
        write_random(db, random.Random(12), model, 30)
    from amdb.supervisor import Supervisor
    real = Supervisor.checkpoint_locked

    def crash_after_copying(self, why):
        if why == "reshard":
            raise RuntimeError("simulated crash in the middle of a reshard")
        return real(self, why)
    monkeypatch.setattr(Supervisor, "checkpoint_locked", crash_after_copying)
    with pytest.raises(RuntimeError):
        amdb.ParallelDB(path, workers=3, max_batch=64, ring_size=1 << 16)
    monkeypatch.undo()
    assert storage.read_manifest(path)["sweep"] is True
    with amdb.ParallelDB(path, max_batch=64, ring_size=1 << 16) as db:    # the count it was left at
        assert contents(db) == model and db.verify().ok                  # copies swept: no duplicates
    with amdb.ParallelDB(path, workers=3, max_batch=64, ring_size=1 << 16) as db:
        assert contents(db) == model and db.verify().ok


def test_read_only_opening_cannot_change_the_worker_count(tmp_path):
    path = tmp_path / "db"
    with amdb.ParallelDB(path, workers=2) as db:
        db.put(b"a", b"b")
    with pytest.raises(amdb.InvalidArgumentError) as info:
        amdb.ParallelDB(path, workers=1, read_only=True)
    assert info.value.code == "workers_changed"
    with amdb.ParallelDB(path, read_only=True) as db:
        assert db.get(b"a") == b"b"


@pytest.mark.parametrize("sync", ["none", "batch", "interval"])
def test_sync_modes(tmp_path, sync):
    path = tmp_path / "db"
    with amdb.ParallelDB(path, workers=2, sync=sync, sync_interval_ms=5) as db:
        for i in range(20):
            db.batch_put([(b"k%d-%d" % (i, j), b"v") for j in range(50)])
        syncs = lambda: sum(w["log_syncs"] for w in db.stats()["workers"])   # noqa: E731
        if sync == "batch":
            assert syncs() >= 20                 # each worker in each batch
        elif sync == "interval":
            deadline = time.monotonic() + 10
            while syncs() == 0 and time.monotonic() < deadline:
                db.get(b"k0-0")
            assert syncs() > 0
        else:
            assert syncs() == 0
    with amdb.ParallelDB(path, workers=2) as db:
        assert len(db) == 20 * 50


def test_log_rolls_over_and_automatic_checkpoints(tmp_path):
    path = tmp_path / "db"
    model = {}
    with amdb.ParallelDB(path, workers=2, log_segment_bytes=1 << 16, checkpoint_bytes=None) as db:
        write_random(db, random.Random(5), model, 80)
        assert max(w["log_segment"] for w in db.stats()["workers"]) > 2
    with amdb.ParallelDB(path, workers=2, log_segment_bytes=1 << 16, checkpoint_bytes=1 << 17) as db:
        assert contents(db) == model
        rng = random.Random(6)
        for _ in range(40):                  # until a log outgrows a quarter of its arena
            write_random(db, rng, model, 150)
            # Checked before every write: a log never grows past the limit
            # (checkpoint_bytes or a quarter of its arena) by more than a batch.
            for w in db.stats()["workers"]:
                assert w["log_bytes"] < max(1 << 17, w["arena_used"] // 4) + (1 << 16), w
            if db.stats()["durability"]["checkpoint_seq"] > 0:
                break
        assert db.stats()["durability"]["checkpoint_seq"] > 0
    with amdb.ParallelDB(path, workers=2) as db:
        assert contents(db) == model and db.verify().ok


FULL_DISK_SCENARIO = r"""
import os, subprocess, sys, amdb
base = sys.argv[1]

def fill(db, model, prefix):
    try:
        for i in range(100000):
            items = [(b"%s%d-%d" % (prefix, i, j), b"x" * 100) for j in range(100)]
            db.batch_put(items)
            model.update(items)
    except amdb.StorageError as exc:
        return exc
    raise AssertionError("the disk never filled up")

# A full disk: a 1 MiB tmpfs.
full = os.path.join(base, "full")
model = {}
db = amdb.ParallelDB(full, workers=2, checkpoint_bytes=None)
exc = fill(db, model, b"k")
assert exc.code == "io_error", exc.code
assert len(model) > 0
assert dict(db.scan()) == model, "the failed batch left something behind"
assert db.get(b"k0-0") == b"x" * 100                       # reads go on
try:                                      # a small write may still fit: then it must last
    db.put(b"more", b"y")
    model[b"more"] = b"y"
except amdb.StorageError:
    pass
assert db.stats()["durability"]["log_errors"] > 0
db.close()
with amdb.ParallelDB(full, workers=2) as db:
    assert dict(db.scan()) == model and db.verify().ok

# A read-only disk: the database opens read-only, answers reads, refuses writes.
ro = os.path.join(base, "ro")
model = {(b"a%d" % i): b"v" for i in range(1000)}
with amdb.ParallelDB(ro, workers=2) as db:
    db.batch_put(list(model.items()))
    digest = db.digest()
subprocess.run(["mount", "-o", "remount,ro", ro], check=True)
try:
    amdb.ParallelDB(ro, workers=2)
    raise AssertionError("opened a read-only directory for writing")
except amdb.StorageError as exc:
    assert "not writable" in str(exc)
with amdb.ParallelDB(ro, read_only=True) as db:
    assert dict(db.scan()) == model and db.digest() == digest and db.verify().ok
    try:
        db.put(b"x", b"y")
        raise AssertionError("a read-only database took a write")
    except amdb.StorageError as exc:
        assert exc.code == "read_only"
subprocess.run(["mount", "-o", "remount,rw", ro], check=True)
with amdb.ParallelDB(ro, workers=2) as db:
    assert dict(db.scan()) == model and db.verify().ok
print("full-disk scenario ok")
"""


def test_full_and_read_only_disk_fail_writes_cleanly_and_lose_nothing(tmp_path):
    """Real ENOSPC and EROFS: two small tmpfs mounts in a private mount
    namespace (unshare: as root, or in an unprivileged user namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    for name in ("full", "ro"):
        (tmp_path / name).mkdir()
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    probe = subprocess.run(["unshare", *flags, "sh", "-c", f"mount -t tmpfs tmpfs {tmp_path}/full"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {probe.stderr.strip()}")
    script = (f"mount -t tmpfs -o size=1m tmpfs {tmp_path}/full && "
              f"mount -t tmpfs -o size=4m tmpfs {tmp_path}/ro && "
              f'exec {sys.executable} -c "$0" {tmp_path}')
    out = subprocess.run(["unshare", *flags, "sh", "-c", script, FULL_DISK_SCENARIO], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "full-disk scenario ok" in out.stdout, out.stdout + out.stderr


def test_backup_while_writing(tmp_path):
    path, dest = tmp_path / "db", tmp_path / "copy"
    rng = random.Random(7)
    model = {}
    with amdb.ParallelDB(path, **SMALL) as db:
        write_random(db, rng, model, 20)
        stop = threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                db.put(b"w%d" % i, b"x")
                i += 1
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            seq = db.backup(dest)
        finally:
            stop.set()
            thread.join()
        as_of = dict(db.scan(at_seq=seq))
        with pytest.raises(amdb.InvalidArgumentError):
            db.backup(dest)                             # exists already
    with amdb.ParallelDB(dest, **SMALL) as copy:
        assert copy.digest()["seq"] == seq
        assert contents(copy) == as_of and copy.verify().ok


def test_memory_only_has_no_checkpoint_or_backup():
    with amdb.ParallelDB(workers=1) as db:
        with pytest.raises(amdb.InvalidArgumentError) as info:
            db.checkpoint()
        assert info.value.code == "memory_only"
        with pytest.raises(amdb.InvalidArgumentError):
            db.backup("/tmp/nowhere")
        assert db.stats()["durability"] is None


def test_command_line_info_and_verify(tmp_path):
    path = tmp_path / "db"
    with amdb.ParallelDB(path, **SMALL) as db:
        db.batch_put([(b"k%d" % i, b"v") for i in range(500)])
        seq = db.digest()["seq"]
    run = lambda *a: subprocess.run([sys.executable, "-m", "amdb", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True)
    out = run("info", str(path), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["workers"] == 2 and report["recovered_seq"] == seq and report["client_channels"] == []
    out = run("info", str(path))
    assert out.returncode == 0 and f"up to seq {seq}" in out.stdout
    before = {(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir()}
    out = run("verify", str(path))
    assert out.returncode == 0 and "500 keys" in out.stdout and out.stdout.rstrip().endswith("ok")
    assert {(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir()} == before, \
        "verify changed the directory"
    out = run("info", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "not an AmDb database" in out.stderr


# ---- kill -9 ------------------------------------------------------------------------

BATCH_KEYS = 150

CHILD = r"""
import sys, amdb
path, start = sys.argv[1], int(sys.argv[2])
db = amdb.ParallelDB(path, workers=2, max_batch=32, ring_size=1 << 16)
print("open", flush=True)
if start >= 4:      # the delete half of batch start-1, had the last crash come between the halves
    db.batch_delete([b"b%06d:%03d" % (start - 4, j) for j in range(0, {keys}, 2)])
i = start
while True:
    items = [(b"b%06d:%03d" % (i, j), b"%d" % i) for j in range({keys})]
    items.append((b"last", b"%d" % i))
    db.batch_put(items)
    if i >= 3:
        db.batch_delete([b"b%06d:%03d" % (i - 3, j) for j in range(0, {keys}, 2)])
    print(i, flush=True)
    i += 1
""".replace("{keys}", str(BATCH_KEYS))


def expected_after(last):
    """The database after batches 0..last (each: a put batch, then the
    delete of every other key of batch last-3)."""
    out = {}
    for i in range(last + 1):
        for j in range(BATCH_KEYS):
            if not (i + 3 <= last and j % 2 == 0):
                out[b"b%06d:%03d" % (i, j)] = b"%d" % i
    if last >= 0:
        out[b"last"] = b"%d" % last
    return out


def check_recovered(db, acknowledged):
    """Every acknowledged batch whole, nothing of a later one, chains intact.
    Returns the last batch present."""
    last = int(db.get(b"last", b"-1"))
    assert last >= acknowledged, f"batch {acknowledged} was acknowledged but is gone"
    state = contents(db)
    # The put of batch `last` is in; its trailing delete may or may not be
    # (a batch of its own): both are whole-batch states.
    with_delete = expected_after(last)
    without = dict(with_delete)
    if last >= 3:
        for j in range(0, BATCH_KEYS, 2):
            without[b"b%06d:%03d" % (last - 3, j)] = b"%d" % (last - 3)
    assert state == with_delete or (state == without and last > acknowledged), \
        "a batch is present in part, or an acknowledged one is missing"
    assert db.verify().ok
    return last


def kill_owner_iterations(tmp_path, iterations, seed):
    path = tmp_path / "db"
    rng = random.Random(seed)
    start, kills = 0, 0
    for _ in range(iterations):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(start)], cwd=ROOT,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "open"
        acknowledged = start - 1
        wanted = rng.randrange(1, 8)
        for _ in range(wanted):
            acknowledged = int(child.stdout.readline())
        # Past the last acknowledgement, somewhere inside the next batches.
        deadline = time.monotonic() + rng.random() * 0.02
        while time.monotonic() < deadline:
            pass
        child.kill()
        child.wait()
        kills += 1
        with amdb.ParallelDB(path, workers=2, max_batch=32, ring_size=1 << 16) as db:
            last = check_recovered(db, acknowledged)
        start = last + 1
    return kills, start


def test_kill_9_owner_during_acknowledged_batches(tmp_path, capsys):
    iterations = int(os.environ.get("AMDB_CRASH_ITERATIONS", "20"))
    kills, batches = kill_owner_iterations(tmp_path, iterations, seed=8)
    with capsys.disabled():
        print(f"\n[kill -9 owner] {kills} kills, {batches} batches, every acknowledged batch recovered whole")
    assert kills == iterations and batches > iterations


@pytest.mark.slow
def test_kill_9_owner_soak(tmp_path, capsys):
    kills, batches = kill_owner_iterations(tmp_path, 200, seed=9)
    with capsys.disabled():
        print(f"\n[kill -9 owner soak] {kills} kills, {batches} batches")


def test_kill_9_worker_during_acknowledged_batches(tmp_path):
    # A worker killed at a random moment of a stream of batches is replaced;
    # the batch it hit fails whole (and is retried, as a user would), the
    # stream goes on, and reopening finds every acknowledged batch whole.
    path = tmp_path / "db"
    rng = random.Random(10)
    start = 0
    for _ in range(5):
        db = amdb.ParallelDB(path, workers=2, max_batch=32, ring_size=1 << 16)
        if start >= 4:      # as CHILD does: the delete half of the last batch
            db.batch_delete([b"b%06d:%03d" % (start - 4, j) for j in range(0, BATCH_KEYS, 2)])
        victim = db.stats()["workers"][rng.randrange(2)]["pid"]
        acknowledged = start - 1
        killer = threading.Timer(rng.random() * 0.05, os.kill, (victim, signal.SIGKILL))
        killer.start()
        failed, after_restart = 0, 0
        try:
            i = start
            while after_restart < 3:
                assert i < start + 100_000, "the worker was never found dead"
                items = [(b"b%06d:%03d" % (i, j), b"%d" % i) for j in range(BATCH_KEYS)]
                try:
                    db.batch_put(items + [(b"last", b"%d" % i)])
                    if i >= 3:
                        db.batch_delete([b"b%06d:%03d" % (i - 3, j) for j in range(0, BATCH_KEYS, 2)])
                except amdb.WorkerCrashedError as exc:
                    assert exc.signal == signal.SIGKILL and exc.restarted, exc
                    failed += 1
                    continue        # nothing of it was applied: the same batch again
                acknowledged = i
                i += 1
                if db.stats()["worker_restarts"]:
                    after_restart += 1
            assert failed <= 1 and db.stats()["worker_restarts"] == 1
            assert db.stats()["workers"][0]["pid"] != victim != db.stats()["workers"][1]["pid"]
            assert check_recovered(db, acknowledged) == acknowledged     # before reopening, too
        finally:
            killer.join()
            db.close()
        with amdb.ParallelDB(path, workers=2, max_batch=32, ring_size=1 << 16) as db:
            start = check_recovered(db, acknowledged) + 1
    assert start > 5
