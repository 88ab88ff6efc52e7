"""Attach from other processes (amdb/attach.py): read_only=True while the
database is open, ParallelDB.attach(handle), pickling. Every client here is
a real other process; they talk to the test over pipes, never by sleeping."""
import multiprocessing
import os
import pickle
import signal
import socket

import pytest

import amdb
from amdb import attach
from amdb_testutil import children_of, python_child, read_line, reap, shm_entries, wait_until

# A client process: attaches from a pickled handle (hex on argv) or a path,
# then runs the commands the test sends, one per stdin line, printing one
# answer line each.
CLIENT = r'''
import os, pickle, sys
import amdb
how, arg = sys.argv[1], sys.argv[2]
if how == "handle":
    db = amdb.ParallelDB.attach(pickle.loads(bytes.fromhex(arg)))
elif how == "handle_read_only":
    db = amdb.ParallelDB.attach(pickle.loads(bytes.fromhex(arg)), read_only=True)
elif how == "pickle":
    db = pickle.loads(bytes.fromhex(arg))
else:
    db = amdb.ParallelDB(arg, read_only=True)
print("attached", "client" if db._client is not None else "owner", db.workers, flush=True)
held = {}
for line in sys.stdin:
    cmd, _, rest = line.strip().partition(" ")
    try:
        if cmd == "get":
            print(repr(db.get(rest.encode())), flush=True)
        elif cmd == "len":
            print(len(db), flush=True)
        elif cmd == "scan":
            print(repr(list(db.scan(prefix=rest.encode()))), flush=True)
        elif cmd == "batch_get":
            print(repr(db.batch_get(rest.encode().split(b","))), flush=True)
        elif cmd == "iter_open":
            held["it"] = db.iterator(prefix=rest.encode())
            print("open", flush=True)
        elif cmd == "iter_rest":
            print(repr(list(held.pop("it"))), flush=True)
        elif cmd == "snapshot":
            held["snap"] = db.snapshot()
            print(held["snap"].seq, flush=True)
        elif cmd == "snap_get":
            print(repr(held["snap"].get(rest.encode())), flush=True)
        elif cmd == "history":
            print(repr([v.value for v in db.history(rest.encode())]), flush=True)
        elif cmd == "write":
            for name, call in (("put", lambda: db.put(b"w", b"w")), ("delete", lambda: db.delete(b"a0")),
                               ("batch_put", lambda: db.batch_put([(b"w", b"w")])),
                               ("increment", lambda: db.increment(b"n")), ("compact", db.compact),
                               ("checkpoint", db.checkpoint), ("verify_key", lambda: db.verify(b"a1")),
                               ("setitem", lambda: db.__setitem__(b"w", b"w"))):
                try:
                    call()
                    print(name, "WROTE", flush=True)
                except amdb.Error as exc:
                    print(name, exc.code, flush=True)
        elif cmd == "until_gone":
            import time
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    db.get(b"a0")
                except amdb.OwnerGoneError as exc:
                    print("gone", type(exc).__name__, isinstance(exc, amdb.ClosedError), flush=True)
                    break
            else:
                print("still attached", flush=True)
        elif cmd == "reopen":
            db.close()
            db = amdb.ParallelDB(rest)
            print(len(db), repr(db.get(b"a0")), repr(db.get(b"last")), flush=True)
        elif cmd == "close":
            db.close()
            print("closed", db.closed, flush=True)
        elif cmd == "fork_read":
            import gc
            child = os.fork()
            if child == 0:
                ok = db.get(b"a1") is not None
                db.close()                      # the child's handle only
                del db
                gc.collect()
                os._exit(0 if ok else 1)
            _, status = os.waitpid(child, 0)
            print(os.WEXITSTATUS(status), repr(db.get(b"a1")), flush=True)
        elif cmd == "enter_read":
            held["slot"] = db._debug_enter_read()    # a read that stops half way (SIGSTOP, a debugger)
            print("inside", flush=True)
        elif cmd == "leave_read":
            db._debug_leave_read(held.pop("slot"))
            print("left", flush=True)
        elif cmd == "admin":
            stats = db.stats()
            print(stats["keys"], os.getpid() in stats["clients"]["attached"], db.verify().ok,
                  db.digest()["root"], flush=True)
        elif cmd == "pid":
            print(os.getpid(), flush=True)
        else:
            print("unknown", cmd, flush=True)
    except amdb.Error as exc:
        print("error", type(exc).__name__, exc.code, flush=True)
'''


