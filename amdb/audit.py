"""Asynchronous, size-rotated audit log of an AmDb database (JSON Lines).

An :class:`AuditLog` records write operations (:meth:`AuditLog.write_op`) and
administrative events (:meth:`AuditLog.event`) to a file, off the hot path:

* The calling thread never blocks and never does I/O. A call builds one small
  tuple and appends it to an in-memory queue (``queue.SimpleQueue``) bounded
  by ``queue_size``; that costs a few hundred nanoseconds
  (``perf/bench_audit.py``). When the queue is full the record is DROPPED and
  counted, never waited for. (The bound is checked before the put, so threads
  racing each other can overshoot it by at most one record per thread.)
* ONE background daemon thread (``amdb-audit-writer``) takes records from the
  queue in batches, encodes them and appends them to the file with plain
  ``os.write`` calls (one per batch). After a write it lets records gather for
  ``linger`` (10 ms) rather than waking up for every record. It owns the file,
  rotates it, and never dies from an exception.

Format
------
One JSON object per line (UTF-8, ASCII-only JSON). Every record has, in this
order, ``"t"`` (unix time, float), ``"n"`` (record number), ``"event"`` or
``"op"``, its own fields, and last ``"crc"``. Example::

    {"t":1718000000.123,"n":7,"op":"batch_put","keys":5000,"first_seq":10,
     "last_seq":5009,"key_digest":"9f3c0a1b2c3d4e5f","pid":4242,
     "tid":139872,"native_tid":4250,"thread":"MainThread","crc":305419896}

* ``t``: for ``write_op``/``event`` the time of the call (taken in the calling
  thread with ``clock``), for the log's own notes the time they were written.
* ``n``: 1, 2, 3... in file order, continuing across rotations and across
  re-opening an existing log (the last valid record of ``path`` is looked up
  when the writer first opens it). Dropped records get no number, so ``n`` has
  no gaps unless lines were lost after being written.
* ``crc``: ``zlib.crc32`` of the record's JSON without the crc field, i.e. of
  the exact bytes of the line up to (not including) ``,"crc":`` followed by
  ``}``. A truncated or corrupted line fails the check (or does not parse);
  :func:`read` skips such lines and :func:`read_report` counts them.

Write operations (``"op"``): ``put``, ``delete``, ``batch_put``,
``batch_delete``, ``put_array``, ``put_packed`` (any string is accepted) with
``keys`` (number of keys), ``first_seq``, ``last_seq``, ``key_digest`` (16 hex
digits of the caller's 64-bit digest), ``pid``, ``tid``
(``threading.get_ident()``), ``native_tid`` (the OS thread id) and ``thread``
(the thread's name).

Events (``"event"``): whatever the caller sends (``open``, ``close``,
``compact``, ``worker_restart``, ``recovered``...) with its keyword fields,
``pid``, ``tid``, ``native_tid`` and ``thread``, plus the log's own notes:

* ``{"event": "rotated", "previous": "<name>.1", "previous_bytes": B}``:
  first record of every file started by rotation (``previous`` is the base
  name of the file just rotated, null with ``backups=0``).
* ``{"event": "dropped", "count": N, "total": T}``: N records were dropped
  because the queue was full (or were sent after ``close()``) since the last
  such note; written as soon as the writer can write again.
* ``{"event": "write_error", "error": "...", "errors": E, "dropped": N,
  "down_s": S}``: the file could not be opened or written for S seconds; E
  failed attempts, N records lost meanwhile. Written once writing works again.

Rotation
--------
Before a record would make the current file exceed ``max_bytes`` (and the file
is not empty), ``path.(backups-1)`` is renamed to ``path.backups`` (the oldest
is replaced), ... ``path.1`` -> ``path.2``, ``path`` -> ``path.1``, and a new
``path`` is started with a ``rotated`` record. So at most ``backups`` rotated
files plus the current one exist; with ``backups=0`` the old file is simply
removed. A single record larger than ``max_bytes`` is still written whole.

Guarantees
----------
* Order: records from one thread appear in the order of the calls; records
  from different threads in the order their calls reached the queue. ``n``
  increases strictly along the file and across rotated files.
* At most once: a record is written once or not at all. Records are lost when
  the queue is full, while the file cannot be written (disk full, directory
  gone, permission), when the process dies before the writer got to them, and
  after ``close()``. Every loss the writer learns of is counted in
  :meth:`AuditLog.stats` (``dropped``) and announced in the log itself
  (``dropped`` / ``write_error`` records) once writing works again; records
  still queued when the process is killed (normally the last ~10 ms) are lost
  silently, and so is a call that races with ``close()``.
* Not guaranteed: durability. There is no fsync, by default or otherwise: a
  record is handed to the OS with ``os.write`` about ``linger`` after the
  call (once there, it survives a crash of the process, not a crash of the
  machine or a power cut). :meth:`AuditLog.flush` waits for the writer to hand
  everything queued so far to the OS; it does not fsync either.
* ``close()`` (also run by garbage collection and at interpreter exit, waiting
  at most 1 s there) writes what is queued before it returns.
* Not guaranteed: that a reader sees a consistent last line while the log is
  being written (a line may be half-written; :func:`read` skips it).

Failure behaviour
-----------------
If opening or writing the file raises ``OSError`` (ENOSPC, EACCES, ENOTDIR,
EIO...), the writer counts it in ``errors``, closes the file, counts the
records it could not write as dropped (nothing is buffered without bound), and
retries opening the file every ``retry_interval`` seconds (0.5 s) while still
draining the queue, without spinning. The calling threads are never slowed:
they only ever touch the queue. A line cut short by a failed write is ended
with a newline before the next record, so only that line is lost.

After ``os.fork()`` the log is inert in the child (its writer thread does not
exist there): calls return at once and count as dropped.
"""
import errno
import glob
import json
import os
import queue
import re
import stat
import threading
import time
import weakref
import zlib

