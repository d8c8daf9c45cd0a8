"""The one loaded engine, shared by the job worker and speech requests under one lock.

Engines are not thread-safe; the lock serialises every call. The runner gets a
`LockedEngine` view, so a speech request waits at most for the window of tasks in
progress and is served before the job's next window.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glmtts_batch.engines.base import (
    Engine,
    EngineInfo,
    Synthesis,
    SynthesisRequest,
    batch_synthesizer,
    default_batch_size,
)


class EngineHost:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.info: EngineInfo = engine.info
        self.lock = threading.Lock()
        self.default_batch_size = default_batch_size(engine)
        self._synthesize_many = batch_synthesizer(engine)
        self.runner_view = LockedEngine(self)

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        with self.lock:
            return self.engine.synthesize(request)

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        with self.lock:
            return self._synthesize_many(requests)

    def free_memory(self) -> None:
        with self.lock:
            self.engine.free_memory()

    def warm_prompt(self, audio: Path, transcript: str) -> bool:
        """Compute and cache a voice's prompt features now (engines with a prompt cache)."""
        prompts = getattr(self.engine, "prompts", None)
        compute = getattr(self.engine, "prompt_features", None)
        if prompts is None or compute is None:
            return False
        with self.lock:
            prompts.get_or_compute(audio, transcript, lambda: compute(audio, transcript))
        return True

    def stats(self) -> dict[str, Any]:
        try:
            return dict(self.engine.stats())
        except Exception as exc:  # noqa: BLE001 - statistics must not fail a request
            return {"error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        with self.lock:
            self.engine.close()


class LockedEngine:
    """The `Engine` the runner sees: every call under the host's lock; closing is the host's job."""

    def __init__(self, host: EngineHost) -> None:
        self._host = host
        self.info = host.info
        self.default_batch_size = host.default_batch_size

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        return self._host.synthesize(request)

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        return self._host.synthesize_many(requests)

    def free_memory(self) -> None:
        self._host.free_memory()

    def stats(self) -> dict[str, Any]:
        return self._host.stats()

    def close(self) -> None:
        """The server closes the engine when it stops, not after each job."""


def gpu_memory() -> dict[str, int] | None:
    """Allocated and reserved CUDA memory, when torch is loaded and has a device."""
    torch = sys.modules.get("torch")  # never imported here: the espeak engine runs without it
    if torch is None or not torch.cuda.is_available():
        return None
    return {"allocated_bytes": int(torch.cuda.memory_allocated()), "reserved_bytes": int(torch.cuda.memory_reserved())}
