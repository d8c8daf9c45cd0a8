"""`glmtts-batch` command line: a thin click layer over `api.run_batch` and `api.check_tasks`.

`entry` is the console script: the click group `main` with SIGINT/SIGTERM turned into a
clean exit (130 / 143) outside the batch loop. Output nobody reads any more (a closed
pipe) is dropped and never changes the exit code (`_echo`, `log.emit`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click
from click.core import ParameterSource

from . import __version__
from .api import check_tasks, run_batch
from .engines.base import EngineOptions
from .errors import EXIT_OK, EXIT_SIGNAL, EXIT_TASKS_FAILED, GlmttsBatchError, Interrupted, RunError
from .glmtts.checkpoint_writers import PRESETS
from .glmtts.vocoder import DEFAULT_SAMPLE_RATE, SAMPLE_RATES
from .log import PREFIX, emit, log_to_stderr
from .tasks import WORKING_DIR, InvalidLine, Task, TaskOrInvalid
from .writers import DEFAULT_WRITER

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _echo(message: str, *, err: bool = False) -> None:
    """One line to stdout (stderr with `err`), dropped if its reader has gone away (log.emit)."""
    emit(f"{message}\n", sys.stderr if err else sys.stdout)


_base_dir_option = click.option(
    "--base-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder relative prompt_audio paths start from [default: the task file's folder, then the working directory].",
)


class _Commands(click.Group):
    """Maps the package's exceptions to exit codes, for every command, in this one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GlmttsBatchError as e:
            _echo(f"{PREFIX}error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # in-process use (no `entry`): Python's own SIGINT handler
            _echo(f"{PREFIX}interrupted before the run started", err=True)
            sys.exit(EXIT_SIGNAL[signal.SIGINT])


def entry() -> None:
    """The `glmtts-batch` console script and `python -m glmtts_batch`.

    Three phases, so that no signal ends the process with a traceback or in silence:
    start-up (arguments, output folder, model loading) and clean-up run with handlers
    that raise `Interrupted`, a BaseException no `except Exception` swallows, which ends
    in a message and exit 130 / 143; the batch loop's `runner.SignalGuard` replaces them
    while it runs (first signal: finish the task; second: abandon it); once the command
    has returned, a signal during the interpreter's exit ends the process at once, with
    the same message and codes.
    """
    for sig in _SIGNALS:
        signal.signal(sig, _raise_interrupted)
    try:
        try:
            main(prog_name="glmtts-batch")  # click's standalone mode: always ends in SystemExit
        finally:
            for sig in _SIGNALS:
                signal.signal(sig, _exit_at_once)
    except Interrupted as e:
        _echo(f"{PREFIX}interrupted by {e}", err=True)
        sys.exit(e.exit_code)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    """A signal while exiting: flush what can be flushed, say so, and end with 130 / 143."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a flush this signal interrupted is re-entered
            stream.flush()
    with contextlib.suppress(OSError):
        os.write(2, f"{PREFIX}interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(EXIT_SIGNAL.get(signum, 128 + signum))


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="glmtts-batch")
def main() -> None:
    """Batch speech synthesis with GLM-TTS: a JSONL task file in, WAVs + manifest + zip out."""


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The engine options `run` and `serve` share; the command reads them with `_engine_options`."""
    for option in reversed(_ENGINE_OPTIONS):
        command = option(command)
    return command


_ENGINE_OPTIONS = [
    click.option(
        "--engine",
        type=click.Choice(["auto", "glmtts", "espeak"]),
        default="auto",
        show_default=True,
        help="auto: GLM-TTS when a checkpoint is available, else the embedded espeak engine.",
    ),
    click.option(
        "--model-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="GLMTTS_MODEL_DIR",
        help="GLM-TTS checkpoint folder [env: GLMTTS_MODEL_DIR].",
    ),
    click.option("--campplus", type=_existing_file, help="CAM++ speaker model (ONNX), if not in the checkpoint."),
    click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True),
    click.option(
        "--sample-rate",
        type=click.Choice([str(rate) for rate in SAMPLE_RATES]),
        default=str(DEFAULT_SAMPLE_RATE),
        show_default=True,
        help="Output rate; each has its own vocoder.",
    ),
    click.option(
        "--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="LLM precision."
    ),
    click.option(
        "--flow-dtype",
        type=click.Choice(["fp32", "bf16", "fp16"]),
        default="fp32",
        show_default=True,
        help="Flow precision (half precision may add hiss).",
    ),
    click.option("--no-kv-cache", is_flag=True, help="Disable the LLM key/value cache."),
    click.option("--no-prompt-cache", is_flag=True, help="Disable the long-text prompt-history cache."),
    click.option("--phoneme-dict", type=_existing_file, help="JSONL word -> pinyin overrides for phoneme mode."),
    click.option(
        "--sampling-rng",
        type=click.Choice(["fast", "upstream"]),
        default="fast",
        show_default=True,
        help="upstream: spend random numbers as upstream GLM-TTS does, for its tokens from a seed (slower).",
    ),
]


