"""Deterministic engines for exercising the batch loop without a model.

Audio depends only on (text, seed), so two runs over the same tasks produce
byte-identical WAVs, which the resume tests rely on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from glmtts_batch.engines.base import EngineInfo, Synthesis, SynthesisRequest, synthesize_each
from glmtts_batch.errors import TaskError


class FakeEngine:
    """A short deterministic tone per task; counts calls, and records each batch's texts."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        samples: int = 1600,
        name: str = "fake",
        model: str = "fake-v1",
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.info = EngineInfo(
            name=name, model=model, sample_rate=sample_rate, device="cpu", clones_voice=True, settings=settings or {}
        )
        self.samples = samples
        self.requests: list[SynthesisRequest] = []
        self.batches: list[list[str]] = []  # the texts of each synthesize_many call
        self.free_memory_calls = 0
        self.closed = False

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        self.batches.append([r.text for r in requests])
        return synthesize_each(self, requests)

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        self.requests.append(request)
        return Synthesis(
            audio=self._audio(request),
            sample_rate=self.info.sample_rate,
            details={"chars": len(request.text), "phoneme": request.phoneme},
            warnings=[],
        )

    def _audio(self, request: SynthesisRequest) -> np.ndarray:
        digest = hashlib.sha256(f"{request.seed}|{request.text}".encode()).digest()
        freq = 100 + digest[0] * 4
        t = np.arange(self.samples, dtype=np.float32) / self.info.sample_rate
        # Amplitude > 1 on purpose: the writer must clip, not wrap around.
        return (1.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)

    def free_memory(self) -> None:
        self.free_memory_calls += 1

    def stats(self) -> dict[str, Any]:
        return {"calls": len(self.requests)}

    def close(self) -> None:
        self.closed = True


class NoOpEngine(FakeEngine):
    """Returns a handful of samples and keeps nothing per call (memory tests)."""

    def __init__(self) -> None:
        super().__init__(samples=4, name="noop", model="noop-v1")
        self.calls = 0
        self._audio_const = np.zeros(4, dtype=np.float32)

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        self.calls += 1
        return Synthesis(audio=self._audio_const, sample_rate=self.info.sample_rate)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}


class SlowEngine(FakeEngine):
    """Sleeps per task so a subprocess can be killed or signalled mid-run."""

    def __init__(self, delay_s: float = 0.05, **kw: Any) -> None:
        super().__init__(**kw)
        self.delay_s = delay_s

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        time.sleep(self.delay_s)
        return super().synthesize(request)


class RaisingEngine(FakeEngine):
    """Raises `exc_factory()` for texts in `fail_texts`."""

    def __init__(
        self, fail_texts: Iterable[str], exc_factory=lambda: TaskError("boom", field="input_text"), **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.fail_texts = set(fail_texts)
        self.exc_factory = exc_factory

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        if request.text in self.fail_texts:
            self.requests.append(request)
            raise self.exc_factory()
        return super().synthesize(request)


class FakeCudaOutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, without importing torch."""


FakeCudaOutOfMemoryError.__name__ = "OutOfMemoryError"


class OomEngine(RaisingEngine):
    """Raises an out-of-memory error for texts in `fail_texts`; afterwards works only once
    `free_memory()` has been called (as a real accelerator would need)."""

    def __init__(self, fail_texts: Iterable[str], *, style: str = "torch", **kw: Any) -> None:
        if style == "torch":
            factory = lambda: FakeCudaOutOfMemoryError("CUDA error: tried to allocate 2.00 GiB")  # noqa: E731
        else:
            factory = lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")  # noqa: E731
        super().__init__(fail_texts, factory, **kw)
        self.dirty = False

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        if self.dirty:
            raise AssertionError("next task ran without free_memory() after an OOM")
        if request.text in self.fail_texts:
            self.dirty = True
        return super().synthesize(request)

    def free_memory(self) -> None:
        super().free_memory()
        self.dirty = False


class BatchOomEngine(FakeEngine):
    """Batches natively; runs out of memory when a call's texts hold more than `budget`
    characters, and for texts in `always` even alone. After an out-of-memory error the next
    call works only once `free_memory()` has been called (as a real accelerator would need)."""

    def __init__(self, budget: int, always: Iterable[str] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.budget = budget
        self.always = set(always)
        self.dirty = False

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        if self.dirty:
            raise AssertionError("a call ran without free_memory() after an OOM")
        self.batches.append([r.text for r in requests])
        if sum(len(r.text) for r in requests) > self.budget or any(r.text in self.always for r in requests):
            self.dirty = True
            raise FakeCudaOutOfMemoryError(f"CUDA error: tried to allocate {len(requests)} GiB")
        return [self.synthesize(r) for r in requests]

    def free_memory(self) -> None:
        super().free_memory()
        self.dirty = False


class WarningEngine(FakeEngine):
    """Reports that it ignores the prompt, like the espeak engine."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.info = EngineInfo(
            name="fake", model="fake-v1", sample_rate=self.info.sample_rate, device="cpu", clones_voice=False
        )

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        result = super().synthesize(request)
        if request.prompt_audio is not None:
            result.warnings.append("prompt audio ignored")
        return result


# A tiny driver so subprocess tests (kill, signals, lock, memory) can run a batch with a fake engine:
#   python tests/fake_engines.py TASKS OUT [--engine fake|slow|noop] [--delay S] [--no-zip] [--fsync] [--rss]
#                                [--progress] [--batch-size N]


def _driver(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import resource
    import sys

    from glmtts_batch import RunError, run_batch

    p = argparse.ArgumentParser()
    p.add_argument("tasks")
    p.add_argument("out")
    p.add_argument("--engine", choices=["fake", "slow", "noop"], default="fake")
    p.add_argument("--delay", type=float, default=0.05)
    p.add_argument("--no-zip", action="store_true")
    p.add_argument("--fsync", action="store_true")
    p.add_argument("--rss", action="store_true", help="print peak RSS (KiB) before and after the run")
    p.add_argument("--progress", action="store_true", help="progress log lines on stderr")
    p.add_argument("--batch-size", type=int, default=None)
    a = p.parse_args(argv)

    engine = {"fake": FakeEngine, "noop": NoOpEngine, "slow": lambda: SlowEngine(a.delay)}[a.engine]()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        s = run_batch(
            a.tasks,
            a.out,
            engine=engine,
            make_zip=not a.no_zip,
            fsync=a.fsync,
            progress=None if a.progress else False,
            batch_size=a.batch_size,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "exit_code": s.exit_code,
        "ok": s.ok,
        "skipped": s.skipped,
        "resumed": s.resumed,
        "interrupted": s.interrupted,
        "unread_lines": s.unread_lines,
    }
    if a.rss:
        result.update(rss_before_kib=before, rss_after_kib=after)
    print(json.dumps(result), flush=True)
    return s.exit_code


if __name__ == "__main__":
    raise SystemExit(_driver())
