"""Hostile tests of AmDb's promises, by class rather than by instance
(issue 12): fork at every state, interpreter exit at every state, admin
calls from inside callbacks, and /dev/shm at every fill level.

Each scenario runs in a fresh interpreter (forks and exits are the point),
and checks the promise from the outside: a forked child reads, writes by
attaching to its parent, and never disturbs it; an exit never crashes, leaks a segment or leaves
a worker behind; a callback cannot turn a batch into half a batch; a full
/dev/shm is an ArenaFullError, never a SIGBUS or a lost acknowledged write.
"""
import os

import pytest

import amdb
from amdb_testutil import (children_of, private_shm_available, proc_stat, python_child, reap,
                           run_with_private_shm, wait_until)


def _run(script, *args, timeout=90):
    proc = python_child(script, *args, stdin=False)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        reap(proc)
    return proc.returncode, out, err


# ---- fork at every state ------------------------------------------------------------

FORK_AT_STATE = r"""
import os, signal, sys, tempfile, threading
import numpy as np
import amdb
state = sys.argv[1]
durable = state in ("checkpointing", "durable_idle")
path = tempfile.mkdtemp() if durable else None
db = amdb.ParallelDB(path, workers=2)
keys = [b"k%04d" % i for i in range(400)]
db.batch_put([(k, b"v0") for k in keys])
inside, release, stop_churn = threading.Event(), threading.Event(), threading.Event()
threads = []

def background(target):
    thread = threading.Thread(target=target)
    thread.start()
    threads.append(thread)

def blocked_batch():
    def gen():
        yield (b"w0", b"x")
        inside.set()
        release.wait()
        yield (b"w1", b"x")
    db.batch_put(gen())

def registered_reader():
    slot = db._debug_enter_read()
    inside.set()
    release.wait()
    db._debug_leave_read(slot)

def churn(admin):
    n = 0
    while not stop_churn.is_set():
        n += 1
        db.batch_put([(k, b"v%d" % n) for k in keys])
        admin()
        inside.set()

if state == "writer_mid_batch":
    background(blocked_batch)
elif state == "reader_registered":
    background(registered_reader)
elif state == "compacting":
    background(lambda: churn(lambda: db.compact(keep_versions=1)))
elif state == "checkpointing":
    background(lambda: churn(db.checkpoint))
elif state == "iterator_open":
    scan = db.scan()
    next(scan)
    inside.set()
elif state == "worker_dead":
    pid = db.stats()["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
        pass
    inside.set()
elif state == "closed":
    db.close()
    inside.set()
else:
    inside.set()
inside.wait()

# Every public name of ParallelDB, classified: a forked child reads through its
# parent's mappings; anything else attaches it as a client first.
READS = {
    "get": lambda: [db.get(keys[0])], "batch_get": lambda: db.batch_get(keys),
    "get_array": lambda: list(db.get_array(np.array(keys, dtype="S5"))[0]),
    "history": lambda: [v.value for v in db.history(keys[0])][:1],
    "scan": lambda: [v for _, v in db.scan(prefix=b"k")], "items": lambda: [v for k, v in db.items() if k in keyset],
    "keys": lambda: None if set(db.keys()) >= keyset else "missing", "values": lambda: [v for v in db.values()][:1],
    "snapshot": lambda: [db.snapshot().get(keys[0])],
    "iterator": lambda: [v for _, v in db.iterator(prefix=b"k", reverse=True)],
    "prefixed": lambda: [db.prefixed(b"k")[keys[0][1:]]] + list(db.prefixed(b"k").values())[:2],
}
OTHERS = {
    "put": lambda: db.put(b"x", b"y"), "delete": lambda: db.delete(keys[0]),
    "batch_put": lambda: db.batch_put([(b"x", b"y")]), "batch_delete": lambda: db.batch_delete(keys[:2]),
    "put_array": lambda: db.put_array(np.array([b"x"]), np.array([b"y"])),
    "put_packed": lambda: db.put_packed(np.frombuffer(b"x", np.uint8), np.array([0, 1]),
                                        np.frombuffer(b"y", np.uint8), np.array([0, 1])),
    "write_batch": lambda: db.write_batch().put(b"x", b"y"),
    "checkpoint": db.checkpoint, "backup": lambda: db.backup(tempfile.mktemp()),
    "compact": db.compact, "verify": db.verify, "digest": db.digest, "stats": db.stats,
    "update": lambda: db.update({b"x": b"y"}), "clear": db.clear, "pop": lambda: db.pop(keys[0]),
    "popitem": db.popitem, "setdefault": lambda: db.setdefault(b"absent", b"y"),
    "__setitem__": lambda: db.__setitem__(b"x", b"y"), "__delitem__": lambda: db.__delitem__(keys[0]),
    "increment": lambda: db.increment(b"n"), "put_if_absent": lambda: db.put_if_absent(b"x", b"y"),
    "compare_and_set": lambda: db.compare_and_set(keys[0], None, b"y"),
    "handle": db.handle,                # the owner's, once attached
}
HARMLESS = {"flush": db.flush}     # nothing of this process's to wait for: returns
ATTRIBUTES = {"close", "closed", "durable", "workers", "max_batch", "max_key_size", "max_value_size",
              "ring_size", "arena_size", "attach"}    # attach: a constructor (classmethod)
keyset = set(keys)
public = {name for name in dir(amdb.ParallelDB) if not name.startswith("_")}
unclassified = public - set(READS) - set(OTHERS) - set(HARMLESS) - ATTRIBUTES
assert not unclassified, f"classify these for forked children: {sorted(unclassified)}"

pid = os.fork()
if pid == 0:
    signal.alarm(30)                    # a hang in the child becomes a death by SIGALRM
    problems = []
    for name, call in READS.items():
        try:
            values = call()
            if state == "closed":
                problems.append(f"{name} read a closed database")
            elif values is not None and (not values or any(v is None or not v.startswith(b"v") for v in values)):
                problems.append(f"{name} read {values[:3]!r}")
        except amdb.ClosedError:
            if state != "closed":
                problems.append(f"{name}: ClosedError")
        except Exception as exc:
            problems.append(f"{name}: {exc!r}")
    for name in ("__contains__", "__len__", "__iter__", "__getitem__"):
        try:
            got = {"__contains__": lambda: keys[0] in db, "__len__": lambda: len(db) >= 400,
                   "__iter__": lambda: keys[0] in set(db),
                   "__getitem__": lambda: db[keys[0]].startswith(b"v")}[name]()
            if not got and state != "closed":
                problems.append(f"{name} said {got!r}")
        except amdb.ClosedError:
            if state != "closed":
                problems.append(f"{name}: ClosedError")
    for name, call in HARMLESS.items():
        try:
            call()
        except amdb.ClosedError:
            if state != "closed":
                problems.append(f"{name}: ClosedError")
        except Exception as exc:
            problems.append(f"{name}: {exc!r}")
    # Its first write attaches it to its parent as a client: every call runs
    # as in an attached process (the owner's own calls on its own workers).
    for name, call in OTHERS.items():
        try:
            call()
            if state == "closed":
                problems.append(f"{name} was allowed")
        except KeyError:
            if name not in ("pop", "popitem", "__delitem__"):     # keys[0] is deleted before them
                problems.append(f"{name}: KeyError")
        except amdb.Error as exc:
            allowed = "closed" if state == "closed" else "memory_only" if path is None else None
            if exc.code != allowed:
                problems.append(f"{name}: {exc!r}")
        except Exception as exc:
            problems.append(f"{name}: {exc!r}")
    if state != "closed":
        db.put(b"from_child", b"c")
        if db.get(b"from_child") != b"c" or db.get(b"x") != b"y":
            problems.append(f"child reads {db.get(b'from_child')!r} {db.get(b'x')!r}")
    db.close()          # returns once the child's writes are applied
    db.close()
    if problems:
        print("child:", problems, file=sys.stderr, flush=True)
    os._exit(1 if problems else 0)

release.set()           # the parent's blocked batch or read goes on while the child writes
_, status = os.waitpid(pid, 0)
stop_churn.set()
for thread in threads:
    thread.join()
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
if state == "closed":
    print("OK")
    sys.exit(0)
assert db.get(b"from_child") == b"c" and db.get(b"x") == b"y", (db.get(b"from_child"), db.get(b"x"))
# The parent goes on as if nothing happened.
db.batch_put([(k, b"after") for k in keys])
assert db.batch_get(keys) == [b"after"] * len(keys)
assert all(w["alive"] for w in db.stats()["workers"])
assert not db.verify().breaks
db.close()
if path:
    with amdb.ParallelDB(path) as again:
        assert again.batch_get(keys) == [b"after"] * len(keys)
print("OK")
"""

