"""Every exception the package raises on purpose, and the process exit codes.

`TaskError` subclasses describe a problem with one task: the batch loop records
them in that task's manifest entry and moves on. `RunError` subclasses mean the
run as a whole cannot start. Each class carries the exit code the CLI ends with
when it escapes (click's `ClickException.exit_code` style), so the CLI maps
exceptions to codes in one place by reading `exc.exit_code`.

Exit codes of a run: 0 every task ok (resumed ones included); 1 a task failed or a
line was invalid; 2 the run could not start, or could not write its zip; 130 / 143
interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import signal
from typing import Any

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_RUN_ERROR = 2
EXIT_SIGNAL: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


class GlmttsBatchError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code: int = EXIT_TASKS_FAILED


class TaskError(GlmttsBatchError):
    """A problem confined to one task. `field` names the task field at fault, if any."""

    exit_code = EXIT_TASKS_FAILED

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidTaskError(TaskError):
    """The task line itself is malformed (bad JSON, wrong type, unsafe name, ...)."""


class PromptAudioError(TaskError):
    """The prompt audio cannot be used (unreadable, silent, too short, too long, ...)."""

    def __init__(self, message: str, *, field: str | None = "prompt_audio") -> None:
        super().__init__(message, field=field)


class RunError(GlmttsBatchError):
    """The run cannot start: bad arguments, unreadable task file, engine failed to load."""

    exit_code = EXIT_RUN_ERROR


class OutputWriteError(RunError):
    """A run file (the zip) could not be written after the tasks ran. `summary` is the run's
    `Summary` (summary.json is written and says what failed); a re-run completes it."""

    def __init__(self, message: str, *, summary: Any = None) -> None:
        super().__init__(message)
        self.summary = summary


class LockedError(RunError):
    """Another live run holds the output folder."""


class PhonemeDictError(RunError):
    """The phoneme dictionary file is unreadable or has a bad line (named in the message)."""


class EngineLoadError(RunError):
    """An engine could not be loaded (missing checkpoint, bad files, ...)."""


class CheckpointError(EngineLoadError):
    """A checkpoint folder is incomplete or malformed. The message lists every problem."""
