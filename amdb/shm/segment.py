"""Named shared-memory segments (posix_ipc): creation, naming, clean-up.

Names are ``/amdb_<owner pid>_<random>_<part>``, created with mode 0600 and
O_EXCL. The owner unlinks every name as soon as all workers have attached:
from then on the memory lives only as long as some process maps it, so no
crash of any process can leave a segment behind in /dev/shm. The short
window before that is covered by sweep_stale(), which every new database
runs: it unlinks segments whose owner pid no longer exists.
"""
import os
import re
import secrets

import posix_ipc

from amdb.errors import SHM_FULL_HINT, ArenaFullError, Error, shm_usage

SHM_DIR = "/dev/shm"
_OWNED_NAME = re.compile(r"^amdb_(\d+)_[0-9a-f]+_")


def new_prefix():
    """A fresh name prefix for one database's segments."""
    return f"/amdb_{os.getpid()}_{secrets.token_hex(6)}"


def create(name, size, commit_bytes):
    """Create segment `name` of `size` bytes (sparse) and commit its first
    `commit_bytes` with posix_fallocate, so touching them can never SIGBUS."""
    try:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
    except (posix_ipc.Error, OSError, ValueError) as exc:
        raise Error(f"cannot create shared segment {name} of {size} bytes: {exc}",
                    code="shm_create", hint="check /dev/shm is mounted and writable") from exc
    try:
        if commit_bytes:
            os.posix_fallocate(shm.fd, 0, commit_bytes)
    except OSError as exc:
        shm.close_fd()
        unlink_quietly(name)
        raise ArenaFullError(f"/dev/shm cannot hold {commit_bytes} bytes for {name}: {exc.strerror} "
                             f"({shm_usage()})",
                             code="shm_full", hint=SHM_FULL_HINT) from exc
    return shm


def unlink_quietly(name):
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


def pid_alive(pid):
    """True while process `pid` runs. A zombie (exited, not yet reaped: an
    owner killed with SIGKILL whose parent has not waited for it) is dead:
    it holds nothing and will never act again."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True                 # no /proc: trust kill()
    return state not in (b"Z", b"X", b"x")


def sweep_stale():
    """Unlink AmDb segments left by owners that no longer exist. Returns their names."""
    removed = []
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED_NAME.match(entry)
        if match and not pid_alive(int(match.group(1))):
            unlink_quietly("/" + entry)
            removed.append(entry)
    return removed