FORK_STATES = ["idle", "durable_idle", "writer_mid_batch", "reader_registered", "compacting", "checkpointing",
               "iterator_open", "worker_dead", "closed"]


@pytest.mark.parametrize("state", FORK_STATES)
def test_fork_at_every_state(state):
    rc, out, err = _run(FORK_AT_STATE, state)
    assert rc == 0 and out.strip() == "OK", f"rc={rc}\n{err[-4000:]}"


FORKED_CHILD_READS_DURING_COMPACTION = r"""
import os, sys
import amdb
db = amdb.ParallelDB(workers=2)
keys = [b"k%04d" % i for i in range(2000)]
db.batch_put([(k, b"v0") for k in keys])
pid = os.fork()
if pid == 0:
    rounds = 0
    while True:
        values = db.batch_get(keys)
        one = db.get(keys[rounds % len(keys)])
        if None in values or one is None or len(set(values)) > 2:
            print("child saw", set(values) - {b"v"}, one, file=sys.stderr, flush=True)
            os._exit(1)
        rounds += 1
        if values[0] == b"stop":
            break
    os._exit(0)
for n in range(1, 40):
    db.batch_put([(k, b"v%d" % n) for k in keys])
    db.compact(keep_versions=1)
db.batch_put([(k, b"stop") for k in keys])
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
db.close()
print("OK")
"""


