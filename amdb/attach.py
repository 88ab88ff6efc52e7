"""Attach: how a process other than the owner gets at an open database.

The owner serves attaches on a UNIX socket (AttachServer): in the database
directory (``attach.sock``, mode 0600) for a durable database, in the
abstract namespace under a random name for a memory-only one. A client
(connect) sends one request line; the owner checks the peer's credentials
(SO_PEERCRED: the same uid, else refused) and answers with the geometry of
the segments and their file descriptors (SCM_RIGHTS), so that nothing needs
a name in /dev/shm. The client maps them read-only (the database control
block read-write: its reader slot is there) and reads like a forked child
does (attachment.pyx, "Process safety"; layout.h, "Reader slots").

The connection stays open for the client's life: when the owner goes
(close, crash), the client's watcher thread sees the connection end and
marks the attachment gone, so its next call raises OwnerGoneError; when the
client goes, the owner drops the connection, and the client's reader slot
is free again because its pid no longer runs.

What a client may do: read (get, batch_get, scans, iterators, snapshots,
history, len), and ask its owner to run stats(), verify() or digest() for it
(an admin request on a connection of its own, answered by a thread of the
owner). A writing client (WRITE_REQUEST) also gets a channel (layout.h,
"Client channels"; its fd after the segments') for put and delete, and runs
its other writes in the owner over a connection of calls (CALL_REQUEST,
WRITE_CALLS). A read-only client's writes are refused before anything is
written (Error code "attached_read_only").

Who calls it: amdb.supervisor.Supervisor starts and stops the server;
amdb.db.ParallelDB attaches (read_only=True while an owner is open,
ParallelDB.attach(handle), unpickling).
"""
import errno
import json
import os
import secrets
import selectors
import socket
import struct
import threading
import time
import weakref
from typing import NamedTuple, Optional

from amdb.errors import Error, OwnerGoneError, StorageError

SOCKET_NAME = "attach.sock"
PROTOCOL = 1
REQUEST = b"AMDB-ATTACH %d read\n" % PROTOCOL
WRITE_REQUEST = b"AMDB-ATTACH %d write\n" % PROTOCOL  # an attach that writes: with a channel
CALL_REQUEST = b"AMDB-CALL %d\n" % PROTOCOL    # a connection of calls the owner runs for its client
ADMIN_REQUEST = b"AMDB-ADMIN %d " % PROTOCOL    # + the call's name + newline: run it in the owner
ADMIN_CALLS = ("stats", "verify", "digest")       # what a client may ask its owner to run
# What a writing client's calls the owner runs for it (ClientLink.call); its
# put() and delete() go through its channel instead (layout.h, "Client channels").
WRITE_CALLS = ("put", "delete", "batch_put", "batch_delete", "put_array", "put_packed", "increment",
               "put_if_absent", "compare_and_set", "_apply_client_batch", "compact", "checkpoint", "backup",
               "verify", "stats", "digest")
HANDSHAKE_TIMEOUT = 5.0             # seconds a connect waits for the owner's answer
OWNER_POLL = 1.0                    # seconds between a client's checks that its owner's pid runs
_UCRED = struct.Struct("3i")        # struct ucred: pid, uid, gid
_LENGTH = struct.Struct("<I")
_UNIX_PATH_MAX = 107                # sun_path holds 108 bytes with its terminating zero


class Handle(NamedTuple):
    """A picklable token that attaches to an open database from another
    process (``ParallelDB.attach(handle)``; ``pickle.dumps(db)`` carries one).
    It names the owner's socket; it holds no secret: the owner checks the
    peer's uid."""
    address: str                    # socket path, or an abstract name starting with "\\0"
    path: Optional[str]             # the database directory, None: memory only
    owner_pid: int


def socket_path(directory):
    return os.path.join(directory, SOCKET_NAME)


class _Handshake:
    """A connection whose request line is still being read."""
    __slots__ = ("pid", "uid", "deadline", "request")

    def __init__(self, pid, uid, deadline):
        self.pid = pid
        self.uid = uid                  # SO_PEERCRED: another user's request is refused
        self.deadline = deadline        # time.monotonic() past which it is let go
        self.request = b""


