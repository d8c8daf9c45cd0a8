"""The one default log sink: progress and engine messages on stderr, prefixed with the tool name."""

from __future__ import annotations

import sys
from collections.abc import Callable

Log = Callable[[str], None]

PREFIX = "glmtts-batch: "


def log_to_stderr(message: str) -> None:
    print(f"{PREFIX}{message}", file=sys.stderr, flush=True)
