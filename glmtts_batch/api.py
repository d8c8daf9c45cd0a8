"""Python API: `run_batch` and `check_tasks`. The CLI is a thin layer over these."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .engines.base import Engine, EngineOptions
from .errors import CheckpointError, RunError, TaskError
from .lock import OutputLock
from .log import Log, log_to_stderr
from .manifest import MANIFEST_NAME, SUMMARY_NAME, Summary
from .outputs import clean_stale_temp_files
from .runner import BatchRunner, RunSettings
from .state import MAPPINGS_OWNER, FolderState, JobId
from .tasks import (
    MAX_SEED,
    InvalidLine,
    Task,
    TaskOrInvalid,
    count_lines,
    explicit_base,
    iter_open_task_file,
    iter_task_dicts,
    iter_task_file,
    open_task_file,
    prompt_bases,
)
from .writers import DEFAULT_WRITER, AudioWriter

if TYPE_CHECKING:
    import threading


def run_batch(
    tasks: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    engine: Engine | str = "auto",
    options: EngineOptions = EngineOptions(),
    seed: int = 0,
    resume: bool = True,
    make_zip: bool = True,
    max_failures: int | None = None,
    progress: bool | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    fsync: bool = True,
    log: Log | None = None,
    writer: AudioWriter = DEFAULT_WRITER,
    cancel: threading.Event | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    adopt: bool = False,
    batch_size: int | None = None,
) -> Summary:
    """Synthesise every task into `out_dir`: WAVs, manifest.jsonl, summary.json and a zip.

    `tasks` is a JSONL task file or an iterable of task mappings (then `out_dir`
    is required). Default `out_dir` for a file: `outputs/<file stem>/`. Relative prompt
    paths resolve against `base_dir` when given; otherwise a task file's are looked up in
    its folder, then in the working directory (`tasks.prompt_bases`), and mappings' in the
    working directory. The manifest's `prompt_base` says which folder each was found in.

    `engine` is an `Engine` instance (the caller owns and closes it) or a name
    for `engines.select.load_engine` ("auto", "glmtts", "espeak"; loaded and
    closed here). `progress=None` shows a bar on a terminal and log lines
    otherwise; False silences both. `fsync=False` trades crash durability for
    speed (tests, scratch runs). `writer` picks the output files' format and suffix
    (default: 16-bit WAV; see `writers.AudioWriter`).

    `cancel` (a `threading.Event`) stops the run as a first SIGTERM does, from any
    thread: the current task (batch) finishes, the rest is recorded as skipped/interrupted,
    exit code 143, no zip, and no further line is read. `on_record(record)` is called
    with each manifest record as it is written (live progress for an embedding server).

    An output folder belongs to the job that first ran into it (its task file, or
    "<mappings>" for task mappings); another job is refused with `RunError` unless
    `adopt=True` hands the folder over to it (see `state`).

    `batch_size` is how many runnable tasks go to the engine in one call (None: the
    engine's `default_batch_size`, else 1). It does not change any task's audio and is
    not part of the resume key; a window that runs out of memory is retried in halves.

    Raises `RunError` when the run cannot start (exit code 2); otherwise returns
    a `Summary` whose `exit_code` is 0, 1, 130 or 143 (see `errors`). A run that
    has to stop as a whole first records what it did (manifest and summary.json for
    the lines read so far), then raises: `TaskSourceError` (exit 2) when the task
    iterable or file fails mid-run, `OutputWriteError` (exit 3) when the manifest,
    summary or zip cannot be written; their `summary` attribute holds the `Summary`.
    """
    log = log or log_to_stderr
    _check_run_arguments(seed, max_failures, batch_size)  # an engine name is checked by engines.select.load_engine
    source = _open_tasks(tasks, out_dir, base_dir, count_lines_for_progress=progress is not False)
    # Each clean-up runs even if an earlier one raises (a signal during engine.close()).
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(source.close)
        lock = OutputLock(source.out_dir)
        cleanup.callback(lock.release)
        _prepare_out_dir(source.out_dir, lock)
        folder = _claim_out_dir(source, adopt=adopt, make_zip=make_zip, fsync=fsync)
        if isinstance(engine, str):
            engine = _load_engine(engine, options, log)
            cleanup.callback(engine.close)
        _announce(engine, log)
        settings = RunSettings(
            out_dir=source.out_dir,
            zip_name=source.zip_name,
            seed=seed,
            resume=resume,
            make_zip=make_zip,
            max_failures=max_failures,
            progress=progress,
            fsync=fsync,
            total_lines=source.total_lines,
            task_source=source.name,
            writer=writer,
            cancel=cancel,
            on_record=on_record,
            line_count=source.line_count,
            task_file=source.job.file,
            log=log,
            batch_size=batch_size,
        )
        items = source.items
        if not engine.info.clones_voice:
            items = _warn_at_first_prompt(items, engine.info.name, log)
        return BatchRunner(engine, items, settings, folder=folder).run()


def _check_run_arguments(seed: object, max_failures: object, batch_size: object = None) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RunError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    if max_failures is not None and (
        isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1
    ):
        raise RunError(f"max_failures must be a positive integer, got {max_failures!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise RunError(f"batch_size must be a positive integer, got {batch_size!r}")


@dataclass
class _TaskSource:
    """Where a run's tasks come from, and the output naming that follows from it."""

    items: Iterator[TaskOrInvalid]
    out_dir: Path
    zip_name: str
    job: JobId  # who owns the output folder (state.py)
    name: str | None = None  # the task file, for summary.json
    total_lines: int | None = None  # for the progress bar
    file: BinaryIO | None = None  # the open task file, closed after the run
    line_count: Callable[[], int | None] | None = None  # for `unread_lines` (RunSettings.line_count)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _open_tasks(
    tasks: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike[str] | None,
    base_dir: str | os.PathLike[str] | None,
    *,
    count_lines_for_progress: bool,
) -> _TaskSource:
    if isinstance(tasks, (str, os.PathLike)):
        path = Path(tasks)
        explicit = explicit_base(base_dir) if base_dir is not None else None
        task_file = open_task_file(path)
        try:
            total = _total_lines(task_file, path) if count_lines_for_progress else None
            job = JobId.of_task_file(path, os.fstat(task_file.fileno()))
        except (RunError, OSError) as e:
            task_file.close()
            if isinstance(e, OSError):
                raise RunError(f"cannot read task file {str(path)!r}: {e.strerror or e}") from None
            raise
        return _TaskSource(
            items=iter_open_task_file(
                task_file, (explicit,) if explicit is not None else prompt_bases(path, task_file)
            ),
            job=job,
            out_dir=Path(out_dir) if out_dir is not None else Path("outputs") / path.stem,
            zip_name=f"{path.stem}.zip",
            name=str(path),
            total_lines=total,
            file=task_file,
            line_count=lambda: _cheap_line_count(path),
        )
    if isinstance(tasks, Mapping) or not isinstance(tasks, Iterable):
        raise RunError("tasks must be a task file path or an iterable of task mappings")
    if out_dir is None:
        raise RunError("out_dir is required when tasks are given as mappings")
    out = Path(out_dir)
    sized = tasks if isinstance(tasks, Sized) else None
    return _TaskSource(
        items=iter_task_dicts(tasks, base_dir),
        job=JobId(MAPPINGS_OWNER),
        out_dir=out,
        zip_name=f"{out.resolve().name or 'batch'}.zip",
        line_count=(lambda: len(sized)) if sized is not None else None,
    )