class _Address:
    """A socket address usable with bind/connect: a long directory path goes
    through /proc/self/fd (sun_path holds 107 bytes)."""

    def __init__(self, address):
        self.dir_fd = None
        self.value = address
        if not address.startswith("\0") and len(os.fsencode(address)) > _UNIX_PATH_MAX:
            directory, name = os.path.split(address)
            self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.value = f"/proc/self/fd/{self.dir_fd}/{name}"

    def close(self):
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None


def _send_message(sock, payload, fds=()):
    data = json.dumps(payload).encode()
    message = _LENGTH.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [message], list(fds))
    else:
        sent = sock.send(message)
    if sent < len(message):
        sock.sendall(message[sent:])


def _receive_message(sock, max_fds):
    """(payload, [fd]) of one message; the caller owns the fds."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, max_fds)
    try:
        if not data:
            raise ConnectionError("the owner closed the connection")
        while len(data) < _LENGTH.size or len(data) < _LENGTH.size + _LENGTH.unpack_from(data)[0]:
            more = sock.recv(1 << 16)
            if not more:
                raise ConnectionError("the owner closed the connection mid-answer")
            data += more
        length = _LENGTH.unpack_from(data)[0]
        return json.loads(data[_LENGTH.size:_LENGTH.size + length]), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _receive_nowait(conn, size):
    """What a non-blocking connection holds: bytes; b"" once its peer is
    gone; None when nothing came yet."""
    try:
        return conn.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _receive_exactly(sock, length):
    data = bytearray()
    while len(data) < length:
        more = sock.recv(min(length - len(data), 1 << 20))
        if not more:
            raise ConnectionError("the connection ended")
        data += more
    return bytes(data)


# ---- the owner's side -----------------------------------------------------------

class AttachServer:
    """The owner's attach service: one daemon thread, one listening socket,
    the open client connections. `describe()` gives the geometry a client
    needs, `fds` the descriptors to hand over (db control, then one per
    partition); both stay valid until stop()."""

    def __init__(self, address, describe, fds, admin=None, services=None):
        self.address = address
        self.describe = describe
        self.admin = admin              # admin(name) -> result: an ADMIN_CALLS call on the owner's database
        # services: writing clients (Supervisor): open_channel(pid) -> (fd, entry, capacity),
        # close_channel(entry), call(name, args, kwargs) -> result, stopped()
        self.services = services
        self.channels = {}              # connection -> its client's channel entry
        self.fds = list(fds)
        self.clients = {}               # connection -> peer pid
        self._handshakes = {}           # connection -> _Handshake: its request not read whole yet
        self.attaches = 0
        self.refused = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        bind_address = _Address(address)
        try:
            if not address.startswith("\0"):
                try:
                    os.unlink(bind_address.value)      # a dead owner's socket (we hold the directory lock)
                except FileNotFoundError:
                    pass
            self._listener.bind(bind_address.value)
            if not address.startswith("\0"):
                os.chmod(bind_address.value, 0o600)
            self._listener.listen(64)
        except BaseException:
            self._listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        finally:
            bind_address.close()
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._owner_pid = os.getpid()
        self._thread = threading.Thread(target=self._serve, name="amdb-attach", daemon=True)
        self._thread.start()
        _servers.add(self)

    def _serve(self):
        while not self._stopping:
            timeout = None
            if self._handshakes:
                timeout = max(0.0, min(h.deadline for h in self._handshakes.values()) - time.monotonic())
            for key, _events in self._selector.select(timeout):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    return
                elif key.data == "handshake":
                    self._handshake_event(key.fileobj)
                else:
                    self._client_event(key.fileobj)
            now = time.monotonic()
            for conn in [c for c, h in self._handshakes.items() if h.deadline <= now]:
                self._end_handshake(conn)           # connected, never asked: let it go

    def _accept(self):
        """A new connection: its peer's credentials, then its request line,
        read as it comes, so that a peer that connects and says nothing holds
        up no other attach (it is let go after HANDSHAKE_TIMEOUT)."""
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        try:
            pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            conn.setblocking(False)
            self._handshakes[conn] = _Handshake(pid, uid, time.monotonic() + HANDSHAKE_TIMEOUT)
            self._selector.register(conn, selectors.EVENT_READ, "handshake")
        except OSError:
            self._end_handshake(conn)

    def _end_handshake(self, conn):
        self._handshakes.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def _handshake_event(self, conn):
        """More of a request line: answer it once whole."""
        handshake = self._handshakes[conn]
        more = _receive_nowait(conn, 256)
        if more is None:
            return
        handshake.request += more
        if not more or len(handshake.request) > 256:        # gone, or no request of ours
            self._end_handshake(conn)
            return
        if not handshake.request.endswith(b"\n"):
            return
        self._handshakes.pop(conn)
        self._selector.unregister(conn)
        self._answer(conn, handshake)

    def _answer(self, conn, handshake):
        pid, request = handshake.pid, handshake.request
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            if handshake.uid != os.getuid():
                self.refused += 1
                _send_message(conn, {"error": f"process {pid} runs as uid {handshake.uid}; this database "
                                              f"belongs to uid {os.getuid()}", "code": "attach_refused"})
                conn.close()
                return
            if request == CALL_REQUEST and self.services is not None:
                threading.Thread(target=self._serve_calls, args=(conn, pid), name="amdb-calls",
                                 daemon=True).start()
                return
            if request.startswith(ADMIN_REQUEST) and self.admin is not None:
                # Its own thread: a verify() can take a while, and attaches go on meanwhile.
                threading.Thread(target=self._serve_admin, args=(conn, request[len(ADMIN_REQUEST):-1]),
                                 name="amdb-admin", daemon=True).start()
                return
            channel = None
            if request == WRITE_REQUEST and self.services is not None:
                try:
                    channel = self.services.open_channel(pid)
                except Exception as exc:
                    why = exc.args[0] if isinstance(exc, Error) and exc.args else exc     # its hint goes apart
                    _send_message(conn, {"error": f"the owner could not give this client a channel: {why}",
                                         "code": getattr(exc, "code", None) or "attach_refused",
                                         "hint": getattr(exc, "hint", None) or ""})
                    conn.close()
                    return
            elif request != REQUEST:
                self.refused += 1
                _send_message(conn, {"error": f"unknown attach request {request[:64]!r} (protocol {PROTOCOL})",
                                     "code": "attach_refused"})
                conn.close()
                return
            # Counted before the answer: once attached, the client is listed.
            self.clients[conn] = pid
            self.attaches += 1
            description = dict(self.describe(), protocol=PROTOCOL)
            if channel is None:
                _send_message(conn, description, self.fds)
            else:
                fd, entry, capacity = channel
                self.channels[conn] = entry
                try:
                    _send_message(conn, dict(description, channel_capacity=capacity), self.fds + [fd])
                finally:
                    os.close(fd)        # the client has its copy; the owner keeps its mapping
            conn.setblocking(False)
            self._selector.register(conn, selectors.EVENT_READ, "client")
        except OSError:
            if self.clients.pop(conn, None) is not None:
                self.attaches -= 1
            entry = self.channels.pop(conn, None)
            if entry is not None:
                self.services.close_channel(entry)
            conn.close()

    def _serve_calls(self, conn, pid):
        """A writing client's calls (WRITE_CALLS), run here on the owner's
        database one after another, each answered with its result or its
        exception, pickled (the peer is a process of the same user), until
        the client closes the connection."""
        import pickle
        try:
            conn.settimeout(None)
            _send_message(conn, {"calls": PROTOCOL})      # the client sends calls only after this
            while not self._stopping:
                try:
                    header = _receive_exactly(conn, _LENGTH.size)
                except ConnectionError:
                    return
                name, args, kwargs = pickle.loads(_receive_exactly(conn, _LENGTH.unpack(header)[0]))
                try:
                    if name not in WRITE_CALLS:
                        raise Error(f"unknown call {name!r}", code="attach_refused")
                    reply = pickle.dumps(("result", self.services.call(name, args, kwargs)))
                except Exception as exc:
                    try:
                        reply = pickle.dumps(("exception", exc))
                    except Exception:
                        reply = pickle.dumps(("exception", Error(f"{type(exc).__name__}: {exc}")))
                conn.sendall(_LENGTH.pack(len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve_admin(self, conn, name):
        """Run one admin call for a client and answer with its result (or its
        exception), pickled: the peer is a process of the same user."""
        import pickle
        try:
            name = name.decode("ascii", "replace")
            if name not in ADMIN_CALLS:
                raise Error(f"unknown admin call {name!r}", code="attach_refused")
            try:
                reply = {"result": pickle.dumps(self.admin(name)).hex()}
            except Exception as exc:
                reply = {"exception": pickle.dumps(exc).hex()}
            conn.settimeout(HANDSHAKE_TIMEOUT)
            _send_message(conn, reply)
        except Exception:
            pass
        finally:
            conn.close()

    def _client_event(self, conn):
        data = _receive_nowait(conn, 64)
        if data == b"":                 # the client closed, or its process is gone
            self._drop(conn)

    def _drop(self, conn):
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        self.clients.pop(conn, None)
        entry = self.channels.pop(conn, None)
        if entry is not None:
            self.services.close_channel(entry)     # what it published still goes on
        conn.close()

    def client_pids(self):
        return sorted(self.clients.values())

    def stop(self):
        """Stop serving: every client's connection ends (their next call raises
        OwnerGoneError), the socket file goes. Idempotent; in a forked child of
        the owner it only drops this process's copies of the descriptors."""
        if self._stopping:
            return
        self._stopping = True
        if os.getpid() == self._owner_pid:
            if self.services is not None:
                self.services.stopped()
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5.0)
            if not self.address.startswith("\0"):
                unlink_address = _Address(self.address)
                try:
                    os.unlink(unlink_address.value)
                except OSError:
                    pass
                finally:
                    unlink_address.close()
        self._close_descriptors(end_connections=True)
        _servers.discard(self)

    def _close_descriptors(self, end_connections):
        """Close the listener, the wake pipe and every client connection;
        `end_connections`: shut them down too (the owner, stopping), not only
        this process's copy (a forked child)."""
        for conn in list(self.clients):
            if end_connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            conn.close()
        self.clients.clear()
        for conn in list(self._handshakes):
            conn.close()
        self._handshakes.clear()
        self._listener.close()
        if end_connections:
            self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def forget_in_child(self):
        """After a fork: this process is not the owner; its copies of the
        socket must not keep clients' connections open."""
        self._stopping = True
        self._close_descriptors(end_connections=False)


