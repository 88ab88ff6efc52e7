"""ParallelDB and Snapshot as Python mappings (collections.abc), with views
that read in key order, and update()/batch_put() taking mappings."""
from collections import abc

import pytest

import amdb


def test_a_database_is_a_mutable_mapping(db):
    assert isinstance(db, abc.MutableMapping)
    db[b"b"] = b"2"
    db[b"a"] = b"1"
    db[bytearray(b"c")] = memoryview(b"3")
    assert db[b"a"] == b"1" and db[b"c"] == b"3"
    with pytest.raises(KeyError):
        db[b"missing"]
    del db[b"b"]
    assert b"b" not in db and db.get(b"b") is None
    with pytest.raises(KeyError):
        del db[b"b"]                        # absent: KeyError, as dict
    db.delete(b"b")                         # delete() of a missing key still does nothing
    assert dict(db) == {b"a": b"1", b"c": b"3"}
    assert db.pop(b"a") == b"1" and db.pop(b"a", None) is None and len(db) == 1


def test_views_have_len_and_in_and_iterate_in_key_order(db):
    pairs = {b"k%03d" % i: b"v%d" % i for i in range(300, 0, -1)}
    db.update(pairs)
    keys, values, items = db.keys(), db.values(), db.items()
    assert isinstance(keys, abc.KeysView) and isinstance(items, abc.ItemsView)
    assert len(keys) == len(values) == len(items) == 300
    assert list(keys) == sorted(pairs) and list(keys) == list(db)
    assert list(items) == sorted(pairs.items())
    assert list(values) == [pairs[k] for k in sorted(pairs)]
    assert list(reversed(keys)) == sorted(pairs, reverse=True)
    assert b"k007" in keys and b"k999" not in keys
    assert (b"k007", b"v7") in items and (b"k007", b"v8") not in items and (b"nope", b"v") not in items
    assert b"v7" in values
    db[b"k000"] = b"new"                   # a view is live: it reads the database at each use
    assert len(keys) == 301 and next(iter(keys)) == b"k000"
    assert keys & {b"k001", b"zzz"} == {b"k001"}


def test_update_and_batch_put_take_mappings_pairs_and_refuse_str_keywords(db):
    db.update({b"a": b"1"})
    db.update([(b"b", b"2")])
    db.batch_put({b"c": b"3", b"d": b"4"})
    assert dict(db.items()) == {b"a": b"1", b"b": b"2", b"c": b"3", b"d": b"4"}
    with pytest.raises(amdb.InvalidTypeError):
        db.update(e=b"5")
    with pytest.raises(amdb.InvalidTypeError):
        db.update({b"e": b"5", b"f": "str value"})     # one bad value: nothing of it is written
    assert b"e" not in db and len(db) == 4


def test_clear_deletes_everything_in_chunks(make_db):
    db = make_db(max_batch=1000)
    db.batch_put([(b"k%05d" % i, b"v") for i in range(5000)])
    db.clear()
    assert len(db) == 0 and list(db) == []
    db[b"after"] = b"x"
    assert dict(db) == {b"after": b"x"}


def test_setdefault_stores_bytes_only(db):
    assert db.setdefault(b"k", b"first") == b"first"
    assert db.setdefault(b"k", b"second") == b"first"
    with pytest.raises(amdb.InvalidTypeError):
        db.setdefault(b"other")
    assert b"other" not in db


def test_a_database_equals_only_itself_and_stays_hashable(make_db):
    a, b = make_db(), make_db()
    a[b"k"] = b"v"
    b[b"k"] = b"v"
    assert a != b and a == a and len({a, b}) == 2


def test_snapshots_are_read_only_mappings_as_of_their_seq(db):
    db.update({b"a": b"1", b"b": b"2"})
    snap = db.snapshot()
    db[b"a"] = b"changed"
    db[b"c"] = b"3"
    del db[b"b"]
    assert isinstance(snap, abc.Mapping) and not isinstance(snap, abc.MutableMapping)
    assert snap[b"a"] == b"1" and dict(snap) == {b"a": b"1", b"b": b"2"} and len(snap) == 2
    assert list(snap.items()) == [(b"a", b"1"), (b"b", b"2")] and list(reversed(snap.keys())) == [b"b", b"a"]
    with pytest.raises(KeyError):
        snap[b"c"]
    assert b"c" not in snap and b"b" in snap


def test_mapping_calls_on_a_closed_database_raise_closed(make_db):
    db = make_db()
    db[b"k"] = b"v"
    db.close()
    for call in (lambda: db[b"k"], lambda: db.__setitem__(b"k", b"v"), lambda: db.__delitem__(b"k"),
                 lambda: list(db.keys()), lambda: len(db.items()), lambda: db.update({b"a": b"b"})):
        with pytest.raises(amdb.ClosedError):
            call()
