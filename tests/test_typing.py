"""Types (issue 17): amdb ships ``py.typed`` and a ``.pyi`` stub beside each
public module, compiled (amdb/native/...) or not, so that ``mypy --strict``
checks code that uses AmDb.

* tests/typing_usage.py uses the whole public API with ``assert_type`` on
  what each call returns; ``mypy --strict`` must pass on it and on every
  stub (for the running Python and for the oldest one mypy still targets).
  The file is only type-checked, never run.
* A snippet of wrong calls, each line marked with the error code(s) mypy
  must report there: mypy must report exactly those, which proves that the
  stubs are read (a module seen as ``Any`` would accept every line).
* mypy's stubtest imports each module and compares the stubs with it (names,
  signatures, constants), so that a stub cannot drift from the code.
* setup.cfg puts every stub and py.typed into the wheel.

Everything runs mypy in a child process, from the repository root, with its
cache in a temporary directory; the tests skip when mypy is not installed
(``pip install -e .[test]`` installs it).
"""
import configparser
import fnmatch
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("mypy", reason="mypy is not installed (it is in the test extra: pip install -e .[test])")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USAGE = os.path.join("tests", "typing_usage.py")


def stub_files():
    found = []
    for folder, _, names in os.walk(os.path.join(ROOT, "amdb")):
        found += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names if n.endswith(".pyi")]
    return sorted(found)