_servers = weakref.WeakSet()


def _after_fork_in_child():
    for server in list(_servers):
        server.forget_in_child()
        _servers.discard(server)


os.register_at_fork(after_in_child=_after_fork_in_child)


def memory_only_address():
    return f"\0amdb-{os.getpid()}-{secrets.token_hex(8)}"


# ---- the client's side --------------------------------------------------------

class NoOwner(Exception):
    """Nothing serves attaches at that address (no owner, or a dead one)."""


def _request(address, request, max_fds, answer_timeout=HANDSHAKE_TIMEOUT):
    """Connect to the owner at `address`, send one request line, read its
    answer (waiting `answer_timeout` seconds at most; None: as long as it
    takes): (socket, payload, [fd]), the socket still open. Raises NoOwner
    when no owner answers there, amdb.Error when it is another user's or
    refuses."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    where = _Address(address)
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            sock.connect(where.value)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                raise NoOwner(str(exc)) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise Error(f"cannot attach: the owner's socket {address!r} is not this user's ({exc.strerror})",
                            code="attach_refused",
                            hint="attach from a process of the user that opened the database") from None
            raise
        try:
            sock.sendall(request)
            sock.settimeout(answer_timeout)
            payload, fds = _receive_message(sock, max_fds)
        except (ConnectionError, socket.timeout) as exc:
            raise NoOwner(f"no answer from the owner: {exc}") from None
        if "error" in payload:
            for fd in fds:
                os.close(fd)
            code = payload.get("code", "attach_refused")
            raise (StorageError if code == "io_error" else Error)(
                payload["error"], code=code,
                hint=payload.get("hint") or "attach from a process of the user that opened the database")
        return sock, payload, fds
    except BaseException:
        sock.close()
        raise
    finally:
        where.close()


def connect(address, max_fds, write=False):
    """Attach: (socket, description, [fd]); the socket stays open for the
    client's life (Watch). `write`: ask for a channel too (its fd last)."""
    sock, description, fds = _request(address, WRITE_REQUEST if write else REQUEST, max_fds)
    sock.settimeout(None)
    return sock, description, fds


