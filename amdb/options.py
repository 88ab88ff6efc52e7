"""Options of ParallelDB, checked once: parse_options turns the keyword
arguments into a frozen Options, or raises the amdb error that says what is
wrong and what to pass instead (plyvel's parse_options pattern).

Who calls it: amdb.db.ParallelDB.__init__ (and the reshard step of
amdb.supervisor, which reopens with the same options). No shared memory.
"""
import os
from dataclasses import dataclass
from typing import Optional

from amdb import storage
from amdb.errors import InvalidArgumentError, InvalidTypeError
from amdb.native.constants import MAX_READER_SLOTS, MAX_WORKERS  # per-worker arrays of the client are sized to it
from amdb.shm.control import RECORD_HEADER_BYTES

MIN_RING_SIZE = 64 << 10            # bytes
DEFAULT_RING_SIZE = 32 << 20        # bytes per worker, committed at open
DEFAULT_ARENA_SIZE = 16 << 30       # bytes per worker, reserved (sparse) not committed
DEFAULT_MAX_KEY_SIZE = 4096         # bytes (smaller when ring_size/16 is smaller)
DEFAULT_HANG_TIMEOUT = 60.0         # seconds without progress, work pending, before a worker is replaced
DEFAULT_POISON_AFTER = 3            # crashes on the same data before that data is refused
DEFAULT_LOG_SEGMENT_BYTES = 64 << 20
DEFAULT_CHECKPOINT_BYTES = 512 << 20  # log bytes (any worker) past which a checkpoint is written
DEFAULT_COMPACT_MIN_VERSIONS = 10_000  # reclaimable versions below which no automatic compaction runs
DEFAULT_KEEP_VERSIONS = 1             # bounded history by default: see docs/API.md, "Retention"
# Processes besides the owner that may use the database at once (attached
# clients, forked children that read): a 64-byte reader slot each in shared
# memory (32 KiB in all), and a channel (1 MiB) for each one that writes.
DEFAULT_MAX_CLIENTS = 512

# Every keyword of ParallelDB with its default (the signature repeats them for help()).
DEFAULTS = dict(workers=None, max_batch=100_000, ring_size=DEFAULT_RING_SIZE, arena_size=DEFAULT_ARENA_SIZE,
                max_key_size=None, max_value_size=None, start_timeout=30.0, audit=None,
                audit_max_bytes=64 << 20, sync="none", sync_interval_ms=100,
                log_segment_bytes=DEFAULT_LOG_SEGMENT_BYTES, checkpoint_bytes=DEFAULT_CHECKPOINT_BYTES,
                read_only=False, keep_versions=DEFAULT_KEEP_VERSIONS,
                compact_min_versions=DEFAULT_COMPACT_MIN_VERSIONS,
                hang_timeout=DEFAULT_HANG_TIMEOUT, poison_after=DEFAULT_POISON_AFTER, shm_dir=None,
                max_clients=DEFAULT_MAX_CLIENTS)


@dataclass(frozen=True)
class Options:
    """What a ParallelDB was opened with, every value checked."""
    path: Optional[str]             # absolute directory, or None (memory only)
    manifest: Optional[dict]        # the directory's manifest as found before opening, or None
    workers: int
    max_batch: int
    ring_size: int                  # a power of two
    arena_size: int                 # page aligned
    max_key_size: int
    max_value_size: int
    start_timeout: float
    audit: Optional[str]
    audit_max_bytes: int
    sync: str
    sync_interval_ms: int
    log_segment_bytes: int
    checkpoint_bytes: Optional[int]
    read_only: bool
    shm_dir: Optional[str]          # directory of the segments (a tmpfs), None: POSIX shm (/dev/shm)
    keep_versions: Optional[int]
    compact_min_versions: int
    hang_timeout: Optional[float]
    poison_after: int
    max_clients: int                # reader slots: processes besides the owner at once

    def reopen_kwargs(self):
        """The keywords that reopen a database like this one (resharding)."""
        return dict(max_batch=self.max_batch, ring_size=self.ring_size, arena_size=self.arena_size,
                    start_timeout=self.start_timeout, sync=self.sync, sync_interval_ms=self.sync_interval_ms,
                    log_segment_bytes=self.log_segment_bytes, checkpoint_bytes=self.checkpoint_bytes,
                    max_clients=self.max_clients)


def int_option(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{name}= must be an int, not {type(value).__name__}",
                               hint=f"pass an int between {low} and {high}")
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name}={value} is out of range [{low}, {high}]",
                                   hint=f"pass an int between {low} and {high}")
    return value


def shm_dir_option(value):
    """None (POSIX shared memory, /dev/shm) or an existing, writable directory,
    made absolute: where the segments are created (a tmpfs of its own, say)."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidTypeError(f"shm_dir= must be a directory path or None, not {type(value).__name__}",
                               hint="pass e.g. shm_dir='/mnt/amdb-tmpfs'")
    directory = os.path.abspath(os.fspath(value))
    if not os.path.isdir(directory):
        raise InvalidArgumentError(f"shm_dir={directory!r} is not a directory",
                                   hint="create it first, e.g. mount -t tmpfs -o size=4g tmpfs DIR")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"shm_dir={directory!r} is not writable", hint="pick a directory you can write")
    return directory


def keep_versions_option(value, name="keep_versions"):
    """None (keep every version) or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{name}= must be None or an int >= 1, not {type(value).__name__}",
                               hint="pass e.g. keep_versions=3 to keep each key's 3 newest versions")
    if not 1 <= value <= 1 << 62:
        raise InvalidArgumentError(f"{name}={value}: a key keeps at least its newest version",
                                   hint="pass None to keep every version, or an int >= 1")
    return value


