"""Joining the audio of long-text pieces without clicks.

Each piece of a long text is synthesised on its own, so the waveforms do not line up at the
joints (upstream simply concatenates them). Neighbouring pieces overlap by a few
milliseconds and are mixed with complementary raised-cosine gains: the two gains sum to 1
(a constant signal passes unchanged) and have zero slope at both ends of the overlap, so
neither the level nor its rate of change jumps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def join_with_crossfade(
    pieces: Sequence[np.ndarray | torch.Tensor], sample_rate: int, fade_ms: float = 20.0
) -> np.ndarray:
    """Concatenate 1-D waveforms, crossfading each joint over `fade_ms` milliseconds.

    The overlap at a joint is `min(fade, len(left) // 2, len(right) // 2)` samples, so a piece
    shorter than two fades still keeps its middle and its two fades never overlap. The result
    has `sum(lengths) - sum(overlaps)` samples (float32). Empty pieces are skipped; a single
    piece is returned unchanged (as float32).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if fade_ms < 0:
        raise ValueError(f"fade_ms must be >= 0, got {fade_ms}")
    arrays = [_as_mono_float32(p, i) for i, p in enumerate(pieces)]
    if not arrays:
        raise ValueError("join_with_crossfade needs at least one piece")
    arrays = [a for a in arrays if a.size] or [np.zeros(0, dtype=np.float32)]
    fade = int(round(sample_rate * fade_ms / 1000.0))
    overlaps = [min(fade, len(a) // 2, len(b) // 2) for a, b in zip(arrays, arrays[1:])]

    out = np.empty(sum(len(a) for a in arrays) - sum(overlaps), dtype=np.float32)
    pos = 0  # where the next piece starts in `out`
    for i, piece in enumerate(arrays):
        overlap = overlaps[i - 1] if i > 0 else 0
        if overlap:
            fade_in = _fade_in(overlap)
            head = out[pos : pos + overlap]
            head *= 1.0 - fade_in
            head += piece[:overlap] * fade_in
        out[pos + overlap : pos + len(piece)] = piece[overlap:]
        pos += len(piece) - (overlaps[i] if i < len(overlaps) else 0)
    return out


def _fade_in(n: int) -> np.ndarray:
    """Raised-cosine gain rising from near 0 to near 1 over n samples (centred sampling)."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.sin(0.5 * np.pi * t).astype(np.float32) ** 2


def _as_mono_float32(piece: np.ndarray | torch.Tensor, index: int) -> np.ndarray:
    if isinstance(piece, torch.Tensor):
        piece = piece.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(piece, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"piece {index}: expected a 1-D waveform, got shape {array.shape}")
    return array
