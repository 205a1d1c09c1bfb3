"""One process at a time in a folder: a lock file for training work dirs and export folders.

``folder_lock(folder, what)`` creates ``folder/.facesmith.lock`` (exclusive create, so two processes can never both
win) holding the owner's process id and host name, and removes it when the block ends. A second process is refused
with :class:`FolderLocked`, which names the owner's process id. A lock whose owner is gone (a process killed with
``kill -9``, a machine that crashed) is stale: a process on the same host whose id no longer exists is taken over. A
lock from another host is never taken over (its process cannot be checked from here); the message says which file to
remove.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

__all__ = ["LOCK_NAME", "FolderLocked", "folder_lock", "lock_owner"]

LOCK_NAME = ".facesmith.lock"


class FolderLocked(RuntimeError):
    """Another live process holds the folder's lock. ``pid`` and ``host`` name it, ``path`` is the lock file."""

    def __init__(self, path: Path, pid: int | None, host: str | None, what: str, owner_what: str | None):
        self.path, self.pid, self.host = path, pid, host
        who = f"process {pid}" if pid is not None else "another process"
        if host and host != socket.gethostname():
            who += f" on host {host}"
        doing = f" ({owner_what})" if owner_what else ""
        super().__init__(
            f"{path.parent} is in use by {who}{doing}; refusing to start {what} there at the same time. Wait for "
            f"it to finish, or choose another folder (if that process is gone, remove {path})")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True
    return True


def lock_owner(folder: str | os.PathLike) -> dict | None:
    """The content of ``folder``'s lock file (``{"pid", "host", "what"}``), or None if there is none. An unreadable
    or half-written file reads as ``{}``."""
    path = Path(folder) / LOCK_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _is_stale(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False  # being written right now, or not ours: never take it over blindly
    if owner.get("host") not in (None, socket.gethostname()):
        return False
    return not _pid_alive(pid)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "this job", wait: float = 0.0) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block (the folder is created). Raises :class:`FolderLocked` if another live
    process holds it (after waiting up to ``wait`` seconds for it to be released); a stale lock (its process is
    gone) is taken over. Not re-entrant within one process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        try:
            path, token = _acquire(folder, what)
            break
        except FolderLocked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    try:
        yield path
    finally:
        owner = lock_owner(folder)
        if owner and owner.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _acquire(folder: Path, what: str) -> tuple[Path, str]:
    path = folder / LOCK_NAME
    token = os.urandom(8).hex()
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what, "token": token})
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = lock_owner(folder)
            if owner is None:
                continue  # released meanwhile: try again
            if _is_stale(owner):
                _remove_if_same(path, owner)
                continue
            raise FolderLocked(path, owner.get("pid"), owner.get("host"), what, owner.get("what")) from None
        try:
            os.write(fd, record.encode("utf-8"))
        finally:
            os.close(fd)
        return path, token
    owner = lock_owner(folder) or {}
    raise FolderLocked(path, owner.get("pid"), owner.get("host"), what, owner.get("what"))


def _remove_if_same(path: Path, owner: dict) -> None:
    """Remove a stale lock file unless another process replaced it meanwhile (then the next attempt sees that)."""
    if lock_owner(path.parent) == owner:
        try:
            path.unlink()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
