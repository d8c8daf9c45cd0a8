"""The vocoder registry: one entry per output rate, and every vocoder behind one interface."""

from __future__ import annotations

import pytest
import torch

from glmtts_batch.cli import run
from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.audio import MelExtractor
from glmtts_batch.glmtts.checkpoint import validate_checkpoint_dir
from glmtts_batch.glmtts.vocoder import SAMPLE_RATES, VOCODERS, vocoder_spec


def test_cli_offers_exactly_the_registered_rates():
    option = next(p for p in run.params if p.name == "sample_rate")
    assert list(option.type.choices) == [str(rate) for rate in SAMPLE_RATES] == ["24000", "32000"]


def test_unknown_rate_is_refused_by_registry_validation_and_mel(tiny_checkpoint):
    with pytest.raises(ValueError, match="22050.*24000, 32000"):
        vocoder_spec(22050)
    with pytest.raises(CheckpointError, match="22050"):
        validate_checkpoint_dir(tiny_checkpoint, sample_rate=22050)
    with pytest.raises(ValueError, match="22050"):
        MelExtractor(22050)


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_validation_requires_the_registered_vocoder_file(tiny_checkpoint, tmp_path, rate):
    import shutil

    copy = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (copy / VOCODERS[rate].checkpoint_file).unlink()
    with pytest.raises(CheckpointError, match=f"missing {VOCODERS[rate].name} vocoder"):
        validate_checkpoint_dir(copy, sample_rate=rate)
    other = next(r for r in SAMPLE_RATES if r != rate)
    validate_checkpoint_dir(copy, sample_rate=other)  # the other rate does not need it


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_each_vocoder_turns_a_batch_of_mels_into_samples_at_its_rate(tiny_checkpoint, rate):
    spec = vocoder_spec(rate)
    vocoder = spec.load(tiny_checkpoint / spec.checkpoint_file, torch.device("cpu"))
    assert vocoder.sample_rate == rate
    assert spec.mel.sample_rate == rate and rate // spec.mel.hop == 50  # the flow's 50 frames/s
    mel = torch.randn(3, 80, 9, generator=torch.Generator().manual_seed(0)) - 6
    wav = vocoder.vocode(mel, torch.Generator().manual_seed(1))
    assert wav.shape == (3, 9 * spec.mel.hop) and wav.dtype == torch.float32
    assert torch.isfinite(wav).all()
    # Rows do not mix: one mel alone gives its row of the batch (HiFT without its noise draws).
    if hasattr(vocoder, "inference"):
        batch = vocoder.inference(mel, zero_noise=True)
        single = vocoder.inference(mel[1:2], zero_noise=True)
    else:
        batch, single = wav, vocoder.vocode(mel[1:2])
    torch.testing.assert_close(single[0], batch[1], rtol=1e-4, atol=1e-5)
