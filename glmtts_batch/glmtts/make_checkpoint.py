"""Random-weight GLM-TTS checkpoints in the released folder layout.

Tests and benchmarks cannot download the real 9 GB checkpoint, so they build one with the
same files, key names and (for `full`) shapes, filled with random weights. Each model module
writes its own part; this module only decides the folder layout and keeps the parts
consistent (one vocabulary: the text tokenizer's audio tokens, the LLM's vocab size and the
flow's speech-token embedding all agree).

Presets:
- `tiny`: every part small enough that the whole engine runs a task in about a second on CPU.
- `full`: the real shapes from the reference configs (LLM 6.2 GB, flow 0.9 GB, speech
  tokenizer 1.6 GB, HiFT 83 MB). The text tokenizer, CAM++ model and Vocos2D script are the
  small stand-ins in both presets: their real counterparts are data or an architecture this
  project cannot rebuild, and their size does not matter for loading or speed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

PRESETS = ("tiny", "full")


def build_random_checkpoint(
    out_dir: str | Path,
    preset: str = "tiny",
    *,
    seed: int = 0,
    log: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Write a complete random checkpoint folder to `out_dir` and return it."""
    from glmtts_batch.glmtts import flow, hift, llm, speaker, speech_tokenizer, vocos
    from glmtts_batch.glmtts.text.tokenizer import (
        N_AUDIO_TOKENS,
        TextTokenizer,
        write_test_tokenizer,
    )

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)

    log("text tokenizer")
    tokenizer_dir = root / "vq32k-phoneme-tokenizer"
    write_test_tokenizer(tokenizer_dir)
    tokenizer = TextTokenizer.from_dir(tokenizer_dir)

    log("llm")
    vocab = llm.LlmConfig.full().vocab_size if preset == "full" else _round_up(tokenizer.vocab_size, 64)
    if vocab < tokenizer.vocab_size:
        raise ValueError(f"LLM vocab {vocab} is smaller than the tokenizer's {tokenizer.vocab_size}")
    llm.write_random_llm(root / "llm", preset, vocab_size=vocab, seed=seed)

    log("flow")
    flow_config = flow.DiTConfig.full() if preset == "full" else flow.DiTConfig.tiny()
    # Generated speech tokens span the whole codebook, so the flow must embed all of them.
    flow_config = dataclasses.replace(flow_config, text_vocab_size=max(flow_config.text_vocab_size, N_AUDIO_TOKENS))
    flow.random_flow_checkpoint(root / "flow", flow_config, seed=seed)

    log("speech tokenizer")
    speech_tokenizer.random_speech_tokenizer(root / "speech_tokenizer", preset, seed=seed)

    log("vocoders")
    hift.random_hift_checkpoint(root / "hift" / "hift.pt", preset, seed=seed)
    vocos.write_test_vocos(root / "vocos2d" / "generator_jit.ckpt", seed=seed)

    log("CAM++ speaker encoder")
    speaker.write_test_campplus(root / "frontend" / "campplus.onnx", seed=seed)

    (root / "RANDOM_WEIGHTS.json").write_text(
        json.dumps({"preset": preset, "seed": seed, "note": "random weights: the audio is noise"}, indent=2) + "\n"
    )
    return root


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
