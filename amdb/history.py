"""Version history types: Version records, snapshots, verification reports.

Every put or delete of a key appends a version; versions of a key count 1, 2,
3, ... and are hash-chained (see amdb/native/versions.pyx):

    hash = xxh64(prev_hash | key | version_no | flags | value)

What the chain guarantees: any accidental change of a stored value, key,
hash or link (a flipped bit in memory or on disk, a torn write) breaks the
chain, and db.verify() finds it. What it does not: xxh64 is not a
cryptographic hash, so someone who can write the arena could forge a
consistent chain. The SHA-256 ledger (db.digest()) adds tamper evidence: it
folds every version hash, chunk by chunk and in order, into a SHA-256 chain
per worker, so rewriting any version changes the digest that was recorded
before — compare digests taken at different times or on replicas.
"""
from collections import abc
from typing import List, NamedTuple, Optional

from amdb.views import MappingViews


class Version(NamedTuple):
    """One version of a key, as returned by db.history(key)."""
    version: int              # 1, 2, 3, ... per key
    seq: int                  # sequence number of the batch that wrote it
    timestamp: float          # seconds since the epoch when a worker applied it
    value: Optional[bytes]    # None for a deletion
    deleted: bool
    hash: int                 # this version's chain hash
    prev_hash: int            # the previous version's chain hash (0 for version 1)


class Break(NamedTuple):
    """A place where a hash chain does not hold (db.verify)."""
    worker: int
    key: Optional[bytes]      # None when the key itself cannot be read safely
    version: Optional[int]
    kind: str                 # "hash", "link", "version_no", "node", "key_hash", "order", "first", "bounds", "count", "ledger"
    expected: Optional[int]
    stored: Optional[int]


class VerifyReport(NamedTuple):
    """What db.verify() checked and every break it found."""
    keys_checked: int
    versions_checked: int
    breaks: List[Break]
    breaks_total: int         # every break found (the list keeps the first 10,000)
    seconds: float

    @property
    def ok(self):
        return self.breaks_total == 0


class Snapshot(MappingViews, abc.Mapping):
    """Reads as of one sequence number while writes go on (db.snapshot()).
    A read-only Mapping: ``snap[k]``, ``in``, views; ``len(snap)`` counts
    its keys (a walk of the whole snapshot)."""

    __slots__ = ("_db", "seq", "_unpin")

    def __init__(self, db, seq, pin=None):
        self._db = db
        self.seq = seq
        # (pin, unpin) of the database's attachment: compaction keeps what
        # reads as of this seq need while the snapshot lives (close() or GC).
        self._unpin = None
        if pin is not None:
            pin[0](seq)
            self._unpin = pin[1]

    def close(self):
        """Let compaction reclaim what only this snapshot still needed
        (idempotent; garbage collection does it too). Reads go on working
        until a compaction reclaims a version they need: then they raise
        VersionReclaimedError."""
        unpin, self._unpin = self._unpin, None
        if unpin is not None:
            unpin(self.seq)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __getitem__(self, key):
        value = self._db.get(key, _MISSING, at_seq=self.seq)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __iter__(self):
        return self._view_iterator(True, False, False)

    def __len__(self):
        return sum(1 for _ in self._view_iterator(True, False, False))

    def _view_iterator(self, keys_only, values_only, reverse):
        return self._db.iterator(keys_only=keys_only, values_only=values_only, reverse=reverse, at_seq=self.seq)

    def get(self, key, default=None):
        return self._db.get(key, default, at_seq=self.seq)

    def batch_get(self, keys):
        return self._db.batch_get(keys, at_seq=self.seq)

    def __contains__(self, key):
        return self._db.get(key, _MISSING, at_seq=self.seq) is not _MISSING

    def scan(self, start=None, stop=None, *, prefix=None, reverse=False, keys_only=False):
        return self._db.scan(start, stop, prefix=prefix, reverse=reverse, keys_only=keys_only,
                             at_seq=self.seq)

    def history(self, key, *, oldest_first=False):
        return self._db.history(key, oldest_first=oldest_first, at_seq=self.seq)

    def __repr__(self):
        return f"<amdb.Snapshot seq={self.seq}>"


_MISSING = object()
