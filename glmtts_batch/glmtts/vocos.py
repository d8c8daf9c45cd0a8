"""Vocos2D vocoder (32 kHz), shipped only as TorchScript (`vocos2d/generator_jit.ckpt`).

The released file is a scripted module taking a log-mel (B, T, 80) on its own mel scale and
returning samples (B, T * 640). Its architecture is not published, so this module only wraps
it and applies upstream's input convention (`utils/vocos_util.py`):

* the flow's mel (B, 80, T) is transposed to (B, T, 80) and offset by `MEL_LOG_OFFSET`
  (the two front ends' log-mels differ by that constant);
* a single-frame mel is duplicated to two frames first, as upstream does, and the output is
  returned untrimmed (two frames' worth of samples), also as upstream does.

Random checkpoints carry a small scripted stand-in with the same interface
(`checkpoint_writers.vocos2d`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from glmtts_batch.errors import CheckpointError

SAMPLE_RATE = 32000
HOP_LENGTH = 640  # samples per mel frame (50 frames/s)
N_MELS = 80
MEL_LOG_OFFSET = -7.847762537473608  # added to the flow's log-mel before the vocoder


class Vocos2D:
    """`Vocoder`: mel (B, 80, T) -> waveform (B, samples) at 32 kHz."""

    sample_rate = SAMPLE_RATE
    hop_length = HOP_LENGTH

    def __init__(self, module: torch.jit.ScriptModule, device: torch.device) -> None:
        self.module = module
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Vocos2D:
        """Load `vocos2d/generator_jit.ckpt`; TorchScript keeps its own dtype (float32)."""
        path = Path(path)
        device = torch.device(device)
        if not path.is_file():
            raise CheckpointError(f"{path}: Vocos2D TorchScript file not found")
        try:
            with torchscript_is_the_format():
                module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise CheckpointError(f"{path}: cannot be loaded as TorchScript ({exc})") from exc
        module.eval()
        return cls(module, device)

    @torch.inference_mode()
    def vocode(self, mel: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The `Vocoder` interface; Vocos2D draws no noise, so `generator` is unused."""
        if mel.dim() != 3 or mel.shape[1] != N_MELS:
            raise ValueError(f"Vocos2D expects a mel of shape (B, {N_MELS}, T), got {tuple(mel.shape)}")
        if mel.shape[-1] == 0:
            raise ValueError("Vocos2D got an empty mel (T = 0)")
        mel = mel.to(self.device, torch.float32)
        if mel.shape[-1] == 1:  # the network needs at least two frames
            mel = torch.cat([mel, mel], dim=-1)
        wav = self.module(mel.transpose(1, 2) + MEL_LOG_OFFSET)
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav.squeeze(1)
        return wav.float()


@contextmanager
def torchscript_is_the_format() -> Iterator[None]:
    """Silence torch's TorchScript deprecation notice: the released vocoder exists only as TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning)
        yield
