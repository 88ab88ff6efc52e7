"""Database directories: manifest, lock, log and checkpoint readers, recovery.

The formats and their invariants are in amdb/native/wal.h; the workers write
logs and checkpoints (amdb/native/wal.pyx), this module is the owner's side:

- at open: take the lock, read (or create) the manifest, and plan recovery —
  check every checkpoint and log frame, pick each worker's newest valid
  checkpoint, work out the newest batch every worker has whole
  (``recovered_seq``), and cut every log past it (wal.h, invariant 3);
- after a checkpoint: delete files two newer checkpoints made obsolete;
- ``backup`` and ``describe`` (``python -m amdb info``).

Nothing here trusts a byte it reads: a damaged file is reported and cut or
skipped, never a crash.
"""
import base64
import errno
import fcntl
import json
import mmap
import os
import re
import shutil
import struct
import time
from typing import NamedTuple

import xxhash

from amdb.errors import CorruptionError, InvalidArgumentError, LockedError, StorageError
from amdb.native.constants import (CHECKPOINT_BLOCK, CHECKPOINT_FORMAT_UNDO, CHECKPOINT_MAGIC, CHECKPOINT_UNDO_MAGIC,
                                   CHUNK_SOLO, FORMAT_VERSION, LAYOUT_VERSION, LOG_KINDS, LOG_MAGIC, SLOT_COUNT,
                                   SYNC_MODES)
from amdb.shm.segment import pid_alive

MANIFEST = "MANIFEST"
LOCK = "LOCK"
MANIFEST_MAGIC = "amdb-database"
# From the headers (amdb.native.constants): FORMAT_VERSION of logs and checkpoints,
# LAYOUT_VERSION of the arena bytes in checkpoints, SLOT_COUNT, the magics, the log
# frame kinds and the sync modes.
READABLE_LAYOUTS = (1, 2, 3)        # 1: roots not yet in the arena header (loading upgrades it);
                                    # 2: every version tail whole (still read as it is)

KIND_NAMES = LOG_KINDS
LOG_CHUNK, LOG_COMMIT, LOG_ABORT = (next(n for n, name in LOG_KINDS.items() if name == kind)
                                    for kind in ("chunk", "commit", "abort"))

FRAME = struct.Struct("<IIQQQQ")                # amdb_log_frame, 40 bytes
CHUNK_META = struct.Struct("<QQII")             # amdb_log_chunk, 24 bytes
CHECKPOINT_HEADER = struct.Struct("<QIIQQQQQQQQQQ32sQ")  # amdb_checkpoint_header, 136 bytes
assert FRAME.size == 40 and CHUNK_META.size == 24 and CHECKPOINT_HEADER.size == 136

SEGMENT_NAME = re.compile(r"^wal-(\d{4})-(\d{8})\.log$")
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{4})-(\d{16})\.ckpt$")


CHANNEL_NAME = re.compile(r"^client-[0-9a-f]{16}\.channel$")


def create_channel_file(directory):
    """A new, empty file for a writing client's channel (layout.h, "Client
    channels", point 5): (path, fd). Its name is random: channels of
    successive owners never meet."""
    while True:
        path = os.path.join(directory, f"client-{os.urandom(8).hex()}.channel")
        try:
            return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise StorageError(f"cannot create a client's channel in {directory}: {exc.strerror}",
                               code="io_error") from None


def channel_files(directory):
    """The channel files a directory holds (a dead owner's left them), sorted."""
    return sorted(name for name in os.listdir(directory) if CHANNEL_NAME.match(name))


def remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def segment_name(worker, number):
    return f"wal-{worker:04d}-{number:08d}.log"


