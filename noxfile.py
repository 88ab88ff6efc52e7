"""AmDb on every supported Python: `make test-pythons` (or `nox` in .venv-pkg).

For each Python from 3.9 to 3.13 found (on PATH, or under ~/.pyenv/versions;
one that is missing is skipped with a message), the session

1. copies the sources (no compiled extensions, no build/) into its own
   directory and builds a release wheel there, with pip's build isolation;
2. installs that wheel with the `test` extra into the session's venv;
3. runs pytest (-x -q; pyproject.toml's addopts leave out `-m slow`) on a copy
   of tests/, tools/, perf/, docs/, README.md and setup.cfg whose `amdb` is a
   link to the installed package: the tests and the children they start
   import the installed package (the headers and stubs that tests read are
   package data), never the sources of the checkout.

`nox -p 3.9` runs one Python; `nox -- -k scan` replaces -x -q with pytest
options of your own. JOBS (environment) sets the parallel compiles (2).
"""
import glob
import os
import shutil
import time

import nox

ROOT = os.path.dirname(os.path.abspath(__file__))
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = False
nox.options.reuse_existing_virtualenvs = False


def _pyenv_interpreters():
    """Put the newest ~/.pyenv/versions/X.Y.* of each version in PYTHONS first
    on PATH: pyenv's shims answer only for the versions that pyenv selects."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = []
    for version in PYTHONS:
        dirs = [d for d in glob.glob(os.path.join(root, "versions", version + ".*", "bin"))
                if os.path.basename(os.path.dirname(d))[len(version) + 1:].isdigit()]
        dirs.sort(key=lambda d: int(os.path.basename(os.path.dirname(d)).rsplit(".", 1)[1]))
        if dirs:
            found.append(dirs[-1])
    if found:
        os.environ["PATH"] = os.pathsep.join(found + [os.environ.get("PATH", "")])


_pyenv_interpreters()

SOURCES = ["amdb", "setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "docs"]
TEST_TREE = ["tests", "tools", "perf", "docs", "README.md", "pyproject.toml", "setup.cfg"]
IGNORE = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "results", ".pytest_cache", ".hypothesis")


def _copy(names, dest):
    os.makedirs(dest)
    for name in names:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), ignore=IGNORE)
        else:
            shutil.copy2(src, dest)


@nox.session(python=PYTHONS)
def tests(session):
    start = time.monotonic()
    try:
        tmp = session.create_tmp()           # .nox/tests-X-Y/tmp, emptied here
        for entry in os.listdir(tmp):
            shutil.rmtree(os.path.join(tmp, entry))
        src, wheels, tree = (os.path.join(tmp, d) for d in ("src", "wheels", "tree"))
        jobs = os.environ.get("JOBS", "2")

        _copy(SOURCES, src)
        with open(os.path.join(tmp, "build.cfg"), "w") as f:
            f.write(f"[build_ext]\nparallel = {jobs}\n")
        session.run("python", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, src,
                    env={"AMDB_BUILD": "release", "AMDB_CYTHON_JOBS": jobs, "CFLAGS": "-g0",
                         "DIST_EXTRA_CONFIG": os.path.join(tmp, "build.cfg")})
        (wheel,) = glob.glob(os.path.join(wheels, "amdb-*.whl"))
        # --prefer-binary: on 3.9 and 3.10 the newest atheris is an sdist (needs clang
        # and libFuzzer); an older release has wheels for them.
        session.install("--prefer-binary", f"{wheel}[test]")

        _copy(TEST_TREE, tree)
        with session.chdir(tmp):             # not ROOT: `python -c` puts the cwd first on sys.path
            package = session.run("python", "-c", "import amdb, os; print(os.path.dirname(amdb.__file__))",
                                  silent=True).strip()
        assert os.path.realpath(package) != os.path.realpath(os.path.join(ROOT, "amdb")), package
        os.symlink(package, os.path.join(tree, "amdb"))
        session.log(f"testing the installed package {package}")
        with session.chdir(tree):
            session.run("python", "-m", "pytest", *(session.posargs or ["-x", "-q"]))
    finally:
        session.log(f"Python {session.python}: {time.monotonic() - start:.0f} s (build, install, tests)")