def start_client(how, arg):
    proc = python_child(CLIENT, how, arg)
    line = read_line(proc)
    return proc, line


def ask(proc, command):
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return read_line(proc)


def first_line_of(script, *args):
    """The first line a child process running `script` prints; the child is reaped."""
    proc = python_child(script, *args, stdin=False)
    try:
        return read_line(proc)
    finally:
        reap(proc)


def handle_hex(db):
    return pickle.dumps(db.handle()).hex()


@pytest.fixture
def owner(make_db):
    db = make_db(workers=2)
    db.batch_put([(b"a%d" % i, b"v%d" % i) for i in range(50)])
    return db


def test_client_reads_everything_the_owner_acknowledged(owner):
    proc, line = start_client("handle", handle_hex(owner))
    try:
        assert line == "attached client 2"
        assert ask(proc, "get a7") == repr(b"v7")
        assert ask(proc, "len") == "50"
        # Async single writes (put returns before the worker applied them):
        # once put() returned, a client's read sees them, and so do its
        # reads of many keys (visible_seq covers them).
        for i in range(20):
            owner.put(b"a%d" % i, b"new%d" % i)
            assert ask(proc, f"get a{i}") == repr(b"new%d" % i)
        owner.delete(b"a3")
        assert ask(proc, "get a3") == "None"
        assert ask(proc, "len") == "49"
        expected = [(k, v) for k, v in owner.scan(prefix=b"a1")]
        assert ask(proc, "scan a1") == repr(expected)
        assert ask(proc, "batch_get a0,a3,a49") == repr(owner.batch_get([b"a0", b"a3", b"a49"]))
    finally:
        reap(proc)


def test_read_only_attaches_while_a_writer_has_it_open(tmp_path, make_db):
    path = str(tmp_path / "db")
    db = make_db(path=path, workers=2)
    db.batch_put([(b"a%d" % i, b"v%d" % i) for i in range(10)])
    assert oct(os.stat(attach.socket_path(path)).st_mode & 0o777) == "0o600"
    proc, line = start_client("path", path)
    try:
        assert line == "attached client 2"          # no second set of workers
        assert ask(proc, "get a4") == repr(b"v4")
        db.put(b"a4", b"changed")
        assert ask(proc, "get a4") == repr(b"changed")
        assert ask(proc, "history a4") == repr([b"changed", b"v4"])
        client_pid = int(ask(proc, "pid"))
        assert children_of(client_pid) == []
    finally:
        reap(proc)


def test_a_second_opener_in_another_process_attaches_as_a_client_that_writes(tmp_path, make_db):
    path = str(tmp_path / "db")
    db = make_db(path=path, workers=2)
    script = ("import amdb, sys\ndb = amdb.ParallelDB(sys.argv[1])\ndb.put(b'from', b'client')\n"
              "db.flush()\nprint(db._client is not None, db.get(b'from'), flush=True)\n")
    assert first_line_of(script, path) == "True b'client'"
    db.flush()
    assert db.get(b"from") == b"client"
    with pytest.raises(amdb.LockedError):      # the same process: one owner
        amdb.ParallelDB(path)


def test_read_only_client_writes_are_refused_before_anything_is_written(owner):
    digest = owner.digest()
    proc, _ = start_client("handle_read_only", handle_hex(owner))
    try:
        proc.stdin.write("write\n")
        proc.stdin.flush()
        answers = [read_line(proc) for _ in range(8)]
    finally:
        reap(proc)
    assert answers == [f"{name} attached_read_only" for name in
                       ("put", "delete", "batch_put", "increment", "compact", "checkpoint", "verify_key", "setitem")]
    assert owner.digest() == digest
    assert owner.get(b"w") is None


def _pool_get(key):
    return _pool_db.get(key)


def _pool_init(db):
    global _pool_db
    _pool_db = db


def test_a_client_asks_its_owner_for_stats_verify_and_digest(owner):
    proc, _ = start_client("handle", handle_hex(owner))
    try:
        assert ask(proc, "admin") == f"50 True True {owner.digest()['root']}"
    finally:
        reap(proc)


