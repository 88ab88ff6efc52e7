"""Shared fixtures of the AmDb test suite.

* ``db``        a fresh ParallelDB(workers=2) per test, closed afterwards.
* ``make_db``   factory ``make_db(**kwargs)`` (workers=2 unless given); at the
                end of the test it verifies every database it made that is
                still open (every hash chain and the ledger: a test that
                leaves a break behind fails, unless it corrupted the arena on
                purpose with _debug_flip_bit), then closes them.
* ``shared_db`` one ParallelDB(workers=2) per test module; tests that use it
                must stay inside the unique key prefix the ``prefix`` fixture
                hands them.
* an autouse module-level check that no ``/dev/shm/amdb_<our pid>_*`` entry and
  no live child process of this pytest process is left behind.

Tests marked ``@pytest.mark.slow`` are deselected by pyproject.toml's addopts;
run them with ``-m slow``.
"""
import faulthandler
import itertools
import os
import sys

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from amdb_testutil import children_of, shm_entries, wait_until  # noqa: E402

settings.register_profile(
    "amdb",
    deadline=None,
    max_examples=40,
    database=None,  # keep the repository free of a .hypothesis/ folder
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("AMDB_HYPOTHESIS_PROFILE", "amdb"))

TEST_STACK_DUMP_S = 120  # dump every thread's stack if one test runs this long
LEAK_GRACE_S = 5.0       # workers must be gone this long after close()


@pytest.fixture(autouse=True)
def _stack_dump_on_hang():
    faulthandler.dump_traceback_later(TEST_STACK_DUMP_S, exit=False)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module", autouse=True)
def _no_leaks_after_module():
    """After every module: no segment of ours in /dev/shm, no live child left.

    Autouse module fixtures are set up before (so torn down after) the
    module-scoped databases of the module.
    """
    me = os.getpid()
    yield
    assert wait_until(lambda: not shm_entries(me), LEAK_GRACE_S), \
        f"segments left in /dev/shm: {shm_entries(me)}"
    assert wait_until(lambda: not children_of(me), LEAK_GRACE_S), \
        f"child processes still alive: {children_of(me)}"


@pytest.fixture
def make_db():
    import amdb
    made = []

    def factory(**kwargs):
        kwargs.setdefault("workers", 2)
        db = amdb.ParallelDB(**kwargs)
        made.append(db)
        return db

    yield factory
    import amdb
    for db in made:
        if not db.closed and not db._corrupted:
            try:
                report = db.verify()
            except amdb.WorkerCrashedError:      # writes refused (a successor could not start)
                report = None
            assert report is None or report.ok, f"teardown verify(): {report.breaks[:5]}"
        db.close()


@pytest.fixture
def db(make_db):
    return make_db(workers=2)


@pytest.fixture(scope="module")
def shared_db():
    import amdb
    db = amdb.ParallelDB(workers=2)
    yield db
    db.close()


_prefix_counter = itertools.count()


@pytest.fixture
def prefix():
    """A key prefix no other test uses (for tests on ``shared_db``)."""
    return b"t%05d/" % next(_prefix_counter)
