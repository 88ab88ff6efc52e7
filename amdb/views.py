"""Key, value and item views of a ParallelDB or a Snapshot, as dict's are:
`len`, `in`, iteration in key order (reversed() too), each iteration one
consistent snapshot read by the native iterator (not a lookup per key).

The mapping they view provides ``_view_iterator(keys_only, values_only,
reverse)``, ``__len__`` and ``get(key, default)``."""
from collections import abc

_MISSING = object()


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