def test_the_command_line_reads_a_database_open_elsewhere(tmp_path, make_db):
    import subprocess
    import sys
    path = str(tmp_path / "db")
    db = make_db(path=path, workers=2)
    db.batch_put([(b"a%d" % i, b"v") for i in range(100)])
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    verify = subprocess.run([sys.executable, "-m", "amdb", "verify", path], capture_output=True, text=True,
                            env=env, timeout=120)
    assert verify.returncode == 0 and "100 keys" in verify.stdout and db.digest()["root"] in verify.stdout, verify
    info = subprocess.run([sys.executable, "-m", "amdb", "info", "--memory", path], capture_output=True, text=True,
                          env=env, timeout=120)
    assert info.returncode == 0 and "for 100 keys" in info.stdout, info
    assert db.get(b"a1") == b"v"                 # the owner goes on


def test_a_pickled_database_arrives_attached_in_a_process_pool(owner):
    ctx = multiprocessing.get_context("spawn")
    keys = [b"a%d" % i for i in range(50)]
    with ctx.Pool(2, initializer=_pool_init, initargs=(owner,)) as pool:
        got = pool.map(_pool_get, keys)
    assert got == [owner.get(k) for k in keys]
    proc, line = start_client("pickle", pickle.dumps(owner).hex())
    try:
        assert line == "attached client 2"
        assert ask(proc, "get a1") == repr(b"v1")
    finally:
        reap(proc)


def test_owner_close_gives_clients_owner_gone(make_db):
    db = make_db(workers=2)
    db.put(b"a0", b"x")
    proc, _ = start_client("handle", handle_hex(db))
    try:
        assert ask(proc, "get a0") == repr(b"x")
        db.close()
        assert ask(proc, "until_gone") == "gone OwnerGoneError True"
        assert ask(proc, "len") == "error OwnerGoneError owner_gone"
        # snapshot() raised a plain ClosedError once the owner was gone (seen
        # as a race in a client's read loop under ASan): every closed check
        # of ParallelDB now raises the attachment's own error.
        assert ask(proc, "snapshot") == "error OwnerGoneError owner_gone"
        assert ask(proc, "close") == "closed True"
    finally:
        reap(proc)
    with pytest.raises(amdb.ClosedError):
        db.handle()


OWNER = r'''
import sys, amdb
db = amdb.ParallelDB(sys.argv[1], workers=2)
db.batch_put([(b"a%d" % i, b"v%d" % i) for i in range(100)])
for i in range(100):
    db.put(b"last", b"%d" % i)          # acknowledged when put() returns (sync="none")
print("ready", flush=True)
sys.stdin.read()
'''


def test_owner_killed_clients_see_it_and_the_database_reopens(tmp_path):
    path = str(tmp_path / "db")
    owner_proc = python_child(OWNER, path)
    client = None
    try:
        assert read_line(owner_proc) == "ready"
        client, line = start_client("path", path)
        assert line == "attached client 2"
        assert ask(client, "get last") == repr(b"99")
        os.kill(owner_proc.pid, signal.SIGKILL)
        owner_proc.wait(timeout=10)
        assert ask(client, "until_gone") == "gone OwnerGoneError True"
        # Every acknowledged write is there when the client opens it itself.
        assert ask(client, f"reopen {path}") == f"101 {b'v0'!r} {b'99'!r}"
        assert wait_until(lambda: not shm_entries(owner_proc.pid), 10)
    finally:
        reap(owner_proc)
        if client is not None:
            reap(client)


def test_a_killed_client_blocks_nothing(owner):
    proc, _ = start_client("handle", handle_hex(owner))
    server = owner._supervisor.attach_servers[0]
    try:
        assert ask(proc, "iter_open a") == "open"          # pins what it reads, in its reader slot
        seq = int(ask(proc, "snapshot"))
        client_pid = int(ask(proc, "pid"))
        assert client_pid in server.client_pids()
    finally:
        reap(proc)
    assert wait_until(lambda: client_pid not in server.client_pids(), 10)
    for i in range(50):
        owner.put(b"a%d" % i, b"later")
    # The dead client's pin and read epoch are not waited for.
    summary = owner.compact()
    assert summary["versions_after"] < summary["versions_before"]
    assert owner.get(b"a1") == b"later" and seq > 0


