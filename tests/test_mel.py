"""Prompt mel: parity with upstream `utils/audio.py: mel_spectrogram` at both output rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmtts_batch.glmtts.audio import MelExtractor, slaney_mel_basis
from glmtts_batch.glmtts.vocoder import vocoder_spec

ATOL = 1e-4  # golden README: fp32 vs fp64 differs by <= 7e-6 on values in [-11.5, 1.5]


def _golden(golden_dir, rate: int) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "mel" / f"mel_{rate // 1000}k.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("rate", [24000, 32000])
@pytest.mark.parametrize("variant", ["", "_silence_tail"])
def test_matches_upstream_golden(golden_dir, rate, variant):
    g = _golden(golden_dir, rate)
    mel = MelExtractor(rate)(torch.from_numpy(g["wav" + variant]))
    assert mel.shape == g["mel" + variant].shape == (1, 80, 80)
    assert mel.dtype == torch.float32
    np.testing.assert_allclose(mel.numpy(), g["mel" + variant], atol=ATOL, rtol=0)


def test_silence_tail_hits_the_log_floor(golden_dir):
    g = _golden(golden_dir, 24000)
    mel = MelExtractor(24000)(torch.from_numpy(g["wav_silence_tail"])).numpy()
    floor = np.log(1e-5)
    assert (
        np.count_nonzero(np.isclose(mel, floor, atol=1e-6))
        == np.count_nonzero(np.isclose(g["mel_silence_tail"], floor, atol=1e-6))
        > 0
    )


@pytest.mark.parametrize("order", [(24000, 32000), (32000, 24000)])
def test_both_rates_in_one_process_use_their_own_basis(golden_dir, order):
    # Upstream caches the basis under (fmax, device): the second rate silently reused
    # the first rate's basis. Interleave the rates on live extractors to rule that out.
    extractors = {rate: MelExtractor(rate) for rate in order}
    for _ in range(2):
        for rate in order:
            g = _golden(golden_dir, rate)
            out = extractors[rate](torch.from_numpy(g["wav"]))
            np.testing.assert_allclose(out.numpy(), g["mel"], atol=ATOL, rtol=0)
            out = MelExtractor(rate)(torch.from_numpy(g["wav"]))
            np.testing.assert_allclose(out.numpy(), g["mel"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("rate", [24000, 32000])
def test_mel_basis_equals_transformers_slaney_filterbank(rate):
    from transformers.audio_utils import mel_filter_bank

    s = vocoder_spec(rate).mel
    ours = slaney_mel_basis(rate, s.n_fft, 80, 0.0, 8000.0)
    ref = mel_filter_bank(s.n_fft // 2 + 1, 80, 0.0, 8000.0, rate, norm="slaney", mel_scale="slaney").T
    assert ours.shape == (80, s.n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-9)
    # fmax 8 kHz: every bin above it has no weight, at both rates.
    freqs = np.linspace(0, rate / 2, s.n_fft // 2 + 1)
    assert not ours[:, freqs > 8000.0].any()


@pytest.mark.parametrize("rate", [24000, 32000])
def test_fifty_frames_per_second(rate):
    wav = torch.randn(1, rate * 2, generator=torch.Generator().manual_seed(0)) * 0.1
    assert MelExtractor(rate)(wav).shape == (1, 80, 100)


def test_batch_items_are_independent():
    gen = torch.Generator().manual_seed(1)
    wav = torch.randn(3, 24000, generator=gen) * 0.2
    ex = MelExtractor(24000)
    batched = ex(wav)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], ex(wav[i : i + 1]), atol=1e-5, rtol=0)


def test_cache_is_per_dtype(golden_dir):
    g = _golden(golden_dir, 32000)
    ex = MelExtractor(32000)
    out32 = ex(torch.from_numpy(g["wav"]))
    out64 = ex(torch.from_numpy(g["wav"]).double())
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    np.testing.assert_allclose(out64.numpy(), g["mel"], atol=ATOL, rtol=0)
    assert set(ex._cache) == {("cpu", torch.float32), ("cpu", torch.float64)}


def test_prompt_mel_layout_is_frames_by_bins(golden_dir):
    g = _golden(golden_dir, 24000)
    mel = MelExtractor(24000).prompt_mel(g["wav"][0])
    assert mel.shape == (80, 80)
    np.testing.assert_allclose(mel.numpy(), g["mel"][0].T, atol=ATOL, rtol=0)


def test_rejects_unsupported_rate_and_bad_shapes():
    with pytest.raises(ValueError, match="22050"):
        MelExtractor(22050)
    ex = MelExtractor(24000)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        ex(torch.zeros(24000))
    with pytest.raises(ValueError, match="too short"):
        ex(torch.zeros(1, 100))
