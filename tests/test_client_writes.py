"""Writes from attached clients (issue 15): put and delete through a channel
of the client's own, forwarded by the owner (layout.h, "Client channels");
batches, write_batch() and read-modify-write run by the owner. Every client
is a real other process that talks to the test over pipes."""
import contextlib
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading

import pytest

import amdb
from amdb_testutil import python_child, read_line, reap, shm_entries, wait_until

WRITER = r'''
import os, pickle, sys
import amdb
how, arg = sys.argv[1], sys.argv[2]
db = amdb.ParallelDB.attach(pickle.loads(bytes.fromhex(arg))) if how == "handle" else amdb.ParallelDB(arg)
print("attached", os.getpid(), flush=True)
for line in sys.stdin:
    cmd, _, rest = line.strip().partition(" ")
    try:
        if cmd == "put_many":                  # put_many PREFIX N: print once every put returned
            prefix, n = rest.split()
            for i in range(int(n)):
                db.put(b"%s%d" % (prefix.encode(), i), b"value-%d" % i)
            print("acknowledged", n, flush=True)
        elif cmd == "put_get":                 # put_get N: each put read back at once; print the misses
            misses = 0
            for i in range(int(rest)):
                db.put(b"pg%d" % i, b"%d" % i)
                misses += db.get(b"pg%d" % i) != b"%d" % i
            print("misses", misses, flush=True)
        elif cmd == "put_many_set_flag":       # put_many_set_flag FILE N: N puts, flush, then FILE's byte 0 = 1
            import mmap
            name, n = rest.split()
            for i in range(int(n)):
                db.put(b"g%d" % i, b"value-%d" % i)
            db.flush()
            with open(name, "r+b") as f, mmap.mmap(f.fileno(), 4096) as flag:
                flag[0] = 1
            print("acknowledged", n, flush=True)
        elif cmd == "threads_put":             # threads_put N: 4 threads put N keys each, past channel wraps
            import threading
            n = int(rest)
            def put_all(t):
                for i in range(n):
                    db.put(b"t%d-%d" % (t, i), b"%d" % i * 20)
            threads = [threading.Thread(target=put_all, args=(t,)) for t in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            db.flush()
            print("acknowledged", 4 * n, flush=True)
        elif cmd == "flood":                   # flood N: a thread puts without pause; print once N returned
            import threading
            flood = {"stop": False, "n": 0, "started": threading.Event()}
            def put_forever(n=int(rest)):
                while not flood["stop"]:
                    db.put(b"f%d" % (flood["n"] % 50_000), b"x" * 100)
                    flood["n"] += 1
                    if flood["n"] == n:
                        flood["started"].set()
            flood["thread"] = threading.Thread(target=put_forever)
            flood["thread"].start()
            flood["started"].wait()
            print("flooding", flush=True)
        elif cmd == "flood_stop":
            flood["stop"] = True
            flood["thread"].join()
            db.flush()
            print("flooded", flood["n"], flush=True)
        elif cmd == "get":
            print(repr(db.get(rest.encode())), flush=True)
        elif cmd == "delete":
            db.delete(rest.encode())
            print("deleted", flush=True)
        elif cmd == "flush":
            db.flush()
            print("flushed", flush=True)
        elif cmd == "batch":
            print(db.batch_put([(b"b%d" % i, b"batch") for i in range(int(rest))]).results.count, flush=True)
        elif cmd == "write_batch":
            with db.write_batch() as wb:
                wb.put(b"wb-put", b"1")
                wb.delete(b"b0")
                wb.increment(b"wb-counter", 7)
            print(wb.result.count, flush=True)
        elif cmd == "write_batch_raises":
            try:
                with db.write_batch() as wb:
                    wb.put(b"never", b"1")
                    raise KeyError("the block fails")
            except KeyError:
                print("raised", flush=True)
        elif cmd == "rmw":
            print(db.increment(b"counter", 3), db.increment(b"counter", 4), db.put_if_absent(b"pia", b"first"),
                  db.put_if_absent(b"pia", b"second"), db.compare_and_set(b"pia", b"first", b"third"), flush=True)
        elif cmd == "bad":
            for name, call in (("key_too_large", lambda: db.put(b"k" * (db.max_key_size + 1), b"v")),
                               ("value_too_large", lambda: db.put(b"k", b"v" * (db.max_value_size + 1))),
                               ("not_bytes", lambda: db.put("str", b"v")),
                               ("batch_value_too_large",
                                lambda: db.write_batch().put(b"k", b"v" * (db.max_value_size + 1))),
                               ("batch_delta_not_int", lambda: db.write_batch().increment(b"n", "1"))):
                try:
                    call()
                    print(name, "WROTE", flush=True)
                except (amdb.Error, TypeError) as exc:
                    print(name, type(exc).__name__, flush=True)
        elif cmd == "fork_child":
            db.put(b"before-fork", b"1")
            parents_put = db.put
            pid = os.fork()
            if pid == 0:
                seen = db.get(b"before-fork")
                try:
                    parents_put(b"never", b"x")     # the parent's channel: refused, with the way out
                    refused = False
                except amdb.Error as exc:
                    refused = exc.code == "forked" and "db.put(...)" in str(exc)
                db.put(b"child", b"x")              # attaches the child to the owner first
                ok = refused and seen == b"1" and db.get(b"child") == b"x"
                db.close()                          # the child's own: its parent stays attached
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            db.put(b"after-fork", b"1")
            db.flush()
            print(os.WEXITSTATUS(status), flush=True)
        elif cmd == "admin_writes":               # admin_writes DIR: compact, checkpoint, backup to DIR/copy
            os.chdir(rest)
            db.compact()
            seq = db.checkpoint()
            print(db.backup("copy") >= seq, flush=True)
        elif cmd == "close":
            db.close()
            print("closed", flush=True)
        elif cmd == "after_gone":
            try:
                db.put(b"late", b"x")
                db.flush()
                print("wrote", flush=True)
            except amdb.OwnerGoneError as exc:
                print("gone", flush=True)
        else:
            print("unknown", cmd, flush=True)
    except amdb.Error as exc:
        print("error", type(exc).__name__, exc.code, flush=True)
'''


