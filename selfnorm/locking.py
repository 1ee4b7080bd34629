"""One process per run directory: an advisory lock held for as long as a process writes there.

The lock is ``DIR/.selfnorm.lock``, locked with ``fcntl.flock`` (on Linux also honoured over
NFS, where it becomes a POSIX record lock). The kernel drops the lock when its holder exits
for any reason, ``kill -9`` included, so a lock left by a dead process is stale by
construction and the next process simply takes it; the file's text (pid, host, start time,
command) only serves to name the holder in the refusal. On systems without ``fcntl``
(Windows) locking is a no-op.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with RunLock(d, "compare"):
    ...     try:
    ...         RunLock(d, "report").acquire()
    ...     except LockedError as exc:
    ...         print(str(exc).split(" is in use")[0].endswith(d))
    True
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from selfnorm._io import make_dirs

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "LockedError", "RunLock"]

LOCK_NAME = ".selfnorm.lock"


class LockedError(ValueError):
    """Another live process holds the directory (a user error: one line, exit code 2)."""


class RunLock:
    """An exclusive lock on ``directory`` (created if missing), as a context manager.

    Args:
        directory: the run (or sweep, or job) folder.
        what: what takes the lock, named in another process's refusal (``"compare"``).

    Raises (from :meth:`acquire`):
        LockedError: another process holds it; the message names its pid, host, start time.
    """

    def __init__(self, directory: str | os.PathLike, what: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self._fd: int | None = None
        self.created: list[Path] = []
        """The folders this lock created (so a refused start can leave nothing behind)."""

    def acquire(self) -> RunLock:
        """Take the lock (the ``with`` statement does, unless it is held already)."""
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"{self.directory} is a file, not a folder; choose another folder")
        self.created = make_dirs(self.directory)
        if fcntl is None:  # pragma: no cover
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                self._remove_created()
                raise LockedError(
                    f"{self.directory} is in use by {holder}; wait for it to finish or stop it "
                    "(a lock whose process has died is taken over automatically)"
                ) from None
            except OSError as exc:  # a file system without locks (some NFS, FUSE mounts)
                os.close(fd)
                warnings.warn(
                    f"cannot lock {self.path} ({exc.strerror or exc}); continuing without the "
                    "guard against a second process writing this folder",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return self
            # The holder before us may have unlinked the file after we opened it: then we hold
            # a lock on a file nobody else will open. Lock the file that is there instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "what": self.what,
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: nobody can lock it meanwhile
        finally:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def abandon(self) -> None:
        """Release, and remove the folders :meth:`acquire` created if nothing else is in them
        (a start refused before writing anything leaves no trace)."""
        self.release()
        self._remove_created()

    def _remove_created(self) -> None:
        for d in reversed(self.created):
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []

    def __enter__(self) -> RunLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it is starting)"
    return (
        f"selfnorm {info.get('what', '?')} (pid {info.get('pid', '?')} on "
        f"{info.get('host', '?')}, since {info.get('since', '?')})"
    )