def admin_call(address, name):
    """Run ADMIN_CALLS `name` (stats, verify, digest) in the owner that serves
    `address`, on a connection of its own; its result, or its exception raised
    here. NoOwner when no owner answers."""
    import pickle
    # No limit on the answer: a verify() of a large database takes a while.
    sock, reply, fds = _request(address, ADMIN_REQUEST + name.encode("ascii") + b"\n", 0, None)
    sock.close()
    for fd in fds:
        os.close(fd)
    if "exception" in reply:
        raise pickle.loads(bytes.fromhex(reply["exception"]))
    return pickle.loads(bytes.fromhex(reply["result"]))


class Watch:
    """A client's watch on its owner: a daemon thread that waits on the
    connection and checks every OWNER_POLL seconds that the owner's pid runs
    (a forked child of the owner may keep the connection open after it).
    When the owner is gone it calls `on_gone(reason)` once."""

    def __init__(self, sock, owner_pid, on_gone):
        self.sock = sock
        self.owner_pid = owner_pid
        self.on_gone = on_gone
        self.closing = False
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="amdb-attach-watch", daemon=True)
        self._thread.start()
        _watches.add(self)

    def _run(self):
        from amdb.shm.segment import pid_alive
        sock = self.sock
        reason = None
        while not self.closing:
            try:
                sock.settimeout(OWNER_POLL)
                data = sock.recv(64)
                if not data:
                    reason = "its owner closed the database, or exited"
                    break
            except socket.timeout:
                if not pid_alive(self.owner_pid):
                    reason = f"its owner (process {self.owner_pid}) is gone"
                    break
            except OSError:
                reason = "the connection to its owner broke"
                break
        if not self.closing:
            self.on_gone(reason)

    def close(self):
        self.closing = True
        if os.getpid() == self.pid:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)     # wakes the watcher's recv
            except OSError:
                pass
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=OWNER_POLL * 2)
        # In a forked child, only its copy of the descriptor: a shutdown would
        # end the parent's connection too.
        self.sock.close()
        _watches.discard(self)


