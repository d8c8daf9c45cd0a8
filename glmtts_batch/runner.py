"""The batch loop: one task at a time, with resume, failure isolation, signals and max-failures.

Tasks are processed sequentially and their records streamed to the manifest in
input order. Any exception inside one task marks that task `failed` and the run
goes on; an out-of-memory error additionally calls `engine.free_memory()` so the
next task starts from a clean accelerator. After `max_failures` failures, or on
SIGINT/SIGTERM, the remaining lines are still read and validated (so the
manifest has one record per line) but recorded as `skipped` with a `reason`.

Signals: the first SIGINT/SIGTERM lets the current task finish; a second one
abandons it (it is recorded as skipped/interrupted and its temp files removed).
The abandonment is also remembered as a flag, because an engine may swallow the
exception (a broad `except BaseException`, or a ctypes callback, which prints and
discards it) and return partial audio: a task whose call was abandoned is never
written or journaled, whatever the engine did with the exception.

A task never replaces a file under its final WAV name that this tool did not
write (one the output folder's journal does not know, e.g. the voice prompt
itself with `--out .`): that task is `failed` with field `output_name`.
Exit codes: 0 all ok or resumed; 1 a task failed or a line was invalid;
130 interrupted by SIGINT, 143 by SIGTERM (2, a run that cannot start, is
raised as `RunError` before the loop).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digests import FileDigests
from .engines.base import Engine, Synthesis, SynthesisRequest
from .errors import RunError, TaskError
from .manifest import (
    Journal,
    ManifestWriter,
    engine_info_dict,
    error_dict,
    new_record,
    resume_key,
    write_summary,
)
from .outputs import WavInfo, write_wav, write_zip
from .progress import Progress
from .tasks import InvalidLine, Task, TaskOrInvalid

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_RUN_ERROR = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class Summary:
    """What a run did. The same numbers are in summary.json."""

    ok: int
    failed: int
    invalid: int
    skipped: int
    resumed: int  # skipped because an earlier run's WAV was reused
    audio_seconds: float  # all WAVs in the manifest (ok + resumed)
    wall_seconds: float
    out_dir: Path
    manifest: Path
    summary: Path
    zip: Path | None
    exit_code: int
    interrupted: str | None = None  # "SIGINT" / "SIGTERM"
    stopped_early: bool = False  # max_failures reached

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.invalid + self.skipped

    @property
    def counts(self) -> dict[str, int]:
        return {"ok": self.ok, "failed": self.failed, "invalid": self.invalid, "skipped": self.skipped}


@dataclass
class RunSettings:
    out_dir: Path
    zip_name: str
    seed: int = 0
    resume: bool = True
    make_zip: bool = True
    max_failures: int | None = None
    progress: bool | None = None
    fsync: bool = True
    total_lines: int | None = None
    task_source: str | None = None
    # Embedding hooks (the HTTP server runs jobs off the main thread, where no signal
    # handler can be installed): `cancel.is_set()` acts as a first SIGTERM, checked where
    # the loop checks the signal flag; `on_record` sees each manifest record once written.
    cancel: threading.Event | None = None
    on_record: Callable[[dict[str, Any]], None] | None = None


class _Abandon(BaseException):
    """Raised inside the engine call by a second signal (BaseException: tasks must not catch it)."""


class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag the loop checks between tasks (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.abandoned = False  # a second signal abandoned the current engine call
        self._in_engine = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        already = self.signum is not None
        self.signum = self.signum or signum
        if already and self._in_engine:
            self._in_engine = False
            self.abandoned = True  # first: the engine may swallow the exception below
            raise _Abandon()

    @contextlib.contextmanager
    def engine_call(self) -> Iterator[None]:
        """Runs the engine; raises `_Abandon` if a second signal came, however the engine returned."""
        self.abandoned = False
        self._in_engine = True
        try:
            yield
        except BaseException:
            if self.abandoned:
                raise _Abandon() from None  # the engine turned it into another error
            raise
        finally:
            self._in_engine = False
        if self.abandoned:
            raise _Abandon()  # the engine swallowed it and returned (possibly partial) audio


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (checked by name: no torch import here), MemoryError, or a
    RuntimeError saying "out of memory" (older torch, other backends)."""
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class BatchRunner:
    def __init__(self, engine: Engine, items: Iterator[TaskOrInvalid], settings: RunSettings) -> None:
        self.engine = engine
        self.info = engine.info
        self.items = items
        self.s = settings
        self.hash_prompt = FileDigests()
        self.counts = {"ok": 0, "failed": 0, "invalid": 0, "skipped": 0}
        self.resumed = 0
        self.audio_seconds = 0.0
        self.stop_reason: str | None = None

    def run(self) -> Summary:
        # Signals stay handled until the zip is written: a SIGTERM while finishing up
        # must not leave temp files (the run is complete by then, so it just finishes).
        with SignalGuard() as guard:
            return self._run(guard)

    def _run(self, guard: "SignalGuard") -> Summary:
        s = self.s
        start = time.monotonic()
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        progress = Progress(s.total_lines, enabled=s.progress)
        try:
            journal = self._journal = Journal(s.out_dir, fsync=s.fsync)
        except OSError as e:
            raise RunError(f"cannot open the resume journal {e.filename or s.out_dir}: {e.strerror or e}") from None
        try:
            manifest = ManifestWriter(s.out_dir, fsync=s.fsync)
        except BaseException as e:
            journal.close()
            if isinstance(e, OSError):
                raise RunError(f"cannot write the manifest {e.filename or s.out_dir}: {e.strerror or e}") from None
            raise
        try:
            for item in self.items:
                self._check_cancel(guard)
                record = self._process(item, guard)
                manifest.write(record)
                if s.on_record is not None:
                    s.on_record(record)
                self.counts[record["status"]] += 1
                audio = record["duration_s"] or 0.0
                self.audio_seconds += audio
                progress.update(record["status"], audio if record["status"] == "ok" else 0.0, line=record["line"])
                if guard.signum is not None and self.stop_reason is None:
                    self.stop_reason = "interrupted"
            progress.close()
            manifest_path = manifest.commit()
        except BaseException:
            manifest.abort()
            raise
        finally:
            journal.close()

        signum = guard.signum  # a signal after this point lets the finished run complete
        interrupted = signal.Signals(signum).name if signum is not None else None
        if signum is not None:
            exit_code = EXIT_SIGNAL.get(signum, 128 + signum)
        elif self.counts["failed"] or self.counts["invalid"]:
            exit_code = EXIT_TASKS_FAILED
        else:
            exit_code = EXIT_OK

        zip_path = s.out_dir / s.zip_name if s.make_zip and interrupted is None else None
        wall = time.monotonic() - start
        summary_doc = {
            "counts": dict(self.counts),
            "total": sum(self.counts.values()),
            "resumed": self.resumed,
            "not_run": self.counts["skipped"] - self.resumed,
            "audio_seconds": round(self.audio_seconds, 3),
            "wall_seconds": round(wall, 3),
            "engine": engine_info_dict(self.info),
            "engine_stats": _safe_stats(self.engine),
            "seed": s.seed,
            "resume": s.resume,
            "max_failures": s.max_failures,
            "stopped_early": self.stop_reason == "max_failures",
            "interrupted": interrupted,
            "task_source": s.task_source,
            "out_dir": str(s.out_dir),
            "manifest": manifest_path.name,
            "zip": zip_path.name if zip_path else None,
            "started_at": started_at,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "exit_code": exit_code,
        }
        summary_path = write_summary(s.out_dir, summary_doc, fsync=s.fsync)
        stale_zip = s.out_dir / s.zip_name
        if zip_path is not None:
            write_zip(zip_path, s.out_dir, manifest_path, summary_path, fsync=s.fsync)
        elif stale_zip.exists():
            stale_zip.unlink()  # it would no longer match the manifest

        return Summary(
            ok=self.counts["ok"],
            failed=self.counts["failed"],
            invalid=self.counts["invalid"],
            skipped=self.counts["skipped"],
            resumed=self.resumed,
            audio_seconds=round(self.audio_seconds, 3),
            wall_seconds=round(wall, 3),
            out_dir=s.out_dir,
            manifest=manifest_path,
            summary=summary_path,
            zip=zip_path,
            exit_code=exit_code,
            interrupted=interrupted,
            stopped_early=self.stop_reason == "max_failures",
        )

    def _check_cancel(self, guard: SignalGuard) -> None:
        """A set `cancel` event is a first SIGTERM: the rest is recorded as skipped/interrupted."""
        if self.s.cancel is not None and self.s.cancel.is_set() and guard.signum is None:
            guard.signum = signal.SIGTERM
        if guard.signum is not None and self.stop_reason is None:
            self.stop_reason = "interrupted"

    # One line -----------------------------------------------------------------------------

    def _process(self, item: TaskOrInvalid, guard: SignalGuard) -> dict[str, Any]:
        t0 = time.monotonic()
        if isinstance(item, InvalidLine):
            record = new_record(
                item.line,
                output_name=item.output_name,
                status="invalid",
                engine=self.info.name,
                model=self.info.model,
                seed=item.seed if item.seed is not None else self.s.seed,
                error=error_dict(item.error),
            )
        elif self.stop_reason is not None:
            record = self._base_record(item)
            record.update(status="skipped", reason=self.stop_reason)
        else:
            record = self._run_task(item, guard)
        record["elapsed_s"] = round(time.monotonic() - t0, 4)
        return record

    def _base_record(self, task: Task) -> dict[str, Any]:
        return new_record(
            task.line,
            output_name=task.output_name,
            engine=self.info.name,
            model=self.info.model,
            seed=task.seed if task.seed is not None else self.s.seed,
            text=task.text,
            prompt_audio=str(task.prompt_audio) if task.prompt_audio else None,
            prompt_text=task.prompt_text,
            phoneme=task.phoneme,
            warnings=[],
            details={},
        )

    def _run_task(self, task: Task, guard: SignalGuard) -> dict[str, Any]:
        record = self._base_record(task)
        seed = record["seed"]
        try:
            prompt_sha = self.hash_prompt(task.prompt_audio) if task.prompt_audio else None
            key = resume_key(task, seed, self.info, prompt_sha)
            if self.s.resume:
                old = self._journal.lookup(task, key)
                if old is not None:
                    self.resumed += 1
                    return self._resumed_record(record, old)
            wav_name = f"{task.output_name}.wav"
            wav_path = self.s.out_dir / wav_name
            # Checked before synthesis so no time is spent on audio that cannot be written.
            if os.path.lexists(wav_path) and not self._journal.knows(task.output_name):
                raise TaskError(
                    f"{str(wav_path)!r} already exists and was not written by glmtts-batch; "
                    "refusing to replace it (rename the task's output_name, move the file, or choose another --out)",
                    field="output_name",
                )
            request = SynthesisRequest(
                text=task.text,
                prompt_audio=task.prompt_audio,
                prompt_text=task.prompt_text,
                seed=seed,
                phoneme=task.phoneme,
            )
            with guard.engine_call():
                synthesis = self.engine.synthesize(request)
            if not isinstance(synthesis, Synthesis):
                raise TaskError(f"engine returned {type(synthesis).__name__}, expected Synthesis")

            def record_in_journal(info: WavInfo) -> None:
                # Journaled before the rename, so no WAV of ours is ever unknown to the journal.
                self._ok_record(record, wav_name, info, synthesis)
                self._journal.append(key, record)

            write_wav(wav_path, synthesis.audio, synthesis.sample_rate, fsync=self.s.fsync, before_replace=record_in_journal)
        except _Abandon:
            record = self._base_record(task)  # drop whatever an ok record had been given
            record.update(status="skipped", reason="interrupted")
            self.stop_reason = "interrupted"
            return record
        except Exception as exc:  # noqa: BLE001 - one task's failure must not end the run
            return self._failed_record(self._base_record(task), exc)
        return record

    @staticmethod
    def _ok_record(record: dict[str, Any], wav_name: str, info: WavInfo, synthesis: Synthesis) -> None:
        record.update(
            status="ok",
            wav=wav_name,
            duration_s=info.duration_s,
            sample_rate=info.sample_rate,
            sha256=info.sha256,
            warnings=[str(w) for w in synthesis.warnings],
            details=dict(synthesis.details),
        )

    def _failed_record(self, record: dict[str, Any], exc: Exception) -> dict[str, Any]:
        oom = is_out_of_memory(exc)
        record.update(status="failed", error=error_dict(exc, type_name="OutOfMemoryError" if oom else None))
        if oom:
            try:
                self.engine.free_memory()
            except Exception as free_exc:  # noqa: BLE001
                record["warnings"].append(f"free_memory failed after out-of-memory: {free_exc}")
        # +1: this record is counted after _process returns.
        failed = self.counts["failed"] + 1
        if self.s.max_failures is not None and failed >= self.s.max_failures and self.stop_reason is None:
            self.stop_reason = "max_failures"
        return record

    def _resumed_record(self, record: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        for key in ("wav", "duration_s", "sample_rate", "sha256", "warnings", "details"):
            record[key] = old.get(key)
        record.update(status="skipped", resumed=True, reason="resumed")
        return record


def _safe_stats(engine: Engine) -> dict[str, Any]:
    try:
        return dict(engine.stats())
    except Exception as exc:  # noqa: BLE001 - statistics must not sink a finished run
        return {"error": f"{type(exc).__name__}: {exc}"}