def test_a_forked_child_of_a_client_reads_and_leaves_the_client_attached(owner):
    proc, _ = start_client("handle", handle_hex(owner))
    server = owner._supervisor.attach_servers[0]
    try:
        client_pid = int(ask(proc, "pid"))
        assert ask(proc, "fork_read") == f"0 {b'v1'!r}"
        owner.put(b"a1", b"after")
        assert ask(proc, "get a1") == repr(b"after")      # its connection was not ended by the child
        assert server.client_pids() == [client_pid]
    finally:
        reap(proc)


def test_client_iterators_and_snapshots_survive_the_owners_compaction(owner):
    proc, _ = start_client("handle", handle_hex(owner))
    try:
        assert ask(proc, "iter_open a") == "open"
        assert ask(proc, "snapshot") != ""
        expected = list(owner.scan(prefix=b"a"))
        for i in range(50):
            owner.put(b"a%d" % i, b"newer")
        owner.compact()
        assert ask(proc, "iter_rest") == repr(expected)
        assert ask(proc, "snap_get a5") == repr(b"v5")
        assert ask(proc, "get a5") == repr(b"newer")
    finally:
        reap(proc)


CONNECT_AS_NOBODY = r'''
import os, pickle, socket, struct, sys
handle = pickle.loads(bytes.fromhex(sys.argv[1]))
os.setgid(65534)
os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(handle.address)
except PermissionError:
    print("no permission", flush=True)
    sys.exit()
s.sendall(b"AMDB-ATTACH 1 read\n")
data, fds, _, _ = socket.recv_fds(s, 65536, 300)
print(len(fds), b"attach_refused" in data, flush=True)
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.parametrize("durable", [False, True])
def test_a_client_of_another_user_is_refused(tmp_path, make_db, durable):
    if durable:
        os.chmod(tmp_path, 0o755)
        db = make_db(path=str(tmp_path / "db"), workers=2)
        os.chmod(tmp_path / "db", 0o755)
    else:
        db = make_db(workers=2)
    proc = python_child(CONNECT_AS_NOBODY, handle_hex(db), stdin=False)
    try:
        answer = read_line(proc)
    finally:
        reap(proc)
    # A socket file is the owner's, mode 0600; an abstract one has no file
    # mode: there the owner checks the peer's uid and hands nothing over.
    assert answer == ("no permission" if durable else "0 True")
    if not durable:
        assert db._supervisor.attach_servers[0].refused == 1


def test_a_client_stopped_inside_a_read_delays_writes_briefly_only(make_db, monkeypatch):
    import time

    import amdb.supervisor
    db = make_db(workers=2, compact_min_versions=200)
    db.batch_put([(b"a%d" % i, b"v0") for i in range(300)])
    proc, _ = start_client("handle", handle_hex(db))
    try:
        assert ask(proc, "enter_read") == "inside"
        # Automatic compactions: the first retires the generation the client
        # is inside; the next must overwrite it and finds the client there.
        started = time.monotonic()
        for round_ in range(1, 6):
            db.batch_put([(b"a%d" % i, b"v%d" % round_) for i in range(300)])
        elapsed = time.monotonic() - started
        compaction = db.stats()["compaction"]
        assert compaction["compactions"] >= 1 and compaction["deferred"] >= 1, compaction
        assert elapsed < 30, elapsed       # not COMPACT_READERS_TIMEOUT per write
        # An explicit compaction waits longer (COMPACT_READERS_TIMEOUT, 0.5 s
        # here), then says who is in the way and changes nothing.
        monkeypatch.setattr(amdb.supervisor, "COMPACT_READERS_TIMEOUT", 0.5)
        with pytest.raises(amdb.Error) as info:
            db.compact()
        assert info.value.code == "readers_busy" and str(int(ask(proc, "pid"))) in str(info.value)
        assert ask(proc, "leave_read") == "left"
        summary = db.compact()                  # the read is over: nothing in the way
        assert summary["versions_after"] == 300
        assert db.get(b"a7") == b"v5"
    finally:
        reap(proc)



def test_an_outgrown_hash_table_stays_while_a_client_may_be_in_it(make_db):
    # layout.h, "Outgrown hash tables": the owner tells the worker to give a
    # table back only once no reader slot holds a read epoch from before it
    # was outgrown.
    db = make_db(workers=1)
    db.batch_put([(b"a%d" % i, b"v") for i in range(100)])
    proc, _ = start_client("handle", handle_hex(db))
    try:
        assert ask(proc, "enter_read") == "inside"
        db.batch_put([(b"k%06d" % i, b"v") for i in range(20_000)])     # outgrows 4,096 slots 3 times
        db.batch_put([(b"one", b"more")])
        assert db.stats()["memory"]["total"]["released"] == 0
        assert ask(proc, "leave_read") == "left"
        db.batch_put([(b"two", b"more")])         # its write finishes the drain; the worker gives them back
        assert db.stats()["memory"]["total"]["released"] > 0
        assert ask(proc, "get k012345") == "b'v'" and ask(proc, "get a7") == "b'v'"
    finally:
        reap(proc)


ATOMICITY_READER = r'''
import pickle, sys
import amdb
db = amdb.ParallelDB.attach(pickle.loads(bytes.fromhex(sys.argv[1])))
keys = [b"atom/%03d" % i for i in range(64)]
print("ready", flush=True)
reads = torn = 0
last = -1
while True:
    try:
        got = db.batch_get(keys)
        scanned = [v for _, v in db.scan(prefix=b"atom/")]
        snap = db.snapshot()
        snapped = snap.batch_get(keys)
        snap.close()
    except amdb.OwnerGoneError:
        break
    for view in (got, scanned, snapped):
        if len(set(view)) != 1 or len(view) != 64:
            torn += 1
    round_ = int(got[0])
    if round_ < last:
        torn += 1                       # went back in time
    last = round_
    reads += 1