_watches = weakref.WeakSet()


def _forget_watches_in_child():
    """After a fork: the connection is the parent's; the child's copy must
    not keep it open after the parent is gone (nor end it: Watch.close)."""
    for watch in list(_watches):
        watch.closing = True
        watch.sock.close()
        _watches.discard(watch)


os.register_at_fork(after_in_child=_forget_watches_in_child)


def owner_gone_error(path, reason):
    where = f"{path}" if path else "this memory-only database"
    hint = (f"reopen it: ParallelDB({path!r}) (a durable database opens in this process once the owner's "
            "workers are gone)" if path else "a memory-only database ends with its owner: its data is gone")
    return OwnerGoneError(f"{where}: {reason}", hint=hint)


class ClientLink:
    """What keeps a client attached: its connection and watch, and, for a
    client collected without close(), the finalizer that frees its reader
    slot (it holds the database control block's Mapping for that)."""

    def __init__(self, handle, watch, finalizer, channel=None):
        self.handle = handle
        self.watch = watch
        self.finalizer = finalizer
        self.channel = channel          # a writing client's channel Mapping, or None (reads only)
        self._calls = None              # the connection its calls go through, opened at the first
        self._calls_lock = threading.Lock()

    def close(self):
        """close(): the attachment itself lets its slot and memory go
        (Attachment.close_foreign); this ends the connections (the owner then
        sends on what the channel holds, and lets it go)."""
        self.finalizer.detach()
        with self._calls_lock:
            if self._calls is not None:
                self._calls.close()
                self._calls = None
        self.watch.close()

    def call(self, name, args, kwargs, att):
        """Run WRITE_CALLS `name` on the owner's database, for this client:
        its result, or its exception raised here. One call at a time per
        client (a lock): the owner runs them in order."""
        import pickle
        if att.closed:
            raise att.closed_error()
        request = pickle.dumps((name, args, kwargs))
        with self._calls_lock:
            try:
                if self._calls is None:
                    self._calls = _open_calls(self.handle.address)
                self._calls.sendall(_LENGTH.pack(len(request)) + request)
                header = _receive_exactly(self._calls, _LENGTH.size)
                kind, value = pickle.loads(_receive_exactly(self._calls, _LENGTH.unpack(header)[0]))
            except (NoOwner, ConnectionError, OSError):
                if self._calls is not None:
                    self._calls.close()
                    self._calls = None
                if att.closed:
                    raise att.closed_error() from None
                raise owner_gone_error(self.handle.path, "its owner no longer answers") from None
        if kind == "exception":
            raise value
        return value

    def admin(self, name, att):
        """An ADMIN_CALLS call run by the owner (stats, verify, digest)."""
        if att.closed:
            raise att.closed_error()
        try:
            return admin_call(self.handle.address, name)
        except NoOwner:
            raise owner_gone_error(self.handle.path, "its owner no longer answers") from None