def start_writer(db=None, path=None):
    if path is not None:
        proc = python_child(WRITER, "path", path)
    else:
        proc = python_child(WRITER, "handle", pickle.dumps(db.handle()).hex())
    assert read_line(proc).startswith("attached")
    return proc


def ask(proc, command, timeout=60.0):
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return read_line(proc, timeout)


def test_a_clients_puts_are_read_back_at_once_by_itself_and_after_flush_by_others(make_db):
    db = make_db(workers=2)
    one, two = start_writer(db), start_writer(db)
    try:
        assert ask(one, "put_many k 2000") == "acknowledged 2000"
        assert ask(one, "get k1999") == "b'value-1999'"      # its own write, no flush
        assert ask(one, "delete k7") == "deleted"
        assert ask(one, "get k7") == "None"
        assert ask(one, "flush") == "flushed"
        assert ask(two, "get k1998") == "b'value-1998'"
        assert ask(two, "get k7") == "None"
        clients = db.stats()["clients"]
        assert clients["channels"] == 2 and clients["forwarded"] == 2001   # 2000 puts and a delete
        db.flush()
        assert db.get(b"k0") == b"value-0" and db.get(b"k7") is None
        assert len(db) == 1999
    finally:
        reap(one)
        reap(two)
    assert wait_until(lambda: db._writer.channels_open() == 0)


def test_the_forwarder_sends_on_while_the_owner_holds_its_gil(make_db, tmp_path):
    # An owner busy in Python holds the GIL for sys.getswitchinterval() at a
    # time. The forwarder took it for its periodic checks and for
    # backpressure, so such an owner held up every client's writes (client
    # puts at 0.1-0.4x with the interval at 50 ms). Here the owner keeps the
    # GIL, never releasing it, while a client puts 6 MB through its 1 MiB
    # channel and flushes; with the old forwarder it never finished.
    import mmap
    from amdb.native.testing import hold_gil_until_set
    db = make_db(workers=2)
    flag_path = tmp_path / "flag"
    flag_path.write_bytes(bytes(4096))
    proc = start_writer(db)
    try:
        with open(flag_path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as flag:
            proc.stdin.write(f"put_many_set_flag {flag_path} 50000\n")
            proc.stdin.flush()
            view = memoryview(flag)
            try:
                assert hold_gil_until_set(view, 60.0), "the client's puts waited for the owner's GIL"
            finally:
                view.release()
        assert read_line(proc) == "acknowledged 50000"
    finally:
        reap(proc)
    assert db.get(b"g49999") == b"value-49999" and db.stats()["clients"]["forwarded"] == 50000


def test_a_clients_threads_put_through_its_one_channel(make_db):
    # The channel has one producer at a time: the thread that holds the GIL
    # from its room check to its publication (ClientWriter._send).
    db = make_db(workers=2)
    proc = start_writer(db)
    try:
        assert ask(proc, "threads_put 10000") == "acknowledged 40000"   # about 4 MB: the 1 MiB channel wraps
    finally:
        reap(proc)
    expected = [(b"t%d-%d" % (t, i), b"%d" % i * 20) for t in range(4) for i in range(10000)]
    assert db.batch_get([k for k, _ in expected]) == [v for _, v in expected]
    assert db.stats()["clients"]["forwarded"] == 40000


def test_client_batches_write_batches_and_read_modify_write_run_in_the_owner(make_db):
    db = make_db(workers=2)
    proc = start_writer(db)
    try:
        assert ask(proc, "put_many p 10") == "acknowledged 10"
        assert ask(proc, "batch 100") == "100"
        assert db.get(b"b99") == b"batch"
        assert db.get(b"p9") == b"value-9"        # the batch went after the puts before it
        assert ask(proc, "write_batch") == "3"
        assert db.get(b"wb-put") == b"1" and db.get(b"b0") is None
        assert db.get(b"wb-counter") == (7).to_bytes(8, "big")
        assert ask(proc, "write_batch_raises") == "raised"
        assert db.get(b"never") is None
        assert ask(proc, "rmw") == "3 7 True False True"
        assert db.get(b"pia") == b"third"
    finally:
        reap(proc)


def test_a_forked_child_of_a_client_reads_its_parents_writes_and_writes_through_a_channel_of_its_own(make_db):
    db = make_db(workers=2)
    proc = start_writer(db)
    try:
        assert ask(proc, "fork_child") == "0"
        assert ask(proc, "get after-fork") == "b'1'"      # the parent's channel still works
    finally:
        reap(proc)
    assert db.get(b"child") == b"x" and db.get(b"before-fork") == b"1" and db.get(b"never") is None
    assert db.stats()["clients"]["attaches"] == 2          # the client, then its child


def test_bad_input_in_a_client_raises_before_anything_is_written(make_db):
    db = make_db(workers=2)
    db.put(b"x", b"y")
    digest = db.digest()
    proc = start_writer(db)
    try:
        assert ask(proc, "bad") == "key_too_large KeyTooLargeError"
        assert [read_line(proc) for _ in range(4)] == ["value_too_large ValueTooLargeError",
                                                        "not_bytes InvalidTypeError",
                                                        "batch_value_too_large ValueTooLargeError",
                                                        "batch_delta_not_int InvalidTypeError"]
        assert ask(proc, "flush") == "flushed"
    finally:
        reap(proc)
    assert db.digest() == digest


def channel_files(path):
    return [name for name in os.listdir(path) if name.endswith(".channel")]


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_a_killed_clients_acknowledged_puts_are_all_applied(make_db, tmp_path, durable):
    path = str(tmp_path / "db") if durable else None
    db = make_db(workers=2, path=path)
    proc = start_writer(db)
    try:
        assert ask(proc, "put_many dead 20000") == "acknowledged 20000"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        reap(proc)
    assert wait_until(lambda: db._writer.channels_open() == 0, timeout=30)
    db.flush()
    assert len(db) == 20000
    assert db.batch_get([b"dead%d" % i for i in range(0, 20000, 997)]) == \
        [b"value-%d" % i for i in range(0, 20000, 997)]
    if durable:
        assert channel_files(path) == []        # let go drained: its file went with it


def test_closing_the_owner_applies_what_clients_published_and_they_see_it_gone(tmp_path, make_db):
    path = str(tmp_path / "db")
    db = make_db(path=path, workers=2)
    proc = start_writer(path=path)
    try:
        assert ask(proc, "put_many c 5000") == "acknowledged 5000"
        owner_pid = db._supervisor.owner_pid
        db.close()
        assert ask(proc, "after_gone") == "gone"
    finally:
        reap(proc)
    assert shm_entries(owner_pid) == []
    assert channel_files(path) == []            # drained at the close: no file left
    with amdb.ParallelDB(path, workers=2) as again:
        assert len(again) == 5000 and again.get(b"c4999") == b"value-4999"
        assert again.stats()["durability"]["recovery"]["channels_replayed"] == 0


OWNER = r'''
import sys
import amdb
db = amdb.ParallelDB(sys.argv[1], workers=2)
db.put(b"owner", b"1")
print("ready", flush=True)
sys.stdin.read()
'''


def test_a_killed_owners_clients_acknowledged_puts_are_applied_by_the_next_opening(tmp_path):
    """A client's put is acknowledged once published in its channel; an owner
    killed before it sent them all on lost the rest (7,616 of 200,000 in one
    run). The channel is now a file in the directory and the next opening
    applies what the owner had not logged, none twice (layout.h, "Client
    channels", point 5)."""
    path = str(tmp_path / "db")
    owner = python_child(OWNER, path)
    client = None
    try:
        assert read_line(owner) == "ready"
        client = amdb.ParallelDB(path)                     # attaches: the directory is open
        assert client._client is not None and len(channel_files(path)) == 1
        n = 100_000
        for i in range(n):
            client.put(b"k%06d" % i, b"v%d" % i)          # every one acknowledged as it returns
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
        assert wait_until(lambda: client._att.closed, 10)     # its watch saw the owner go
        with pytest.raises(amdb.OwnerGoneError):
            client.put(b"late", b"x")
    finally:
        reap(owner)
    client.close()
    db = open_after_its_owner_died(path, keep_versions=None)
    try:
        recovery = db.stats()["durability"]["recovery"]
        assert recovery["channels_replayed"] == 1 and channel_files(path) == []
        assert db.get(b"owner") == b"1"
        assert sum(db.get(b"k%06d" % i) == b"v%d" % i for i in range(n)) == n
        # None applied twice: every key has the one version its put made.
        assert all(len(list(db.history(b"k%06d" % i))) == 1 for i in range(0, n, 7))
        assert recovery["recovered_seq"] + recovery["channel_records_replayed"] == n + 1
    finally:
        db.close()


KILLED_OWNER_CLIENT = r'''
import sys
import amdb
db = amdb.ParallelDB(sys.argv[1])              # attaches to the owner
cycle = int(sys.argv[2])
print("attached", db._client is not None, flush=True)
i = 0
try:
    while True:
        db.put(b"c%03d-%07d" % (cycle, i), b"%d" % i)
        i += 1
        if i % 500 == 0:
            print("acked", i, flush=True)       # puts 0 .. i-1 returned
except amdb.OwnerGoneError:
    print("acked", i, flush=True)
    print("gone", flush=True)
'''


def _owner_kill_cycles(path, cycles):
    """Each cycle: an owner, a client putting as fast as it can, the owner
    killed (SIGKILL) once the client acknowledged 5,000 puts, the client told
    OwnerGoneError; the next opening has every acknowledged put, each once."""
    for cycle in range(cycles):
        owner = python_child(OWNER, path)
        client = None
        try:
            assert read_line(owner) == "ready"
            client = python_child(KILLED_OWNER_CLIENT, path, cycle, stdin=False)
            assert read_line(client) == "attached True"
            acked = 0
            while acked < 5000:
                acked = int(read_line(client).split()[1])
            os.kill(owner.pid, signal.SIGKILL)
            owner.wait(timeout=30)
            line = read_line(client, timeout=30)
            while line != "gone":
                acked = int(line.split()[1])
                line = read_line(client, timeout=30)
        finally:
            reap(owner)
            if client is not None:
                reap(client)
        db = open_after_its_owner_died(path, keep_versions=None)
        try:
            assert channel_files(path) == []
            keys = [b"c%03d-%07d" % (cycle, i) for i in range(acked)]
            assert db.batch_get(keys) == [b"%d" % i for i in range(acked)], f"cycle {cycle}"
            assert all(len(list(db.history(k))) == 1 for k in keys[::97]), f"cycle {cycle}: applied twice"
            assert db.verify().ok
        finally:
            db.close()


def test_owners_killed_under_a_writing_client_lose_nothing_it_acknowledged(tmp_path):
    _owner_kill_cycles(str(tmp_path / "db"), 3)


@pytest.mark.slow
def test_owners_killed_under_a_writing_client_soak(tmp_path):
    _owner_kill_cycles(str(tmp_path / "db"), 100)


def test_a_malformed_record_in_a_channel_breaks_that_channel_only(tmp_path, make_db):
    """The forwarder trusts no byte of a client's channel (writer.pyx,
    channel_record): a record with an unknown op stops that channel, the
    client's flush says so, and the owner and another client go on."""
    import mmap
    import struct
    from amdb.native.constants import CONTROL_BYTES
    path = str(tmp_path / "db")
    db = make_db(path=path, workers=2)
    bad = amdb.ParallelDB.attach(db.handle())
    bad.put(b"before", b"1")
    bad.flush()
    (name,) = channel_files(path)
    with open(os.path.join(path, name), "r+b") as f, mmap.mmap(f.fileno(), 0) as channel:
        capacity, = struct.unpack_from("<Q", channel, 8)
        head, = struct.unpack_from("<Q", channel, 64)
        struct.pack_into("<IIIIQ", channel, CONTROL_BYTES + head % capacity, 77, 1, 0, 0, 0)
        struct.pack_into("<Q", channel, 64, head + 32)       # published: a record of 32 bytes
    with pytest.raises(amdb.Error) as broken:
        bad.flush()
    assert broken.value.code == "corrupt"
    good = amdb.ParallelDB.attach(db.handle())
    good.put(b"after", b"2")
    good.flush()
    db.put(b"owner", b"3")
    assert db.get(b"before") == b"1" and db.get(b"after") == b"2" and db.verify().ok
    good.close()
    with pytest.raises(amdb.Error) as again:            # close() raises it too, once closed
        bad.close()
    assert again.value.code == "corrupt" and bad.closed
    assert wait_until(lambda: channel_files(path) == [], 10)    # a broken channel is let go with its file


CHANNEL_MAGIC = 0x4C4E4E4843424D41          # layout.h AMDB_CHANNEL_MAGIC


def write_channel(path, records, tail_index=0, capacity=4096):
    """A channel file as a dead owner leaves it (layout.h, amdb_channel):
    records [(op, key, value, mark)], tail at record `tail_index`."""
    import struct
    from amdb.native.constants import CONTROL_BYTES
    ring, positions = b"", []
    for op, key, value, mark in records:
        positions.append(len(ring))
        body = struct.pack("<IIIIQ", op, len(key), len(value), 0, mark) + key + value
        ring += body + bytes(-len(body) % 8)
    header = bytearray(CONTROL_BYTES)
    struct.pack_into("<QQQQ", header, 0, CHANNEL_MAGIC, capacity, 1, 0)
    struct.pack_into("<Q", header, 64, len(ring))                    # head
    struct.pack_into("<Q", header, 128, positions[tail_index])       # tail
    with open(path, "wb") as f:
        f.write(bytes(header) + ring + bytes(capacity - len(ring)))
    return positions


def map_file(path):
    from amdb.shm.arena import Mapping
    fd = os.open(path, os.O_RDWR)
    try:
        return Mapping(fd, 0, os.fstat(fd).st_size, True)
    finally:
        os.close(fd)


def read_channel(path):
    import struct
    from amdb.native.constants import CONTROL_BYTES
    with open(path, "rb") as f:
        data = f.read()
    closed, = struct.unpack_from("<Q", data, 24)
    tail, = struct.unpack_from("<Q", data, 128)
    return closed, tail, data[CONTROL_BYTES:]


def test_a_left_channel_gives_back_what_recovery_lacks_and_a_second_look_gives_it_again(tmp_path):
    """take_over_channel: records marked with a seq the database recovered
    are in it; from the first that is not (a higher mark, or none), every
    record comes back, in order. Their marks are cleared and tail moved
    first, so an opening that crashes while it applies them, after its own
    seqs passed those marks, has the next opening apply them all again."""
    import struct
    from amdb.native.client.writer import take_over_channel
    path = str(tmp_path / "client-0123456789abcdef.channel")
    put, delete = 1, 2
    positions = write_channel(path, [(put, b"a", b"1", 3), (put, b"b", b"2", 4), (delete, b"a", b"", 5),
                                     (put, b"c", b"3", 6), (put, b"d", b"4", 0), (delete, b"b", b"", 0)])
    mapping = map_file(path)
    records, problem = take_over_channel(mapping, 5)
    assert problem is None
    assert records == [("put", b"c", b"3"), ("put", b"d", b"4"), ("delete", b"b", b"")]
    closed, tail, ring = read_channel(path)
    assert closed == 1 and tail == positions[3]
    assert [struct.unpack_from("<Q", ring, pos + 16)[0] for pos in positions] == [3, 4, 5, 0, 0, 0]
    # The next opening's recovered seq may pass 6 with seqs of the one that crashed: all come back.
    again, problem = take_over_channel(mapping, 1000)
    assert again == records and problem is None
    mapping.close()


def test_a_left_channel_with_a_malformed_record_gives_back_what_comes_before_it(tmp_path):
    from amdb.native.client.writer import take_over_channel
    path = str(tmp_path / "client-0123456789abcdef.channel")
    write_channel(path, [(1, b"a", b"1", 0), (9, b"b", b"2", 0), (1, b"c", b"3", 0)])
    mapping = map_file(path)
    records, problem = take_over_channel(mapping, 0)
    assert records == [("put", b"a", b"1")] and "malformed" in problem
    mapping.close()


def test_an_opening_applies_a_left_channel_before_anything_else_and_removes_it(tmp_path):
    path = str(tmp_path / "db")
    with amdb.ParallelDB(path, workers=2) as db:
        db.put(b"a", b"old")
        db.put(b"gone", b"soon")
    write_channel(os.path.join(path, "client-0123456789abcdef.channel"),
                  [(1, b"a", b"new", 0), (1, b"x" * 5000, b"too long a key", 0), (2, b"gone", b"", 0)],
                  capacity=16384)
    write_channel(os.path.join(path, "client-fedcba9876543210.channel"),
                  [(1, b"before-damage", b"1", 0), (77, b"damaged", b"", 0), (1, b"after-damage", b"1", 0)])
    info = subprocess.run([sys.executable, "-m", "amdb", "info", path], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "2 client channel file(s)" in info.stdout, info.stdout + info.stderr
    with amdb.ParallelDB(path, workers=2, max_key_size=100) as db:
        recovery = db.stats()["durability"]["recovery"]
        assert (recovery["channels_replayed"], recovery["channel_records_replayed"],
                recovery["channel_records_refused"]) == (2, 3, 1)
        assert db.get(b"a") == b"new" and db.get(b"gone") is None and channel_files(path) == []
        # Up to the damage, applied; the file kept aside, never applied again.
        assert db.get(b"before-damage") == b"1" and db.get(b"after-damage") is None
        assert [p["file"] for p in recovery["channel_problems"]] == ["client-fedcba9876543210.channel"]
        assert os.path.exists(os.path.join(path, "client-fedcba9876543210.channel.rejected"))


def open_after_its_owner_died(path, **options):
    """Open `path` once the killed owner's workers let its lock go."""
    opened = []

    def try_open():
        try:
            opened.append(amdb.ParallelDB(path, workers=2, **options))
            return True
        except amdb.LockedError:
            return False
    assert wait_until(try_open, 30)
    return opened[0]


def _pool_put(args):
    prefix, n = args
    for i in range(n):
        _pool_db.put(b"%s-%d" % (prefix, i), b"v")
    _pool_db.flush()
    return n


def _pool_init(db):
    global _pool_db
    _pool_db = db


def test_a_spawn_pool_writes_through_a_pickled_database(make_db):
    db = make_db(workers=2)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2, initializer=_pool_init, initargs=(db,)) as pool:
        done = pool.map(_pool_put, [(b"w%d" % j, 500) for j in range(4)])
    assert done == [500] * 4
    assert wait_until(lambda: db._writer.channels_open() == 0, timeout=30)
    db.flush()
    assert len(db) == 2000


def test_owner_writes_batches_and_compacts_while_clients_put(make_db):
    db = make_db(workers=2)
    procs = [start_writer(db) for _ in range(2)]
    try:
        for p, prefix in zip(procs, ("x", "y")):
            p.stdin.write(f"put_many {prefix} 30000\n")
            p.stdin.flush()
        for round_no in range(20):               # batches and admin calls meanwhile: no SOLO lands inside
            db.batch_put([(b"owner%d-%d" % (round_no, i), b"o") for i in range(200)])
        db.compact()
        assert [read_line(p) for p in procs] == ["acknowledged 30000"] * 2
        assert [ask(p, "flush") for p in procs] == ["flushed"] * 2
    finally:
        for p in procs:
            reap(p)
    db.flush()
    assert len(db) == 60000 + 4000
    assert db.verify().ok


FULL_DISK_CLIENT = r"""
import os, pickle, subprocess, sys, amdb
base = sys.argv[1]
db = amdb.ParallelDB(os.path.join(base, "full"), workers=2, checkpoint_bytes=None)
client = subprocess.Popen([sys.executable, "-c", sys.argv[2], pickle.dumps(db.handle()).hex()],
                          stdout=subprocess.PIPE, text=True)
out = client.communicate(timeout=120)[0].strip()
assert client.returncode == 0, out
print(out)
db.close()
"""

FULL_DISK_WRITER = r"""
import pickle, sys, amdb
db = amdb.ParallelDB.attach(pickle.loads(bytes.fromhex(sys.argv[1])))
try:
    for i in range(200000):               # far more than the 2 MiB left hold
        db.put(b"k%d" % i, b"x" * 200)
        if i % 1000 == 999:
            db.flush()
    print("never refused")
except amdb.StorageError as exc:
    print("refused", exc.code, type(exc).__name__, "after" if "that had returned was refused" in str(exc) else "forwarder")
"""


NO_ROOM_FOR_A_CHANNEL = r"""
import os, pickle, subprocess, sys, amdb
db = amdb.ParallelDB(os.path.join(sys.argv[1], "full"), workers=2, checkpoint_bytes=None)
db.put(b"k", b"v")
child = '''
import pickle, sys, amdb
handle = pickle.loads(bytes.fromhex(sys.argv[1]))
try:
    amdb.ParallelDB.attach(handle)
    print("attached")
except amdb.StorageError as exc:
    print(exc.code, "no room for a client's channel" in str(exc), str(exc).count("hint"))
reader = amdb.ParallelDB.attach(handle, read_only=True)
print(reader.get(b"k"))
'''
out = subprocess.run([sys.executable, "-c", child, pickle.dumps(db.handle()).hex()], capture_output=True,
                     text=True, timeout=120)
print(out.stdout.strip().replace(chr(10), " "), out.stderr[-2000:])
db.put(b"k", b"after")
print(db.get(b"k"), [n for n in os.listdir(os.path.join(sys.argv[1], "full")) if n.endswith(".channel")])
db.close()
"""


def test_a_writer_that_finds_no_room_for_its_channel_is_told_and_readers_attach(tmp_path):
    import shutil
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) as root to mount a small tmpfs")
    (tmp_path / "full").mkdir()
    script = (f"mount -t tmpfs -o size=512k tmpfs {tmp_path}/full && "
              f'exec {sys.executable} -c "$0" {tmp_path}')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["unshare", "-m", "sh", "-c", script, NO_ROOM_FOR_A_CHANNEL], cwd=root,
                         env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines() == ["io_error True 1 b'v' ", "b'after' []"], out.stdout + out.stderr


def test_a_put_a_worker_refuses_after_it_was_sent_on_is_raised_by_the_clients_flush(tmp_path):
    """Real ENOSPC (a 3 MiB tmpfs in a private mount namespace, a 1 MiB
    channel file in it): the worker cannot log the forwarded puts and
    refuses them; the client that made them hears of it at its next flush
    (layout.h, "Client channels", point 3)."""
    import shutil
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) as root to mount a small tmpfs")
    (tmp_path / "full").mkdir()
    script = (f"mount -t tmpfs -o size=3m tmpfs {tmp_path}/full && "
              f'exec {sys.executable} -c "$0" {tmp_path} "$1"')
    out = subprocess.run(["unshare", "-m", "sh", "-c", script, FULL_DISK_CLIENT, FULL_DISK_WRITER],
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "refused io_error StorageError after", out.stdout + out.stderr


def test_a_forked_child_of_the_owner_writes_through_its_inherited_database(make_db):
    """README, "The patterns": the child's first write attaches its inherited
    copy to the owner; a handle taken before the fork attaches as well."""
    db = make_db(workers=2)
    db.put(b"before", b"1")
    handle = db.handle()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            seen = db.get(b"before")            # through the parent's mappings, not attached yet
            db.put(b"inherited", b"x")
            db[b"item"] = b"y"
            db.batch_put([(b"batch", b"z")])
            other = amdb.ParallelDB.attach(handle)
            other.put(b"from-handle", b"yes")
            other.close()
            ok = seen == b"1" and db.get(b"inherited") == b"x" and db.get(b"from-handle") == b"yes"
            db.close()                          # returns once the child's puts are applied
            code = 0 if ok else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    assert os.read(r, 1) == b"\x00"
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert db.batch_get([b"inherited", b"item", b"batch", b"from-handle"]) == [b"x", b"y", b"z", b"yes"]


_FORK_POOL_DB = None        # inherited by the pool's processes at fork


def test_a_forked_childs_threads_attach_it_once_and_its_older_iterator_reads_on(make_db):
    # Four threads of the child write at once: one attaches it, the others
    # wait for that and write through the same client. A scan the child
    # opened before keeps reading its parent's mappings; a write batch and
    # pickling work as in any client.
    db = make_db(workers=2)
    db.batch_put([(b"k%04d" % i, b"v") for i in range(1000)])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(30)
            scan = db.scan(prefix=b"k")
            first = [next(scan) for _ in range(10)]
            errors = []

            def write(t):
                try:
                    for i in range(200):
                        db.put(b"t%d-%d" % (t, i), b"x")
                except Exception as exc:          # noqa: BLE001 - reported below
                    errors.append(exc)
            threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rest = list(scan)
            with db.write_batch() as wb:
                wb.put(b"wb", b"1")
            other = pickle.loads(pickle.dumps(db))
            ok = (not errors and len(first) + len(rest) == 1000 and db.get(b"wb") == b"1"
                  and other.get(b"t3-199") == b"x")
            other.close()
            db.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert db.batch_get([b"t%d-199" % t for t in range(4)] + [b"wb"]) == [b"x"] * 4 + [b"1"]
    assert db.stats()["clients"]["attaches"] == 2        # the child once, then its pickled copy


def test_a_forked_child_that_cannot_attach_is_told_why(make_db):
    # Two ways a forked child still gets code "forked": a method of its
    # parent's looked up before the fork, and a parent that serves no
    # attaches (a directory where no socket can be made; simulated in the
    # child's copy only). Neither writes anything.
    db = make_db(workers=2)
    parents_put = db.put
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(30)
            messages = []
            for attempt in (lambda: parents_put(b"a", b"1"), lambda: db.put(b"b", b"2")):
                try:
                    attempt()
                except amdb.Error as exc:
                    messages.append((exc.code, str(exc)))
                db._supervisor.attach_servers.clear()       # after the first: as if none were served
            ok = (len(messages) == 2 and messages[0][0] == messages[1][0] == "forked"
                  and "db.put(...)" in messages[0][1] and "serves no attaches" in messages[1][1])
            code = 0 if ok else 2
            if not ok:
                print(messages, file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert db.batch_get([b"a", b"b"]) == [None, None]


def _fork_write_kill_cycles(db, cycles):
    """`cycles` forked children each attach at their first put, put 20 keys
    (acknowledged: they say so), go on putting, and die by SIGKILL wherever
    they are, while the owner writes between them. Every acknowledged put is
    applied, every channel and slot is given back, and the owner goes on."""
    server = db._supervisor.attach_servers[0]
    attaches = server.attaches
    for cycle in range(cycles):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                for j in range(20):
                    db.put(b"f%d-%d" % (cycle, j), b"%d" % j)
                os.write(w, b"A")
                for j in range(20, 10_000):
                    db.put(b"f%d-%d" % (cycle, j), b"%d" % j)
                os.read(os.pipe()[0], 1)         # killed by now, or waits for it
            finally:
                os._exit(0)
        os.close(w)
        try:
            assert os.read(r, 1) == b"A"
            db.put(b"owner-%d" % cycle, b"x")
            os.kill(pid, signal.SIGKILL)
        finally:
            _, status = os.waitpid(pid, 0)
            os.close(r)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert wait_until(lambda: not server.client_pids(), 10)
    assert wait_until(lambda: db._writer.channels_open() == 0, 10)
    assert server.attaches - attaches == cycles
    db.flush()
    assert all(db.get(b"f%d-%d" % (c, j)) == b"%d" % j for c in range(cycles) for j in range(20))
    assert all(db.get(b"owner-%d" % c) == b"x" for c in range(cycles))
    db.put(b"after", b"1")
    assert db.get(b"after") == b"1" and db.verify().ok


def test_forked_children_killed_while_they_write_lose_nothing_acknowledged(make_db):
    _fork_write_kill_cycles(make_db(workers=2), 150)


@pytest.mark.slow
def test_forked_children_killed_while_they_write_soak(make_db):
    _fork_write_kill_cycles(make_db(workers=2), 1000)


def test_a_forked_childs_write_after_its_parent_closed_raises_owner_gone(make_db):
    # The child's first write attaches it to its parent: once the parent has
    # closed the database, that is a clear OwnerGoneError (not a hang, not
    # a write into memory nobody serves), and the child's close() works.
    db = make_db(workers=2)
    db.put(b"before", b"1")
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        signal.alarm(30)                # a hang becomes a death by SIGALRM
        try:
            os.read(go_r, 1)
            try:
                db.put(b"late", b"x")
                code = 2
            except amdb.OwnerGoneError:
                code = 0
            db.close()
        finally:
            os.write(done_w, bytes([code]))
            os._exit(code)
    os.close(done_w)
    try:
        db.close()
    finally:
        os.write(go_w, b"x")
    assert os.read(done_r, 1) == b"\x00"
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def _fork_pool_task(i):
    db = _FORK_POOL_DB
    db.put(b"task-%d" % i, b"%d" % os.getpid())
    db.batch_put([(b"batch-%d" % i, b"b")])
    db.flush()                  # the parent reads these next (docs/API.md, "Forking and multiprocessing")
    return os.getpid()


def test_a_fork_pool_writes_through_the_inherited_database(make_db):
    # multiprocessing with the "fork" start method: each pool process attaches
    # at its first write; no handle, no initializer.
    import multiprocessing
    global _FORK_POOL_DB
    db = _FORK_POOL_DB = make_db(workers=2)
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pids = pool.map(_fork_pool_task, range(40), chunksize=1)
    finally:
        _FORK_POOL_DB = None
    assert [db.get(b"task-%d" % i) for i in range(40)] == [b"%d" % pid for pid in pids]
    assert db.batch_get([b"batch-%d" % i for i in range(40)]) == [b"b"] * 40


def test_with_sync_batch_a_clients_put_returns_once_the_owner_made_it_durable(tmp_path, make_db):
    """sync="batch": a put returns once it is in the log (the owner's own do);
    a client's put then runs in the owner instead of going through the
    channel, so it is applied and durable when it returns."""
    path = str(tmp_path / "db")
    db = make_db(path=path, workers=2, sync="batch")
    proc = start_writer(path=path)
    try:
        assert ask(proc, "put_many s 50") == "acknowledged 50"
        assert db.stats()["clients"]["forwarded"] == 0          # nothing went through the channel
        assert db.get(b"s49") == b"value-49"                     # applied already: no flush anywhere
    finally:
        reap(proc)


def test_a_clients_compact_checkpoint_and_backup_run_in_the_owner_with_the_clients_paths(tmp_path, make_db):
    path = str(tmp_path / "db")
    db = make_db(path=path, workers=2)
    (tmp_path / "client_cwd").mkdir()
    proc = start_writer(path=path)
    try:
        assert ask(proc, "put_many b 300") == "acknowledged 300"
        assert ask(proc, f"admin_writes {tmp_path / 'client_cwd'}") == "True"
    finally:
        reap(proc)
    with amdb.ParallelDB(str(tmp_path / "client_cwd" / "copy"), workers=2) as copy:   # the client's relative path
        assert len(copy) == 300 and copy.get(b"b299") == b"value-299"


@contextlib.contextmanager
def owner_writing_without_pause(db, compact):
    """A thread of the owner writes batches (and compacts) back to back,
    taking the write lock again and again, until the block ends."""
    keys = [b"o%04d" % i for i in range(400)]
    stop = threading.Event()

    def churn():
        n = 0
        while not stop.is_set():
            n += 1
            db.batch_put([(k, b"%d" % n) for k in keys])
            if compact:
                db.compact(keep_versions=1)     # a long hold of the lock

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_an_owner_writing_without_pause_does_not_starve_a_clients_puts(make_db):
    """Each taking of the owner's write lock sends on what clients published
    first (WriteLock, Writer.forward_now), and a client's read never waits
    for its channel with its read epoch pinned (a compaction waits for pinned
    readers): a client's puts and its flush go through meanwhile."""
    db = make_db(workers=2)
    proc = start_writer(db)
    try:
        with owner_writing_without_pause(db, compact=True):
            assert ask(proc, "put_many s 3000") == "acknowledged 3000"
            assert ask(proc, "flush", timeout=30) == "flushed"     # starved: never
    finally:
        reap(proc)
    assert db.get(b"s2999") == b"value-2999"


def test_a_client_flooding_its_channel_does_not_starve_another_clients_puts(make_db):
    """The forwarder serves the channels in turn (writer.pyx, "Forwarding"):
    a client that keeps its channel full (a 1 MiB ring, about 7,000 of these
    records, filled several times over before the other starts) delays
    another's puts by a share, never blocks them."""
    db = make_db(workers=2)
    flooder, other = start_writer(db), start_writer(db)
    try:
        assert ask(flooder, "flood 30000") == "flooding"
        assert ask(other, "put_many o 3000") == "acknowledged 3000"
        assert ask(other, "flush", timeout=30) == "flushed"      # starved: never
        assert db.get(b"o2999") == b"value-2999"
        answer = ask(flooder, "flood_stop").split()
        assert answer[0] == "flooded" and int(answer[1]) > 30000
    finally:
        reap(flooder)
        reap(other)
    assert db.get(b"f0") == b"x" * 100


def test_a_client_reads_its_own_puts_at_once_while_the_owner_writes_batches(make_db):
    """Read-your-writes with the owner's batches in between (its forwarder
    waits while they hold the write lock): found with a read that waited for
    its channel with its read epoch pinned, 3 or 4 misses in 2000."""
    db = make_db(workers=2)
    proc = start_writer(db)
    try:
        with owner_writing_without_pause(db, compact=False):
            assert ask(proc, "put_get 4000") == "misses 0"
    finally:
        reap(proc)
