"""Synthetic prompt recordings for engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_voice(path: Path, *, seconds: float = 2.0, rate: int = 16000, pitch: float = 180.0, seed: int = 0) -> Path:
    """A speech-like prompt: a few harmonics with a slow tremolo, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    voiced = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 5))
    wave = 0.15 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path
