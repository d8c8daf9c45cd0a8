"""`glmtts-batch` command line: a thin click layer over `api.run_batch` and `api.check_tasks`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from . import __version__
from .api import check_tasks, run_batch
from .engines.base import EngineOptions
from .errors import EXIT_SIGNAL, GlmttsBatchError
from .glmtts.checkpoint_writers import PRESETS
from .glmtts.vocoder import DEFAULT_SAMPLE_RATE, SAMPLE_RATES
from .log import PREFIX, log_to_stderr
from .tasks import InvalidLine, Task, TaskOrInvalid
from .writers import DEFAULT_WRITER

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


class _Commands(click.Group):
    """Maps the package's exceptions to exit codes, for every command, in this one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GlmttsBatchError as e:
            click.echo(f"{PREFIX}error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # before the batch loop took over the signal (e.g. while loading)
            click.echo(f"{PREFIX}interrupted before the run started", err=True)
            sys.exit(EXIT_SIGNAL[signal.SIGINT])


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--sample-rate", type=click.Choice([str(rate) for rate in SAMPLE_RATES]),
              default=str(DEFAULT_SAMPLE_RATE), show_default=True, help="Output rate; each has its own vocoder.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="LLM precision.")
@click.option("--flow-dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Flow precision (half precision may add hiss).")
@click.option("--no-kv-cache", is_flag=True, help="Disable the LLM key/value cache.")
@click.option("--no-prompt-cache", is_flag=True, help="Disable the long-text prompt-history cache.")
@click.option("--phoneme-dict", type=_existing_file, help="JSONL word -> pinyin overrides for phoneme mode.")
@click.option("--sampling-rng", type=click.Choice(["fast", "upstream"]), default="fast", show_default=True,
              help="upstream: spend random numbers as upstream GLM-TTS does, for its tokens from a seed (slower).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed for tasks without their own 'seed'.")
@click.option("--no-resume", is_flag=True, help="Redo every task, even those an earlier run finished.")
@click.option("--no-zip", is_flag=True, help="Do not pack <stem>.zip.")
@click.option("--max-failures", type=click.IntRange(min=1), help="Stop after N failed tasks.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress log lines.")
@click.option("--adopt", is_flag=True,
              help="Let this task file take over an output folder another task file's job owns.")
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
    sampling_rng: str,
    seed: int,
    no_resume: bool,
    no_zip: bool,
    max_failures: int | None,
    no_progress: bool,
    adopt: bool,
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
        sampling_rng=sampling_rng,
    )
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
    )
    parts = [f"{summary.ok} ok ({summary.resumed} resumed)", f"{summary.failed} failed",
             f"{summary.invalid} invalid", f"{summary.skipped} skipped"]
    click.echo(f"{PREFIX}{', '.join(parts)}; {summary.audio_seconds:.1f} s of audio "
               f"in {summary.wall_seconds:.1f} s", err=True)
    if summary.interrupted:
        click.echo(f"{PREFIX}interrupted by {summary.interrupted}; re-run the same command to resume",
                   err=True)
    if summary.stopped_early:
        click.echo(f"{PREFIX}stopped after --max-failures; remaining tasks were not run", err=True)
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
                click.echo(f"line {item.line}: ok -> {item.output_name}.{DEFAULT_WRITER.suffix}")
        elif isinstance(item, InvalidLine):
            where = f" [{item.error.field}]" if item.error.field else ""
            click.echo(f"line {item.line}: invalid{where} {type(item.error).__name__}: {item.error}")

    report = check_tasks(task_file, model_dir=model_dir, campplus=campplus, on_item=show)
    if report.checkpoint_error:
        click.echo(f"checkpoint {model_dir}: {report.checkpoint_error}")
    elif model_dir is not None:
        click.echo(f"checkpoint {model_dir}: ok")
    click.echo(f"{task_file}: {report.valid} valid, {report.invalid} invalid")
    sys.exit(report.exit_code)


@main.command("make-checkpoint")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(PRESETS), default="tiny", show_default=True,
              help="tiny: runs a task in about a second on CPU; full: the released checkpoint's shapes.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def make_checkpoint(out_dir: Path, preset: str, seed: int) -> None:
    """Write a random-weight GLM-TTS checkpoint in the real folder layout (tests, benchmarks)."""
    from .glmtts.make_checkpoint import build_random_checkpoint

    path = build_random_checkpoint(out_dir, preset, seed=seed, log=log_to_stderr)
    click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    main()
