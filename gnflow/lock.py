"""Folder locks that hold on one host and across hosts sharing a file system, and stale files.

A lock is a small JSON file (host, boot, process id, a random token, when it was taken). It is
written completely under a temporary name and then given its final name with a hard link, which
fails when the name exists: a lock never exists without its content, and two processes never both
create it, on one host or on several hosts of a shared (NFS, Lustre) file system.

A lock is broken only when it is provably stale: its holder ran on this host since its last boot
and that process is gone. A lock of another host is never broken automatically (its process may be
alive there); ``gnflow sweep --break-lock`` breaks it on request. Breaking and releasing remove the
file only if it is still the lock that was inspected (same inode and content, checked under an
``flock`` of that inode), so neither can remove a lock that another process has just taken.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "UNOWNED_STALE_SECONDS",
    "FolderLock",
    "LockError",
    "LockHolder",
    "file_age",
    "pid_alive",
    "process_tag",
    "tag_is_stale",
]

logger = logging.getLogger(__name__)

#: A temporary file whose writer cannot be checked (no process tag: written by gnflow before the tags,
#: or tagged by another host or an earlier boot) is stale once it has not been modified for this long.
#: gnflow writes such a file in one go (a NetCDF file, a checkpoint, a lock's content), so a day without
#: a byte written means its writer is gone; only a writer stopped (SIGSTOP, a suspended machine) for a
#: day in the middle of a write would lose that write, and it would fail with an error, not silently.
UNOWNED_STALE_SECONDS = 24 * 3600


class LockError(RuntimeError):
    """The folder is locked by another process (the message names it and how to proceed)."""


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this host (one of another user counts)."""
    if pid <= 0:
        return True  # not a process id: nothing is proven about it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_id() -> str:
    """An identifier of this boot of this machine (empty where the platform has none)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_tag() -> str:
    """``<host>-<pid>`` of this process for names of temporary files, the host as 8 hex digits.

    The host part is a digest of the host name and boot, so that :func:`tag_is_stale` can tell
    later whether the process that made a file is gone.
    """
    import hashlib

    host = hashlib.sha256(f"{socket.gethostname()} {_boot_id()}".encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def file_age(path: Path) -> float | None:
    """Seconds since ``path`` was last modified, if it is a regular file (None for a link, a folder,
    a missing file)."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return time.time() - info.st_mtime if stat.S_ISREG(info.st_mode) else None


