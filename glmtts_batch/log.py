"""The one default log sink: progress and engine messages on stderr, prefixed with the tool name.

Output is a courtesy, never a reason to stop: a reader that has gone away
(`glmtts-batch run ... 2>&1 | head -1`) must not end a batch. `emit` drops what
cannot be written; after EPIPE the stream's file descriptor is pointed at
/dev/null, so later writes and the interpreter's final flush succeed silently
(otherwise Python reports the failed flush at exit and changes the exit code).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

Log = Callable[[str], None]

PREFIX = "glmtts-batch: "


def log_to_stderr(message: str) -> None:
    emit(f"{PREFIX}{message}\n", sys.stderr)


def emit(text: str, stream: TextIO) -> bool:
    """Write `text` and flush. False if it was dropped (a closed pipe, a full disk, a closed file)."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except BrokenPipeError:
        silence(stream)
    except (OSError, ValueError):
        pass  # e.g. ENOSPC on a redirected stderr: drop this line, try the next one
    return False


def silence(stream: TextIO) -> None:
    """Point a stream whose reader has gone away at /dev/null (see the module docstring)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not backed by a file descriptor (a StringIO): nothing will be flushed at exit
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)
