"""The engine interface the batch loop depends on.

An engine is loaded once per run, then asked to synthesise a window of tasks at a
time (`synthesize_many`; `synthesize` is the one-task form). It owns any per-prompt
caching (a 5,000-line audiobook usually has one prompt), reports who it is for the
manifest, and can free accelerator memory after an out-of-memory error so the next
call runs normally.

An engine that does not batch implements `synthesize_many` with `synthesize_each`;
the batch loop also accepts an older engine that has only `synthesize` (see
`batch_synthesizer`). `default_batch_size`, where an engine has it, is the window
the loop uses when the user gives no `--batch-size` (1 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from glmtts_batch.settings import by_content, run_only


@dataclass(frozen=True)
class EngineInfo:
    """Who produced the audio. Part of every manifest record and of the resume key."""

    name: str  # "espeak", "glmtts", ...
    model: str  # model identity: checkpoint fingerprint, espeak-ng version, ...
    sample_rate: int  # every Synthesis from this engine has this rate
    device: str  # "cpu", "cuda:0", ...
    clones_voice: bool  # False: prompt audio is ignored (the manifest says so)
    # Everything besides the model that shapes the audio: the engine's configuration
    # dataclasses less their `run_only` fields (see glmtts_batch.settings) and the engine's
    # AUDIO_VERSION. Part of the resume key, so a change redoes the affected tasks.
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineOptions:
    """Run-wide engine settings from the CLI or the Python API.

    Every field is part of the resume key (through `EngineInfo.settings`) unless
    declared `run_only`: the checkpoint paths stand in the key by the checkpoint's
    fingerprint (`EngineInfo.model`), a seed fixes the audio on one device only, and
    the KV cache does not change the tokens.
    """

    model_dir: Path | None = run_only(None)  # GLM-TTS checkpoint folder (or GLMTTS_MODEL_DIR)
    campplus: Path | None = run_only(None)  # CAM++ ONNX file, if not at <model_dir>/frontend/campplus.onnx
    device: str = run_only("auto")  # auto | cuda | cpu
    sample_rate: int = 24000  # 24000 (HiFT) | 32000 (Vocos2D)
    dtype: str = "fp32"  # LLM dtype: fp32 | bf16 | fp16
    flow_dtype: str = "fp32"  # flow dtype; half precision is reported to add hiss, so opt-in
    kv_cache: bool = run_only(True)
    prompt_cache: bool = True  # long-text prompt-history cache
    phoneme_dict: Path | None = by_content()  # JSONL word -> pinyin-with-tone overrides
    # LLM random-number use: "fast" (vectorised) or "upstream" (upstream GLM-TTS's tokens for
    # a seed; a host sync per step).
    sampling_rng: Literal["fast", "upstream"] = "fast"


@dataclass(frozen=True)
class SynthesisRequest:
    """What an engine needs for one task. Paths are already resolved and checked to exist."""

    text: str
    prompt_audio: Path | None
    prompt_text: str | None
    seed: int
    # Chinese phoneme (G2P) mode, GLM-TTS only. None: the run's default (on when a
    # --phoneme-dict is given), so a task can still opt out with `"phoneme": false`.
    phoneme: bool | None = None
    # sha256 of the prompt audio's bytes when the caller already has it (the batch loop
    # hashes each prompt once for the resume key): an engine keys its prompt cache on it
    # instead of reading the file again.
    prompt_audio_sha256: str | None = None


@dataclass
class Synthesis:
    """One task's audio: float32 mono samples in [-1, 1] at `sample_rate`."""

    audio: np.ndarray  # (samples,) float32
    sample_rate: int
    # Extra manifest fields: text pieces, token counts, per-stage timings, rtf, ...
    details: dict[str, Any] = field(default_factory=dict)
    # Human-readable notes that belong in the manifest (e.g. "prompt audio ignored").
    warnings: list[str] = field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    info: EngineInfo

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        """Synthesise one task. Raise `TaskError` for problems with this task's input."""
        ...

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        """Synthesise several tasks: one result per request, in order.

        A task's own problem comes back as its `Exception` in the list (its batch-mates
        are unaffected). An out-of-memory error may instead be raised out of the call as
        a whole; the batch loop then frees memory and retries the requests in halves.
        """
        ...

    def free_memory(self) -> None:
        """Release cached accelerator memory (called after an out-of-memory error)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Run-level statistics for summary.json (e.g. prompt cache hit rate)."""
        ...

    def close(self) -> None:
        """Release everything the engine holds."""
        ...


BatchSynthesizer = Callable[[Sequence[SynthesisRequest]], "list[Synthesis | Exception]"]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (checked by name: no torch import here), MemoryError, or a
    RuntimeError saying "out of memory" (older torch, other backends)."""
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def synthesize_each(engine: Any, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
    """`synthesize_many` for an engine that does not batch: `engine.synthesize` per request.

    A request's exception becomes its result, except out-of-memory, which is raised out of
    the call (the contract's "whole call" form: the caller frees memory before anything
    else runs, which a per-request result would not allow).
    """
    results: list[Synthesis | Exception] = []
    for request in requests:
        try:
            results.append(engine.synthesize(request))
        except Exception as exc:  # noqa: BLE001 - one task's failure is its result
            if is_out_of_memory(exc):
                raise
            results.append(exc)
    return results


def batch_synthesizer(engine: Any) -> BatchSynthesizer:
    """The engine's `synthesize_many`, or `synthesize_each` over an engine with only `synthesize`
    (engines written before batching)."""
    many = getattr(engine, "synthesize_many", None)
    if callable(many):
        return many  # type: ignore[no-any-return]
    return lambda requests: synthesize_each(engine, requests)


def default_batch_size(engine: Any) -> int:
    """The engine's `default_batch_size` when it declares a positive int, else 1."""
    size = getattr(engine, "default_batch_size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return 1
    return size
