"""Type stubs of amdb/attach.py: the handle that attaches other processes
(``ParallelDB.handle()``, ``ParallelDB.attach(handle)``). The owner's server
and the client's connection are internal."""
from typing import NamedTuple


class Handle(NamedTuple):
    address: str
    path: str | None
    owner_pid: int
