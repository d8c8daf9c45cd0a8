"""Exceptions shared across the package.

`TaskError` subclasses describe a problem with one task: the batch loop records
them in that task's manifest entry and moves on. `RunError` subclasses mean the
run as a whole cannot start (exit code 2).
"""

from __future__ import annotations


class GlmttsBatchError(Exception):
    """Base class of every error this package raises on purpose."""


class TaskError(GlmttsBatchError):
    """A problem confined to one task. `field` names the task field at fault, if any."""

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


class EngineLoadError(RunError):
    """An engine could not be loaded (missing checkpoint, bad files, ...)."""


class CheckpointError(EngineLoadError):
    """A checkpoint folder is incomplete or malformed. The message lists every problem."""