print(reads, torn, last, flush=True)
'''


def test_clients_see_batches_whole_while_the_owner_writes_and_compacts(make_db):
    """Two client processes read a 64-key batch (both workers) over and over
    while the owner rewrites it, with automatic compactions switching arena
    generations under them: every read sees one batch whole, never older
    than the last."""
    from amdb_testutil import python_child
    db = make_db(workers=2, compact_min_versions=500)
    keys = [b"atom/%03d" % i for i in range(64)]
    db.batch_put([(k, b"0") for k in keys])
    readers = [python_child(ATOMICITY_READER, handle_hex(db), stdin=False) for _ in range(2)]
    try:
        assert [read_line(r) for r in readers] == ["ready", "ready"]
        rounds = 600
        for round_ in range(1, rounds + 1):
            db.batch_put([(k, b"%d" % round_) for k in keys])
        compactions = db.stats()["compaction"]["compactions"]
        db.close()                                   # the readers see their owner go, and report
        results = [read_line(r).split() for r in readers]
    finally:
        for r in readers:
            reap(r)
    assert compactions >= 10
    for reads, torn, last in results:
        assert int(reads) > 0 and int(torn) == 0 and 0 <= int(last) <= rounds


def test_handles_and_their_errors(make_db):
    db = make_db(workers=2)
    handle = db.handle()
    assert isinstance(handle, amdb.Handle) and handle.path is None and handle.owner_pid == os.getpid()
    assert pickle.loads(pickle.dumps(handle)) == handle
    with pytest.raises(amdb.InvalidTypeError) as wrong:
        amdb.ParallelDB.attach("not a handle")
    assert "db.handle()" in wrong.value.hint          # not the default hint about bytes-like keys
    gone = handle._replace(address="\0amdb-no-such-owner")
    with pytest.raises(amdb.OwnerGoneError):
        amdb.ParallelDB.attach(gone)


def test_peers_that_connect_and_say_nothing_or_garbage_hold_up_no_attach(make_db, monkeypatch):
    """The owner read each request line before it served the next connection:
    three peers that connected and said nothing held every attach up for 3 x 5 s
    (the attach gave up after its own 5 s, NoOwner). Now a silent peer is let
    go after HANDSHAKE_TIMEOUT and nobody waits for it."""
    monkeypatch.setattr(attach, "HANDSHAKE_TIMEOUT", 1.0)      # the owner's patience, for a shorter test
    db = make_db(workers=2)
    db.put(b"k", b"v")
    address = db.handle().address
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    garbage = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for peer in silent + [garbage]:
            peer.connect(address)
        garbage.sendall(b"x" * 300)                          # no newline within 256 bytes
        client = amdb.ParallelDB.attach(db.handle())
        assert client.get(b"k") == b"v"
        client.close()
        garbage.settimeout(30)
        assert garbage.recv(1) == b""                        # let go at once
        silent[0].settimeout(30)
        assert silent[0].recv(1) == b""                      # let go after HANDSHAKE_TIMEOUT
    finally:
        for peer in silent + [garbage]:
            peer.close()
    server = db._supervisor.attach_servers[0]
    assert wait_until(lambda: not server._handshakes and not server.client_pids(), 10)


def test_a_client_in_the_owners_own_process_reads_and_goes(make_db):
    db = make_db(workers=2)
    db.put(b"k", b"v")
    client = amdb.ParallelDB.attach(db.handle())
    assert client.get(b"k") == b"v" and len(client) == 1
    server = db._supervisor.attach_servers[0]
    assert server.client_pids() == [os.getpid()]
    client.close()
    assert wait_until(lambda: not server.client_pids(), 5)
    with pytest.raises(amdb.ClosedError):
        client.get(b"k")


ATTACH_AND_DIE = r'''
import os, pickle, signal, sys
import amdb
handle = pickle.loads(bytes.fromhex(sys.argv[1]))
cycles = int(sys.argv[2])
bad = 0
acked_r, acked_w = os.pipe()
for i in range(cycles):
    pid = os.fork()
    if pid == 0:
        db = amdb.ParallelDB.attach(handle)
        ok = db.get(b"a1") is not None and len(db) >= 50
        for j in range(20):
            db.put(b"c%d-%d" % (i, j), b"%d" % j)
        os.write(acked_w, b"A")             # these 20 puts returned: acknowledged
        for j in range(20, 40):
            db.put(b"c%d-%d" % (i, j), b"%d" % j)
        if ok and i % 2:
            it = db.iterator()              # dies holding a pin and a read epoch
            next(it)
        os.kill(os.getpid(), signal.SIGKILL if ok else signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL) or os.read(acked_r, 1) != b"A":
        bad += 1
