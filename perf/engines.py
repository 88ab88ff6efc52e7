"""Engine adapters and machine information shared by the benchmarks.

Used by perf/bench_reference.py (the reference workload) and perf/run_matrix.py
(the sweep). Each adapter wraps one engine behind the same small interface so
that the benchmarks time the same work everywhere:

  load()                     import the engine (ImportError = not installed: skipped)
  version(), settings        printed and recorded with the results
  open(tmp, durable=False)   a fresh database whose files (if any) go in a new
                             directory under tmp; close(db)
  lookup(db, key)            one read, for verification (None when missing)
  put_items(db, items)       one engine call per (key, value) item   (batch = 1)
  put_batches(db, chunks)    one engine batch / transaction per chunk
  get_each(db, keys)         one engine call per key                  (batch = 1)
  get_batches(db, chunks)    the engine's multi-key read per chunk (or a loop)
  scan_ranges(db, ranges)    ordered scans of [start, stop) ranges; returns the
                             number of items read
  put_arrays(db, keys, values, batch)
                             numpy columns (uint64 keys, S<n> values) in chunks of
                             `batch`; engines without a columnar API convert the
                             chunk to bytes first (that conversion is timed)
  stored_bytes(db)           bytes the engine holds for its data, when it can
                             tell (AmDb: arena_used; SQLite: pages), else None
  worker_pids(db)            helper processes of the database (AmDb's workers)
  skip_reason(durable=, workload=, nodes=)
                             why a cell cannot run on this engine, or None

`durable` is the run_matrix axis "memory only" (False) versus "a path with
sync='none'" (True). On-disk peers write to a fresh temporary directory in
both cases and never fsync; only SQLite (":memory:" vs a file), dict (no
durable mode) and AmDb (path=None vs a path) change with it.
"""
import gc
import inspect
import os
import platform
import tempfile
import time

LMDB_MAP_SIZE = 8 << 30     # bytes; LMDB reserves the map up front (sparse file)
PEERS = ("plyvel", "rocksdict", "lmdb")        # the databases AmDb is compared with
ENGINES = ("amdb", "plyvel", "rocksdict", "lmdb", "dict", "sqlite3")
IMPORT_NAMES = {"amdb": "amdb.native.client.writer", "plyvel": "plyvel", "rocksdict": "rocksdict",
                "lmdb": "lmdb", "dict": None, "sqlite3": "sqlite3"}


class Engine:
    """Generic workload loops; adapters override what their engine does natively."""
    name = "?"
    settings = ""

    def load(self):
        pass

    def skip_reason(self, *, durable=False, workload=None, nodes=1):
        if nodes != 1:
            return f"{self.name} is a single-node engine (cells with --nodes > 1 are AmDb's)"
        return None

    def put_items(self, db, items):
        raise NotImplementedError

    def get_each(self, db, keys):
        raise NotImplementedError

    def get_batches(self, db, key_chunks):
        get_each = self.get_each
        for chunk in key_chunks:
            get_each(db, chunk)

    def scan_ranges(self, db, ranges):
        raise NotImplementedError

    def put_arrays(self, db, keys, values, batch):
        """No columnar API: each chunk becomes (bytes key, bytes value) pairs, as a
        user of this engine would have to do, then one engine batch."""
        put_batches, put_items = self.put_batches, self.put_items
        for start in range(0, len(keys), batch):
            key_bytes = keys[start:start + batch].astype(">u8").tobytes()
            chunk = list(zip([key_bytes[i:i + 8] for i in range(0, len(key_bytes), 8)],
                             values[start:start + batch].tolist()))
            if batch == 1:
                put_items(db, chunk)
            else:
                put_batches(db, [chunk])

    def stored_bytes(self, db):
        return None

    def worker_pids(self, db):
        return []


