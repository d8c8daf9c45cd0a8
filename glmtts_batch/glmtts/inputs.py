"""The glmtts engine's per-task input rules, checkable without models.

The engine applies `checked_prompt` and `load_prompt_audio` to every request before any
model runs; `TaskInputChecker` applies the same rules to tasks read from a file, so
`glmtts-batch check --model-dir` reports as invalid exactly the lines that `run --engine
glmtts` would fail for their inputs (no prompt_text, an undecodable, silent, clipped, too
short or too long prompt). A job with one narrator decodes its prompt once: results are
kept per prompt path (the most recent `MAX_CACHED_PROMPTS`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from glmtts_batch.errors import PromptAudioError, TaskError
from glmtts_batch.glmtts.audio import load_prompt_audio
from glmtts_batch.tasks import Task

MAX_CACHED_PROMPTS = 256


def checked_prompt(prompt_audio: Path | None, prompt_text: str | None) -> tuple[Path, str]:
    """The task's prompt audio and transcript; voice cloning needs both."""
    if prompt_audio is None:
        raise TaskError("the glmtts engine clones a voice: this task needs prompt_audio", field="prompt_audio")
    if prompt_text is None or not prompt_text.strip():
        raise TaskError("the glmtts engine needs prompt_text, the transcript of the prompt audio", field="prompt_text")
    return prompt_audio, prompt_text


class TaskInputChecker:
    """`checker(task)` is the error `run --engine glmtts` would fail the task with for its inputs, or None."""

    def __init__(self) -> None:
        self._prompts: OrderedDict[str, PromptAudioError | None] = OrderedDict()
        self.decoded = 0  # prompt files decoded so far (the rest came from the cache)

    def __call__(self, task: Task) -> TaskError | None:
        try:
            path, _ = checked_prompt(task.prompt_audio, task.prompt_text)
        except TaskError as e:
            return e
        return self._prompt_error(path)

    def _prompt_error(self, path: Path) -> PromptAudioError | None:
        key = str(path)
        if key in self._prompts:
            self._prompts.move_to_end(key)
            return self._prompts[key]
        self.decoded += 1
        error: PromptAudioError | None = None
        try:
            load_prompt_audio(path)
        except PromptAudioError as e:
            error = e
        except OSError as e:  # the file changed under us, a permission, a name too long, ...
            error = PromptAudioError(f"prompt audio {key}: cannot be read ({e.strerror or e})")
        self._prompts[key] = error
        if len(self._prompts) > MAX_CACHED_PROMPTS:
            self._prompts.popitem(last=False)
        return error