print("done", bad, flush=True)
'''


def _attach_kill_cycles(db, cycles):
    """`cycles` processes attach, read, put 20 keys (acknowledged) and 20 more,
    and die by SIGKILL while the owner writes; more of them than there are
    reader slots and client channels (max_clients). Every acknowledged put is
    applied."""
    proc = python_child(ATTACH_AND_DIE, handle_hex(db), cycles, stdin=False)
    server = db._supervisor.attach_servers[0]
    written = 0
    try:
        while proc.poll() is None:
            db.put(b"n%d" % written, b"%d" % written)
            written += 1
        assert read_line(proc) == "done 0"
    finally:
        reap(proc)
    assert wait_until(lambda: not server.client_pids(), 10)
    assert wait_until(lambda: db._writer.channels_open() == 0, 10)
    db.flush()
    assert all(db.get(b"n%d" % i) == b"%d" % i for i in range(written))
    assert all(db.get(b"c%d-%d" % (i, j)) == b"%d" % j for i in range(cycles) for j in range(20))
    client = amdb.ParallelDB.attach(db.handle())     # a slot is still free
    assert client.get(b"a1") == db.get(b"a1")
    client.close()


@pytest.fixture
def few_slots_owner(make_db):
    db = make_db(workers=2, max_clients=8)
    db.batch_put([(b"a%d" % i, b"v%d" % i) for i in range(50)])
    return db


def test_attach_and_kill_cycles_leak_nothing(few_slots_owner):
    _attach_kill_cycles(few_slots_owner, 150)


@pytest.mark.slow
def test_attach_and_kill_soak(few_slots_owner):
    _attach_kill_cycles(few_slots_owner, 1000)


def test_max_clients_bounds_the_processes_attached_at_once(make_db):
    db = make_db(workers=2, max_clients=2)
    db.put(b"k", b"v")
    first = amdb.ParallelDB.attach(db.handle())
    second = amdb.ParallelDB.attach(db.handle(), read_only=True)
    assert db._writer.channels_open() == 1 and db._writer.max_forwards == 2
    clients = db.stats()["clients"]
    assert (clients["max_clients"], clients["reader_slots_held"]) == (2, 2)
    with pytest.raises(amdb.Error) as refused:
        amdb.ParallelDB.attach(db.handle())
    assert refused.value.code == "too_many_readers" and "max_clients" in refused.value.hint
    # The refused attach gave its channel back; the two attached read and write on.
    assert wait_until(lambda: db._writer.channels_open() == 1, 10)
    first.put(b"k", b"first")
    first.flush()
    assert second.get(b"k") == b"first"
    first.close()
    assert db.stats()["clients"]["reader_slots_held"] == 1
    third = amdb.ParallelDB.attach(db.handle())          # the slot first held is free again
    third.put(b"k", b"third")
    third.flush()
    assert db.get(b"k") == b"third" and second.get(b"k") == b"third"
    third.close()
    second.close()


def test_a_forked_child_past_max_clients_is_told_why(make_db):
    db = make_db(workers=2, max_clients=1)
    db.put(b"k", b"v")
    client = amdb.ParallelDB.attach(db.handle(), read_only=True)    # holds the one slot
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            db.get(b"k")
            answer = b"read"
        except amdb.Error as exc:
            answer = exc.code.encode()
        os.write(w, answer)
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 100) == b"too_many_readers"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert client.get(b"k") == b"v"
    client.close()


RACE_FOR_SLOTS = r'''
import os, pickle, sys
import amdb
handle = pickle.loads(bytes.fromhex(sys.argv[1]))
n = int(sys.argv[2])
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
told_r, told_w = os.pipe()
kids = []
for i in range(n):
    pid = os.fork()
    if pid == 0:
        os.read(go_r, 1)                        # every child attaches at once
        try:
            db = amdb.ParallelDB.attach(handle)
            for j in range(10):
                db.put(b"r%d-%d" % (i, j), b"%d" % j)
            db.flush()
            os.write(told_w, b"A")
            os.read(done_r, 1)                  # holds its slot until every child answered
            db.close()
        except amdb.Error as exc:
            os.write(told_w, b"R" if exc.code == "too_many_readers" else b"?")
        os._exit(0)
    kids.append(pid)
