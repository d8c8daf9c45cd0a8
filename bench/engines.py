"""Benchmark-only engines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from glmtts_batch.engines.base import EngineInfo, Synthesis, SynthesisRequest, synthesize_each


class NullEngine:
    """Returns the same short tone for every task, instantly.

    With it, a run measures the worker alone: reading and validating lines, prompt
    hashing, resume keys, WAV writes, manifest, journal, zip.
    """

    def __init__(self, *, sample_rate: int = 24000, seconds: float = 0.1) -> None:
        t = np.arange(int(sample_rate * seconds), dtype=np.float32) / sample_rate
        self._audio = (0.1 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
        self.info = EngineInfo(
            name="null", model="null-tone", sample_rate=sample_rate, device="cpu", clones_voice=False
        )
        self._tasks = 0

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        self._tasks += 1
        return Synthesis(audio=self._audio, sample_rate=self.info.sample_rate)

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        return synthesize_each(self, requests)

    def free_memory(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"tasks": self._tasks}

    def close(self) -> None:
        pass