def checkpoint_name(worker, seq):
    return f"ckpt-{worker:04d}-{seq:016d}.ckpt"


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path, data):
    """Write, fsync, rename, fsync the directory: `path` is old or new, never torn."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


# ---- manifest ------------------------------------------------------------------

def _manifest_check(body):
    return xxhash.xxh64_hexdigest(json.dumps(body, sort_keys=True).encode())


def write_manifest(directory, workers, slot_owner, options, sweep=False):
    import numpy as np
    table = np.asarray(slot_owner, dtype="<u2")
    if table.shape != (SLOT_COUNT,):
        raise InvalidArgumentError(f"a slot table has {SLOT_COUNT} entries")
    body = {"magic": MANIFEST_MAGIC, "format_version": FORMAT_VERSION, "workers": workers,
            "slot_owner": base64.b64encode(table.tobytes()).decode(), "options": options}
    if sweep:       # keys may sit in a partition that does not own their slot (resharding)
        body["sweep"] = True
    body["check"] = _manifest_check(body)
    _write_atomically(os.path.join(directory, MANIFEST), json.dumps(body, indent=1).encode())
    return body


def read_manifest(directory):
    """The manifest as a dict, with "slot_owner" decoded to a list; None if
    the directory has none. CorruptionError if it is damaged or foreign."""
    import numpy as np
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        body = json.loads(raw)
        check = body.pop("check")
        if body.get("magic") != MANIFEST_MAGIC:
            raise CorruptionError(f"{path} is not an AmDb manifest")
        if body.get("format_version") != FORMAT_VERSION:
            raise CorruptionError(f"{path} has format version {body.get('format_version')}; "
                                  f"this AmDb reads version {FORMAT_VERSION}",
                                  code="format_version", hint="open it with the AmDb release that wrote it")
        if check != _manifest_check(body):
            raise CorruptionError(f"{path} fails its checksum")
        table = np.frombuffer(base64.b64decode(body["slot_owner"]), dtype="<u2")
        workers = body["workers"]
        if (not isinstance(workers, int) or not 1 <= workers <= 65535 or table.shape != (SLOT_COUNT,)
                or int(table.max()) >= workers):
            raise CorruptionError(f"{path} has an invalid worker count or slot table")
    except CorruptionError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptionError(f"{path} is damaged ({exc.__class__.__name__}: {exc})") from None
    body["slot_owner"] = table.astype(int).tolist()
    return body


def rebalance(slot_owner, workers):
    """A slot table for `workers` workers that moves as few slots as possible
    from `slot_owner`: slots of workers that go away, and the excess of
    workers above an even share, go to the workers below it."""
    table = list(slot_owner)
    share = [SLOT_COUNT // workers + (1 if w < SLOT_COUNT % workers else 0) for w in range(workers)]
    owned = {w: [] for w in range(workers)}
    pool = []
    for slot, w in enumerate(table):
        (owned[w] if w < workers else pool).append(slot)
    for w in range(workers):
        while len(owned[w]) > share[w]:
            pool.append(owned[w].pop())
    pool.sort()
    for w in range(workers):
        while len(owned[w]) < share[w]:
            slot = pool.pop()
            table[slot] = w
            owned[w].append(slot)
    assert not pool
    return table


def remove_worker_files(directory, first_worker):
    """Delete the logs and checkpoints of workers >= first_worker."""
    for name in os.listdir(directory):
        m = SEGMENT_NAME.match(name) or CHECKPOINT_NAME.match(name)
        if m and int(m.group(1)) >= first_worker:
            os.unlink(os.path.join(directory, name))


# ---- lock ----------------------------------------------------------------------

def _lock_holders(fd):
    """[(pid, "READ" | "WRITE")] of the flock locks on the file open at `fd`,
    from /proc/locks (the pid is the process that took the lock; processes
    that inherited its descriptor, such as workers, keep it after that pid
    is gone). None when /proc/locks cannot say."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    holders = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters are "1: -> FLOCK ..."
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode:
            holders.append((int(fields[4]), fields[3]))
    return holders


def lock_directory(directory, stale_wait=10.0, shared=False):
    """flock LOCK (exclusively, or shared for a read-only opening) and write
    our pid in it; returns the fd.

    The workers inherit the fd, so the lock lasts until the owner and every
    worker are gone. A lock whose holders are all dead is stale: their
    workers leave within a fraction of a second, and we wait up to
    `stale_wait` seconds for them before giving up. A live holder, writer or
    reader, is reported at once."""
    path = os.path.join(directory, LOCK)
    if shared:      # read-only opening: the directory may be on a read-only disk
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + stale_wait
    try:
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            holders = _lock_holders(fd)
            if holders is None:         # no /proc/locks: the pid the last writer left in the file
                try:
                    holders = [(int(os.pread(fd, 32, 0).split()[0]), "WRITE")]
                except (ValueError, IndexError):
                    holders = []
            live = [(pid, mode) for pid, mode in holders if pid_alive(pid)]
            if live or time.monotonic() > deadline:
                if live:
                    pid, mode = live[0]
                    who = f"process {pid}" + (" (read-only)" if mode == "READ" else "")
                elif holders:
                    who = (f"process {holders[0][0]} (dead; its workers still hold the lock after "
                           f"{stale_wait:.0f} s)")
                else:
                    who = "another process"
                raise LockedError(f"{directory} is open in {who}",
                                  hint="close it there first; to read it from here while it is open, "
                                       "pass read_only=True (attaches to that process)")
            # Every holder is dead: its workers are on their way out.
            time.sleep(0.02)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---- logs ----------------------------------------------------------------------

class Frame(NamedTuple):
    offset: int
    kind: int
    seq: int
    length: int          # whole frame, header included
    detail: int          # COMMIT: participants; CHUNK: records; ABORT: 0
    solo: bool = False   # a CHUNK of a SOLO batch (an async single write): it commits itself


class LogScan(NamedTuple):
    frames: list
    valid_bytes: int     # bytes of whole frames from the start
    size: int            # file size
    problem: str         # why scanning stopped before the end, or None


def scan_log_bytes(data):
    """Parse and check frames of a log segment's bytes. Stops at the first
    frame that is not whole (wal.h, invariant 1)."""
    frames = []
    pos, size = 0, len(data)
    view = memoryview(data)
    problem = None
    while pos < size:
        if size - pos < FRAME.size:
            problem = f"torn frame header at offset {pos}"
            break
        magic, kind, seq, payload_len, payload_check, header_check = FRAME.unpack_from(view, pos)
        if magic != LOG_MAGIC or xxhash.xxh64_intdigest(view[pos:pos + 32]) != header_check:
            problem = f"bad frame header at offset {pos}"
            break
        payload = pos + FRAME.size
        if payload_len % 8:
            problem = f"frame at offset {pos} has {payload_len} payload bytes, not a multiple of 8"
            break
        if payload_len > size - payload:
            problem = f"torn frame at offset {pos} ({payload_len} payload bytes, {size - payload} left)"
            break
        body = view[payload:payload + payload_len]
        if xxhash.xxh64_intdigest(body, seed=seq) != payload_check:
            problem = f"frame at offset {pos} fails its checksum"
            break
        solo = False
        if kind == LOG_CHUNK and payload_len >= CHUNK_META.size:
            _, detail, flags, _ = CHUNK_META.unpack_from(view, payload)
            solo = bool(flags & CHUNK_SOLO)
        elif kind == LOG_COMMIT and payload_len == 8:
            detail = struct.unpack_from("<Q", view, payload)[0]
        elif kind == LOG_ABORT and payload_len == 0:
            detail = 0
        else:
            problem = f"frame at offset {pos} has kind {kind} and {payload_len} payload bytes"
            break
        if frames and seq < frames[-1].seq:
            problem = f"frame at offset {pos} goes back from seq {frames[-1].seq} to {seq}"
            break
        frames.append(Frame(pos, kind, seq, FRAME.size + payload_len, detail, solo))
        pos = payload + payload_len
    view.release()
    return LogScan(frames, pos, size, problem)


def scan_log(path):
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return LogScan([], 0, 0, None)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return scan_log_bytes(data)


# ---- checkpoints ---------------------------------------------------------------

class CheckpointInfo(NamedTuple):
    name: str
    worker: int
    seq: int
    log_segment: int
    arena_used: int
    keys: int
    versions: int


def check_checkpoint(path, worker=None, read_blocks=True):
    """Check a checkpoint file's header and (with read_blocks) every block;
    CorruptionError saying what is wrong otherwise."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(CHECKPOINT_HEADER.size)
        if len(header) < CHECKPOINT_HEADER.size:
            raise CorruptionError(f"{name}: shorter than its header")
        (magic, fmt, layout, index, seq, log_segment, used, head, table, live, nodes, versions,
         ledger_chunks, ledger_head, check) = CHECKPOINT_HEADER.unpack(header)
        if magic != CHECKPOINT_MAGIC or xxhash.xxh64_intdigest(header[:-8]) != check:
            raise CorruptionError(f"{name}: bad header")
        if fmt not in (FORMAT_VERSION, CHECKPOINT_FORMAT_UNDO) or layout not in READABLE_LAYOUTS:
            raise CorruptionError(f"{name}: format {fmt}/layout {layout}, not {FORMAT_VERSION}/{LAYOUT_VERSION}")
        if worker is not None and index != worker:
            raise CorruptionError(f"{name}: belongs to worker {index}")
        info = CheckpointInfo(name, index, seq, log_segment, used, live, versions)
        if not read_blocks:
            return info
        blocks = (used + CHECKPOINT_BLOCK - 1) // CHECKPOINT_BLOCK
        expected = CHECKPOINT_HEADER.size + used + 8 * blocks
        undo_at = expected
        if fmt == CHECKPOINT_FORMAT_UNDO:       # the undo notes of a background checkpoint (wal.h)
            if size < undo_at + 16:
                raise CorruptionError(f"{name}: {size} bytes, too short for its undo notes")
            f.seek(undo_at)
            magic, notes = struct.unpack("<QQ", f.read(16))
            if magic != CHECKPOINT_UNDO_MAGIC:
                raise CorruptionError(f"{name}: no undo notes where expected")
            expected = undo_at + 16 + 16 * notes + 8
        if size != expected:
            raise CorruptionError(f"{name}: {size} bytes, expected {expected}")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                if fmt == CHECKPOINT_FORMAT_UNDO:
                    (stored,) = struct.unpack_from("<Q", view, undo_at + 16 + 16 * notes)
                    with view[undo_at + 16:undo_at + 16 + 16 * notes] as body:
                        if xxhash.xxh64_intdigest(body, seed=notes) != stored:
                            raise CorruptionError(f"{name}: its undo notes fail their checksum")
                        offsets = struct.unpack_from(f"<{2 * notes}Q", body)[0::2]
                    if any(o >= used or o % 8 for o in offsets):
                        raise CorruptionError(f"{name}: an undo note lies outside the arena")
                checks = struct.unpack_from(f"<{blocks}Q", view, CHECKPOINT_HEADER.size + used)
                for i in range(blocks):
                    start = CHECKPOINT_HEADER.size + i * CHECKPOINT_BLOCK
                    end = min(start + CHECKPOINT_BLOCK, CHECKPOINT_HEADER.size + used)
                    if xxhash.xxh64_intdigest(view[start:end], seed=i) != checks[i]:
                        raise CorruptionError(f"{name}: block {i} fails its checksum")
            finally:
                view.release()
    return info


# ---- recovery ------------------------------------------------------------------

class WorkerPlan(NamedTuple):
    checkpoint: str          # file to load, or None
    checkpoint_seq: int
    replay: list             # [segment name, bytes to replay], in order
    next_segment: int
    log_bytes: int


class RecoveryPlan(NamedTuple):
    recovered_seq: int
    workers: list            # WorkerPlan per worker
    report: dict


def _files_of(directory, workers):
    segments = {w: [] for w in range(workers)}
    checkpoints = {w: [] for w in range(workers)}
    strays = []
    for name in os.listdir(directory):
        m = SEGMENT_NAME.match(name)
        if m and int(m.group(1)) < workers:
            segments[int(m.group(1))].append((int(m.group(2)), name))
            continue
        m = CHECKPOINT_NAME.match(name)
        if m and int(m.group(1)) < workers:
            checkpoints[int(m.group(1))].append((int(m.group(2)), name))
            continue
        if name.endswith(".tmp"):
            strays.append(name)
    for w in range(workers):
        segments[w].sort()
        checkpoints[w].sort(reverse=True)
    return segments, checkpoints, strays


def plan_recovery(directory, workers, repair=True):
    """Work out what each worker loads and replays (see the module docstring).
    With repair, cut logs past the recovered seq and delete .tmp leftovers
    (the workers then append to new segments); without, change nothing."""
    segments, checkpoints, strays = _files_of(directory, workers)
    report = {"checkpoints_rejected": [], "logs_cut": [], "frames_replayed": 0,
              "records_replayed": 0, "frames_dropped": 0, "recovered_seq": 0}
    chosen = {}
    for w in range(workers):
        chosen[w] = None
        for seq, name in checkpoints[w]:
            try:
                chosen[w] = check_checkpoint(os.path.join(directory, name), w)
                break
            except (CorruptionError, OSError) as exc:
                report["checkpoints_rejected"].append({"file": name, "reason": str(exc)})
                if repair:      # kept for inspection, never loaded or counted again
                    os.replace(os.path.join(directory, name), os.path.join(directory, name + ".rejected"))
    # Scan each worker's segments from its checkpoint on; stop at the first damage.
    scans = {}
    for w in range(workers):
        first = chosen[w].log_segment if chosen[w] else 1
        expected = first
        scans[w] = []
        for number, name in segments[w]:
            if number < first:
                continue
            scan = scan_log(os.path.join(directory, name)) if number == expected else None
            if scan is None:
                report["logs_cut"].append({"file": name, "offset": 0, "reason":
                                           f"segment {expected} of worker {w} is missing"})
                break
            scans[w].append((number, name, scan))
            expected += 1
            if scan.problem:
                break
        if not chosen[w] and (checkpoints[w] or (segments[w] and segments[w][0][0] != 1)):
            raise CorruptionError(
                f"worker {w}: no usable checkpoint and its log does not start at segment 1 "
                f"({len(checkpoints[w])} checkpoint(s) rejected); recovering would lose data",
                hint="restore from a backup, or run 'python -m amdb info PATH' for details")
    base = max([c.seq for c in chosen.values() if c] + [0])
    # The final COMMIT/ABORT of each seq in each worker (wal.h, invariant 3).
    finals = {w: {} for w in range(workers)}
    for w in range(workers):
        for _, _, scan in scans[w]:
            for frame in scan.frames:
                if frame.kind == LOG_COMMIT:
                    finals[w][frame.seq] = frame.detail
                elif frame.solo:                    # a whole batch of one record, committed by itself
                    finals[w][frame.seq] = 1
                elif frame.kind == LOG_ABORT:
                    finals[w][frame.seq] = None
    recovered = base
    while True:
        commits = [finals[w].get(recovered + 1) for w in range(workers)]
        commits = [p for p in commits if p is not None]
        if not commits or any(p != commits[0] for p in commits) or len(commits) != commits[0]:
            break
        recovered += 1
    report["recovered_seq"] = recovered
    plans = []
    for w in range(workers):
        replay, log_bytes = [], 0
        first = chosen[w].log_segment if chosen[w] else 1
        last_kept = first - 1
        for number, name, scan in scans[w]:
            keep = scan.valid_bytes
            for frame in scan.frames:
                if frame.seq > recovered:
                    keep = frame.offset
                    break
            dropped = [f for f in scan.frames if f.offset >= keep]
            report["frames_dropped"] += len(dropped)
            kept = [f for f in scan.frames if f.offset < keep]
            report["frames_replayed"] += len(kept)
            report["records_replayed"] += sum(f.detail for f in kept if f.kind == LOG_CHUNK)
            if keep < scan.size:
                reason = scan.problem if keep == scan.valid_bytes and scan.problem else \
                    f"frames past recovered seq {recovered} (never acknowledged)"
                report["logs_cut"].append({"file": name, "offset": keep, "bytes": scan.size - keep,
                                           "reason": reason})
                if repair:
                    with open(os.path.join(directory, name), "r+b") as f:
                        f.truncate(keep)
                        os.fsync(f.fileno())
            replay.append([name, keep])
            last_kept = number
            log_bytes += keep
            if keep < scan.size:
                break
        # Segments after a cut or a gap follow damage or unacknowledged
        # frames: nothing in them can be used.
        for number, name in segments[w]:
            if number > last_kept:
                report["logs_cut"].append({"file": name, "offset": 0, "reason": "follows a cut",
                                           "bytes": os.path.getsize(os.path.join(directory, name))})
                if repair:
                    os.unlink(os.path.join(directory, name))
        plans.append(WorkerPlan(chosen[w].name if chosen[w] else None, chosen[w].seq if chosen[w] else 0,
                                replay, max(first, last_kept + 1), log_bytes))
    if repair:
        for name in strays:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
        _fsync_dir(directory)
    return RecoveryPlan(recovered, plans, report)


def remove_obsolete(directory, workers, keep_checkpoints=2):
    """After a checkpoint: keep each worker's newest `keep_checkpoints`
    checkpoints and the log segments from the oldest kept one on."""
    segments, checkpoints, strays = _files_of(directory, workers)
    removed = []
    for w in range(workers):
        kept = checkpoints[w][:keep_checkpoints]
        if len(kept) < keep_checkpoints:
            continue
        oldest = kept[-1][1]
        try:
            first_segment = check_checkpoint(os.path.join(directory, oldest), w, read_blocks=False).log_segment
        except (CorruptionError, OSError):
            continue
        doomed = [name for _, name in checkpoints[w][keep_checkpoints:]]
        doomed += [name for number, name in segments[w] if number < first_segment]
        for name in doomed:
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def cut_torn_tail(directory, worker, current_segment):
    """Worker `worker` died, perhaps while appending a frame: cut its newest
    log segment at the end of its last whole frame, so that recovery reads
    on into the segments after it (it stops at damage), and return the
    number of the segment its successor starts. `current_segment`: the
    segment the dead worker said it was appending (control block)."""
    numbers = []
    for name in os.listdir(directory):
        match = SEGMENT_NAME.match(name)
        if match and int(match.group(1)) == worker:
            numbers.append(int(match.group(2)))
    if numbers:
        path = os.path.join(directory, segment_name(worker, max(numbers)))
        scan = scan_log(path)
        if scan.valid_bytes < scan.size:
            with open(path, "r+b") as f:
                f.truncate(scan.valid_bytes)
                os.fsync(f.fileno())
    return max(numbers + [current_segment]) + 1


def worker_plan(directory, plan, sync, interval_ms, segment_bytes, read_only=False):
    """The `durable` argument of amdb.native.worker.loop.run_worker."""
    return {"dir": os.path.abspath(directory), "checkpoint": plan.checkpoint, "replay": plan.replay,
            "next_segment": plan.next_segment, "sync": SYNC_MODES[sync], "interval_ms": interval_ms,
            "segment_bytes": segment_bytes, "log_bytes": plan.log_bytes, "read_only": read_only}


# ---- inspection, backup --------------------------------------------------------

def describe(directory):
    """What `python -m amdb info PATH` prints: manifest, files, and what
    opening would recover (computed without changing anything)."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise InvalidArgumentError(f"{directory} is not an AmDb database (no {MANIFEST})")
    workers = manifest["workers"]
    segments, checkpoints, _ = _files_of(directory, workers)
    plan = plan_recovery(directory, workers, repair=False)
    per_worker = []
    for w in range(workers):
        per_worker.append({
            "worker": w,
            "checkpoints": [name for _, name in checkpoints[w]],
            "checkpoint_loaded": plan.workers[w].checkpoint,
            "log_segments": [name for _, name in segments[w]],
            "log_bytes": sum(os.path.getsize(os.path.join(directory, n)) for _, n in segments[w]),
        })
    return {"path": os.path.abspath(directory), "format_version": manifest["format_version"],
            "workers": workers, "options": manifest["options"], "recovered_seq": plan.recovered_seq,
            "recovery": plan.report, "per_worker": per_worker, "client_channels": channel_files(directory)}


def copy_files(directory, names, dest):
    """Copy (or hard-link, on the same file system) immutable files into dest."""
    for name in names:
        source, target = os.path.join(directory, name), os.path.join(dest, name)
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, target)
            with open(target, "rb") as f:
                os.fsync(f.fileno())


def check_directory_writable(directory):
    """Raise StorageError now rather than at the first write."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StorageError(f"{directory} is not writable", code="read_only",
                           hint="open a writable directory (or copy the database with amdb.backup)")