__all__ = ["AuditLog", "read", "read_report"]

# Indirections for the writer's I/O, so tests can simulate failures without
# patching the os module for the whole process.
_os_open = os.open
_os_write = os.write

_OP = 0        # (_OP, t, op, keys, first_seq, last_seq, key_digest, pid, thread)
_EVENT = 1     # (_EVENT, t, name, fields, pid, thread)
_FLUSH = 2     # (_FLUSH, _Waiter)
_STOP = 3      # (_STOP, None)

_RESERVED = frozenset(("t", "n", "event", "op", "crc", "pid", "tid", "native_tid",
                       "thread"))
_MASK64 = (1 << 64) - 1
_CRC_TAG = b',"crc":'
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_BATCH = 1024          # records taken from the queue per os.write
_IDLE_WAKE_S = 1.0     # the writer looks at the drop counters at least this often
_TAIL_BYTES = 1 << 16  # how much of an existing file is read to find the last "n"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True,
                          default=repr).encode


class _Waiter:
    __slots__ = ("event", "ok")

    def __init__(self):
        self.event = threading.Event()
        self.ok = False


class _Writer:
    """State shared by an AuditLog and its writer thread.

    The thread holds only this object (not the AuditLog), so an AuditLog that
    is garbage collected without close() still stops its thread.
    """

    retry_interval = 0.5  # seconds between two tries of a failing file
    linger = 0.01         # seconds the writer lets records gather after a write

    def __init__(self, path, max_bytes, backups, queue_size, clock):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.queue_size = queue_size
        self.clock = clock
        self.q = queue.SimpleQueue()
        self.kick = threading.Event()   # set by flush()/close() to end a linger
        self.pid = os.getpid()
        self.inert = False              # set in a forked child
        self.closed = False
        self.thread = None
        # Counters written by the writer thread only.
        self.written = 0
        self.errors = 0
        self.error_dropped = 0          # records lost while the file was failing
        self.rotations = 0
        self.current_bytes = 0
        # Counters written by calling threads (under drop_lock: the slow path).
        self.drop_lock = threading.Lock()
        self.full_dropped = 0           # queue full / after close / after fork
        self.full_noted = 0             # part of full_dropped already announced
        # Writer-thread-only state.
        self.fd = None
        self.next_n = None              # None: not yet looked up
        self.failing = False
        self.fail_since = 0.0
        self.fail_first_error = ""
        self.fail_errors = 0
        self.fail_dropped = 0
        self.next_retry = 0.0
        self.needs_newline = False

    # ---- calling threads -------------------------------------------------
    def note_drop(self):
        with self.drop_lock:
            self.full_dropped += 1

    def shutdown(self, timeout):
        """Stop the thread (after it wrote what is queued) and close the file."""
        if self.closed:
            return
        self.closed = True
        th = self.thread
        if th is None or self.inert:
            return
        self.q.put((_STOP, None))
        self.kick.set()
        if th is not threading.current_thread():
            th.join(timeout)

    # ---- writer thread ---------------------------------------------------
    def run(self):
        q = self.q
        stop = False
        try:
            self.try_open()  # create the file now: a bad path shows up at once
        except BaseException:  # noqa: BLE001
            self.errors += 1
        while not stop:
            try:
                timeout = _IDLE_WAKE_S
                if self.failing:
                    timeout = max(0.0, min(timeout, self.next_retry - time.monotonic()))
                try:
                    batch = [q.get(timeout=timeout)]
                except queue.Empty:
                    batch = []
                try:
                    while len(batch) < _BATCH:
                        batch.append(q.get_nowait())
                except queue.Empty:
                    pass
                stop = self.process(batch)
                if not stop and 0 < len(batch) < _BATCH and not self.failing:
                    # Let records gather instead of waking up for every one:
                    # fewer wake-ups and writes per record. flush()/close() cut
                    # the wait short.
                    self.kick.wait(self.linger)
                    self.kick.clear()
            except BaseException:  # noqa: BLE001 - the writer must never die
                self.errors += 1
        self.close_fd()

    def process(self, batch):
        """Write one batch; answer flush waiters. Returns True on _STOP."""
        stop = False
        lines = []
        waiters = []
        for item in batch:
            kind = item[0]
            if kind == _OP or kind == _EVENT:
                lines.append(item)
            elif kind == _FLUSH:
                waiters.append(item[1])
            else:
                stop = True
        if self.failing and (stop or waiters or time.monotonic() >= self.next_retry):
            self.try_recover()
        if self.fd is None and not self.failing:
            self.try_open()
        if self.failing:
            self.fail_dropped += len(lines)
            self.error_dropped += len(lines)
        else:
            self.write_records(lines)
        ok = not self.failing
        for w in waiters:
            w.ok = ok
            w.event.set()
        return stop

    def encode(self, fields):
        """One line (bytes) of a record dict that lacks "n" and "crc"."""
        body = _dumps(fields).encode("ascii")
        # body is '{...}'; the crc covers body itself, the line ends with ,"crc":N}
        crc = zlib.crc32(body)
        return b"%s%s%d}\n" % (body[:-1], _CRC_TAG, crc)

    def make(self, item):
        """The record dict of a queued tuple, with "n" set."""
        n = self.next_n
        if item[0] == _OP:
            _, t, op, keys, first_seq, last_seq, digest, pid, th = item
            rec = {"t": t, "n": n, "op": op, "keys": keys, "first_seq": first_seq,
                   "last_seq": last_seq, "key_digest": "%016x" % (digest & _MASK64),
                   "pid": pid, "tid": th.ident, "native_tid": th.native_id,
                   "thread": th.name}
        else:
            _, t, name, fields, pid, th = item
            rec = {"t": t, "n": n, "event": name}
            rec.update(fields)
            rec["pid"] = pid
            rec["tid"] = th.ident
            rec["native_tid"] = th.native_id
            rec["thread"] = th.name
        return rec

    def note(self, name, **fields):
        rec = {"t": self.clock(), "n": self.next_n, "event": name}
        rec.update(fields)
        return rec

    def write_notes(self):
        """Write the owed ``dropped`` note, if any. False (and failing) on OSError."""
        with self.drop_lock:
            delta = self.full_dropped - self.full_noted
            self.full_noted = self.full_dropped
        if not delta:
            return True
        rec = self.note("dropped", count=delta, total=self.full_noted)
        if self.write_bytes(self.encode(rec), 1, note=True):
            self.next_n += 1
            return True
        with self.drop_lock:  # still owed: say it once writing works again
            self.full_noted -= delta
        return False

    def write_records(self, items):
        """Encode and write queued items (after owed notes), rotating as needed."""
        if not self.write_notes():
            self.lost(len(items))
            return
        buf = []
        size = 0
        may_rotate = True
        i = 0
        while i < len(items):
            try:
                line = self.encode(self.make(items[i]))
            except Exception:  # a record that cannot be encoded: lost, counted
                self.errors += 1
                self.error_dropped += 1
                i += 1
                continue
            total = self.current_bytes + size
            if may_rotate and total > 0 and total + len(line) > self.max_bytes:
                if buf and not self.write_bytes(b"".join(buf), len(buf)):
                    self.lost(len(items) - i)
                    return
                buf, size = [], 0
                if not self.rotate():
                    self.lost(len(items) - i)
                    return
                may_rotate = False  # write this record even if it alone is too big
                continue            # re-make it: the rotated note took its "n"
            may_rotate = True
            buf.append(line)
            size += len(line)
            self.next_n += 1
            i += 1
        if buf:
            self.write_bytes(b"".join(buf), len(buf))

    def lost(self, k):
        self.fail_dropped += k
        self.error_dropped += k

    def write_bytes(self, data, count, note=False):
        """Append data (count whole lines) to the file. False (and failing) on OSError.

        A lost ``note`` (the log's own record) is not counted as dropped.
        """
        prefix = 0
        if self.needs_newline:  # the file ends inside a cut line: end it first
            data = b"\n" + data
            prefix = 1
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                k = _os_write(self.fd, view[done:])
                if k <= 0:
                    raise OSError(errno.EIO, "write returned %d" % k)
                done += k
                self.current_bytes += k
        except OSError as exc:
            if done:
                self.needs_newline = data[done - 1:done] != b"\n"
            whole = data.count(b"\n", prefix, done)
            self.written += whole
            self.fail(exc)
            if not note:  # records lost; their numbers are given to the next ones
                self.lost(count - whole)
                self.next_n -= count - whole
            return False
        finally:
            view.release()
        self.needs_newline = False
        self.written += count
        return True

    def fail(self, exc):
        self.errors += 1
        self.close_fd()
        if not self.failing:
            self.failing = True
            self.fail_since = time.monotonic()
            self.fail_first_error = str(exc)
            self.fail_errors = 1
            self.fail_dropped = 0
        else:
            self.fail_errors += 1
        self.next_retry = time.monotonic() + self.retry_interval

    def try_open(self):
        """Open (or create) path for appending; False (and failing) on OSError."""
        try:
            d = os.path.dirname(self.path)
            if d:
                os.makedirs(d, exist_ok=True)
            fd = _os_open(self.path, _OPEN_FLAGS, 0o644)
        except OSError as exc:
            self.fail(exc)
            return False
        try:
            st = os.fstat(fd)
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        except OSError:
            size = 0
        # The file's own tail says whether it ends inside a cut line (a crash or
        # a failed write) and, the first time, where the numbering goes on.
        last_n, cut = _tail_state(self.path) if size else (0, False)
        if self.next_n is None and not last_n:  # e.g. empty right after a rotation
            last_n = _tail_state(self.path + ".1")[0]
        self.fd = fd
        self.current_bytes = size
        self.needs_newline = cut
        if self.next_n is None:
            self.next_n = last_n + 1
        return True

    def try_recover(self):
        """Retry the file; on success write the write_error note."""
        if not self.try_open():
            return False
        rec = self.note("write_error", error=self.fail_first_error,
                        errors=self.fail_errors, dropped=self.fail_dropped,
                        down_s=round(time.monotonic() - self.fail_since, 3))
        if self.write_bytes(self.encode(rec), 1, note=True):
            self.next_n += 1
            self.failing = False
            return True
        return False  # still failing: the outage goes on (and so does its note)

    def rotate(self):
        """Shift path -> path.1 -> ... and start a new file with a rotated note."""
        prev_bytes = self.current_bytes
        self.close_fd()
        try:
            if self.backups > 0:
                for k in range(self.backups - 1, 0, -1):
                    src = "%s.%d" % (self.path, k)
                    if os.path.exists(src):
                        os.replace(src, "%s.%d" % (self.path, k + 1))
                os.replace(self.path, self.path + ".1")
                previous = os.path.basename(self.path) + ".1"
            else:
                os.unlink(self.path)
                previous = None
        except OSError as exc:
            self.fail(exc)
            return False
        self.rotations += 1
        if not self.try_open():
            return False
        rec = self.note("rotated", previous=previous, previous_bytes=prev_bytes)
        if not self.write_bytes(self.encode(rec), 1, note=True):
            return False
        self.next_n += 1
        return True

    def close_fd(self):
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _tail_state(path):
    """(last valid "n", whether the file ends inside a line) of a log file.

    (0, False) if it cannot be read. Reads at most the last 64 KiB.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_BYTES)
            f.seek(start)
            data = f.read()
    except OSError:
        return 0, False
    cut = bool(data) and not data.endswith(b"\n")
    for raw in reversed(data.split(b"\n")):
        rec = _parse(raw)
        if rec is not None and isinstance(rec.get("n"), int):
            return rec["n"], cut
    return 0, cut


class AuditLog:
    """An asynchronous audit log; see the module docstring for the format.

    ``AuditLog(path, *, max_bytes=64 << 20, backups=5, queue_size=65536,
    clock=time.time)``

    * ``path``: the log file (str or path-like); its directory is created if
      missing. An existing log is appended to, continuing its numbering.
      Nothing is opened in the constructor: all I/O happens in the writer
      thread, so a bad path shows up as ``errors`` in :meth:`stats` and a
      ``write_error`` note, never as an exception.
    * ``max_bytes``: rotate before the current file would exceed this size.
    * ``backups``: how many rotated files (``path.1`` newest ..
      ``path.<backups>`` oldest) are kept.
    * ``queue_size``: records waiting for the writer beyond this are dropped.
    * ``clock``: the time source of ``"t"``.

    Thread-safe. ``write_op`` and ``event`` may be called from any thread and
    never block nor raise on I/O problems. Use as a context manager or call
    :meth:`close`; a log that is garbage-collected or still open at
    interpreter exit is closed (waiting at most 1 s for its writer).
    """

    def __init__(self, path, *, max_bytes=64 << 20, backups=5, queue_size=65536,
                 clock=time.time):
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path:
            raise ValueError("AuditLog path must not be empty")
        for name, value, low in (("max_bytes", max_bytes, 1), ("backups", backups, 0),
                                 ("queue_size", queue_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"AuditLog {name} must be an int >= {low}, got {value!r}")
        if not callable(clock):
            raise TypeError("AuditLog clock must be callable")
        self.path = os.path.abspath(path)
        w = self._w = _Writer(self.path, max_bytes, backups, queue_size, clock)
        # Hot-path attributes, bound once.
        self._put = w.q.put
        self._qsize = w.q.qsize
        self._limit = queue_size
        self._clock = clock
        self._pid = w.pid
        w.thread = threading.Thread(target=w.run, name="amdb-audit-writer", daemon=True)
        w.thread.start()
        self._finalizer = weakref.finalize(self, w.shutdown, 1.0)
        _live.add(self)

    # ---- hot path --------------------------------------------------------
    def write_op(self, op, keys, first_seq, last_seq, key_digest):
        """Record one write operation. Never blocks, never does I/O.

        ``op``: operation name; ``keys``: number of keys; ``first_seq`` /
        ``last_seq``: its sequence range; ``key_digest``: a 64-bit int digest
        of the keys computed by the caller (written as 16 hex digits). The
        pid, thread id and thread name of the calling thread are recorded.
        Dropped (and counted) if the queue is full or the log is closed.
        """
        w = self._w
        if w.closed or w.inert or self._qsize() >= self._limit:
            w.note_drop()
            return
        self._put((_OP, self._clock(), op, keys, first_seq, last_seq, key_digest,
                   self._pid, _current_thread()))

    def event(self, name, **fields):
        """Record an administrative event (``open``, ``close``, ``compact``...).

        ``fields`` must be JSON-serialisable (anything else is written as its
        ``repr``); the names ``t``, ``n``, ``event``, ``op``, ``crc``, ``pid``,
        ``tid``, ``native_tid`` and ``thread`` are reserved (ValueError: name
        a worker's pid e.g. ``worker_pid=``). Never blocks, never does I/O; dropped (and
        counted) if the queue is full or the log is closed.
        """
        if fields and not _RESERVED.isdisjoint(fields):
            raise ValueError("AuditLog.event: field names %s are reserved"
                             % sorted(_RESERVED.intersection(fields)))
        w = self._w
        if w.closed or w.inert or self._qsize() >= self._limit:
            w.note_drop()
            return
        self._put((_EVENT, self._clock(), str(name), fields, self._pid, _current_thread()))

    # ---- control ---------------------------------------------------------
    def stats(self):
        """Counters (read without locking; each one is exact, not a snapshot).

        ``written``: records written, the log's own notes included;
        ``dropped``: records lost (queue full, file failing, after close);
        ``errors``: failed opens/writes/renames (and unencodable records);
        ``queue_len``: records waiting; ``path``; ``current_bytes``: size of
        the current file; ``rotations``; ``failing``: True while the file
        cannot be written; ``closed``.
        """
        w = self._w
        return {
            "written": w.written,
            "dropped": w.full_dropped + w.error_dropped,
            "errors": w.errors,
            "queue_len": w.q.qsize(),
            "path": self.path,
            "current_bytes": w.current_bytes,
            "rotations": w.rotations,
            "failing": w.failing,
            "closed": w.closed,
        }

    def flush(self, timeout=5.0):
        """Wait until everything queued before this call has been handled.

        Returns True when it was all written (handed to the OS; no fsync) and
        any owed ``dropped`` note with it; False on timeout, when the file is
        failing (those records were dropped and counted), or when the log is
        closed and nothing can be written any more.
        """
        w = self._w
        if w.closed or w.inert or not w.thread.is_alive():
            return False
        waiter = _Waiter()
        self._put((_FLUSH, waiter))
        w.kick.set()
        return waiter.event.wait(timeout) and waiter.ok

    def close(self, timeout=5.0):
        """Write what is queued, stop the writer thread and close the file.

        Idempotent. Waits at most ``timeout`` seconds for the thread; a writer
        stuck in the kernel (e.g. a hung NFS write) is left behind as a daemon
        thread rather than blocking the caller forever. Returns None.
        """
        w = self._w
        if w.closed:
            return
        self._finalizer.detach()
        _live.discard(self)
        w.shutdown(timeout)

    @property
    def closed(self):
        return self._w.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<AuditLog {self.path!r}{' closed' if self.closed else ''}>"


_current_thread = threading.current_thread
_live = weakref.WeakSet()


def _after_fork_in_child():
    for log in list(_live):
        w = log._w
        w.inert = True
        w.drop_lock = threading.Lock()  # the writer may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- reading ---------------------------------------------------------------
def _parse(raw):
    """The record of one line (bytes, newline optional), or None if it is bad."""
    raw = raw.rstrip(b"\r\n")
    if not raw.endswith(b"}"):
        return None
    i = raw.rfind(_CRC_TAG)
    if i < 0:
        return None
    try:
        crc = int(raw[i + len(_CRC_TAG):-1])
    except ValueError:
        return None
    if zlib.crc32(raw[:i] + b"}") != crc:
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("crc") != crc:
        return None
    return rec


def _files(path, include_rotated):
    path = os.fspath(path)
    files = []
    if include_rotated:
        pat = re.compile(re.escape(os.path.basename(path)) + r"\.(\d+)$")
        rotated = []
        for f in glob.glob(glob.escape(path) + ".*"):
            m = pat.match(os.path.basename(f))
            if m:
                rotated.append((int(m.group(1)), f))
        files = [f for _, f in sorted(rotated, reverse=True)]  # oldest first
    if os.path.exists(path):
        files.append(path)
    return files


def _iter(path, include_rotated, bad):
    for f in _files(path, include_rotated):
        try:
            fh = open(f, "rb")
        except FileNotFoundError:  # rotated away while we listed
            continue
        with fh:
            for raw in fh:
                if not raw.strip():
                    continue
                rec = _parse(raw)
                if rec is None:
                    bad[0] += 1
                else:
                    yield rec


def read(path, *, include_rotated=True):
    """Yield the records of an audit log as dicts, oldest first.

    With ``include_rotated`` the rotated files ``path.<k>`` come first (the
    highest ``k``, the oldest, first), then ``path``. Lines that are truncated,
    corrupted (crc mismatch) or not JSON are skipped silently; use
    :func:`read_report` to count them. Blank lines are ignored. A missing log
    yields nothing. Each dict keeps its ``crc`` field.
    """
    yield from _iter(path, include_rotated, [0])


def read_report(path, *, include_rotated=True):
    """``(records, bad_lines)``: the list :func:`read` would yield, and the
    number of lines it skipped as truncated or corrupted."""
    bad = [0]
    records = list(_iter(path, include_rotated, bad))
    return records, bad[0]
