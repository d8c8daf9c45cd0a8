"""Choosing and loading the engine for a run: `--engine auto|glmtts|espeak`.

`auto` takes GLM-TTS when a checkpoint is configured and the embedded espeak-ng engine
otherwise, and always says which one it took and why: a run that silently fell back
to robotic speech without voice cloning would be a nasty surprise in the outputs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from glmtts_batch.engines.base import Engine, EngineOptions
from glmtts_batch.errors import EngineLoadError, GlmttsBatchError
from glmtts_batch.glmtts.checkpoint import DOWNLOAD_HINT
from glmtts_batch.log import Log, log_to_stderr

ENGINE_NAMES = ("auto", "glmtts", "espeak")
MODEL_DIR_ENV = "GLMTTS_MODEL_DIR"

CHECKPOINT_HINT = (
    f"{DOWNLOAD_HINT}\nThen pass --model-dir DIR or set {MODEL_DIR_ENV}=DIR "
    "(or use --engine espeak for the offline engine, which does not clone voices)."
)


def banner(message: str) -> str:
    """One line that stands out in a log."""
    return f"===== {message} ====="


def configured_model_dir(options: EngineOptions) -> tuple[Path, str] | None:
    """The checkpoint folder from the options or the environment, and where it came from."""
    if options.model_dir is not None and str(options.model_dir).strip():
        return Path(options.model_dir).expanduser(), "--model-dir"
    from_env = os.environ.get(MODEL_DIR_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser(), MODEL_DIR_ENV
    return None


def load_engine(name: str, options: EngineOptions, *, log: Log = log_to_stderr) -> Engine:
    """Load the engine called `name` ("auto", "glmtts" or "espeak") for a run.

    Raises `EngineLoadError` for an unknown name, for `glmtts` without a checkpoint,
    and whenever the chosen engine cannot be loaded (`auto` never falls back from a
    configured checkpoint that fails to load: the user asked for voice cloning).
    """
    key = name.strip().lower()
    if key not in ENGINE_NAMES:
        raise EngineLoadError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINE_NAMES)}")
    found = configured_model_dir(options)
    if key == "auto":
        if found is not None:
            model_dir, source = found
            log(banner(f"ENGINE auto -> glmtts: GLM-TTS checkpoint {model_dir} (from {source})"))
            return _load_glmtts(options, model_dir, source, log)
        log(
            banner(
                "ENGINE auto -> espeak: no GLM-TTS checkpoint configured (--model-dir / "
                f"{MODEL_DIR_ENV}); output is espeak-ng speech and prompt audio is IGNORED (no voice cloning)"
            )
        )
        return _load_espeak(options, log)
    if key == "glmtts":
        if found is None:
            raise EngineLoadError(
                f"the glmtts engine needs a GLM-TTS checkpoint and none is configured.\n{CHECKPOINT_HINT}"
            )
        model_dir, source = found
        return _load_glmtts(options, model_dir, source, log)
    return _load_espeak(options, log)


def _load_espeak(options: EngineOptions, log: Log) -> Engine:
    from glmtts_batch.engines.espeak import EspeakEngine

    return EspeakEngine.load(options, log=log)


def _load_glmtts(options: EngineOptions, model_dir: Path, source: str, log: Log) -> Engine:
    if not model_dir.is_dir():
        raise EngineLoadError(
            f"GLM-TTS checkpoint folder {model_dir} (from {source}) does not exist.\n{CHECKPOINT_HINT}"
        )
    try:
        from glmtts_batch.glmtts.engine import GlmTtsEngine
    except ImportError as exc:
        raise EngineLoadError(
            f"the glmtts engine is not available in this installation: cannot import glmtts_batch.glmtts.engine ({exc})"
        ) from exc
    # The engine sees one resolved folder, whether it came from the option or the environment.
    resolved = dataclasses.replace(options, model_dir=model_dir)
    try:
        return GlmTtsEngine.load(resolved, log=log)
    except GlmttsBatchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means the run cannot start
        raise EngineLoadError(
            f"the glmtts engine failed to load from {model_dir}: {type(exc).__name__}: {exc}"
        ) from exc
