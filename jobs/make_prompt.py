"""Regenerate jobs/prompt_narrator.wav, the demo job's voice prompt.

The prompt is spoken by the embedded espeak-ng engine (deterministic, so this script
reproduces the committed file), saved as 24 kHz mono 16-bit PCM. Its transcript is
PROMPT_TEXT, which is the `prompt_text` of every task in jobs/demo.jsonl.

    python jobs/make_prompt.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from glmtts_batch.engines.base import SynthesisRequest
from glmtts_batch.engines.espeak import EspeakEngine

PROMPT_TEXT = "Good evening. Tonight I will read you a short story about the sea."
SAMPLE_RATE = 24000
OUT = Path(__file__).resolve().parent / "prompt_narrator.wav"


def make_prompt(path: Path = OUT) -> float:
    """Write the prompt WAV to `path`; return its duration in seconds."""
    engine = EspeakEngine(sample_rate=SAMPLE_RATE)
    audio = engine.synthesize(SynthesisRequest(text=PROMPT_TEXT, prompt_audio=None, prompt_text=None, seed=0)).audio
    # Peak at -3 dBFS: a prompt that clips would be rejected by careful loaders.
    audio = audio * (0.708 / max(float(np.abs(audio).max()), 1e-9))
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return len(audio) / SAMPLE_RATE


if __name__ == "__main__":
    seconds = make_prompt()
    print(f"wrote {OUT} ({seconds:.2f} s, {SAMPLE_RATE} Hz mono 16-bit)")