def batch_size_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--batch-size`, shared by `run` and `serve` (a runner setting, not an engine option)."""
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Tasks per engine call [default: the engine's own: espeak 1, GLM-TTS by device]. "
        "Does not change the audio; a batch that runs out of memory is retried in halves.",
    )(command)


def _engine_options(params: dict[str, Any]) -> tuple[str, EngineOptions]:
    """Pops the shared engine options from a command's parameters: (engine name, options)."""
    model_dir = params.pop("model_dir")
    if click.get_current_context().get_parameter_source("model_dir") is ParameterSource.ENVIRONMENT:
        model_dir = None  # engine selection reads GLMTTS_MODEL_DIR itself and names it as the source
    options = EngineOptions(
        model_dir=model_dir,
        campplus=params.pop("campplus"),
        device=params.pop("device"),
        sample_rate=int(params.pop("sample_rate")),
        dtype=params.pop("dtype"),
        flow_dtype=params.pop("flow_dtype"),
        kv_cache=not params.pop("no_kv_cache"),
        prompt_cache=not params.pop("no_prompt_cache"),
        phoneme_dict=params.pop("phoneme_dict"),
        sampling_rng=params.pop("sampling_rng"),
    )
    return params.pop("engine"), options


@main.command()
@click.argument("task_file", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder [default: outputs/<task file stem>/].",
)
@engine_options
@batch_size_option
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=0,
    show_default=True,
    help="Seed for tasks without their own 'seed'.",
)
@click.option("--no-resume", is_flag=True, help="Redo every task, even those an earlier run finished.")
@click.option("--no-zip", is_flag=True, help="Do not pack <stem>.zip.")
@click.option("--max-failures", type=click.IntRange(min=1), help="Stop after N failed tasks.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress log lines.")
@click.option(
    "--adopt", is_flag=True, help="Let this task file take over an output folder another task file's job owns."
)
@_base_dir_option
def run(
    task_file: Path,
    out_dir: Path | None,
    seed: int,
    no_resume: bool,
    no_zip: bool,
    max_failures: int | None,
    no_progress: bool,
    adopt: bool,
    base_dir: Path | None,
    batch_size: int | None,
    **engine_params: Any,
) -> None:
    """Synthesise every task in TASK_FILE (JSONL)."""
    engine, options = _engine_options(engine_params)
    summary = run_batch(
        task_file,
        out_dir,
        engine=engine,
        options=options,
        seed=seed,
        resume=not no_resume,
        make_zip=not no_zip,
        max_failures=max_failures,
        progress=False if no_progress else None,
        adopt=adopt,
        base_dir=base_dir,
        batch_size=batch_size,
    )
    parts = [
        f"{summary.ok} ok ({summary.resumed} resumed)",
        f"{summary.failed} failed",
        f"{summary.invalid} invalid",
        f"{summary.skipped} skipped",
    ]
    _echo(
        f"{PREFIX}{', '.join(parts)}; {summary.audio_seconds:.1f} s of audio in {summary.wall_seconds:.1f} s", err=True
    )
    if summary.interrupted:
        unread = "" if not summary.unread_lines else f"; {summary.unread_lines} lines not read"
        _echo(f"{PREFIX}interrupted by {summary.interrupted}{unread}; re-run the same command to resume", err=True)
    if summary.stopped_early:
        _echo(f"{PREFIX}stopped after --max-failures; remaining tasks were not run", err=True)
    _echo(f"manifest: {summary.manifest}")
    if summary.zip is not None:
        _echo(f"zip: {summary.zip}")
    sys.exit(summary.exit_code)


@main.command()
@click.argument("task_file", type=click.Path(path_type=Path))
@click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also validate this GLM-TTS checkpoint folder.",
)
@click.option(
    "--campplus",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CAM++ speaker model to validate with --model-dir.",
)
@click.option("--errors-only", is_flag=True, help="Print only the lines with problems.")
@_base_dir_option
def check(
    task_file: Path, model_dir: Path | None, campplus: Path | None, errors_only: bool, base_dir: Path | None
) -> None:
    """Validate TASK_FILE without synthesising (no model is loaded). Exit 1 if any line is bad."""

    def show(item: TaskOrInvalid) -> None:
        if isinstance(item, Task):
            if not errors_only:
                found = " (prompt_audio found from the working directory)" if item.prompt_base == WORKING_DIR else ""
                _echo(f"line {item.line}: ok -> {item.output_name}.{DEFAULT_WRITER.suffix}{found}")
        elif isinstance(item, InvalidLine):
            where = f" [{item.error.field}]" if item.error.field else ""
            _echo(f"line {item.line}: invalid{where} {type(item.error).__name__}: {item.error}")

    report = check_tasks(task_file, model_dir=model_dir, campplus=campplus, on_item=show, base_dir=base_dir)
    if report.checkpoint_error:
        _echo(f"checkpoint {model_dir}: {report.checkpoint_error}")
    elif model_dir is not None:
        _echo(f"checkpoint {model_dir}: ok")
    _echo(f"{task_file}: {report.valid} valid, {report.invalid} invalid")
    sys.exit(report.exit_code)


@main.command("make-checkpoint")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default="tiny",
    show_default=True,
    help="tiny: runs a task in about a second on CPU; full: the released checkpoint's shapes.",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def make_checkpoint(out_dir: Path, preset: str, seed: int) -> None:
    """Write a random-weight GLM-TTS checkpoint in the real folder layout (tests, benchmarks)."""
    from .glmtts.make_checkpoint import build_random_checkpoint

    path = build_random_checkpoint(out_dir, preset, seed=seed, log=log_to_stderr)
    _echo(str(path))


@main.command()
@click.argument("text_file", required=False, type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@click.option(
    "--tasks",
    "task_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Preview the input_text of every line of this task file instead.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.option("--phoneme", is_flag=True, help="Also show each piece in phoneme mode.")
@click.option("--phoneme-dict", type=_existing_file, help="JSONL word -> pinyin overrides (implies --phoneme).")
def normalize(
    text_file: Path | None, task_file: Path | None, as_json: bool, phoneme: bool, phoneme_dict: Path | None
) -> None:
    """Show how each line of TEXT_FILE (default: standard input) will be read: the normalised
    text and the pieces it is spoken in. Loads no model. Exit 1 if a line could not be read."""
    import json

    from .preview import PreviewError, TextPreviewer

    if text_file is not None and task_file is not None:
        raise click.UsageError("give TEXT_FILE or --tasks FILE, not both")
    failed = False
    previewer = TextPreviewer(phoneme=phoneme, phoneme_dict=phoneme_dict)
    if previewer.normalizer.fallback_reason is not None:  # the preview would not be what upstream reads
        click.echo(f"{PREFIX}{previewer.normalizer.describe()}", err=True)
    source = text_file if text_file is not None else Path("-")
    items = previewer.preview_task_file(task_file) if task_file else previewer.preview_text_file(source)
    for item in items:
        if isinstance(item, PreviewError):
            failed = True
            _echo(f"glmtts-batch: {item.message}", err=True)
        elif as_json:
            _echo(json.dumps(item.to_json(), ensure_ascii=False))
        else:
            _echo(f"line {item.line}: {item.input}\n  normalized: {item.normalized}")
            for i, piece in enumerate(item.pieces, start=1):
                _echo(f"  piece {i}: {piece}")
                if item.phonemes is not None:
                    _echo(f"  phonemes {i}: {item.phonemes[i - 1]}")
    sys.exit(EXIT_TASKS_FAILED if failed else EXIT_OK)


# serve ------------------------------------------------------------------------------------
# `glmtts-batch serve`: HTTP job server (glmtts_batch.server; needs the `server` extra).


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Bind address; anything but loopback needs --token-file."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--jobs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("jobs-server"),
    show_default=True,
    help="Queue (SQLite), job folders and voices.",
)
@click.option("--token-file", type=_existing_file, help="File holding the bearer token clients must send.")
@click.option(
    "--max-file-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=50,
    show_default=True,
    help="Largest uploaded file.",
)
@click.option(
    "--max-job-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=200,
    show_default=True,
    help="Largest request body (a job's task file and prompt files).",
)
@click.option(
    "--max-lines", type=click.IntRange(min=1), default=10_000, show_default=True, help="Most task lines per job."
)
@click.option(
    "--max-text-chars",
    type=click.IntRange(min=1),
    default=2_000,
    show_default=True,
    help="Longest input_text of a task or input of a speech request.",
)
@engine_options
@batch_size_option
def serve(
    host: str,
    port: int,
    jobs_dir: Path,
    token_file: Path | None,
    max_file_mb: float,
    max_job_mb: float,
    max_lines: int,
    max_text_chars: int,
    batch_size: int | None,
    **engine_params: Any,
) -> None:
    """Serve jobs, voices and speech over HTTP with one engine loaded once."""
    try:
        from .engines.select import load_engine
        from .server.config import ServeConfig, ServerLimits, check_bind, read_token
        from .server.serve import serve as run_server
    except ImportError as e:
        raise RunError(f"serve needs the server extra (pip install 'glmtts-batch[server]'): {e}") from None
    engine, options = _engine_options(engine_params)
    mib = 1 << 20
    limits = ServerLimits(
        max_file_bytes=int(max_file_mb * mib),
        max_job_bytes=int(max_job_mb * mib),
        max_lines=max_lines,
        max_text_chars=max_text_chars,
    )
    token = read_token(token_file) if token_file is not None else None
    config = ServeConfig(jobs_dir=jobs_dir, host=host, port=port, token=token, limits=limits, batch_size=batch_size)
    check_bind(host, token)  # before a model spends a minute loading
    loaded = load_engine(engine, options, log=log_to_stderr)
    try:
        run_server(config, loaded)
    finally:
        loaded.close()


if __name__ == "__main__":  # pragma: no cover
    entry()
