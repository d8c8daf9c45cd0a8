"""Random-weight GLM-TTS checkpoints in the released folder layout.

Tests and benchmarks cannot download the real 9 GB checkpoint, so they build one with the
same files, key names and (for `full`) shapes, filled with random weights. The writers of
each part live in `glmtts.checkpoint_writers`; this module only decides the folder layout
and keeps the parts consistent (one vocabulary: the text tokenizer's audio tokens, the
LLM's vocab size and the flow's speech-token embedding all agree).

Presets:
- `tiny`: every part small enough that the whole engine runs a task in about a second on CPU.
- `full`: the real shapes from the reference configs (LLM 6.2 GB, flow 0.9 GB, speech
  tokenizer 1.6 GB, HiFT 83 MB). The text tokenizer, CAM++ model and Vocos2D script are the
  small stand-ins in both presets: their real counterparts are data or an architecture this
  project cannot rebuild, and their size does not matter for loading or speed.

The folder is built beside the target under a temporary name and renamed into place at
the end, so an interrupted or failed build never leaves a partial checkpoint behind.
Needs runtime dependencies only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from glmtts_batch.errors import RunError
from glmtts_batch.glmtts.checkpoint_writers import PRESETS, preset_config

__all__ = ["PRESETS", "build_random_checkpoint"]


def build_random_checkpoint(
    out_dir: str | Path,
    preset: str = "tiny",
    *,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Write a complete random checkpoint folder to `out_dir` and return it.

    `out_dir` must not exist or be empty, unless `overwrite` (then it is replaced only once
    the new folder is complete). Raises ValueError for an unknown preset, RunError for a
    folder in the way; in every failure nothing is left at or beside `out_dir`.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    root = Path(out_dir)
    if root.exists() and not overwrite and (not root.is_dir() or any(root.iterdir())):
        raise RunError(f"{root} already exists and is not an empty folder; choose another folder or remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_parts(building, preset, seed, log)
        _move_into_place(building, root)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return root


def _write_parts(root: Path, preset: str, seed: int, log: Callable[[str], None]) -> None:
    from glmtts_batch.glmtts.checkpoint_writers.campplus import write_random_campplus
    from glmtts_batch.glmtts.checkpoint_writers.flow import write_random_flow
    from glmtts_batch.glmtts.checkpoint_writers.hift import write_random_hift
    from glmtts_batch.glmtts.checkpoint_writers.llm import write_random_llm
    from glmtts_batch.glmtts.checkpoint_writers.speech_tokenizer import (
        write_random_speech_tokenizer,
    )
    from glmtts_batch.glmtts.checkpoint_writers.text_tokenizer import (
        write_text_tokenizer,
    )
    from glmtts_batch.glmtts.checkpoint_writers.vocos2d import write_random_vocos2d
    from glmtts_batch.glmtts.dit import DiTConfig
    from glmtts_batch.glmtts.hift import HiFTConfig
    from glmtts_batch.glmtts.llm import LlmConfig
    from glmtts_batch.glmtts.speech_tokenizer import SpeechTokenizerConfig
    from glmtts_batch.glmtts.text.tokenizer import N_AUDIO_TOKENS, TextTokenizer
    from glmtts_batch.glmtts.vocoder import VOCODERS

    log("text tokenizer")
    tokenizer_dir = root / "vq32k-phoneme-tokenizer"
    write_text_tokenizer(tokenizer_dir)
    tokenizer = TextTokenizer.from_checkpoint(tokenizer_dir)

    log("llm")
    llm_config = preset_config(LlmConfig, preset)
    if preset == "tiny":  # the smallest vocabulary that holds every tokenizer id
        llm_config = dataclasses.replace(llm_config, vocab_size=_round_up(tokenizer.vocab_size, 64))
    if llm_config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"LLM vocab {llm_config.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
    write_random_llm(root / "llm", llm_config, seed=seed)

    log("flow")
    flow_config = preset_config(DiTConfig, preset)
    # Generated speech tokens span the whole codebook, so the flow must embed all of them.
    flow_config = dataclasses.replace(flow_config, text_vocab_size=max(flow_config.text_vocab_size, N_AUDIO_TOKENS))
    write_random_flow(root / "flow", flow_config, seed=seed)

    log("speech tokenizer")
    speech_config = preset_config(SpeechTokenizerConfig, preset)
    # The released file holds only the layers below the quantizer (1.63 GB, not 2.9 GB);
    # the tiny one keeps every layer, as the golden file does, so ignored keys are exercised.
    layers = speech_config.quantize_position if preset == "full" else speech_config.encoder_layers
    write_random_speech_tokenizer(
        root / "speech_tokenizer", speech_config, seed=seed, layers_in_file=layers, name=preset
    )

    log("vocoders")
    write_random_hift(root / VOCODERS[24000].checkpoint_file, preset_config(HiFTConfig, preset), seed=seed)
    write_random_vocos2d(root / VOCODERS[32000].checkpoint_file, seed=seed)

    log("CAM++ speaker encoder")
    write_random_campplus(root / "frontend" / "campplus.onnx", seed=seed)

    (root / "RANDOM_WEIGHTS.json").write_text(
        json.dumps({"preset": preset, "seed": seed, "note": "random weights: the audio is noise"}, indent=2) + "\n"
    )


def _move_into_place(building: Path, root: Path) -> None:
    """Rename the finished folder to `root`; an old `root` is removed only after that."""
    building.chmod(0o777 & ~_current_umask())  # mkdtemp makes it 0700; a checkpoint is shared data
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        building.replace(root)  # rename(2) replaces an empty folder
        return
    old = root.with_name(f".{root.name}.old-{building.name.rsplit('-', 1)[-1]}")
    root.replace(old)
    building.replace(root)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