class DictEngine(Engine):
    name = "dict"
    settings = "dict.update(batch) per batch; d.get(key) per read"

    def version(self):
        return "Python " + platform.python_version()

    def skip_reason(self, *, durable=False, workload=None, nodes=1):
        if durable:
            return "dict has no durable mode"
        if workload == "scan":
            return "dict has no ordered scan (it keeps insertion order, not key order)"
        return super().skip_reason(durable=durable, workload=workload, nodes=nodes)

    def open(self, tmp, durable=False):
        return {}

    def close(self, db):
        db.clear()

    def put_items(self, db, items):
        for key, value in items:
            db[key] = value

    def put_batches(self, db, chunks):
        update = db.update
        for chunk in chunks:
            update(chunk)

    def get_each(self, db, keys):
        get = db.get
        for key in keys:
            get(key)

    def get_batches(self, db, key_chunks):
        get = db.get
        for chunk in key_chunks:
            [get(key) for key in chunk]

    def lookup(self, db, key):
        return db.get(key)


class PlyvelEngine(Engine):
    name = "plyvel"
    settings = "LevelDB defaults, one WriteBatch(sync=False) per batch"

    def load(self):
        import plyvel
        self.plyvel = plyvel

    def version(self):
        return f"plyvel {self.plyvel.__version__}, LevelDB {self.plyvel.__leveldb_version__}"

    def open(self, tmp, durable=False):
        return self.plyvel.DB(tempfile.mkdtemp(dir=tmp), create_if_missing=True)

    def close(self, db):
        db.close()

    def put_items(self, db, items):
        put = db.put
        for key, value in items:
            put(key, value, sync=False)

    def put_batches(self, db, chunks):
        for chunk in chunks:
            with db.write_batch(sync=False) as batch:
                put = batch.put
                for key, value in chunk:
                    put(key, value)

    def get_each(self, db, keys):
        get = db.get
        for key in keys:
            get(key)

    def scan_ranges(self, db, ranges):
        count = 0
        iterator = db.iterator
        for start, stop in ranges:
            for _ in iterator(start=start, stop=stop):
                count += 1
        return count

    def lookup(self, db, key):
        return db.get(key)


class RocksdictEngine(Engine):
    name = "rocksdict"
    settings = ("RocksDB defaults in raw_mode (WAL on, not synced), "
                "one WriteBatch per batch, multi-get per read batch")

    def load(self):
        import rocksdict
        self.rocksdict = rocksdict

    def version(self):
        from importlib.metadata import version
        return f"rocksdict {version('rocksdict')}"

    def open(self, tmp, durable=False):
        options = self.rocksdict.Options(raw_mode=True)
        return self.rocksdict.Rdict(tempfile.mkdtemp(dir=tmp), options)

    def close(self, db):
        db.close()

    def put_items(self, db, items):
        put = db.put
        for key, value in items:
            put(key, value)

    def put_batches(self, db, chunks):
        WriteBatch = self.rocksdict.WriteBatch
        write = db.write
        for chunk in chunks:
            batch = WriteBatch(raw_mode=True)
            put = batch.put
            for key, value in chunk:
                put(key, value)
            write(batch)

    def get_each(self, db, keys):
        get = db.get
        for key in keys:
            get(key)

    def get_batches(self, db, key_chunks):
        get = db.get
        for chunk in key_chunks:
            get(chunk)                       # a list of keys: RocksDB multi_get

    def scan_ranges(self, db, ranges):
        count = 0
        ReadOptions = self.rocksdict.ReadOptions
        items = db.items
        for start, stop in ranges:
            options = ReadOptions()
            if stop is not None:
                options.set_iterate_upper_bound(stop)
            for _ in items(from_key=start, read_opt=options):
                count += 1
        return count

    def lookup(self, db, key):
        return db.get(key)


