"""Every exception the package raises on purpose, and the process exit codes.

`TaskError` subclasses describe a problem with one task: the batch loop records
them in that task's manifest entry and moves on. `RunError` subclasses mean the
run as a whole cannot start. Each class carries the exit code the CLI ends with
when it escapes (click's `ClickException.exit_code` style), so the CLI maps
exceptions to codes in one place by reading `exc.exit_code`.

Exit codes of a run: 0 every task ok (resumed ones included); 1 a task failed or a line was
invalid; 2 the run could not start, or its task source broke off mid-run
(`TaskSourceError`); 3 the manifest, summary.json or the zip could not be written
(`OutputWriteError`: a full disk, an I/O error; the WAVs and the journal are kept, so
the same command run again finishes the job); 130 / 143 interrupted by SIGINT / SIGTERM.

`Interrupted` is not a `GlmttsBatchError` but a `BaseException`, like KeyboardInterrupt:
the CLI raises it from its SIGINT/SIGTERM handlers outside the batch loop (start-up,
model loading, exit), and no `except Exception` in engine or library code may swallow it.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manifest import Summary

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_RUN_ERROR = 2
EXIT_OUTPUT_ERROR = 3
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
    """The run cannot start (bad arguments, unreadable task file, engine failed to load), or
    cannot go on as a whole (the subclasses below say which)."""

    exit_code = EXIT_RUN_ERROR


class RunStoppedError(RunError):
    """The run started, then had to stop as a whole. What it did is recorded first: the
    manifest and summary.json describe the lines processed so far (`summary`, when they
    could be written), and the same command run again resumes."""

    def __init__(self, message: str, *, summary: Summary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class TaskSourceError(RunStoppedError):
    """Reading the tasks failed mid-run: the task iterable raised, an item's lookup raised,
    or the task file became unreadable. The lines read before it are in the manifest."""


class OutputWriteError(RunStoppedError):
    """The manifest, summary.json or the zip could not be written (full disk, I/O error).

    The message names the file. WAVs and the resume journal already written are kept, so
    the same command finishes the job once the cause is fixed.
    """

    exit_code = EXIT_OUTPUT_ERROR


class LockedError(RunError):
    """Another live run holds the output folder."""


class PhonemeDictError(RunError):
    """The phoneme dictionary file is unreadable or has a bad line (named in the message)."""


class EngineLoadError(RunError):
    """An engine could not be loaded (missing checkpoint, bad files, ...)."""


class CheckpointError(EngineLoadError):
    """A checkpoint folder is incomplete or malformed. The message lists every problem."""


class ServeConfigError(RunError):
    """The HTTP server cannot start with these settings (e.g. a public bind without a token)."""


class RequestRejected(GlmttsBatchError):
    """An HTTP request the server refuses: `status` is the HTTP code, `body` the JSON answer."""

    exit_code = EXIT_TASKS_FAILED  # bad input, as a task error is; the server answers with `status`

    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, object] = {"error": message, **extra}


class BodyTooLarge(RequestRejected):
    """A request body over the server's size limit (raised while the bytes arrive)."""

    def __init__(self, body: Mapping[str, object]) -> None:
        super().__init__(413, str(body["error"]))
        self.body = dict(body)


class GraphsUnavailable(EngineLoadError):
    """WeTextProcessing 1.0.3's compiled text-normalisation graphs are not installed."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM outside the batch loop (the CLI's handlers raise it). Exit 130 / 143."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL.get(self.signum, 128 + self.signum)
