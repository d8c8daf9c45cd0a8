"""Vocos2D wrapper: upstream's input convention around a TorchScript vocoder."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.checkpoint_writers.vocos2d import write_random_vocos2d
from glmtts_batch.glmtts.vocos import (
    HOP_LENGTH,
    MEL_LOG_OFFSET,
    Vocos2D,
)


class _Echo(nn.Module):
    """Returns its input: each (T, 80) frame tiled to 640 samples, so the output shows the input."""

    def forward(self, mel: Tensor) -> Tensor:  # (B, T, 80) -> (B, T * 640)
        return mel.repeat(1, 1, 8).reshape(mel.shape[0], mel.shape[1] * 640)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Vocos2D:
    path = tmp_path_factory.mktemp("vocos") / "echo.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the released format
        torch.jit.script(_Echo()).save(str(path))
    return Vocos2D.from_checkpoint(path, "cpu")


def _mel(batch: int, frames: int) -> Tensor:
    # distinct values per (batch, bin, frame), so a transposition error cannot go unnoticed
    return torch.arange(batch * 80 * frames, dtype=torch.float32).reshape(batch, 80, frames) / 1000 - 5


def test_offset_is_the_reference_value(reference_dir: Path) -> None:
    text = (reference_dir / "README.md").read_text()
    quoted = re.search(r"plus\s+(-\d+\.\d+)", text)
    assert quoted is not None
    assert MEL_LOG_OFFSET == float(quoted.group(1))


def test_input_is_transposed_and_offset(echo: Vocos2D) -> None:
    mel = _mel(2, 5)
    wav = echo.vocode(mel)
    assert wav.shape == (2, 5 * HOP_LENGTH)
    seen = wav.reshape(2, 5, 8, 80)[:, :, 0]  # what the network received, (B, T, 80)
    assert torch.allclose(seen, mel.transpose(1, 2) + MEL_LOG_OFFSET)


def test_single_frame_is_duplicated(echo: Vocos2D) -> None:
    mel = _mel(1, 1)
    wav = echo.vocode(mel)
    assert wav.shape == (1, 2 * HOP_LENGTH)  # as upstream: not trimmed back to one frame
    seen = wav.reshape(1, 2, 8, 80)[:, :, 0]
    assert torch.allclose(seen[:, 0], mel[:, :, 0] + MEL_LOG_OFFSET)
    assert torch.equal(seen[:, 0], seen[:, 1])


def test_stand_in_vocoder_interface_and_determinism(tmp_path: Path) -> None:
    a = Vocos2D.from_checkpoint(write_random_vocos2d(tmp_path / "a" / "generator_jit.ckpt", seed=0))
    b = Vocos2D.from_checkpoint(write_random_vocos2d(tmp_path / "b" / "generator_jit.ckpt", seed=0))
    c = Vocos2D.from_checkpoint(write_random_vocos2d(tmp_path / "c" / "generator_jit.ckpt", seed=1))
    mel = torch.randn(2, 80, 7, generator=torch.Generator().manual_seed(0)) * 2 - 6
    wav = a.vocode(mel)
    assert wav.shape == (2, 7 * HOP_LENGTH)
    assert wav.dtype == torch.float32
    assert torch.isfinite(wav).all() and wav.abs().max() <= 1.0 and wav.std() > 1e-3
    assert torch.equal(wav, b.vocode(mel))
    assert not torch.equal(wav, c.vocode(mel))


def test_stand_in_vocoder_is_torchscript(tmp_path: Path) -> None:
    path = write_random_vocos2d(tmp_path / "generator_jit.ckpt")
    assert isinstance(Vocos2D.from_checkpoint(path).module, torch.jit.ScriptModule)


def test_rejects_a_mel_of_the_wrong_shape(echo: Vocos2D) -> None:
    with pytest.raises(ValueError, match=r"\(B, 80, T\)"):
        echo.vocode(torch.zeros(1, 5, 80))
    with pytest.raises(ValueError, match="empty"):
        echo.vocode(torch.zeros(1, 80, 0))


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        Vocos2D.from_checkpoint(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        Vocos2D.from_checkpoint(bad)
