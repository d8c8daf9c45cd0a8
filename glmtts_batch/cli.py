"""`glmtts-batch` command line: a thin click layer over `api.run_batch` and `api.check_tasks`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from . import __version__
from .api import check_tasks, run_batch
from .engines.base import EngineOptions
from .errors import RunError
from .runner import EXIT_RUN_ERROR, EXIT_SIGNAL
from .tasks import InvalidLine, Task, TaskOrInvalid

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="glmtts-batch")
def main() -> None:
    """Batch speech synthesis with GLM-TTS: a JSONL task file in, WAVs + manifest + zip out."""


@main.command()
@click.argument("task_file", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: outputs/<task file stem>/].")
@click.option("--engine", type=click.Choice(["auto", "glmtts", "espeak"]), default="auto", show_default=True,
              help="auto: GLM-TTS when a checkpoint is available, else the embedded espeak engine.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), envvar="GLMTTS_MODEL_DIR",
              help="GLM-TTS checkpoint folder [env: GLMTTS_MODEL_DIR].")
@click.option("--campplus", type=_existing_file, help="CAM++ speaker model (ONNX), if not in the checkpoint.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("--sample-rate", type=click.Choice(["24000", "32000"]), default="24000", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="LLM precision.")
@click.option("--flow-dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Flow precision (half precision may add hiss).")
@click.option("--no-kv-cache", is_flag=True, help="Disable the LLM key/value cache.")
@click.option("--no-prompt-cache", is_flag=True, help="Disable the long-text prompt-history cache.")
@click.option("--phoneme-dict", type=_existing_file, help="JSONL word -> pinyin overrides for phoneme mode.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed for tasks without their own 'seed'.")
@click.option("--no-resume", is_flag=True, help="Redo every task, even those an earlier run finished.")
@click.option("--no-zip", is_flag=True, help="Do not pack <stem>.zip.")
@click.option("--max-failures", type=click.IntRange(min=1), help="Stop after N failed tasks.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress log lines.")
def run(
    task_file: Path,
    out_dir: Path | None,
    engine: str,
    model_dir: Path | None,
    campplus: Path | None,
    device: str,
    sample_rate: str,
    dtype: str,
    flow_dtype: str,
    no_kv_cache: bool,
    no_prompt_cache: bool,
    phoneme_dict: Path | None,
    seed: int,
    no_resume: bool,
    no_zip: bool,
    max_failures: int | None,
    no_progress: bool,
) -> None:
    """Synthesise every task in TASK_FILE (JSONL)."""
    if click.get_current_context().get_parameter_source("model_dir") is ParameterSource.ENVIRONMENT:
        model_dir = None  # engine selection reads GLMTTS_MODEL_DIR itself and names it as the source
    options = EngineOptions(
        model_dir=model_dir,
        campplus=campplus,
        device=device,
        sample_rate=int(sample_rate),
        dtype=dtype,
        flow_dtype=flow_dtype,
        kv_cache=not no_kv_cache,
        prompt_cache=not no_prompt_cache,
        phoneme_dict=phoneme_dict,
    )
    try:
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
        )
    except RunError as e:
        click.echo(f"glmtts-batch: error: {e}", err=True)
        sys.exit(EXIT_RUN_ERROR)
    except KeyboardInterrupt:  # before the batch loop took over the signal (e.g. while loading)
        click.echo("glmtts-batch: interrupted before the run started", err=True)
        sys.exit(EXIT_SIGNAL[signal.SIGINT])

    parts = [f"{summary.ok} ok", f"{summary.failed} failed", f"{summary.invalid} invalid",
             f"{summary.skipped} skipped ({summary.resumed} resumed)"]
    click.echo(f"glmtts-batch: {', '.join(parts)}; {summary.audio_seconds:.1f} s of audio "
               f"in {summary.wall_seconds:.1f} s", err=True)
    if summary.interrupted:
        click.echo(f"glmtts-batch: interrupted by {summary.interrupted}; re-run the same command to resume",
                   err=True)
    if summary.stopped_early:
        click.echo("glmtts-batch: stopped after --max-failures; remaining tasks were not run", err=True)
    click.echo(f"manifest: {summary.manifest}")
    if summary.zip is not None:
        click.echo(f"zip: {summary.zip}")
    sys.exit(summary.exit_code)


@main.command()
@click.argument("task_file", type=click.Path(path_type=Path))
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also validate this GLM-TTS checkpoint folder.")
@click.option("--campplus", type=click.Path(dir_okay=False, path_type=Path),
              help="CAM++ speaker model to validate with --model-dir.")
@click.option("--errors-only", is_flag=True, help="Print only the lines with problems.")
def check(task_file: Path, model_dir: Path | None, campplus: Path | None, errors_only: bool) -> None:
    """Validate TASK_FILE without synthesising (no model is loaded). Exit 1 if any line is bad."""

    def show(item: TaskOrInvalid) -> None:
        if isinstance(item, Task):
            if not errors_only:
                click.echo(f"line {item.line}: ok -> {item.output_name}.wav")
        elif isinstance(item, InvalidLine):
            where = f" [{item.error.field}]" if item.error.field else ""
            click.echo(f"line {item.line}: invalid{where} {type(item.error).__name__}: {item.error}")

    try:
        report = check_tasks(task_file, model_dir=model_dir, campplus=campplus, on_item=show)
    except RunError as e:
        click.echo(f"glmtts-batch: error: {e}", err=True)
        sys.exit(EXIT_RUN_ERROR)
    if report.checkpoint_error:
        click.echo(f"checkpoint {model_dir}: {report.checkpoint_error}")
    elif model_dir is not None:
        click.echo(f"checkpoint {model_dir}: ok")
    click.echo(f"{task_file}: {report.valid} valid, {report.invalid} invalid")
    sys.exit(report.exit_code)


@main.command("make-checkpoint")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(["tiny", "full"]), default="tiny", show_default=True,
              help="tiny: runs a task in about a second on CPU; full: the released checkpoint's shapes.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def make_checkpoint(out_dir: Path, preset: str, seed: int) -> None:
    """Write a random-weight GLM-TTS checkpoint in the real folder layout (tests, benchmarks)."""
    from .glmtts.make_checkpoint import build_random_checkpoint

    def log(message: str) -> None:
        click.echo(f"glmtts-batch: {message}", err=True)

    path = build_random_checkpoint(out_dir, preset, seed=seed, log=log)
    click.echo(str(path))


@main.command()
@click.argument("text_file", required=False, type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@click.option("--tasks", "task_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Preview the input_text of every line of this task file instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.option("--phoneme", is_flag=True, help="Also show each piece in phoneme mode.")
@click.option("--phoneme-dict", type=_existing_file, help="JSONL word -> pinyin overrides (implies --phoneme).")
def normalize(text_file: Path | None, task_file: Path | None, as_json: bool, phoneme: bool,
              phoneme_dict: Path | None) -> None:
    """Show how each line of TEXT_FILE (default: standard input) will be read: the normalised
    text and the pieces it is spoken in. Loads no model. Exit 1 if a line could not be read."""
    import json

    from .preview import PreviewError, TextPreviewer

    if text_file is not None and task_file is not None:
        raise click.UsageError("give TEXT_FILE or --tasks FILE, not both")
    failed = False
    try:
        previewer = TextPreviewer(phoneme=phoneme, phoneme_dict=phoneme_dict)
        source = text_file if text_file is not None else Path("-")
        items = previewer.preview_task_file(task_file) if task_file else previewer.preview_text_file(source)
        for item in items:
            if isinstance(item, PreviewError):
                failed = True
                click.echo(f"glmtts-batch: {item.message}", err=True)
            elif as_json:
                click.echo(json.dumps(item.to_json(), ensure_ascii=False))
            else:
                click.echo(f"line {item.line}: {item.input}\n  normalized: {item.normalized}")
                for i, piece in enumerate(item.pieces, start=1):
                    click.echo(f"  piece {i}: {piece}")
                    if item.phonemes is not None:
                        click.echo(f"  phonemes {i}: {item.phonemes[i - 1]}")
    except RunError as e:
        click.echo(f"glmtts-batch: error: {e}", err=True)
        sys.exit(EXIT_RUN_ERROR)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
