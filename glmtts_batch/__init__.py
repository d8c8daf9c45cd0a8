"""glmtts-batch: stream a JSONL task file through a TTS engine into WAVs, a manifest and a zip."""

__version__ = "0.1.0"

from .api import CheckReport, LineProblem, check_tasks, run_batch  # noqa: E402
from .engines.base import Engine, EngineInfo, EngineOptions, Synthesis, SynthesisRequest  # noqa: E402
from .errors import (  # noqa: E402
    BodyTooLarge,
    CheckpointError,
    EngineLoadError,
    GlmttsBatchError,
    GraphsUnavailable,
    Interrupted,
    InvalidTaskError,
    LockedError,
    OutputWriteError,
    PhonemeDictError,
    PromptAudioError,
    RequestRejected,
    RunError,
    RunStoppedError,
    ServeConfigError,
    TaskError,
    TaskSourceError,
)
from .manifest import Record, Summary  # noqa: E402
from .tasks import InvalidLine, Task, iter_task_dicts, iter_task_file  # noqa: E402
from .writers import AudioWriter, WavWriter  # noqa: E402

_PREVIEW_NAMES = ("PreviewError", "TextPreview", "TextPreviewer")


def __getattr__(name: str) -> object:  # PEP 562
    # The preview API loads the text grammars; import it only when asked for.
    if name in _PREVIEW_NAMES:
        from . import preview

        return getattr(preview, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AudioWriter",
    "BodyTooLarge",
    "PreviewError",
    "TextPreview",
    "TextPreviewer",
    "CheckReport",
    "CheckpointError",
    "Engine",
    "EngineInfo",
    "EngineLoadError",
    "EngineOptions",
    "GlmttsBatchError",
    "GraphsUnavailable",
    "InvalidLine",
    "Interrupted",
    "InvalidTaskError",
    "LineProblem",
    "LockedError",
    "OutputWriteError",
    "PhonemeDictError",
    "PromptAudioError",
    "Record",
    "RequestRejected",
    "RunError",
    "RunStoppedError",
    "ServeConfigError",
    "Summary",
    "Synthesis",
    "SynthesisRequest",
    "Task",
    "TaskError",
    "TaskSourceError",
    "WavWriter",
    "__version__",
    "check_tasks",
    "iter_task_dicts",
    "iter_task_file",
    "run_batch",
]
