"""Vocos2D vocoder (32 kHz), shipped only as TorchScript (`vocos2d/generator_jit.ckpt`).

The released file is a scripted module taking a log-mel (B, T, 80) on its own mel scale and
returning samples (B, T * 640). Its architecture is not published, so this module only wraps
it and applies upstream's input convention (`utils/vocos_util.py`):

* the flow's mel (B, 80, T) is transposed to (B, T, 80) and offset by `MEL_LOG_OFFSET`
  (the two front ends' log-mels differ by that constant);
* a single-frame mel is duplicated to two frames first, as upstream does, and the output is
  returned untrimmed (two frames' worth of samples), also as upstream does.

`write_test_vocos` writes a small scripted stand-in with the same interface, used for test
checkpoints at every preset: the real Vocos2D cannot be rebuilt here, so a "full" random
checkpoint carries this stand-in too, not a 60 MB network.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from glmtts_batch.errors import CheckpointError

SAMPLE_RATE = 32000
HOP_LENGTH = 640  # samples per mel frame (50 frames/s)
N_MELS = 80
MEL_LOG_OFFSET = -7.847762537473608  # added to the flow's log-mel before the vocoder


class Vocos2D:
    """Callable wrapper: mel (B, 80, T) -> waveform (B, samples) at 32 kHz."""

    sample_rate = SAMPLE_RATE
    hop_length = HOP_LENGTH

    def __init__(self, module: torch.jit.ScriptModule, device: torch.device) -> None:
        self.module = module
        self.device = device

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Vocos2D:
        path = Path(path)
        device = torch.device(device)
        if not path.is_file():
            raise CheckpointError(f"{path}: Vocos2D TorchScript file not found")
        try:
            with _torchscript_is_the_format():
                module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise CheckpointError(f"{path}: cannot be loaded as TorchScript ({exc})") from exc
        module.eval()
        return cls(module, device)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Vocos2D:
        """The package-wide loader signature; TorchScript keeps its own dtype (fp32)."""
        if dtype not in (None, torch.float32):
            raise CheckpointError(f"{path}: Vocos2D runs in float32 only (asked for {dtype})")
        return cls.load(path, device)

    @torch.inference_mode()
    def __call__(self, mel: Tensor) -> Tensor:
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


class _TestVocoder(nn.Module):
    """Stand-in with Vocos2D's interface: each frame -> 640 samples through a tiny MLP."""

    def __init__(self, hop: int = HOP_LENGTH, hidden: int = 32) -> None:
        super().__init__()
        self.hop = hop
        self.proj = nn.Linear(N_MELS, hidden)
        self.out = nn.Linear(hidden, hop)

    def forward(self, mel: Tensor) -> Tensor:  # (B, T, 80) -> (B, T * hop)
        frames = self.out(torch.tanh(self.proj(mel)))
        return (0.5 * torch.tanh(frames)).reshape(mel.shape[0], mel.shape[1] * self.hop)


def write_test_vocos(path: str | Path, seed: int = 0) -> Path:
    """Write a scripted stand-in for `generator_jit.ckpt`: (B, T, 80) -> (B, T * 640)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        module = _TestVocoder()
    gen = torch.Generator().manual_seed(seed)
    state = {
        name: torch.randn(tuple(t.shape), generator=gen) * (0.3 if name.endswith("bias") else 1 / t.shape[-1] ** 0.5)
        for name, t in module.state_dict().items()
    }
    module.load_state_dict(state, assign=True)
    with _torchscript_is_the_format():
        scripted = torch.jit.script(module.eval())
    scripted.save(str(path))
    return path


@contextmanager
def _torchscript_is_the_format() -> Iterator[None]:
    """Silence torch's TorchScript deprecation notice: the released vocoder exists only as TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning)
        yield
