"""The shared structures alone, in one process, without the database around
them (amdb/native/testing.pyx): the skip list, the hash index and version
publication under one writer thread and concurrent reader threads (LevelDB's
generation-stamped check), and the SPSC ring under one producer and one
consumer thread. All threads run without the GIL, on a private memfd
partition. These run in the release and in the debug build (make test)."""
import pytest

from amdb.native.testing import PrivatePartition


@pytest.fixture
def partition():
    p = PrivatePartition(arena_size=1 << 30)       # sparse: only what the writer commits is used
    yield p
    p.close()


@pytest.mark.parametrize("keys, writes, readers", [(64, 20_000, 1), (5_000, 60_000, 2), (200_000, 100_000, 1),
                                                   (1_000, 1_000_000, 2)])
def test_readers_never_miss_what_was_published_before_they_looked(partition, keys, writes, readers):
    # Few keys: mostly new versions of existing nodes. Many keys: mostly new
    # nodes, hash-table growth and skip-list links, while readers walk.
    errors, checks = partition.run_concurrent(keys, writes, readers, seed=keys)
    assert errors == 0
    assert checks >= readers                       # every reader checked at least once, at the end


def test_ring_carries_every_record_in_order_through_wraps_and_sleeps(partition):
    assert partition.ring_roundtrip(200_000, seed=7) == 0


def test_a_partly_committed_ring_wraps_early_and_loses_nothing(partition):
    # A ring is committed as it is needed (ring.pyx, invariant 4): below its
    # committed part the producer wraps early; records stay whole and in order.
    capacity = partition.ring_capacity
    assert partition.ring_roundtrip(200_000, seed=11, committed=capacity // 4) == 0


def test_the_checks_can_fail():
    # The reader's check is not vacuous: a writer that publishes generations
    # it never wrote is caught.
    p = PrivatePartition()
    try:
        assert p._run_lying_writer(100) > 0
    finally:
        p.close()
