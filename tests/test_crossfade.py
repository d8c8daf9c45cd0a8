"""Joining long-text pieces: length bookkeeping, click-free joints, short pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmtts_batch.glmtts.crossfade import join_with_crossfade

SR = 24000
FADE = 480  # 20 ms at 24 kHz


def _sine(n: int, hz: float, phase: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / SR + phase)).astype(np.float32)


def test_single_piece_is_unchanged() -> None:
    piece = _sine(1000, 220, 0.3)
    out = join_with_crossfade([piece], SR)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, piece)
    np.testing.assert_array_equal(join_with_crossfade([torch.from_numpy(piece)], SR), piece)


def test_length_is_sum_minus_overlaps() -> None:
    pieces = [_sine(n, 200, 0.0) for n in (5000, 3000, 7000, 2000)]
    out = join_with_crossfade(pieces, SR, fade_ms=20)
    assert len(out) == 17000 - 3 * FADE


def test_unfaded_parts_are_copied_exactly() -> None:
    a, b = _sine(4000, 180, 0.0), _sine(3000, 310, 1.0)
    out = join_with_crossfade([a, b], SR)
    np.testing.assert_array_equal(out[: 4000 - FADE], a[: 4000 - FADE])
    np.testing.assert_array_equal(out[4000:], b[FADE:])


def test_dc_pieces_join_with_a_smooth_ramp() -> None:
    out = join_with_crossfade([np.full(2000, 0.5, np.float32), np.full(2000, -0.5, np.float32)], SR)
    steps = np.diff(out)
    assert np.all(steps <= 1e-7)  # monotonic: a ramp, no overshoot
    assert np.abs(steps).max() < 2.0 / FADE  # no jump: the 1.0 drop is spread over the fade
    assert out[0] == 0.5 and out[-1] == -0.5


def test_joints_are_no_steeper_than_the_signals() -> None:
    # Same pitch, opposite phase: a plain concatenation would jump by up to twice the amplitude.
    a, b = _sine(3000, 220, 0.0), _sine(3000, 220, np.pi / 2 + 1.0)
    own_step = max(np.abs(np.diff(a)).max(), np.abs(np.diff(b)).max())
    out = join_with_crossfade([a, b], SR)
    assert np.abs(np.diff(out)).max() <= 1.2 * own_step
    naive = np.concatenate([a, b])
    assert np.abs(np.diff(naive)).max() > 3 * own_step  # what the crossfade avoids


def test_gains_sum_to_one_so_output_stays_in_range() -> None:
    rng = np.random.default_rng(0)
    pieces = [rng.uniform(-0.9, 0.9, n).astype(np.float32) for n in (900, 1500, 700)]
    out = join_with_crossfade(pieces, SR)
    assert np.abs(out).max() <= 0.9


def test_pieces_shorter_than_the_fade() -> None:
    long_a, short, long_b = _sine(1000, 200, 0.0), np.full(10, 0.25, np.float32), _sine(1000, 200, 2.0)
    out = join_with_crossfade([long_a, short, long_b], SR)
    # each joint overlaps by at most half of either neighbour: 5 samples here
    assert len(out) == 2010 - 2 * 5
    np.testing.assert_array_equal(out[:995], long_a[:995])
    np.testing.assert_array_equal(out[-995:], long_b[5:])
    tiny = join_with_crossfade([np.ones(1, np.float32), np.full(3, 2.0, np.float32)], SR)
    np.testing.assert_array_equal(tiny, [1.0, 2.0, 2.0, 2.0])  # 1 sample: nothing to overlap


def test_empty_pieces_are_skipped_and_zero_fade_concatenates() -> None:
    a, b = _sine(2000, 200, 0.0), _sine(1500, 300, 0.0)
    out = join_with_crossfade([a, np.zeros(0, np.float32), b], SR)
    assert len(out) == 3500 - FADE
    np.testing.assert_array_equal(join_with_crossfade([a, b], SR, fade_ms=0), np.concatenate([a, b]))


def test_invalid_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        join_with_crossfade([], SR)
    with pytest.raises(ValueError, match="1-D"):
        join_with_crossfade([np.zeros((2, 10), np.float32)], SR)
    with pytest.raises(ValueError, match="fade_ms"):
        join_with_crossfade([np.zeros(10, np.float32)], SR, fade_ms=-1)