def _open_calls(address):
    """A connection for a client's calls (CALL_REQUEST), once the owner
    answered that it serves them."""
    sock, _answer, _fds = _request(address, CALL_REQUEST, 0)
    sock.settimeout(None)
    return sock


def _release_client(watch, db_mapping, slot, pid):
    from amdb.native.client.attachment import release_reader_slot
    watch.close()
    if os.getpid() == pid:          # a forked child's copy of the slot is not its own
        release_reader_slot(db_mapping, slot, pid)


def attach_client(att, handle, write=False):
    """Attach `att` (a fresh Attachment) to the database the owner at
    handle.address serves: map what it hands over, take a reader slot, start
    the watch. `write`: with a channel for its writes (layout.h, "Client
    channels"). Returns (description, ClientLink). Raises NoOwner when no
    owner answers."""
    from amdb.native.constants import MAX_WORKERS, CONTROL_BYTES
    from amdb.shm.arena import Mapping
    sock, description, fds = connect(handle.address, 2 + MAX_WORKERS, write)
    channel = None
    try:
        workers = description["workers"]
        if len(fds) != 1 + workers + (1 if write else 0):
            raise Error(f"the owner handed over {len(fds)} descriptors for {workers} workers",
                        code="attach_refused")
        if write:
            channel = Mapping(fds[-1], 0, CONTROL_BYTES + description["channel_capacity"], True)
        db_mapping = Mapping(fds[0], 0, description["db_control_bytes"], True)
        controls, arenas = [], []
        for index in range(workers):
            fd = fds[1 + index]
            controls.append(Mapping(fd, 0, description["arena_offset"], False))
            arenas.append(Mapping(fd, description["arena_offset"],
                                  description["regions"] * description["arena_size"], False))
    except BaseException:
        sock.close()
        raise
    finally:
        for fd in fds:
            os.close(fd)
    handle = Handle(handle.address, description["path"], description["owner_pid"])
    try:
        att.attach(db_mapping, controls, arenas)
        slot = att.became_client(handle.path)
    except BaseException:               # no reader slot (max_clients): the owner lets the channel go
        sock.close()
        att.close_foreign()
        raise
    att_ref = weakref.ref(att)

    def on_gone(reason):
        live = att_ref()
        if live is not None:
            live.owner_gone(reason)

    watch = Watch(sock, handle.owner_pid, on_gone)
    finalizer = weakref.finalize(att, _release_client, watch, db_mapping, slot, os.getpid())
    return description, ClientLink(handle, watch, finalizer, channel)
