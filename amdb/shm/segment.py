"""Named shared-memory segments: creation, naming, clean-up. POSIX shared
memory (posix_ipc, /dev/shm) by default; with shm_dir=, plain files in that
directory (a tmpfs of the caller's choosing), handed to the workers as
inherited descriptors.

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


class FileSegment:
    """A segment that is a file in shm_dir (what posix_ipc.SharedMemory is
    for /dev/shm: an open descriptor the caller closes)."""

    def __init__(self, fd):
        self.fd = fd

    def close_fd(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _file_path(directory, name):
    return os.path.join(directory, name.lstrip("/"))


def create(name, size, commit_bytes, directory=None):
    """Create segment `name` of `size` bytes (sparse) and commit its first
    `commit_bytes` with posix_fallocate, so touching them can never SIGBUS.
    `directory`: a file there instead of POSIX shared memory."""
    where = directory or SHM_DIR
    try:
        if directory is None:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        else:
            fd = os.open(_file_path(directory, name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            shm = FileSegment(fd)
            try:
                os.ftruncate(fd, size)
            except OSError:
                shm.close_fd()
                unlink_quietly(name, directory)
                raise
    except (posix_ipc.Error, OSError, ValueError) as exc:
        raise Error(f"cannot create shared segment {name} of {size} bytes in {where}: {exc}",
                    code="shm_create", hint=f"check {where} is mounted and writable") from exc
    try:
        if commit_bytes:
            os.posix_fallocate(shm.fd, 0, commit_bytes)
    except OSError as exc:
        shm.close_fd()
        unlink_quietly(name, directory)
        raise ArenaFullError(f"{where} cannot hold {commit_bytes} bytes for {name}: {exc.strerror} "
                             f"({shm_usage(where)})",
                             code="shm_full", hint=SHM_FULL_HINT) from exc
    return shm


def unlink_quietly(name, directory=None):
    if directory is not None:
        try:
            os.unlink(_file_path(directory, name))
        except FileNotFoundError:
            pass
        return
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


def sweep_stale(directory=None):
    """Unlink AmDb segments left by owners that no longer exist (in /dev/shm,
    or in `directory`). Returns their names."""
    removed = []
    try:
        entries = os.listdir(directory or SHM_DIR)
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED_NAME.match(entry)
        if match and not pid_alive(int(match.group(1))):
            unlink_quietly("/" + entry, directory)
            removed.append(entry)
    return removed
