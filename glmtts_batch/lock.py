"""One run per output folder.

Cron jobs overlap: a second `glmtts-batch run` on the same output folder must
not interleave its WAVs and journal with the first. The lock is an
`fcntl.flock` on `.glmtts-batch/lock`, which the kernel releases when the
holder exits or is killed, so a lock file left by a dead process is simply
taken over. The file holds the holder's pid, host and start time for the
error message only; it is never trusted for the locking decision itself.
(flock is advisory and may not work across hosts on some network file
systems; the message names the host so such a setup can be diagnosed.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import LockedError, RunError
from .outputs import STATE_DIR

LOCK_NAME = "lock"


class OutputLock:
    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / STATE_DIR / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        state = self.path.parent
        if os.path.islink(state) or (os.path.lexists(state) and not os.path.isdir(state)):
            kind = "a symbolic link" if os.path.islink(state) else "a file"
            raise RunError(
                f"{str(state)!r} is {kind}, not a folder: glmtts-batch keeps its state (lock, resume "
                "journal) there; move or remove it, or choose another --out"
            )
        try:
            state.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link planted at the lock's name must not make us truncate its target.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            # e.g. the folder is read-only, or the lock's name is a planted link: the run cannot start.
            why = "it is a symbolic link" if os.path.islink(self.path) else (e.strerror or str(e))
            raise RunError(f"cannot create the lock file {str(self.path)!r}: {why}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise LockedError(
                f"output folder {str(self.path.parent.parent)!r} is in use by another glmtts-batch run "
                f"({holder}); wait for it to finish or choose a different --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # the holder info would be stale once we let go
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
