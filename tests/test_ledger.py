"""The SHA-256 ledger: digest() and its verification (issue 3)."""
import hashlib
import os

import pytest

import amdb
from amdb.native.hashing import sha256, xxh64_stream


def test_sha256_matches_hashlib():
    for n in list(range(0, 130)) + [1000, 4095, 4096, 65537]:
        data = os.urandom(n)
        assert sha256(data) == hashlib.sha256(data).digest(), n


def _history(db, extra=None):
    db.batch_put([(b"k%05d" % i, b"v%d" % i) for i in range(3000)])
    db.batch_put([(b"k%05d" % i, b"w") for i in range(0, 3000, 7)])
    db.batch_delete([b"k%05d" % i for i in range(0, 3000, 11)])
    db.put(b"single", b"s")
    if extra:
        db.put(*extra)
    return db.digest()


def test_same_batches_give_the_same_digest_and_any_change_another(make_db):
    a = _history(make_db(workers=2))
    b = _history(make_db(workers=2))
    assert a == b
    assert len(a["workers"]) == 2 and all(len(h) == 64 for h in a["workers"])
    c = _history(make_db(workers=2), extra=(b"k00003", b"rewritten"))
    assert c["root"] != a["root"]
    d = _history(make_db(workers=2), extra=(b"k00003", b"v3"))        # same value, one more version
    assert d["root"] != a["root"]


def test_a_failed_batch_leaves_no_trace_in_seq_or_digest(make_db):
    clean = make_db(workers=2, max_batch=200)
    failed = make_db(workers=2, max_batch=200)
    clean.batch_put([(b"a%d" % i, b"x") for i in range(1000)])
    failed.batch_put([(b"a%d" % i, b"x") for i in range(1000)])

    def bad_late():
        for i in range(5000):
            yield (b"b%d" % i, b"y")
        yield ("not bytes", b"y")
    with pytest.raises(amdb.InvalidTypeError):
        failed.batch_put(bad_late())
    for db in (clean, failed):
        _, result = db.batch_put([(b"c%d" % i, b"z") for i in range(500)])
        assert result.last_seq == 2                 # seqs count committed batches
    assert clean.digest() == failed.digest()
    assert failed.verify().ok


def test_verify_recomputes_the_ledger_and_finds_a_consistent_rewrite(make_db):
    # An attacker who rewrites a value and recomputes its chain hash passes
    # the chain check; the ledger, which folded the original hash, does not.
    db = make_db(workers=1)
    db.batch_put([(b"t%03d" % i, b"original") for i in range(100)])
    db.put(b"t050", b"secret-1")                     # t050's newest version: no successor
    before = db.digest()
    layout = db._debug_layout(b"t050")
    newest = layout["versions"][0]
    forged_value = b"secret-2"
    assert len(forged_value) == newest["value_len"]
    prev_hash = db.history(b"t050")[1].hash
    forged_hash = xxh64_stream([prev_hash.to_bytes(8, "little"), b"t050", (2).to_bytes(8, "little"),
                                (0).to_bytes(4, "little"), forged_value])
    old_hash = db.history(b"t050")[0].hash

    def write(offset, old, new):
        for i, (o, n) in enumerate(zip(old, new)):
            for bit in range(8):
                if (o ^ n) >> bit & 1:
                    db._debug_flip_bit(layout["worker"], offset + i, bit)
    write(newest["value_off"], b"secret-1", forged_value)
    write(newest["hash_off"], old_hash.to_bytes(8, "little"), forged_hash.to_bytes(8, "little"))
    assert db.get(b"t050") == forged_value
    report = db.verify()
    kinds = {b.kind for b in report.breaks}
    assert "hash" not in kinds and "link" not in kinds          # the chain itself holds
    assert "ledger" in kinds, report.breaks
    assert db.digest() == before        # the stored heads: compare with a digest recorded earlier