def _prepare_out_dir(out: Path, lock: OutputLock) -> None:
    """Create the folder, take its lock, and clear temp files a killed run left."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create output folder {str(out)!r}: {e.strerror or e}") from None
    lock.acquire()
    try:
        clean_stale_temp_files(out)
    except OSError as e:
        raise RunError(f"cannot read output folder {str(out)!r}: {e.strerror or e}") from None


def _claim_out_dir(source: _TaskSource, *, adopt: bool, make_zip: bool, fsync: bool) -> FolderState:
    """Refuse a folder another job owns (unless `adopt`) or run files the tool did not write,
    before any time goes into loading the engine."""
    try:
        folder = FolderState(source.out_dir, fsync=fsync)
        run_files = [MANIFEST_NAME, SUMMARY_NAME, source.zip_name]
        folder.claim(source.job, adopt=adopt, run_files=run_files)
    except OSError as e:
        raise RunError(f"cannot write the state of {str(source.out_dir)!r}: {e.strerror or e}") from None
    never = {source.job.file} if source.job.file else set()
    for name in run_files if make_zip else run_files[:2]:
        folder.check_run_file(name, never=never)
    return folder


def _total_lines(task_file: BinaryIO, path: Path) -> int | None:
    """Line count for the progress total, or None when the file cannot be read twice.

    A pipe or FIFO (`run /dev/stdin`) would be drained by counting, leaving nothing to run.
    """
    try:
        if not stat.S_ISREG(os.fstat(task_file.fileno()).st_mode):
            return None
        return count_lines(path)
    except OSError as e:
        raise RunError(f"cannot read task file {str(path)!r}: {e.strerror or e}") from None


# Counting the lines left after an interrupt must not hold up the exit: a regular file up
# to this size is counted (well under a second), anything larger reports null.
MAX_COUNTED_BYTES = 256 << 20


def _cheap_line_count(path: Path) -> int | None:
    """The task file's physical line count when it is a regular file of at most MAX_COUNTED_BYTES."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_COUNTED_BYTES:
            return None
        return count_lines(path)
    except OSError:
        return None


