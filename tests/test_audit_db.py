"""ParallelDB(audit=path): every write operation and the open/close events
reach the audit log (the log itself is tested in test_audit.py)."""
import os
import threading

import numpy as np
import pytest

import amdb
from amdb import audit


def test_writes_and_admin_events_are_logged(tmp_path, make_db):
    path = tmp_path / "audit.jsonl"
    db = make_db(workers=2, audit=path)
    db.put(b"a", b"1")
    _, batch = db.batch_put([(b"k%d" % i, b"v") for i in range(1000)])
    db.delete(b"a")
    db.batch_delete([b"k1", b"k2"])
    db.put_array(np.arange(10, dtype=np.uint64), np.arange(10, dtype=np.uint64))
    with pytest.raises(amdb.InvalidTypeError):
        db.batch_put([(b"x", b"y"), ("bad", b"z")])          # refused: nothing written, not logged
    stats = db.stats()["audit"]
    assert stats["path"] == str(path)
    db.close()
    records = list(audit.read(path))
    events = [r["event"] for r in records if "event" in r]
    ops = [r for r in records if "op" in r]
    assert events[0] == "open" and events[-1] == "close"
    assert [(r["op"], r["keys"]) for r in ops] == [
        ("put", 1), ("batch_put", 1000), ("delete", 1), ("batch_delete", 2), ("put_array", 10)]
    assert [r["first_seq"] for r in ops] == [1, 2, 3, 4, 5]
    assert ops[1]["last_seq"] == batch.seq
    assert all(r["pid"] == os.getpid() for r in ops)
    assert all(r["tid"] == threading.get_ident() for r in ops)
    digests = [r["key_digest"] for r in ops]
    assert digests[0] == digests[2]                 # put and delete of the same key
    assert len({digests[i] for i in (0, 1, 3, 4)}) == 4


def test_audit_argument_is_checked(make_db):
    with pytest.raises(amdb.InvalidTypeError):
        make_db(workers=1, audit=42)
