"""One trainer per run folder: ``RUN/.genflow.lock`` holds the host and pid of the trainer that uses
it (rank 0), created atomically (O_EXCL). A lock left by a dead process of this host is taken over;
a live one, or one from another host (whose processes cannot be checked from here), is refused.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from genflow.utils import _alive

NAME = ".genflow.lock"


class RunFolderInUse(RuntimeError):
    """Another trainer holds the run folder; the message is one line naming it and the way out."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str | None  # the process's start time (/proc/PID/stat), so a reused pid is not taken for it

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), start_time(os.getpid()))

    def alive(self) -> bool:
        """On this host: the pid runs and, where /proc tells, is the same process."""
        if self.pid == os.getpid() or not _alive(self.pid):
            return False
        return self.started is None or start_time(self.pid) in (None, self.started)


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot); None where there is no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _create(path: Path, holder: Holder) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"host": holder.host, "pid": holder.pid, "started": holder.started}, f)
    return True


def _read(path: Path) -> Holder | None:
    """The lock's holder; None for a file with no holder in it (its writer died between create and write)."""
    try:
        data = json.loads(path.read_text())
        return Holder(str(data["host"]), int(data["pid"]), data.get("started"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError):
        return None


def acquire(folder: str | os.PathLike) -> tuple[Path, str | None]:
    """Take ``folder``'s lock; the lock file and, when a stale lock was taken over, a line saying so.
    Raises ``RunFolderInUse`` when a live trainer, or one on another host, holds it."""
    path, me = Path(folder) / NAME, Holder.me()
    for _ in range(3):  # a lock released, or taken over by a racing start, between the calls
        if _create(path, me):
            return path, None
        try:
            holder = _read(path)
        except FileNotFoundError:
            continue
        if holder is not None and holder.host != me.host:
            raise RunFolderInUse(f"run_dir {folder} is in use by pid {holder.pid} on host {holder.host} (lock {path}); "
                                 f"if no trainer runs there any more, remove {path} and start again")
        if holder is not None and holder.alive():
            raise RunFolderInUse(f"run_dir {folder} is in use by pid {holder.pid} on this host ({me.host}); wait for "
                                 "it to finish, stop it, or give another run_dir")
        stale = path.with_name(f"{NAME}.stale-{me.pid}")
        try:
            os.rename(path, stale)  # one racing start wins the rename; the others read the new lock
        except FileNotFoundError:
            continue
        if _read(stale) != holder:  # a racing start's fresh lock, not the stale one: put it back
            os.replace(stale, path)
            continue
        stale.unlink(missing_ok=True)
        if _create(path, me):
            who = f"pid {holder.pid}" if holder else "an unknown process"
            return path, f"genflow-train: took over the lock {path} of {who}, which is no longer running"
    raise RunFolderInUse(f"run_dir {folder}: could not take the lock {path}; another trainer is starting there")


def release(path: Path) -> None:
    """Remove the lock if it is still ours."""
    try:
        holder = _read(path)
    except FileNotFoundError:
        return
    if holder is not None and holder.host == socket.gethostname() and holder.pid == os.getpid():
        path.unlink(missing_ok=True)