def _load_engine(name: str, options: EngineOptions, log: Log) -> Engine:
    from .engines.select import load_engine  # imported late: it pulls in the engines

    return load_engine(name, options, log=log)


def _announce(engine: Engine, log: Log) -> None:
    info = engine.info
    log(f"engine: {info.name} | model: {info.model} | device: {info.device} | {info.sample_rate} Hz")


def _warn_at_first_prompt(items: Iterable[TaskOrInvalid], engine_name: str, log: Log) -> Iterator[TaskOrInvalid]:
    """Pass `items` on; the first task with a prompt logs that the engine ignores prompts
    (a job without prompts gets no such warning)."""
    warned = False
    for item in items:
        if not warned and isinstance(item, Task) and item.prompt_audio is not None:
            log(
                f"WARNING: engine {engine_name!r} does not clone voices; prompt audio will be ignored "
                f"(first on line {item.line})"
            )
            warned = True
        yield item


# check ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineProblem:
    line: int
    output_name: str | None
    field: str | None
    type: str
    message: str


@dataclass(frozen=True)
class CheckReport:
    """Result of validating a task file (and optionally a checkpoint folder) without synthesis."""

    path: Path
    valid: int
    problems: tuple[LineProblem, ...]
    checkpoint_error: str | None = None

    @property
    def invalid(self) -> int:
        return len(self.problems)

    @property
    def ok(self) -> bool:
        return not self.problems and self.checkpoint_error is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def check_tasks(
    path: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None = None,
    campplus: str | os.PathLike[str] | None = None,
    on_item: Callable[[TaskOrInvalid], None] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> CheckReport:
    """Validate every line of a task file (no engine is loaded). `on_item` sees each result as read.

    With `model_dir`, the checkpoint folder is validated too, and every valid task is held to
    the glmtts engine's per-task input rules (prompt_text present, prompt audio decodable,
    audible, 1-30 s; `glmtts.inputs`), so a line reported valid does not fail for its inputs
    in `run --engine glmtts`. Each prompt file is decoded once.
    Relative prompt paths resolve as `run_batch` resolves them (`base_dir`, else the task
    file's folder, then the working directory).
    """
    path = Path(path)
    valid = 0
    problems: list[LineProblem] = []
    engine_rules = _glmtts_input_rules() if model_dir is not None else None
    for item in iter_task_file(path, base_dir):
        if engine_rules is not None and isinstance(item, Task):
            error = engine_rules(item)
            if error is not None:
                item = InvalidLine(line=item.line, error=error, output_name=item.output_name, seed=item.seed)
        if on_item is not None:
            on_item(item)
        if isinstance(item, Task):
            valid += 1
        else:
            problems.append(_problem(item))
    checkpoint_error = _check_checkpoint(Path(model_dir), campplus) if model_dir is not None else None
    return CheckReport(path, valid, tuple(problems), checkpoint_error)


def _glmtts_input_rules() -> Callable[[Task], TaskError | None]:
    from .glmtts.inputs import TaskInputChecker  # imported late: it pulls in numpy, soundfile, torch

    return TaskInputChecker()


def _problem(item: InvalidLine) -> LineProblem:
    err: TaskError = item.error
    return LineProblem(item.line, item.output_name, err.field, type(err).__name__, str(err))


def _check_checkpoint(model_dir: Path, campplus: str | os.PathLike[str] | None) -> str | None:
    from .glmtts.checkpoint import validate_checkpoint_dir

    try:
        validate_checkpoint_dir(model_dir, campplus=Path(campplus) if campplus is not None else None)
    except CheckpointError as e:
        return str(e)
    return None