def tag_is_stale(tag: str) -> bool:
    """Whether the process of a :func:`process_tag` is provably gone (same host and boot, dead pid)."""
    host, _, pid = tag.partition("-")
    mine = process_tag().partition("-")[0]
    return host == mine and pid.isdigit() and not pid_alive(int(pid))


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: host name, boot of that host, process id, a random token, since when."""

    host: str
    boot: str
    pid: int
    token: str
    since: str

    @classmethod
    def of_this_process(cls) -> LockHolder:
        """A new holder for this process (a fresh token)."""
        return cls(
            host=socket.gethostname(),
            boot=_boot_id(),
            pid=os.getpid(),
            token=uuid.uuid4().hex,
            since=_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        )

    def to_bytes(self) -> bytes:
        """The content of the lock file."""
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, content: bytes) -> LockHolder | None:
        """The holder written in a lock file; None when the content is not a lock of gnflow.

        The two-field ``host pid`` text of earlier gnflow versions is read too (without boot and
        token, so that such a lock is stale only when its process is gone on this host).
        """
        try:
            text = content.decode()
        except UnicodeDecodeError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            fields = text.split()
            if len(fields) == 2 and fields[1].isdigit():
                return cls(host=fields[0], boot="", pid=int(fields[1]), token="", since="?")
            return None
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                host=str(data["host"]),
                boot=str(data["boot"]),
                pid=int(data["pid"]),
                token=str(data["token"]),
                since=str(data["since"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def provably_stale(self) -> bool:
        """Whether the holder ran on this host, in this boot (when recorded), and is gone."""
        same_boot = not self.boot or self.boot == _boot_id()
        return self.host == socket.gethostname() and same_boot and not pid_alive(self.pid)

    def describe(self) -> str:
        """``pid 123 on host node7 since 2026-01-01T00:00:00+00:00`` (without the time when unknown)."""
        since = f" since {self.since}" if self.since != "?" else ""  # locks of earlier versions say not
        return f"pid {self.pid} on host {self.host}{since}"


class FolderLock:
    """An exclusive lock on a folder, held by one process at a time (see the module documentation).

    Parameters
    ----------
    path:
        The lock file, e.g. ``out_dir/.sweep.lock``.
    what:
        What takes the lock, for messages (``gnflow sweep``).
    """

    def __init__(self, path: str | Path, *, what: str = "gnflow") -> None:
        self.path = Path(path)
        self.what = what
        self.holder: LockHolder | None = None

    def acquire(self, *, break_lock: bool = False) -> LockHolder:
        """Take the lock, breaking a provably stale one (any one with ``break_lock``).

        Raises
        ------
        LockError
            The lock is held by a live process, by one of another host, or by an unknown holder.
        """
        me = LockHolder.of_this_process()
        for _ in range(8):
            if self._create(me):
                self.holder = me
                self._remove_stale_temporaries()
                return me
            try:
                content = self.path.read_bytes()
            except FileNotFoundError:
                continue  # released meanwhile: try again
            holder = LockHolder.parse(content)
            if break_lock or (holder is not None and holder.provably_stale):
                if self._remove_if(content):
                    logger.warning(
                        "removed the %s lock %s (%s)",
                        "stale" if not break_lock else "broken",
                        self.path,
                        holder.describe() if holder is not None else f"content {content[:80]!r}",
                    )
                continue
            folder = self.path.parent
            if holder is None:
                raise LockError(
                    f"{folder} is locked ({self.path.name} holds {content[:80]!r}, not a lock of this gnflow); "
                    "if no sweep writes there, pass --break-lock"
                )
            where = "this host" if holder.host == socket.gethostname() else f"host {holder.host}"
            raise LockError(
                f"{folder} is being written by another {self.what} ({holder.describe()}); wait for it, choose "
                f"another -o, or pass --break-lock if that process is gone (it ran on {where})"
            )
        raise LockError(f"could not lock {self.path.parent}: other processes keep taking and releasing it")

    def release(self) -> None:
        """Remove the lock if it is still this one (a lock broken and taken by another stays)."""
        holder, self.holder = self.holder, None
        if holder is None:
            return
        if not self._remove_if(holder.to_bytes()):
            logger.warning("%s is no longer this process's lock (it was broken); left in place", self.path)

    @contextlib.contextmanager
    def held(self, *, break_lock: bool = False) -> Iterator[LockHolder]:
        """Hold the lock for the duration of a ``with`` block."""
        holder = self.acquire(break_lock=break_lock)
        try:
            yield holder
        finally:
            self.release()

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files ``NAME.<token>.tmp`` of :meth:`_create` left by killed processes:
        those whose holder is provably stale, and those not modified for :data:`UNOWNED_STALE_SECONDS`
        (empty, or of another host: a lock's temporary file lives for the moment of its link)."""
        pattern = re.compile(re.escape(self.path.name) + r"\.[0-9a-f]{32}\.tmp")
        try:
            candidates = [p for p in self.path.parent.iterdir() if pattern.fullmatch(p.name)]
        except OSError:
            return
        for candidate in candidates:
            age = file_age(candidate)
            if age is None:
                continue
            try:
                with open(candidate, "rb") as stream:
                    holder = LockHolder.parse(stream.read(4096))
            except OSError:
                continue
            if (holder is not None and holder.provably_stale) or age > UNOWNED_STALE_SECONDS:
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
                    logger.info("removed %s, left by a process killed while it took the lock", candidate.name)

    def _create(self, me: LockHolder) -> bool:
        """Create the lock with its content in one step; False when it exists."""
        tmp = self.path.with_name(f"{self.path.name}.{me.token}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(me.to_bytes())
                stream.flush()
                os.fsync(stream.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                return self._create_without_links(me)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _create_without_links(self, me: LockHolder) -> bool:
        """Exclusive create, then write (file systems without hard links). A reader that finds the
        file still empty sees no holder, which is never taken as stale."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as stream:
            stream.write(me.to_bytes())
        return True

    def _remove_if(self, expected: bytes) -> bool:
        """Unlink the lock file if it still holds ``expected``: True when this call removed it."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one remover at a time for this inode
            opened = os.fstat(fd)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                return False
            if (current.st_ino, current.st_dev) != (opened.st_ino, opened.st_dev):
                return False  # removed and taken again meanwhile
            with os.fdopen(os.dup(fd), "rb") as stream:
                if stream.read() != expected:
                    return False
            os.unlink(self.path)
            return True
        finally:
            os.close(fd)  # releases the flock