def _seconds_option(name, value, low, high, example, *, low_included=True, allow_none=False, none_hint=""):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(f"{name}= must be a number of seconds{' or None' if allow_none else ''}, not "
                               f"{type(value).__name__}", hint=f"pass e.g. {name}={example}")
    if not (low <= value if low_included else low < value) or value > high:
        raise InvalidArgumentError(f"{name}={value} must be in {'[' if low_included else '('}{low}, {high}] seconds",
                                   hint=f"pass e.g. {name}={example}{none_hint}")
    return value


def _next_power_of_two(n):
    return 1 << (n - 1).bit_length()


def parse_options(path=None, **kwargs):
    """Check every option of ParallelDB(path, **kwargs); return Options."""
    unknown = set(kwargs) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"ParallelDB() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
    o = dict(DEFAULTS, **kwargs)
    read_only = bool(o["read_only"])
    manifest = None
    workers = o["workers"]
    sync, sync_interval_ms, log_segment_bytes = o["sync"], o["sync_interval_ms"], o["log_segment_bytes"]
    checkpoint_bytes = o["checkpoint_bytes"]
    if path is not None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise InvalidTypeError(f"path= must be a directory path or None, not {type(path).__name__}",
                                   hint="pass e.g. path='data/mydb'")
        if sync not in storage.SYNC_MODES:
            raise InvalidArgumentError(f"sync={sync!r} is not one of 'none', 'batch', 'interval'",
                                       hint="'none' survives process crashes, 'batch' power loss")
        sync_interval_ms = int_option("sync_interval_ms", sync_interval_ms, 1, 3_600_000)
        log_segment_bytes = int_option("log_segment_bytes", log_segment_bytes, 1 << 16, 1 << 40)
        if checkpoint_bytes is not None:
            checkpoint_bytes = int_option("checkpoint_bytes", checkpoint_bytes, 1 << 16, 1 << 50)
        path = os.fsdecode(os.path.abspath(path))
        if os.path.exists(path) and not os.path.isdir(path):
            raise InvalidArgumentError(f"path={path!r} exists and is not a directory")
        manifest = storage.read_manifest(path) if os.path.isdir(path) else None
        if manifest is not None and workers is None:
            workers = manifest["workers"]
        if read_only and manifest is None:
            raise InvalidArgumentError(f"read_only=True needs an existing database; {path} has none")
    elif read_only:
        raise InvalidArgumentError("read_only=True needs a path")
    workers = os.cpu_count() or 1 if workers is None else workers
    workers = int_option("workers", workers, 1, MAX_WORKERS)
    max_batch = int_option("max_batch", o["max_batch"], 1, 1 << 31)
    ring_size = _next_power_of_two(int_option("ring_size", o["ring_size"], MIN_RING_SIZE, 1 << 34))
    arena_size = int_option("arena_size", o["arena_size"], 1 << 20, 1 << 46)
    arena_size = (arena_size + 4095) // 4096 * 4096
    record_limit = ring_size // 8 - RECORD_HEADER_BYTES
    key_limit = min(65536, record_limit // 2)
    max_key_size = o["max_key_size"]
    if max_key_size is None:
        max_key_size = min(DEFAULT_MAX_KEY_SIZE, key_limit)
    max_key_size = int_option("max_key_size", max_key_size, 1, key_limit)
    value_limit = record_limit - max_key_size
    max_value_size = o["max_value_size"]
    if max_value_size is None:
        max_value_size = value_limit
    max_value_size = int_option("max_value_size", max_value_size, 0, value_limit)
    start_timeout = _seconds_option("start_timeout", o["start_timeout"], 0, 3600, 30.0, low_included=False)
    hang_timeout = _seconds_option("hang_timeout", o["hang_timeout"], 0.1, 86400, 60.0, allow_none=True,
                                   none_hint=", or None to never replace a worker that stops making progress")
    poison_after = int_option("poison_after", o["poison_after"], 1, 1000)
    keep_versions = keep_versions_option(o["keep_versions"])
    compact_min_versions = int_option("compact_min_versions", o["compact_min_versions"], 1, 1 << 62)
    shm_dir = shm_dir_option(o["shm_dir"])
    max_clients = int_option("max_clients", o["max_clients"], 1, MAX_READER_SLOTS)
    audit = o["audit"]
    if audit is not None and not isinstance(audit, (str, os.PathLike)):
        raise InvalidTypeError(f"audit= must be a file path or None, not {type(audit).__name__}",
                               hint="pass e.g. audit='amdb-audit.jsonl'")
    return Options(path=path, manifest=manifest, workers=workers, max_batch=max_batch, ring_size=ring_size,
                   arena_size=arena_size, max_key_size=max_key_size, max_value_size=max_value_size,
                   start_timeout=start_timeout, audit=None if audit is None else os.fspath(audit),
                   audit_max_bytes=o["audit_max_bytes"], sync=sync, sync_interval_ms=sync_interval_ms,
                   log_segment_bytes=log_segment_bytes, checkpoint_bytes=checkpoint_bytes, read_only=read_only,
                   keep_versions=keep_versions, compact_min_versions=compact_min_versions,
                   hang_timeout=hang_timeout, poison_after=poison_after, shm_dir=shm_dir,
                   max_clients=max_clients)