class LmdbEngine(Engine):
    name = "lmdb"

    def __init__(self, map_size=LMDB_MAP_SIZE):
        self.map_size = map_size

    @property
    def settings(self):
        return (f"map_size={self.map_size / (1 << 30):g} GiB, sync=False, metasync=False, "
                "one write txn + cursor.putmulti per batch; one read txn per read batch "
                "(cursor.getmulti), all single gets in one read txn")

    def load(self):
        import lmdb
        self.lmdb = lmdb

    def version(self):
        return f"lmdb {self.lmdb.__version__}, LMDB {'.'.join(map(str, self.lmdb.version()))}"

    def open(self, tmp, durable=False):
        return self.lmdb.open(tempfile.mkdtemp(dir=tmp), map_size=self.map_size,
                              sync=False, metasync=False)

    def close(self, env):
        env.close()

    def put_items(self, env, items):
        begin = env.begin
        for key, value in items:
            with begin(write=True) as txn:
                txn.put(key, value)

    def put_batches(self, env, chunks):
        begin = env.begin
        for chunk in chunks:
            with begin(write=True) as txn:
                txn.cursor().putmulti(chunk)

    def get_each(self, env, keys):
        with env.begin() as txn:
            get = txn.get
            for key in keys:
                get(key)

    def get_batches(self, env, key_chunks):
        begin = env.begin
        for chunk in key_chunks:
            with begin() as txn:
                txn.cursor().getmulti(chunk)

    def scan_ranges(self, env, ranges):
        count = 0
        with env.begin() as txn:
            cursor = txn.cursor()
            for start, stop in ranges:
                if not cursor.set_range(start):
                    continue
                for key, _ in cursor:
                    if stop is not None and key >= stop:
                        break
                    count += 1
        return count

    def lookup(self, env, key):
        with env.begin() as txn:
            return txn.get(key)


class Sqlite3Engine(Engine):
    name = "sqlite3"
    settings = ("table (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID; memory only: ':memory:', "
                "durable: a file with journal_mode=WAL, synchronous=OFF; one transaction "
                "(executemany) per batch, autocommit per single put")

    def load(self):
        import sqlite3
        self.sqlite3 = sqlite3

    def version(self):
        return f"sqlite3 (Python stdlib), SQLite {self.sqlite3.sqlite_version}"

    def open(self, tmp, durable=False):
        path = os.path.join(tempfile.mkdtemp(dir=tmp), "kv.sqlite3") if durable else ":memory:"
        conn = self.sqlite3.connect(path, isolation_level=None)
        if durable:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
        conn.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        return conn

    def close(self, conn):
        conn.close()

    def put_items(self, conn, items):
        execute = conn.execute
        for item in items:
            execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", item)

    def put_batches(self, conn, chunks):
        execute, executemany = conn.execute, conn.executemany
        for chunk in chunks:
            execute("BEGIN")
            executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", chunk)
            execute("COMMIT")

    def get_each(self, conn, keys):
        execute = conn.cursor().execute
        for key in keys:
            execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()

    def scan_ranges(self, conn, ranges):
        count = 0
        cursor = conn.cursor()
        for start, stop in ranges:
            if stop is None:
                rows = cursor.execute("SELECT k, v FROM kv WHERE k >= ? ORDER BY k", (start,))
            else:
                rows = cursor.execute("SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k",
                                      (start, stop))
            for _ in rows:
                count += 1
        return count

    def lookup(self, conn, key):
        row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def stored_bytes(self, conn):
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return pages * conn.execute("PRAGMA page_size").fetchone()[0]


