"""Key, value and item views of a ParallelDB or a Snapshot, as dict's are:
`len`, `in`, iteration in key order (reversed() too), each iteration one
consistent snapshot read by the native iterator (not a lookup per key).

The mapping they view provides ``_view_iterator(keys_only, values_only,
reverse)``, ``__len__`` and ``get(key, default)``."""
from collections import abc

_MISSING = object()


class MappingViews:
    """What ParallelDB, Snapshot and PrefixedDB share as mappings: keys(),
    values() and items() as views over their _view_iterator, and identity
    equality (a database equals only itself and stays hashable, as a file
    does; the Mapping mixin would compare every item)."""

    __slots__ = ()
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def keys(self):
        """A view of every key: len, in, iteration in key order (each
        iteration reads one snapshot)."""
        return KeysView(self)

    def items(self):
        """A view of every (key, value) pair, iterated in key order."""
        return ItemsView(self)

    def values(self):
        """A view of every value, iterated in key order."""
        return ValuesView(self)


class KeysView(abc.KeysView):
    __slots__ = ()

    def __iter__(self):
        return self._mapping._view_iterator(True, False, False)

    def __reversed__(self):
        return self._mapping._view_iterator(True, False, True)

    def __repr__(self):
        return f"<amdb.KeysView of {self._mapping!r}>"


class ValuesView(abc.ValuesView):
    __slots__ = ()

    def __iter__(self):
        return self._mapping._view_iterator(False, True, False)

    def __reversed__(self):
        return self._mapping._view_iterator(False, True, True)

    def __repr__(self):
        return f"<amdb.ValuesView of {self._mapping!r}>"


class ItemsView(abc.ItemsView):
    __slots__ = ()

    def __iter__(self):
        return self._mapping._view_iterator(False, False, False)

    def __reversed__(self):
        return self._mapping._view_iterator(False, False, True)

    def __contains__(self, item):
        try:
            key, value = item
        except (TypeError, ValueError):
            return False
        found = self._mapping.get(key, _MISSING)
        return found is not _MISSING and found == value

    def __repr__(self):
        return f"<amdb.ItemsView of {self._mapping!r}>"
