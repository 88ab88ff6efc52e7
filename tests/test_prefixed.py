"""Namespaces (db.prefixed()): every read, write, iterator, write batch and
view works with keys relative to the prefix, on the database's own data."""
from collections import abc

import pytest

import amdb


@pytest.fixture
def spaces(db):
    db.update({b"a": b"outside", b"u/": b"empty key", b"u/ann": b"1", b"u/bob": b"2", b"u/cy": b"3",
               b"uz": b"after", b"v/ann": b"other"})
    return db, db.prefixed(b"u/")


def test_keys_are_relative_to_the_prefix(spaces):
    db, users = spaces
    assert isinstance(users, abc.MutableMapping)
    assert users[b"ann"] == b"1" and users.get(b"zed") is None and users.get(b"") == b"empty key"
    assert list(users) == [b"", b"ann", b"bob", b"cy"] and len(users) == 4
    assert dict(users.items()) == {b"": b"empty key", b"ann": b"1", b"bob": b"2", b"cy": b"3"}
    assert b"ann" in users and b"a" not in users and b"v/ann" not in users
    users[b"dan"] = b"4"
    assert db[b"u/dan"] == b"4"                         # the database's own data
    del users[b"ann"]
    assert b"u/ann" not in db and db[b"v/ann"] == b"other"
    with pytest.raises(KeyError):
        users[b"ann"]
    users.batch_put({b"eve": b"5"})
    users.batch_put([(bytearray(b"fay"), b"6")])
    users.batch_delete([b"bob"])
    assert users.batch_get([b"eve", b"fay", b"bob"]) == [b"5", b"6", None]
    assert db[b"uz"] == b"after" and db[b"a"] == b"outside"


def test_scans_and_iterators_stay_inside_and_strip_the_prefix(spaces):
    db, users = spaces
    assert list(users.scan(start=b"b")) == [(b"bob", b"2"), (b"cy", b"3")]
    assert list(users.scan(reverse=True, keys_only=True)) == [b"cy", b"bob", b"ann", b""]
    assert list(users.scan(prefix=b"b")) == [(b"bob", b"2")]
    assert list(users.scan(prefix=b"a", start=b"an")) == [(b"ann", b"1")]     # a prefix scan resumed
    assert list(users.scan(stop=b"bob", limit=5)) == [(b"", b"empty key"), (b"ann", b"1")]
    it = users.iterator()
    it.seek(b"b")
    assert it.key == b"bob" and next(it) == (b"bob", b"2") and it.prev() == (b"bob", b"2")
    it.seek_to_last()
    assert next(it) == (b"cy", b"3") and not it.valid
    it.seek(b"zzz")
    assert not it.valid                                 # b"uz" is not in the namespace
    assert list(users.values()) == [b"empty key", b"1", b"2", b"3"]
    assert list(reversed(users.keys())) == [b"cy", b"bob", b"ann", b""]


def test_nested_namespaces_and_write_batches(spaces):
    db, users = spaces
    admins = users.prefixed(b"admin/")
    with admins.write_batch() as wb:
        wb.put(b"root", b"r")
        wb.put(b"ops", b"o")
    assert db[b"u/admin/root"] == b"r" and dict(admins) == {b"ops": b"o", b"root": b"r"}
    assert wb.result.count == 2
    with pytest.raises(RuntimeError):
        with admins.write_batch() as wb:
            wb.delete(b"root")
            raise RuntimeError("rolled back")
    assert admins[b"root"] == b"r"
    admins.clear()
    assert len(admins) == 0 and users[b"ann"] == b"1"


def test_bad_keys_raise_before_anything_is_written(spaces):
    db, users = spaces
    n = len(db)
    for bad in ("str", 5, None):
        with pytest.raises(amdb.InvalidTypeError):
            users.put(bad, b"v")
        with pytest.raises(amdb.InvalidTypeError):
            users.batch_put([(b"ok", b"v"), (bad, b"v")])
    with pytest.raises(amdb.InvalidTypeError):
        db.prefixed("u/")
    assert len(db) == n and b"ok" not in users


def test_history_and_versions_go_through(spaces):
    db, users = spaces
    users[b"ann"] = b"1b"
    assert [v.value for v in users.history(b"ann")] == [b"1b", b"1"]
    assert users.get(b"ann", version=1) == b"1"
