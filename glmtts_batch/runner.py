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

Whose file is it: a task never replaces a file under its final name that this
tool did not write: the journal knows exactly that name (case and Unicode form
included), or the file carries the tool's tag (`writers.FileTag`, e.g. a RIFF INFO
chunk), which holds when the journal is lost. A symbolic link, the task file or a
prompt file at that name is never replaced either; such a task is `failed` with
field `output_name`. Resuming uses the journal, else the tag: a file tagged with
the task's resume key is the task's output (its journal entry is rebuilt); one
tagged with another key is redone and replaced, as is every tagged file with
`resume=False`.

Finishing: the zip is written first (holding the summary as built in memory), then
summary.json, so summary.json names the zip only once it exists. When the zip cannot
be written, summary.json says so (`zip: null`, `zip_error`) and `OutputWriteError`
(exit 2) is raised; a re-run resumes every task and writes the zip. Run files
(manifest, summary, zip) are only written where `state.FolderState` allows, and
registered there before they are renamed into place; a stale zip (a `--no-zip` or
interrupted run) is removed only if the tool wrote it.

Exit codes (errors.py): 0 all ok (resumed included); 1 a task failed or a line was
invalid; 130 interrupted by SIGINT, 143 by SIGTERM (2, a run that cannot start,
is raised as `RunError` before the loop). Records are built and the summary is
assembled in manifest.py; the output format comes from `RunSettings.writer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .digests import FileDigests
from .engines.base import Engine, Synthesis, SynthesisRequest
from .errors import EXIT_OK, EXIT_RUN_ERROR, EXIT_SIGNAL, EXIT_TASKS_FAILED, OutputWriteError, RunError, TaskError
from .manifest import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    Journal,
    ManifestWriter,
    Record,
    RunFacts,
    SkipReason,
    Summary,
    Tally,
    effective_seed,
    failed_record,
    invalid_record,
    make_summary,
    ok_record,
    resume_key,
    resumed_record,
    skipped_record,
    summary_bytes,
    write_summary,
)
from .outputs import AudioInfo, write_audio, write_zip
from .progress import Progress
from .state import FileId, FolderState, file_id, replace_refusal, tagged_audio
from .tasks import InvalidLine, Task, TaskOrInvalid
from .writers import DEFAULT_WRITER, AudioWriter, our_tag

__all__ = ["BatchRunner", "RunSettings", "SignalGuard", "Summary", "is_out_of_memory"]


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
    writer: AudioWriter = field(default=DEFAULT_WRITER)  # the output files' format and suffix
    task_file: FileId | None = None  # (st_dev, st_ino) of the task file: never an output target


class _Abandon(BaseException):
    """Raised inside the engine call by a second signal (BaseException: tasks must not catch it)."""


class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag the loop checks between tasks (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.abandoned = False  # a second signal abandoned the current engine call
        self._in_engine = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
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


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class BatchRunner:
    def __init__(
        self,
        engine: Engine,
        items: Iterator[TaskOrInvalid],
        settings: RunSettings,
        *,
        prompt_digests: FileDigests | None = None,
        folder: FolderState | None = None,
    ) -> None:
        self.engine = engine
        self.info = engine.info
        self.items = items
        self.settings = settings
        self._folder = folder
        # Files never written over: the task file and every prompt file seen so far.
        self._inputs: set[FileId] = {settings.task_file} if settings.task_file else set()
        # Each prompt file is hashed once per run: for the resume key, and handed to the
        # engine in the request so its prompt cache need not read the file again.
        self.prompt_digests = prompt_digests or FileDigests()
        self.tally = Tally()
        self.stop_reason: SkipReason | None = None  # set: the remaining lines are not run

    def run(self) -> Summary:
        # Signals stay handled until the zip is written: a SIGTERM while finishing up
        # must not leave temp files (the run is complete by then, so it just finishes).
        with SignalGuard() as guard:
            started_at = _timestamp()
            start = time.monotonic()
            self._write_manifest(guard)
            return self._finish(guard, started_at, time.monotonic() - start)

    def _write_manifest(self, guard: SignalGuard) -> None:
        """Every line through `_process`, its record streamed to the manifest (committed at the end)."""
        out_dir, fsync = self.settings.out_dir, self.settings.fsync
        progress = Progress(self.settings.total_lines, enabled=self.settings.progress)
        if self._folder is None:
            self._folder = FolderState(out_dir, fsync=fsync)
        # INTEGRATION (journal compaction, issue 9): main's `journal_compact.compact_journal`
        # belongs here, under the lock and before the Journal opens the file:
        #     compact_journal(ensure_state_dir(out_dir) / JOURNAL_NAME, fsync=fsync)
        # It must drop nothing `manifest._parse_line` can read (a glued entry is recovered there).
        try:
            self._journal = Journal(out_dir, fsync=fsync)
        except OSError as e:
            raise RunError(f"cannot open the resume journal {e.filename or out_dir}: {e.strerror or e}") from None
        try:
            manifest = ManifestWriter(out_dir, fsync=fsync)
        except BaseException as e:
            self._journal.close()
            if isinstance(e, OSError):
                raise RunError(f"cannot write the manifest {e.filename or out_dir}: {e.strerror or e}") from None
            raise
        try:
            for item in self.items:
                record = self._process(item, guard)
                manifest.write(record)
                self.tally.add(record)
                audio_s = (record.duration_s or 0.0) if record.status == "ok" else 0.0
                progress.update(record.status, audio_s, line=record.line)
                if guard.signum is not None and self.stop_reason is None:
                    self.stop_reason = "interrupted"
            progress.close()
            self._folder.check_run_file(MANIFEST_NAME, never=self._inputs)
            manifest.commit(before_replace=lambda: self._folder_state.register(MANIFEST_NAME))
        except BaseException:
            manifest.abort()
            raise
        finally:
            self._journal.close()

    @property
    def _folder_state(self) -> FolderState:
        assert self._folder is not None, "set in _write_manifest"
        return self._folder

    def _finish(self, guard: SignalGuard, started_at: str, wall_seconds: float) -> Summary:
        """The zip (or the removal of a stale one of ours), then summary.json."""
        settings, folder = self.settings, self._folder_state
        signum = guard.signum  # a signal after this point lets the finished run complete
        interrupted = signal.Signals(signum).name if signum is not None else None
        zip_path = settings.out_dir / settings.zip_name
        summary = make_summary(
            self.tally,
            out_dir=settings.out_dir,
            wall_seconds=wall_seconds,
            zip_path=zip_path if settings.make_zip and interrupted is None else None,
            exit_code=self._exit_code(signum),
            interrupted=interrupted,
            stopped_early=self.stop_reason == "max_failures",
        )
        facts = RunFacts(
            engine=self.info,
            engine_stats=_safe_stats(self.engine),
            seed=settings.seed,
            resume=settings.resume,
            max_failures=settings.max_failures,
            task_source=settings.task_source,
            started_at=started_at,
            finished_at=_timestamp(),
        )
        folder.check_run_file(SUMMARY_NAME, never=self._inputs)
        if summary.zip is not None:
            try:
                folder.check_run_file(settings.zip_name, never=self._inputs)
                folder.register(settings.zip_name)
                write_zip(
                    summary.zip,
                    settings.out_dir,
                    summary.manifest,
                    summary.summary,
                    summary_bytes(summary, facts),
                    fsync=settings.fsync,
                )
            except (OSError, RunError) as e:
                why = e.strerror or str(e) if isinstance(e, OSError) else str(e)
                summary = dataclasses.replace(
                    summary, zip=None, zip_error=f"cannot write {str(zip_path)!r}: {why}", exit_code=EXIT_RUN_ERROR
                )
        else:
            self._remove_stale_zip(zip_path)
        folder.register(SUMMARY_NAME)
        write_summary(summary, facts, fsync=settings.fsync)
        if summary.zip_error is not None:
            raise OutputWriteError(
                f"{summary.zip_error}; manifest.jsonl and summary.json are written (zip: null): "
                "re-run the same command to write the zip (finished tasks are resumed)",
                summary=summary,
            )
        return summary

    def _remove_stale_zip(self, zip_path: Path) -> None:
        """A zip of ours would no longer match the manifest; anyone else's zip is left alone."""
        try:
            self._folder_state.check_run_file(zip_path.name, never=self._inputs)
        except RunError:
            return
        with contextlib.suppress(FileNotFoundError):
            zip_path.unlink()

    def _exit_code(self, signum: int | None) -> int:
        if signum is not None:
            return EXIT_SIGNAL.get(signum, 128 + signum)
        if self.tally.counts["failed"] or self.tally.counts["invalid"]:
            return EXIT_TASKS_FAILED
        return EXIT_OK

    # One line -----------------------------------------------------------------------------

    def _process(self, item: TaskOrInvalid, guard: SignalGuard) -> Record:
        t0 = time.monotonic()
        if isinstance(item, InvalidLine):
            record = invalid_record(item, self.info, self.settings.seed)
        elif self.stop_reason is not None:
            record = skipped_record(item, self.info, self.settings.seed, self.stop_reason)
        else:
            record = self._run_task(item, guard)
        record.elapsed_s = round(time.monotonic() - t0, 4)
        return record

    def _run_task(self, task: Task, guard: SignalGuard) -> Record:
        seed = effective_seed(task, self.settings.seed)
        try:
            prompt_sha = None
            if task.prompt_audio:
                prompt_sha = self.prompt_digests(task.prompt_audio)
                prompt_id = file_id(task.prompt_audio)
                if prompt_id is not None:
                    self._inputs.add(prompt_id)
            key = resume_key(task, seed, self.info, prompt_sha, self.settings.writer)
            file_name = f"{task.output_name}.{self.settings.writer.suffix}"
            if self.settings.resume:
                journaled = self._journal.lookup(task, key, file_name)
                if journaled is None:
                    journaled = self._tagged_output(task, key, file_name)
                if journaled is not None:
                    return resumed_record(task, self.info, self.settings.seed, journaled)
            return self._synthesize(task, seed, key, prompt_sha, file_name, guard)
        except _Abandon:
            self.stop_reason = "interrupted"
            return skipped_record(task, self.info, self.settings.seed, "interrupted")
        except Exception as exc:  # noqa: BLE001 - one task's failure must not end the run
            return self._failed(task, exc)

    def _tagged_output(self, task: Task, key: str, file_name: str) -> dict[str, Any] | None:
        """The file's audio fields when it carries our tag with this task's key (the journal
        lost it: deleted state, a folder copied without dot files); its entry is rebuilt."""
        audio = tagged_audio(self.settings.out_dir / file_name, self.settings.writer, key, self._inputs)
        if audio is not None:
            self._journal.append(key, resumed_record(task, self.info, self.settings.seed, audio))
        return audio

    def _synthesize(
        self, task: Task, seed: int, key: str, prompt_sha: str | None, file_name: str, guard: SignalGuard
    ) -> Record:
        writer = self.settings.writer
        path = self.settings.out_dir / file_name
        # Checked before synthesis so no time is spent on audio that cannot be written.
        refusal = replace_refusal(path, known=self._journal.knows(task.output_name), writer=writer, inputs=self._inputs)
        if refusal is not None:
            raise TaskError(refusal, field="output_name")
        request = SynthesisRequest(
            text=task.text,
            prompt_audio=task.prompt_audio,
            prompt_text=task.prompt_text,
            seed=seed,
            phoneme=task.phoneme,
            prompt_audio_sha256=prompt_sha,
        )
        with guard.engine_call():
            synthesis = self.engine.synthesize(request)
        if not isinstance(synthesis, Synthesis):
            raise TaskError(f"engine returned {type(synthesis).__name__}, expected Synthesis")
        records: list[Record] = []

        def journal_before_rename(audio: AudioInfo) -> None:
            # Journaled before the rename, so no file of ours is ever unknown to the journal.
            records.append(ok_record(task, self.info, self.settings.seed, file_name, audio, synthesis))
            self._journal.append(key, records[0])

        write_audio(
            path,
            synthesis.audio,
            synthesis.sample_rate,
            writer=writer,
            tag=our_tag(key),
            fsync=self.settings.fsync,
            before_replace=journal_before_rename,
        )
        return records[0]

    def _failed(self, task: Task, exc: Exception) -> Record:
        oom = is_out_of_memory(exc)
        record = failed_record(task, self.info, self.settings.seed, exc, type_name="OutOfMemoryError" if oom else None)
        if oom:
            try:
                self.engine.free_memory()
            except Exception as free_exc:  # noqa: BLE001
                assert record.warnings is not None
                record.warnings.append(f"free_memory failed after out-of-memory: {free_exc}")
        # +1: this record is counted after _process returns.
        failed = self.tally.counts["failed"] + 1
        max_failures = self.settings.max_failures
        if max_failures is not None and failed >= max_failures and self.stop_reason is None:
            self.stop_reason = "max_failures"
        return record


def _safe_stats(engine: Engine) -> dict[str, Any]:
    try:
        return dict(engine.stats())
    except Exception as exc:  # noqa: BLE001 - statistics must not sink a finished run
        return {"error": f"{type(exc).__name__}: {exc}"}