class AmdbEngine(Engine):
    name = "amdb"

    def __init__(self, workers, nodes=1):
        self.workers = workers
        self.nodes = nodes
        self.settings = (f"ParallelDB(workers={workers}), memory only, defaults "
                         "otherwise; db.batch_put(list) per batch")
        self._durable_probe = None

    def load(self):
        import numpy
        import amdb
        amdb.ParallelDB   # imports the compiled engine: fails here if it is not built
        self.amdb, self.numpy = amdb, numpy

    def version(self):
        return f"amdb {self.amdb.__version__} ({os.path.dirname(self.amdb.__file__)})"

    def _durable_kwargs(self):
        params = inspect.signature(self.amdb.ParallelDB).parameters
        return {"sync": "none"} if "sync" in params else {}

    def durable_unavailable(self):
        """Why AmDb cannot open a path (the amdb.Error it raises), or None when it
        can. Asked once: opening with a path that is refused starts no worker."""
        if self._durable_probe is None:
            tmp = tempfile.mkdtemp(prefix="amdb-durable-probe-")
            try:
                db = self.amdb.ParallelDB(os.path.join(tmp, "db"), workers=1,
                                          **self._durable_kwargs())
                db.close()
                self._durable_probe = ""
            except self.amdb.Error as exc:
                self._durable_probe = f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"
            finally:
                import shutil
                shutil.rmtree(tmp, ignore_errors=True)
        return self._durable_probe or None

    def skip_reason(self, *, durable=False, workload=None, nodes=1):
        if nodes != 1:
            return cluster_unavailable()
        if durable:
            return self.durable_unavailable()
        return None

    def open(self, tmp, durable=False):
        if durable:
            return self.amdb.ParallelDB(tempfile.mkdtemp(dir=tmp), workers=self.workers,
                                        **self._durable_kwargs())
        return self.amdb.ParallelDB(workers=self.workers)

    def close(self, db):
        db.close()

    def put_items(self, db, items):
        put = db.put
        for key, value in items:
            put(key, value)

    def put_batches(self, db, chunks):
        batch_put = db.batch_put
        for chunk in chunks:
            batch_put(chunk)

    def get_each(self, db, keys):
        get = db.get
        for key in keys:
            get(key)

    def get_batches(self, db, key_chunks):
        batch_get = db.batch_get
        for chunk in key_chunks:
            batch_get(chunk)

    def scan_ranges(self, db, ranges):
        count = 0
        scan = db.scan
        for start, stop in ranges:
            for _ in scan(start, stop):
                count += 1
        return count

    def put_arrays(self, db, keys, values, batch):
        put_array = db.put_array
        for start in range(0, len(keys), batch):
            put_array(keys[start:start + batch], values[start:start + batch])

    def lookup(self, db, key):
        return db.get(key)

    def batch_get_all(self, db, key_chunks):
        batch_get = db.batch_get
        return [batch_get(chunk) for chunk in key_chunks]

    def stored_bytes(self, db):
        return sum(worker["arena_used"] for worker in db.stats()["workers"])

    def worker_pids(self, db):
        return [worker["pid"] for worker in db.stats()["workers"]]


def cluster_unavailable():
    """Why AmDb cells with --nodes > 1 cannot run yet, or None when they can."""
    import importlib.util
    try:
        found = importlib.util.find_spec("amdb.distributed") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return "amdb.distributed does not exist yet (the cluster issue): --nodes > 1 cells are skipped"
    return ("amdb.distributed exists but perf/engines.py has no cluster adapter yet: "
            "implement AmdbEngine.open for nodes > 1")


PEER_CLASSES = {"plyvel": PlyvelEngine, "rocksdict": RocksdictEngine, "lmdb": LmdbEngine,
                "dict": DictEngine, "sqlite3": Sqlite3Engine}


def make_engine(name, workers=None):
    """The adapter of engine `name` (AmDb with `workers` workers)."""
    if name == "amdb":
        return AmdbEngine(workers if workers is not None else os.cpu_count())
    return PEER_CLASSES[name]()


def installed_engines():
    """Names of the engines whose Python module can be found here (not imported)."""
    import importlib.util
    found = []
    for name in ENGINES:
        module = IMPORT_NAMES[name]
        try:
            if module is None or importlib.util.find_spec(module) is not None:
                found.append(name)
        except (ImportError, ValueError):
            pass
    return found


# --- measuring -----------------------------------------------------------------

def timed(fn, *args):
    """Seconds that fn(*args) takes, with the garbage collector off; and its result."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn(*args)
        return time.perf_counter() - start, result
    finally:
        gc.enable()


# --- machine -------------------------------------------------------------------

def read_cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_memory_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return None


def read_proc_kib(path, field):
    """A "<field>: <n> kB" line of a /proc file (meminfo, <pid>/status) in bytes, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def read_meminfo_bytes(field):
    """A /proc/meminfo field (e.g. "MemAvailable") in bytes, or None."""
    return read_proc_kib("/proc/meminfo", field)


def filesystem_of(path):
    """The mount (target, fstype) that holds path: the longest matching /proc/mounts entry."""
    path = os.path.realpath(path)
    best = ("", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                target, fstype = line.split()[1:3]
                inside = path == target or path.startswith(target.rstrip("/") + "/")
                if inside and len(target) >= len(best[0]):
                    best = (target, fstype)
    except OSError:
        pass
    return best


def machine_info():
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": read_cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_gib": read_memory_gib(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }
