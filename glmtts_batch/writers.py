"""Audio file formats: how a task's samples become the bytes of its output file.

The batch loop writes every task through one `AudioWriter`, which decides both the
file suffix and the encoding, so a new format (FLAC, MP3) is one new class here:
give it a `suffix`, a `format` identity (part of the resume key: a run in another
format redoes its tasks) and an `encode`.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import soundfile as sf

from .errors import TaskError


class AudioWriter(Protocol):
    suffix: str  # file name suffix without the dot: "wav"
    format: str  # identity of the encoding, in the resume key: "wav-pcm16"

    def encode(self, audio: np.ndarray, sample_rate: int) -> tuple[bytes, int]:
        """Mono float samples in [-1, 1] to a complete file image and its sample count.

        Raises `TaskError` for audio that cannot be written (wrong shape, empty, not finite).
        """
        ...


def mono_float32(audio: np.ndarray) -> np.ndarray:
    """The engine's audio as checked (samples,) float32: what every writer encodes."""
    samples = np.asarray(audio)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise TaskError(f"engine returned audio of shape {samples.shape}, expected mono (samples,)")
    if samples.size == 0:
        raise TaskError("engine returned no audio")
    samples = samples.astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise TaskError("engine returned non-finite audio samples (NaN or inf)")
    return samples


class WavWriter:
    """16-bit PCM mono WAV."""

    suffix = "wav"
    format = "wav-pcm16"

    def encode(self, audio: np.ndarray, sample_rate: int) -> tuple[bytes, int]:
        samples = mono_float32(audio)
        # Quantise here rather than in libsndfile so clipping and rounding are ours and exact.
        pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        buffer = io.BytesIO()
        sf.write(buffer, pcm, sample_rate, subtype="PCM_16", format="WAV")
        return buffer.getvalue(), pcm.size


DEFAULT_WRITER: AudioWriter = WavWriter()
