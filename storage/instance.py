"""One bot process per database and per Matrix store.

Two bot processes on one database each drain the same outbox (every reply sent twice)
and would share one matrix-nio crypto store (corrupting its Olm sessions). The bot
therefore takes an exclusive ``flock`` on a lock file next to what it owns when it starts
(``<database>.lock``, ``<matrix store_dir>/bot.lock``; PostgreSQL: a session advisory
lock, see :mod:`storage.postgres_store`) and holds it until it exits. The kernel drops
the lock when the process dies, even under ``kill -9``, so there is never a stale lock
to clean up. The `status` and `export` commands take no lock: they may run next to the bot.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from storage.db import StorageError


class AlreadyRunning(StorageError):
    """Another bot process holds the lock. The message is one plain line."""


class InstanceLock:
    """An exclusive lock on ``path`` for as long as this object is not released."""

    def __init__(self, fd: int, path: Path):
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, path: str | os.PathLike[str], what: str) -> "InstanceLock":
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise AlreadyRunning(
                f"another referral-bot is already running on {what}{pid}; stop it first, "
                "or give this one its own database and store directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
