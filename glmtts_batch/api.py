"""Python API: `run_batch` and `check_tasks`. The CLI is a thin layer over these."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .engines.base import Engine, EngineOptions
from .errors import CheckpointError, RunError, TaskError
from .lock import OutputLock
from .outputs import clean_stale_temp_files
from .runner import BatchRunner, RunSettings, Summary
from .tasks import (
    MAX_SEED,
    InvalidLine,
    Task,
    TaskOrInvalid,
    count_lines,
    iter_open_task_file,
    iter_task_dicts,
    iter_task_file,
    open_task_file,
)

if TYPE_CHECKING:
    import threading

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    print(f"glmtts-batch: {message}", file=sys.stderr, flush=True)


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
    cancel: threading.Event | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Synthesise every task into `out_dir`: WAVs, manifest.jsonl, summary.json and a zip.

    `tasks` is a JSONL task file or an iterable of task mappings (then `out_dir`
    is required, and relative prompt paths resolve against `base_dir`, default
    the working directory). Default `out_dir` for a file: `outputs/<file stem>/`.

    `engine` is an `Engine` instance (the caller owns and closes it) or a name
    for `engines.select.load_engine` ("auto", "glmtts", "espeak"; loaded and
    closed here). `progress=None` shows a bar on a terminal and log lines
    otherwise; False silences both. `fsync=False` trades crash durability for
    speed (tests, scratch runs).

    `cancel` (a `threading.Event`) stops the run as a first SIGTERM does, from any
    thread: the current task finishes, the rest is recorded as skipped/interrupted,
    exit code 143, no zip. `on_record(record)` is called with each manifest record
    as it is written (live progress for an embedding server).

    Raises `RunError` when the run cannot start (exit code 2); otherwise returns
    a `Summary` whose `exit_code` is 0, 1, 130 or 143 (see `runner`).
    """
    log = log or log_to_stderr
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RunError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    if max_failures is not None and (isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1):
        raise RunError(f"max_failures must be a positive integer, got {max_failures!r}")
    # An engine name is checked (case-insensitively) by engines.select.load_engine.

    task_file = None
    if isinstance(tasks, (str, os.PathLike)):
        path = Path(tasks)
        task_file = open_task_file(path)
        items = iter_open_task_file(task_file, path.resolve().parent)
        out = Path(out_dir) if out_dir is not None else Path("outputs") / path.stem
        zip_name = f"{path.stem}.zip"
        source = str(path)
        try:
            total = _total_lines(task_file, path) if progress is not False else None
        except RunError:
            task_file.close()
            raise
    elif isinstance(tasks, Mapping) or not isinstance(tasks, Iterable):
        raise RunError("tasks must be a task file path or an iterable of task mappings")
    else:
        if out_dir is None:
            raise RunError("out_dir is required when tasks are given as mappings")
        items = iter_task_dicts(tasks, base_dir)
        out = Path(out_dir)
        zip_name = f"{out.resolve().name or 'batch'}.zip"
        source = None
        total = None

    lock = OutputLock(out)
    owned_engine: Engine | None = None
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create output folder {str(out)!r}: {e.strerror or e}") from None
        lock.acquire()
        try:
            clean_stale_temp_files(out)
        except OSError as e:
            raise RunError(f"cannot read output folder {str(out)!r}: {e.strerror or e}") from None
        if isinstance(engine, str):
            owned_engine = engine = _load_engine(engine, options, log)
        _announce(engine, log)
        settings = RunSettings(
            out_dir=out,
            zip_name=zip_name,
            seed=seed,
            resume=resume,
            make_zip=make_zip,
            max_failures=max_failures,
            progress=progress,
            fsync=fsync,
            total_lines=total,
            task_source=source,
            cancel=cancel,
            on_record=on_record,
        )
        return BatchRunner(engine, items, settings).run()
    finally:
        if owned_engine is not None:
            owned_engine.close()
        lock.release()
        if task_file is not None:
            task_file.close()


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


def _load_engine(name: str, options: EngineOptions, log: Log) -> Engine:
    from .engines.select import load_engine  # imported late: it pulls in the engines

    return load_engine(name, options, log=log)


def _announce(engine: Engine, log: Log) -> None:
    info = engine.info
    log(f"engine: {info.name} | model: {info.model} | device: {info.device} | {info.sample_rate} Hz")
    if not info.clones_voice:
        log(f"WARNING: engine {info.name!r} does not clone voices; prompt audio will be ignored")


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
) -> CheckReport:
    """Validate every line of a task file (no engine is loaded). `on_item` sees each result as read."""
    path = Path(path)
    valid = 0
    problems: list[LineProblem] = []
    for item in iter_task_file(path):
        if on_item is not None:
            on_item(item)
        if isinstance(item, Task):
            valid += 1
        else:
            problems.append(_problem(item))
    checkpoint_error = _check_checkpoint(Path(model_dir), campplus) if model_dir is not None else None
    return CheckReport(path, valid, tuple(problems), checkpoint_error)


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
