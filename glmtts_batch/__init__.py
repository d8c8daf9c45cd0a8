"""glmtts-batch: stream a JSONL task file through a TTS engine into WAVs, a manifest and a zip."""

__version__ = "0.1.0"

from .api import CheckReport, LineProblem, check_tasks, run_batch  # noqa: E402
from .engines.base import Engine, EngineInfo, EngineOptions, Synthesis, SynthesisRequest  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError,
    EngineLoadError,
    GlmttsBatchError,
    InvalidTaskError,
    LockedError,
    OutputWriteError,
    PhonemeDictError,
    PromptAudioError,
    RunError,
    TaskError,
)
from .manifest import Record, Summary  # noqa: E402
from .tasks import InvalidLine, Task, iter_task_dicts, iter_task_file  # noqa: E402
from .writers import AudioWriter, WavWriter  # noqa: E402

__all__ = [
    "AudioWriter",
    "CheckReport",
    "CheckpointError",
    "Engine",
    "EngineInfo",
    "EngineLoadError",
    "EngineOptions",
    "GlmttsBatchError",
    "InvalidLine",
    "InvalidTaskError",
    "LineProblem",
    "LockedError",
    "OutputWriteError",
    "PhonemeDictError",
    "PromptAudioError",
    "Record",
    "RunError",
    "Summary",
    "Synthesis",
    "SynthesisRequest",
    "Task",
    "TaskError",
    "WavWriter",
    "__version__",
    "check_tasks",
    "iter_task_dicts",
    "iter_task_file",
    "run_batch",
]