os.write(go_w, b"g" * n)
answers = b"".join(os.read(told_r, 1) for _ in range(n))
os.write(done_w, b"d" * n)
bad = sum(os.waitpid(pid, 0)[1] != 0 for pid in kids)
print(answers.count(b"A"), answers.count(b"R"), answers.count(b"?"), bad, flush=True)
'''


def test_processes_racing_for_the_last_slots_attach_or_are_refused_cleanly(make_db):
    db = make_db(workers=2, max_clients=4)
    proc = python_child(RACE_FOR_SLOTS, handle_hex(db), 16, stdin=False)
    try:
        attached, refused, other, bad = map(int, read_line(proc).split())
    finally:
        reap(proc)
    assert (attached, refused, other, bad) == (4, 12, 0, 0)
    assert wait_until(lambda: db._writer.channels_open() == 0, 10)
    assert sum(db.get(b"r%d-9" % i) == b"9" for i in range(16)) == 4     # every attached child's puts
    client = amdb.ParallelDB.attach(db.handle())          # every slot is free again
    client.close()


def test_a_second_opener_past_max_clients_is_told_so_not_locked_out(tmp_path, make_db):
    path = str(tmp_path / "db")
    db = make_db(path=path, workers=2, max_clients=1)
    client = amdb.ParallelDB.attach(db.handle())          # holds the one slot and channel
    script = ("import sys, amdb\ntry:\n    amdb.ParallelDB(sys.argv[1])\n    print('opened')\n"
              "except amdb.Error as exc:\n    print(type(exc).__name__, exc.code, 'max_clients' in exc.hint)\n")
    assert first_line_of(script, path) == "Error too_many_readers True"
    client.close()


@pytest.mark.parametrize("bad, error", [(0, amdb.InvalidArgumentError), (16385, amdb.InvalidArgumentError),
                                        ("8", amdb.InvalidTypeError), (True, amdb.InvalidTypeError)])
def test_max_clients_is_checked_before_anything_opens(tmp_path, bad, error):
    with pytest.raises(error, match="max_clients"):
        amdb.ParallelDB(str(tmp_path / "db"), max_clients=bad)
    assert not (tmp_path / "db").exists()
