"""The batch loop: windows of tasks, with resume, failure isolation, signals and max-failures.

Runnable tasks are gathered in a window of up to `batch_size` (batching.TaskWindow)
and synthesised by one `engine.synthesize_many` call; lines that need no engine call
(invalid, resumed, skipped) take no slot. Records are streamed to the manifest
strictly in input order: a record waits for every line before it. Any exception
inside one task marks that task `failed` and the run goes on, its batch-mates
unaffected; an out-of-memory error in a window frees memory and retries the window
in halves (batching.synthesize_splitting), and a task that runs out of memory alone
is `failed` after `engine.free_memory()`, so the next call starts from a clean
accelerator. After `max_failures` failures the remaining lines are still read and
validated (so the manifest has one record per line) but recorded as `skipped` with
reason `max_failures`. Failures are counted as results come back; the lines before
the one that reached the limit run, as at batch size 1, and so do the window-mates
after it, whose results the same engine call computed (a run at batch N may thus
have up to N-1 results, ok or failed, past the limit); no window starts after it.

A finished window's WAVs are encoded, journaled and renamed by a writer thread
(batching.BackgroundWrites) while the engine computes the next window; each file
is still journaled before its rename, and the window waits for those writes
before it releases the next window's records.

Signals: the first SIGINT/SIGTERM lets the window in the engine finish (its tasks
are written), and tasks waiting for a window are not started (skipped/interrupted);
a second one abandons the window in the engine (all its tasks are recorded as
skipped/interrupted, none written or journaled, temp files removed).
After a signal no further line is read, whatever the input (a pipe that never sends
more, /dev/urandom): a read blocked on a pipe is broken off by the signal handler.
Every line that was read still gets its record; the summary's `unread_lines` says
how many lines were left (counted only when that is cheap: see `RunSettings.line_count`).
A task source that raises (a broken iterable, an unreadable file) ends the loop the
same way; the records so far are committed, then `TaskSourceError` is raised. A
manifest, summary or zip that cannot be written (full disk) raises `OutputWriteError`
(exit 3) naming the file; the WAVs and journal stay, so a re-run finishes the job.
The abandonment is also remembered as a flag, because an engine may swallow the
exception (a broad `except BaseException`, or a ctypes callback, which prints and
discards it) and return partial audio: a window whose call was abandoned is never
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
be written, summary.json says so (`zip: null`, its `error`) and `OutputWriteError`
(exit 3) is raised; a re-run resumes every task and writes the zip. Run files
(manifest, summary, zip) are only written where `state.FolderState` allows, and
registered there before they are renamed into place; a stale zip (a `--no-zip` or
interrupted run) is removed only if the tool wrote it.

Exit codes (errors.py): 0 all ok (resumed included); 1 a task failed or a line was
invalid; 130 interrupted by SIGINT, 143 by SIGTERM (2, a run that cannot start,
is raised as `RunError` before the loop; 2 and 3 for the errors above). Records are built and the summary is
assembled in manifest.py; the output format comes from `RunSettings.writer`.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .batching import BackgroundWrites, InlineWrites, TaskWindow, Writes, synthesize_splitting
from .digests import FileDigests
from .engines.base import (
    Engine,
    Synthesis,
    SynthesisRequest,
    batch_synthesizer,
    default_batch_size,
    is_out_of_memory,
)
from .errors import (
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_TASKS_FAILED,
    OutputWriteError,
    RunError,
    TaskError,
    TaskSourceError,
)
from .journal_compact import compact_journal
from .log import Log, log_to_stderr
from .manifest import (
    JOURNAL_NAME,
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
from .outputs import STATE_DIR, AudioInfo, write_audio, write_zip
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
    # Embedding hooks (the HTTP server runs jobs off the main thread, where no signal
    # handler can be installed): `cancel.is_set()` acts as a first SIGTERM, checked where
    # the loop checks the signal flag; `on_record` sees each manifest record once written.
    cancel: threading.Event | None = None
    on_record: Callable[[dict[str, Any]], None] | None = None
    # The input's physical line count now, or None when unknown or not cheap to count;
    # asked only when the run stopped reading early, for the summary's `unread_lines`.
    line_count: Callable[[], int | None] | None = None
    task_file: FileId | None = None  # (st_dev, st_ino) of the task file: never an output target
    log: Log = log_to_stderr  # the run's messages (progress has its own stream)
    # Runnable tasks per engine call; None: the engine's `default_batch_size` (else 1).
    # Not part of the resume key: a task's audio does not depend on its batch.
    batch_size: int | None = None
    # Encode and write finished tasks in a writer thread while the engine runs the next
    # window (False: in the loop's thread, after each window).
    background_writes: bool = True


class _Abandon(BaseException):
    """Raised inside the engine call by a second signal (BaseException: tasks must not catch it)."""


class _StopReading(BaseException):
    """Raised by a signal while the loop waits for the next line (a read blocked on a pipe)."""


class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag the loop checks between tasks (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.abandoned = False  # a second signal abandoned the current engine call
        self.stopped_reading = False  # `next_item` gave up on the input because of a signal
        self._in_engine = False
        self._reading = False
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
        if self._reading:
            self._reading = False  # at most one raise per read
            raise _StopReading()
        if already and self._in_engine:
            self._in_engine = False
            self.abandoned = True  # first: the engine may swallow the exception below
            raise _Abandon()

    def next_item(self, items: Iterator[TaskOrInvalid]) -> TaskOrInvalid | None:
        """The next line's item; None at the end of the input, or once a signal came.

        A signal during the read raises `_StopReading` from the handler, which breaks off
        a read() blocked on a pipe. `list.extend(islice(...))` stores a yielded item before
        any Python code of this frame runs again, so an item that was read is never lost
        to a signal arriving just after it. Errors of the source itself propagate.
        """
        got: list[TaskOrInvalid] = []
        try:
            self._reading = True
            if self.signum is None:
                got.extend(itertools.islice(items, 1))
            self._reading = False
        except _StopReading:
            pass
        finally:
            self._reading = False
        if not got and self.signum is not None:
            self.stopped_reading = True
        return got[0] if got else None

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
        self.batch_size = settings.batch_size or default_batch_size(engine)
        self._synthesize_many = batch_synthesizer(engine)  # an engine with only `synthesize` too
        self._failures = 0  # counted as results come back (records reach the tally later)
        self._failures_lock = threading.Lock()  # the writer thread records write failures
        self._journal_lock = threading.Lock()  # the journal is shared with the writer thread
        # Files never written over: the task file and every prompt file seen so far.
        self._inputs: set[FileId] = {settings.task_file} if settings.task_file else set()
        # Each prompt file is hashed once per run: for the resume key, and handed to the
        # engine in the request so its prompt cache need not read the file again.
        self.prompt_digests = prompt_digests or FileDigests()
        self.tally = Tally()
        self.stop_reason: SkipReason | None = None  # set: the remaining lines are not run
        self.last_line = 0  # the physical line of the last record written
        self.read_to_end = False  # the input was exhausted (not stopped by a signal or an error)
        self.source_error: Exception | None = None  # what the task source raised

    def run(self) -> Summary:
        # Signals stay handled until the zip is written: a SIGTERM while finishing up
        # must not leave temp files (the run is complete by then, so it just finishes).
        with SignalGuard() as guard:
            started_at = _timestamp()
            start = time.monotonic()
            self._write_manifest(guard)
            return self._finish(guard, started_at, time.monotonic() - start)

    def _write_manifest(self, guard: SignalGuard) -> None:
        """Every line read through `_process`, its record streamed to the manifest (committed at the end)."""
        out_dir, fsync = self.settings.out_dir, self.settings.fsync
        progress = Progress(self.settings.total_lines, enabled=self.settings.progress)
        if self._folder is None:
            self._folder = FolderState(out_dir, fsync=fsync)
        self._compact_journal(out_dir)
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
        self._writes: Writes = BackgroundWrites() if self.settings.background_writes else InlineWrites()
        window: TaskWindow[PendingTask, Record] = TaskWindow(
            self.batch_size, lambda jobs: self._run_window(jobs, guard)
        )

        def emit(records: list[Record]) -> None:
            for record in records:
                with _writing("the manifest", manifest.path):
                    manifest.write(record)
                if self.settings.on_record is not None:
                    self.settings.on_record(record.to_dict())
                self.tally.add(record)
                self.last_line = record.line
                audio_s = (record.duration_s or 0.0) if record.status == "ok" else 0.0
                progress.update(record.status, audio_s, line=record.line)
                if guard.signum is not None and self.stop_reason is None:
                    self.stop_reason = "interrupted"

        try:
            while True:
                self._check_cancel(guard)
                try:
                    item = guard.next_item(self.items)
                except Exception as exc:  # noqa: BLE001 - recorded, then raised as TaskSourceError
                    self.source_error = exc
                    break
                if item is None:
                    self.read_to_end = not guard.stopped_reading
                    break
                if guard.signum is not None and self.stop_reason is None:
                    self.stop_reason = "interrupted"  # read before the signal was seen: not run
                emit(self._admit(window, self._process(item, guard)))
            emit(window.finish())  # the input ended or stopped: what is waiting runs (or is skipped)
            progress.close()
            self._folder.check_run_file(MANIFEST_NAME, never=self._inputs)
            with _writing("the manifest", manifest.path):
                manifest.commit(before_replace=lambda: self._folder_state.register(MANIFEST_NAME))
        except BaseException:
            manifest.abort()
            raise
        finally:
            self._writes.close()  # in-flight writes complete (journal before rename) first
            self._journal.close()

    @property
    def _folder_state(self) -> FolderState:
        assert self._folder is not None, "set in _write_manifest"
        return self._folder

    def _compact_journal(self, out_dir: Path) -> None:
        """Drop superseded journal entries (under the lock, before the Journal opens the file);
        a journal that cannot be compacted is left as it is, complete."""
        path = out_dir / STATE_DIR / JOURNAL_NAME
        if not path.is_file() or path.is_symlink():
            return  # none yet, or a planted link: the Journal refuses that with a clear error
        try:
            compact_journal(path, fsync=self.settings.fsync)
        except OSError as e:
            self.settings.log(f"journal not compacted ({e.strerror or e}); it is kept as it is")

    def _finish(self, guard: SignalGuard, started_at: str, wall_seconds: float) -> Summary:
        """The zip (or the removal of a stale one of ours), then summary.json, so the summary never
        names a zip that is not there; then a task source or zip error is raised."""
        settings, folder = self.settings, self._folder_state
        signum = guard.signum  # a signal after this point lets the finished run complete
        interrupted = signal.Signals(signum).name if signum is not None else None
        zip_path = settings.out_dir / settings.zip_name
        source_error = self._source_error()
        complete = interrupted is None and source_error is None
        summary = make_summary(
            self.tally,
            out_dir=settings.out_dir,
            wall_seconds=wall_seconds,
            zip_path=zip_path if settings.make_zip and complete else None,
            exit_code=source_error.exit_code if source_error is not None else self._exit_code(signum),
            interrupted=interrupted,
            stopped_early=self.stop_reason == "max_failures",
            unread_lines=self._unread_lines(),
            error=_error_info(source_error) if source_error is not None else None,
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
            batch_size=self.batch_size,
        )
        folder.check_run_file(SUMMARY_NAME, never=self._inputs)
        zip_error: OutputWriteError | None = None
        if summary.zip is not None:
            summary, zip_error = self._write_zip(summary, facts)
        else:
            self._remove_stale_zip(zip_path)
        folder.register(SUMMARY_NAME)
        with _writing("the summary", summary.summary):
            write_summary(summary, facts, fsync=settings.fsync)
        error = zip_error or source_error
        if error is not None:
            error.summary = summary
            raise error
        return summary

    def _write_zip(self, summary: Summary, facts: RunFacts) -> tuple[Summary, OutputWriteError | None]:
        """The zip, holding the summary as it will be written; if the zip cannot be written,
        the summary says so instead (no zip, exit 3) and the error is returned for raising."""
        assert summary.zip is not None
        settings, folder = self.settings, self._folder_state
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
        except OSError as e:
            error = _write_error("the zip", summary.zip, e)
        except RunError as e:  # the zip's name was taken by a file of someone else's meanwhile
            error = OutputWriteError(f"cannot write the zip {str(summary.zip)!r}: {e}")
        else:
            return summary, None
        return replace(summary, zip=None, exit_code=error.exit_code, error=_error_info(error)), error

    def _remove_stale_zip(self, zip_path: Path) -> None:
        """A zip of ours would no longer match the manifest; anyone else's zip is left alone."""
        try:
            self._folder_state.check_run_file(zip_path.name, never=self._inputs)
        except RunError:
            return
        with contextlib.suppress(FileNotFoundError):
            zip_path.unlink()

    def _source_error(self) -> TaskSourceError | None:
        exc = self.source_error
        if exc is None:
            return None
        after = f"after line {self.last_line}" if self.last_line else "before the first line"
        task_file = self.settings.task_source
        if isinstance(exc, OSError) and task_file is not None:
            why = f"cannot read the task file {task_file!r}: {exc.strerror or exc}"
        else:
            why = f"the task source raised {type(exc).__name__}: {exc}"
        return TaskSourceError(
            f"{why} ({after}); the manifest records the lines read before it, and the same run again resumes them"
        )

    def _unread_lines(self) -> int | None:
        if self.read_to_end:
            return 0
        count = self.settings.line_count
        try:
            total = count() if count is not None else None
        except (OSError, TypeError, ValueError):
            total = None
        return max(0, total - self.last_line) if total is not None else None

    def _exit_code(self, signum: int | None) -> int:
        if signum is not None:
            return EXIT_SIGNAL.get(signum, 128 + signum)
        if self.tally.counts["failed"] or self.tally.counts["invalid"]:
            return EXIT_TASKS_FAILED
        return EXIT_OK

    def _check_cancel(self, guard: SignalGuard) -> None:
        """A set `cancel` event is a first SIGTERM: the rest is recorded as skipped/interrupted."""
        if self.settings.cancel is not None and self.settings.cancel.is_set() and guard.signum is None:
            guard.signum = signal.SIGTERM
        if guard.signum is not None and self.stop_reason is None:
            self.stop_reason = "interrupted"

    # One line -----------------------------------------------------------------------------

    def _process(self, item: TaskOrInvalid, guard: SignalGuard) -> Record | PendingTask:
        """A line's record, or the task waiting for its window (`_run_window` finishes it)."""
        t0 = time.monotonic()
        outcome: Record | PendingTask
        if isinstance(item, InvalidLine):
            outcome = invalid_record(item, self.info, self.settings.seed)
        elif self.stop_reason is not None:
            outcome = skipped_record(item, self.info, self.settings.seed, self.stop_reason)
        else:
            outcome = self._run_task(item, guard)
        if isinstance(outcome, PendingTask):
            outcome.elapsed_s = time.monotonic() - t0
        else:
            outcome.elapsed_s = round(time.monotonic() - t0, 4)
        return outcome

    def _admit(self, window: TaskWindow[PendingTask, Record], outcome: Record | PendingTask) -> list[Record]:
        """Into the window. Once the run stops, the tasks already waiting go now (run, or skipped
        by `_run_window`) rather than holding every later record back."""
        released = window.add_job(outcome) if isinstance(outcome, PendingTask) else window.add_record(outcome)
        if self.stop_reason is not None and window.pending:
            released += window.flush()
        return released

    def _run_task(self, task: Task, guard: SignalGuard) -> Record | PendingTask:
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
                with self._journal_lock:
                    journaled = self._journal.lookup(task, key, file_name)
                if journaled is None:
                    journaled = self._tagged_output(task, key, file_name)
                if journaled is not None:
                    return resumed_record(task, self.info, self.settings.seed, journaled)
            return self._prepare(task, seed, key, prompt_sha, file_name)
        except Exception as exc:  # noqa: BLE001 - one task's failure must not end the run
            return self._failed(task, exc)

    def _tagged_output(self, task: Task, key: str, file_name: str) -> dict[str, Any] | None:
        """The file's audio fields when it carries our tag with this task's key (the journal
        lost it: deleted state, a folder copied without dot files); its entry is rebuilt."""
        audio = tagged_audio(self.settings.out_dir / file_name, self.settings.writer, key, self._inputs)
        if audio is not None:
            with self._journal_lock:
                self._journal.append(key, resumed_record(task, self.info, self.settings.seed, audio))
        return audio

    def _prepare(self, task: Task, seed: int, key: str, prompt_sha: str | None, file_name: str) -> PendingTask:
        path = self.settings.out_dir / file_name
        # Checked before synthesis so no time is spent on audio that cannot be written.
        with self._journal_lock:
            known = self._journal.knows(task.output_name)
        refusal = replace_refusal(path, known=known, writer=self.settings.writer, inputs=self._inputs)
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
        return PendingTask(task, key, file_name, request)

    # One window ---------------------------------------------------------------------------

    def _run_window(self, jobs: list[PendingTask], guard: SignalGuard) -> list[Record | Future[Record]]:
        """One engine call for the window's tasks; each result written (behind) or recorded failed."""
        self._check_cancel(guard)  # a signal that came while the window filled starts nothing
        if guard.signum is not None:  # also after --max-failures was reached: a signal still stops
            return [self._skipped(job, "interrupted") for job in jobs]
        if self.stop_reason is not None and self.stop_reason != "max_failures":
            return [self._skipped(job, self.stop_reason) for job in jobs]
        # (Waiting tasks come before the line that reached --max-failures: they run, as
        # they would have at batch size 1.)
        t0 = time.monotonic()
        try:
            with guard.engine_call():
                results = synthesize_splitting(
                    self._synthesize_many,
                    [job.request for job in jobs],
                    free_memory=self.engine.free_memory,
                    log=lambda message, group: self.settings.log(
                        f"{message} (lines {jobs[group[0]].task.line}-{jobs[group[-1]].task.line})"
                    ),
                )
        except _Abandon:
            self.stop_reason = "interrupted"
            return [self._skipped(job, "interrupted") for job in jobs]
        engine_share = (time.monotonic() - t0) / len(jobs)  # each task's part of the window's call
        outcomes: list[Record | Future[Record]] = []
        for job, result in zip(jobs, results, strict=True):
            job.elapsed_s += engine_share
            if isinstance(result, Synthesis):
                outcomes.append(self._writes.submit(self._write, job, result))
            else:
                outcomes.append(self._timed(job, self._failed(job.task, result)))
        return outcomes

    def _write(self, job: PendingTask, synthesis: Synthesis) -> Record:
        """A task's audio under its final name, journaled before the rename (writer thread)."""
        t0 = time.monotonic()
        task = job.task
        records: list[Record] = []

        def journal_before_rename(audio: AudioInfo) -> None:
            # Journaled before the rename, so no file of ours is ever unknown to the journal.
            records.append(ok_record(task, self.info, self.settings.seed, job.file_name, audio, synthesis))
            with self._journal_lock:
                self._journal.append(job.key, records[0])

        try:
            write_audio(
                self.settings.out_dir / job.file_name,
                synthesis.audio,
                synthesis.sample_rate,
                writer=self.settings.writer,
                tag=our_tag(job.key),
                fsync=self.settings.fsync,
                before_replace=journal_before_rename,
            )
            record = records[0]
        except Exception as exc:  # noqa: BLE001 - one task's failure must not end the run
            record = self._failed(task, exc)
        job.elapsed_s += time.monotonic() - t0
        return self._timed(job, record)

    def _skipped(self, job: PendingTask, reason: SkipReason) -> Record:
        return self._timed(job, skipped_record(job.task, self.info, self.settings.seed, reason))

    @staticmethod
    def _timed(job: PendingTask, record: Record) -> Record:
        record.elapsed_s = round(job.elapsed_s, 4)
        return record

    def _failed(self, task: Task, exc: Exception) -> Record:
        # (The engine's memory was freed after its out-of-memory error: synthesize_splitting.)
        oom = is_out_of_memory(exc)
        record = failed_record(task, self.info, self.settings.seed, exc, type_name="OutOfMemoryError" if oom else None)
        with self._failures_lock:
            self._failures += 1
            failed = self._failures
        max_failures = self.settings.max_failures
        if max_failures is not None and failed >= max_failures and self.stop_reason is None:
            self.stop_reason = "max_failures"
        return record


@contextlib.contextmanager
def _writing(what: str, path: Path) -> Iterator[None]:
    """An OSError inside (ENOSPC, EIO, EFBIG, ...) becomes an `OutputWriteError` naming `path`."""
    try:
        yield
    except OSError as e:
        raise _write_error(what, path, e) from None


def _write_error(what: str, path: Path, exc: OSError) -> OutputWriteError:
    culprit = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    return OutputWriteError(
        f"cannot write {what} {str(path)!r}: {exc.strerror or exc}{culprit}; the audio files and the "
        "resume journal are kept: fix the cause (e.g. free disk space) and run the same command again"
    )


def _error_info(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


@dataclass
class PendingTask:
    """A runnable task waiting for its window: what the engine call and the write need."""

    task: Task
    key: str  # its resume key, journaled with the WAV
    file_name: str
    request: SynthesisRequest
    elapsed_s: float = 0.0  # preparation, its share of the window's engine call, its write


def _safe_stats(engine: Engine) -> dict[str, Any]:
    try:
        return dict(engine.stats())
    except Exception as exc:  # noqa: BLE001 - statistics must not sink a finished run
        return {"error": f"{type(exc).__name__}: {exc}"}