def run_mypy(args, cache_dir):
    env = dict(os.environ, MYPYPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--config-file=", "--no-pretty",
                           "--cache-dir", str(cache_dir), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_public_modules_have_stubs():
    stubs = set(stub_files())
    for module in ("__init__", "attach", "db", "prefixed", "history", "views", "errors", "audit",
                   "native/client/iterator", "native/client/batch", "native/client/writer",
                   "native/hashing", "native/routing", "distributed/__init__", "distributed/client"):
        assert os.path.join("amdb", module + ".pyi") in stubs, module
    assert os.path.isfile(os.path.join(ROOT, "amdb", "py.typed"))


@pytest.mark.parametrize("python_version", [None, "3.10"], ids=["this-python", "py3.10"])
def test_usage_and_stubs_pass_mypy_strict(python_version, tmp_path):
    version = [] if python_version is None else ["--python-version", python_version]
    out = run_mypy([*version, USAGE, *stub_files()], tmp_path / "cache")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


MISUSE = '''
import amdb
from amdb.distributed import DistributedCluster


def misuse(db: amdb.ParallelDB, cluster: DistributedCluster) -> None:
    db.put(1, 2)  # E: arg-type
    x: int = db.get(b"k")  # E: assignment
    y: bytes = db.get(b"k")  # E: assignment
    db.put("key", b"value")  # E: arg-type
    db.get("key")  # E: call-overload
    db.batch_put([("k", "v")])  # E: list-item
    db.no_such_method()  # E: attr-defined
    amdb.ParallelDB(sync="fast")  # E: arg-type
    amdb.ParallelDB(workers="4")  # E: arg-type
    s: str = next(db.scan(keys_only=True))  # E: assignment
    t: bytes = next(db.scan())  # E: assignment
    db.iterator().seek("k")  # E: arg-type
    n: str = db.increment(b"n")  # E: assignment
    ok: str = db.compare_and_set(b"k", None, b"v")  # E: assignment
    db.put_if_absent(b"k", None)  # E: arg-type
    with db.write_batch() as wb:
        r = wb.increment(b"n")  # E: func-returns-value
        wb.put(b"k", 1)  # E: arg-type
    db.setdefault(b"k")  # E: call-arg
    db.snapshot()[b"k"] = b"v"  # E: index
    db.history(b"k")[0].value.decode()  # E: union-attr
    db.stats(1)  # E: call-arg
    db.prefixed(b"u:").put(b"k", "v")  # E: arg-type
    cluster.batch_put([(b"k", b"v")]).results.seq  # E: attr-defined
    cluster.get(1)  # E: call-overload
    amdb.Error("x").node_id  # E: attr-defined
'''

ERROR_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: .*\[(?P<code>[a-z0-9-]+)\]$")


def test_mypy_rejects_misuse(tmp_path):
    path = tmp_path / "misuse.py"
    path.write_text(MISUSE)
    expected = set()
    for line_no, line in enumerate(MISUSE.splitlines(), 1):
        if "# E:" in line:
            expected |= {(line_no, code.strip()) for code in line.split("# E:")[1].split(",")}
    out = run_mypy([str(path)], tmp_path / "cache")
    reported = {(int(m["line"]), m["code"]) for m in map(ERROR_LINE.match, out.stdout.splitlines())
                if m and m["path"].endswith("misuse.py")}
    assert out.returncode == 1, out.stdout + out.stderr
    assert reported == expected, (f"missing: {sorted(expected - reported)}\n"
                                  f"unexpected: {sorted(reported - expected)}\n{out.stdout}")


# Runtime names the stubs leave out on purpose (stubtest allowlist: regular expressions).
STUBTEST_ALLOWLIST = r"""
# internal modules, not reachable from the public API: no stubs
amdb\.(__main__|_worker|options|storage|supervisor)
# attach.py: only Handle is public (the owner's server and the client's connection are internal)
amdb\.attach\.(?!Handle$).*
amdb\.shm(\..*)?
amdb\.native\.(compact|constants|hashindex|seek_index|skiplist|testing|verify|versions|wal)
amdb\.native\.worker(\..*)?
amdb\.native\.client\.(attachment|channel|inspect|keys|reader)
amdb\.distributed\.(coordinator|node|packing|rebalance|scan)
# writer.pyx: only BatchResult is public (the stub's __getattr__ covers the rest)
amdb\.native\.client\.writer\.(?!BatchResult$).*
# what Cython adds to every compiled module
amdb\..*\.__(reduce|setstate)_cython__
amdb\..*\.__test__
# setdefault(key) without a default raises InvalidTypeError (values are bytes): the stubs require one
# (mypy 1.19, the newest for Python 3.9, names them as amdb re-exports them)
amdb\.(db\.)?ParallelDB\.setdefault
amdb\.(prefixed\.)?PrefixedDB\.setdefault
"""


def test_stubs_match_the_runtime(tmp_path):
    # The stubs alone in a tree of their own (as a wheel's are found), the
    # runtime modules imported from the repository.
    stubs = tmp_path / "stubs"
    for rel in stub_files() + [os.path.join("amdb", "py.typed")]:
        os.makedirs(stubs / os.path.dirname(rel), exist_ok=True)
        with open(os.path.join(ROOT, rel), "rb") as src, open(stubs / rel, "wb") as dst:
            dst.write(src.read())
    allowlist = STUBTEST_ALLOWLIST
    try:
        import ray  # noqa: F401
    except ImportError:
        allowlist += "amdb\\.distributed(\\..*)?\n"      # cannot be imported: its stubs go unchecked
    (tmp_path / "allowlist.txt").write_text(allowlist)
    (tmp_path / "mypy.ini").write_text(f"[mypy]\ncache_dir = {tmp_path / 'cache'}\n")
    env = dict(os.environ, MYPYPATH=str(stubs), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "mypy.stubtest", "--concise", "--ignore-unused-allowlist",
                          "--allowlist", str(tmp_path / "allowlist.txt"),
                          "--mypy-config-file", str(tmp_path / "mypy.ini"), "amdb"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]


def test_the_stubs_ship_in_wheels():
    """setup.cfg's package_data puts every .pyi and py.typed into the wheel."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    patterns = [p.strip() for p in config["options.package_data"]["*"].replace("\n", ",").split(",") if p.strip()]
    for rel in stub_files() + [os.path.join("amdb", "py.typed")]:
        name = os.path.basename(rel)
        assert any(fnmatch.fnmatch(name, p) for p in patterns), (rel, patterns)
    extras = config["options.extras_require"]
    for extra in ("test", "all"):
        assert any(re.match(r"mypy\b", req) for req in extras[extra].split()), extra