def test_a_forked_child_reads_correct_data_while_its_parent_compacts():
    # Every read of the child returns whole batches of existing values
    # (never None) while the parent rewrites and compacts 40 times.
    rc, out, err = _run(FORKED_CHILD_READS_DURING_COMPACTION, timeout=180)
    assert rc == 0 and out.strip() == "OK", f"rc={rc}\n{err[-4000:]}"


# ---- interpreter exit at every state --------------------------------------------------

EXIT_AT_STATE = r"""
import os, sys, tempfile, threading
import amdb
state, path = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
db = amdb.ParallelDB(path, workers=2)
print(" ".join(str(w["pid"]) for w in db.stats()["workers"]), flush=True)
db.batch_put([(b"acked%04d" % i, b"v") for i in range(500)])
started = threading.Event()

def daemon(target):
    def loop():
        while True:
            target()
            started.set()
    threading.Thread(target=loop, daemon=True).start()
    started.wait()

if state == "daemon_batch_put":
    daemon(lambda: db.batch_put([(b"w%04d" % j, b"x") for j in range(2000)]))
elif state == "daemon_put":
    daemon(lambda: db.put(b"single", b"x"))
elif state == "daemon_batch_get":
    daemon(lambda: db.batch_get([b"acked%04d" % j for j in range(500)]))
elif state == "daemon_scan":
    daemon(lambda: sum(1 for _ in db.scan()))
elif state == "daemon_compact":
    daemon(lambda: (db.batch_put([(b"c", b"x")] * 10), db.compact(keep_versions=1)))
elif state == "daemon_checkpoint":
    daemon(db.checkpoint)
elif state == "daemon_backup":
    backups = iter(range(10**9))
    os.makedirs(path + "-backups")
    daemon(lambda: db.backup(os.path.join(path + "-backups", str(next(backups)))))
elif state == "daemon_write_batch":
    def write_batch():
        with db.write_batch() as batch:
            for j in range(500):
                batch.put(b"b%04d" % j, b"x")
    daemon(write_batch)
elif state == "daemon_flush":
    daemon(lambda: (db.put(b"f", b"x"), db.flush()))
elif state == "iterator_open":
    scan = db.scan()
    next(scan)
elif state == "reader_registered":
    slot = db._debug_enter_read()
db.put(b"last", b"acked")
print("acked", flush=True)
# ... and the script falls off its end with the database open.
"""

EXIT_STATES = ["never_closed", "daemon_batch_put", "daemon_put", "daemon_batch_get", "daemon_scan",
               "daemon_compact", "daemon_write_batch", "daemon_flush", "iterator_open",
               "reader_registered"]


@pytest.mark.parametrize("state, durable", [(s, False) for s in EXIT_STATES]
                         + [(s, True) for s in EXIT_STATES + ["daemon_checkpoint", "daemon_backup"]])
def test_interpreter_exit_at_every_state(state, durable, tmp_path):
    path = str(tmp_path / "db") if durable else None
    rc, out, err = _run(EXIT_AT_STATE, state, *([path] if path else []))
    assert rc == 0, f"rc={rc}\n{err[-4000:]}"
    lines = out.split("\n")
    assert lines[1] == "acked", out
    workers = [int(p) for p in lines[0].split()]
    assert wait_until(lambda: all((proc_stat(p) or ("X",))[0] in ("Z", "X") for p in workers), 10), \
        "a worker outlived its owner"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("amdb_")
                and int(n.split("_")[1]) not in (os.getpid(),) and not os.path.exists(f"/proc/{n.split('_')[1]}")]
    if durable:
        with amdb.ParallelDB(path) as db:                    # every acknowledged write is there
            assert db.get(b"last") == b"acked"
            assert len(db.batch_get([b"acked%04d" % i for i in range(500)])) == 500
            assert None not in db.batch_get([b"acked%04d" % i for i in range(500)])
            assert not db.verify().breaks


# ---- admin calls from inside callbacks --------------------------------------------------

CALLS = ["put", "delete", "batch_put", "batch_delete", "checkpoint", "backup", "compact", "verify", "digest",
         "close", "get", "stats", "snapshot", "increment"]
LOCK_FREE = {"get", "stats", "snapshot"}     # reads: allowed from anywhere


@pytest.mark.parametrize("callback", ["batch_put", "batch_delete", "batch_get"])
@pytest.mark.parametrize("call", CALLS)
def test_calls_from_inside_callbacks(make_db, tmp_path, callback, call):
    db = make_db(workers=2, path=str(tmp_path / "db"))
    db.batch_put([(b"a", b"old"), (b"b", b"old")])
    result = {}
    actions = {"put": lambda: db.put(b"z", b"1"), "delete": lambda: db.delete(b"a"),
               "batch_put": lambda: db.batch_put([(b"z", b"1")]), "batch_delete": lambda: db.batch_delete([b"a"]),
               "write_batch": lambda: db.write_batch().put(b"x", b"y"),
    "checkpoint": db.checkpoint, "backup": lambda: db.backup(str(tmp_path / "copy")),
               "compact": db.compact, "verify": db.verify, "digest": db.digest, "close": db.close,
               "get": lambda: db.get(b"a"), "stats": db.stats, "snapshot": lambda: db.snapshot().get(b"a"),
               "increment": lambda: db.increment(b"n")}

    def items(first, second):
        yield first
        try:
            result["value"] = actions[call]()
        except amdb.Error as exc:
            result["error"] = exc
        yield second

    if callback == "batch_get":
        if call == "close":
            with pytest.raises(amdb.ClosedError):
                db.batch_get(items(b"a", b"b"))
            return
        assert db.batch_get(items(b"a", b"b")) in ([b"old", b"old"], [None, b"old"])
        assert "error" not in result, result          # no lock is held while keys are read
        return
    run = (lambda: db.batch_put(items((b"a", b"new"), (b"b", b"new")))) if callback == "batch_put" \
        else (lambda: db.batch_delete(items(b"a", b"b")))
    if call in LOCK_FREE:
        run()
        assert "error" not in result, result
        expected = [b"new", b"new"] if callback == "batch_put" else [None, None]
    else:
        with pytest.raises(amdb.Error) as info:
            run()                                        # the batch fails whole, swallowed error or not
        assert info.value.code == "reentrant_write"
        assert result["error"].code == "reentrant_write"
        expected = [b"old", b"old"]
    assert db.batch_get([b"a", b"b", b"z"]) == expected + [None]
    assert all(w["alive"] for w in db.stats()["workers"])
    assert not db.verify().breaks


# ---- /dev/shm at every fill level -----------------------------------------------------

FILL_LEVELS = r"""
import os, signal, sys
import amdb
workers = int(sys.argv[1])
def free():
    st = os.statvfs("/dev/shm")
    return st.f_bavail * st.f_frsize
outcomes = []
for free_kib in (0, 8, 64, 100, 104, 112, 128, 136, 200, 256, 512, 1024, 2048, 4096, 8192):
    filler = os.open("/dev/shm/filler", os.O_RDWR | os.O_CREAT, 0o600)
    if free() > free_kib * 1024:
        os.posix_fallocate(filler, 0, free() - free_kib * 1024)
    try:
        db = amdb.ParallelDB(workers=workers, ring_size=1 << 16)
    except amdb.ArenaFullError as exc:
        assert exc.code == "shm_full" and "/dev/shm" in exc.hint, exc
        outcomes.append("refused")
    else:
        acked = []
        try:
            for n in range(100000):
                batch = [(b"%d-%d" % (n, i), bytes([n % 251]) * 1000) for i in range(50)]
                db.batch_put(batch)
                acked += batch
        except amdb.ArenaFullError as exc:
            assert exc.code in ("shm_full", "arena_full"), exc
        got = db.batch_get([k for k, _ in acked])
        assert got == [v for _, v in acked], "an acknowledged write is missing"
        try:                                    # compaction's second region, at full memory
            db.compact(keep_versions=1)
        except amdb.ArenaFullError:
            pass
        assert db.batch_get([k for k, _ in acked[-50:]]) == [v for _, v in acked[-50:]]
        os.kill(db.stats()["workers"][0]["pid"], signal.SIGKILL)       # a successor at full memory
        try:
            db.put(b"after-kill", b"x")
        except (amdb.ArenaFullError, amdb.WorkerCrashedError):
            pass
        assert db.batch_get([k for k, _ in acked[:50]]) == [v for _, v in acked[:50]]
        db.close()
        outcomes.append(len(acked))
    os.close(filler)
    os.unlink("/dev/shm/filler")
    assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")
print(outcomes)
"""


@pytest.mark.skipif(not private_shm_available(), reason="needs root and unshare to mount a private /dev/shm")
@pytest.mark.parametrize("workers", [1, 2])
def test_dev_shm_at_every_fill_level(workers):
    rc, out, err = run_with_private_shm(FILL_LEVELS, 24, workers, timeout=240)
    assert rc == 0, f"rc={rc}\n{out}\n{err[-4000:]}"
    outcomes = eval(out.strip())
    assert outcomes[0] == "refused" and isinstance(outcomes[-1], int) and outcomes[-1] > 0, outcomes
