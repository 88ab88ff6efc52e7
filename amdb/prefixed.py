"""Namespaces: db.prefixed(b"users/") is a view of the keys that start with
b"users/", with keys relative to it (plyvel's prefixed_db). Every read,
write, iterator, write batch and view of ParallelDB works through it; the
data is the database's own (no copy), so writes through the view and through
the database see each other at once.

Keys are joined here (prefix + key); the ordered walks strip the prefix
natively (Reader.iterator(namespace=)), so an iteration costs what the
database's own does."""
from collections import abc

from amdb.errors import InvalidTypeError
from amdb.native.client.keys import key_bytes as _as_bytes
from amdb.views import MappingViews

_MISSING = object()


class PrefixedDB(MappingViews, abc.MutableMapping):
    """The keys of `db` under `prefix`, as a database of their own (see the
    module docstring). Made by ParallelDB.prefixed(); nest with .prefixed()."""

    def __init__(self, db, prefix):
        self.db = db
        self.prefix = _as_bytes(prefix, "prefix")

    def __repr__(self):
        return f"<amdb.PrefixedDB {self.prefix!r} of {self.db!r}>"

    def _key(self, key):
        return self.prefix + _as_bytes(key)

    def _pairs(self, items):
        if isinstance(items, abc.Mapping):
            items = items.items()
        prefix = self.prefix
        for item in items:
            try:
                key, value = item
            except (TypeError, ValueError):
                yield item           # not a pair: the database raises its own error for it
                continue
            yield prefix + _as_bytes(key), value

    def prefixed(self, prefix):
        """A namespace inside this one."""
        return PrefixedDB(self.db, self.prefix + _as_bytes(prefix, "prefix"))

    # ---- writes ----------------------------------------------------------------------

    def put(self, key, value):
        self.db.put(self._key(key), value)

    def delete(self, key):
        self.db.delete(self._key(key))

    def batch_put(self, items):
        """One atomic batch, as ParallelDB.batch_put (a mapping or pairs)."""
        return self.db.batch_put(self._pairs(items))

    def batch_delete(self, keys):
        prefix = self.prefix
        return self.db.batch_delete(prefix + _as_bytes(key) for key in keys)

    def increment(self, key, delta=1, *, initial=0, wait=True):
        return self.db.increment(self._key(key), delta, initial=initial, wait=wait)

    def put_if_absent(self, key, value):
        return self.db.put_if_absent(self._key(key), value)

    def compare_and_set(self, key, expected, new):
        return self.db.compare_and_set(self._key(key), expected, new)

    def write_batch(self):
        """ParallelDB.write_batch(), with keys relative to the prefix."""
        return PrefixedWriteBatch(self.db.write_batch(), self.prefix)

    # ---- reads -----------------------------------------------------------------------

    def get(self, key, default=None, *, version=None, at_seq=None):
        return self.db.get(self._key(key), default, version=version, at_seq=at_seq)

    def batch_get(self, keys, *, at_seq=None):
        prefix = self.prefix
        return self.db.batch_get([prefix + _as_bytes(key) for key in keys], at_seq=at_seq)

    def history(self, key, *, oldest_first=False, at_seq=None):
        return self.db.history(self._key(key), oldest_first=oldest_first, at_seq=at_seq)

    def iterator(self, start=None, stop=None, *, prefix=None, reverse=False, include_start=True,
                 include_stop=False, keys_only=False, values_only=False, at_seq=None, limit=None):
        """As ParallelDB.iterator; keys (bounds, seeks, items) relative to the prefix."""
        return self.db._reader.iterator(start, stop, prefix=prefix, reverse=reverse, include_start=include_start,
                                        include_stop=include_stop, keys_only=keys_only, values_only=values_only,
                                        at_seq=at_seq, limit=limit, namespace=self.prefix)

    def scan(self, start=None, stop=None, *, prefix=None, reverse=False, keys_only=False, at_seq=None, limit=None):
        return self.iterator(start, stop, prefix=prefix, reverse=reverse, keys_only=keys_only, at_seq=at_seq,
                             limit=limit)

    # ---- the mapping interface -------------------------------------------------------

    def _view_iterator(self, keys_only, values_only, reverse):
        return self.iterator(keys_only=keys_only, values_only=values_only, reverse=reverse)

    def __iter__(self):
        return self.iterator(keys_only=True)

    def __len__(self):
        """The keys under the prefix (a walk of them)."""
        return sum(1 for _ in self.iterator(keys_only=True))

    def __contains__(self, key):
        return self._key(key) in self.db

    def __getitem__(self, key):
        value = self.db.get(self._key(key), _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        self.db.put(self._key(key), value)

    def __delitem__(self, key):
        del self.db[self._key(key)]

    def update(self, other=(), /, **kwargs):
        if kwargs:
            raise InvalidTypeError("update(): keyword arguments give str keys; keys must be bytes",
                                   hint="pass a dict of bytes: ns.update({b'k': b'v'})")
        self.batch_put(other)

    def clear(self):
        """Delete every key under the prefix, in batches (see ParallelDB.clear)."""
        chunk = max(1, min(self.db.max_batch, 100_000))
        while True:
            keys = list(self.db.scan(prefix=self.prefix, keys_only=True, limit=chunk))
            if not keys:
                return
            self.db.batch_delete(keys)

    def setdefault(self, key, default=None):
        return self.db.setdefault(self._key(key), default)


class PrefixedWriteBatch:
    """A ParallelDB write batch whose keys are relative to a prefix."""

    __slots__ = ("batch", "prefix")

    def __init__(self, batch, prefix):
        self.batch = batch
        self.prefix = prefix

    def put(self, key, value):
        self.batch.put(self.prefix + _as_bytes(key), value)

    def delete(self, key):
        self.batch.delete(self.prefix + _as_bytes(key))

    def increment(self, key, delta=1, *, initial=0):
        self.batch.increment(self.prefix + _as_bytes(key), delta, initial=initial)

    def put_if_absent(self, key, value):
        self.batch.put_if_absent(self.prefix + _as_bytes(key), value)

    def compare_and_set(self, key, expected, new):
        self.batch.compare_and_set(self.prefix + _as_bytes(key), expected, new)

    def write(self):
        return self.batch.write()

    def discard(self):
        self.batch.discard()

    @property
    def result(self):
        return self.batch.result

    @property
    def count(self):
        return self.batch.count

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return self.batch.__exit__(exc_type, exc, tb)
