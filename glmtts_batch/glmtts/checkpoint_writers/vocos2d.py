"""A scripted stand-in for `vocos2d/generator_jit.ckpt`, at every preset.

The real Vocos2D architecture is not published (only its TorchScript file is), so random
checkpoints carry a small network with the same interface, (B, T, 80) -> (B, T * 640),
not a 60 MB rebuild.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from glmtts_batch.glmtts.vocos import HOP_LENGTH, N_MELS, torchscript_is_the_format


class _StandInVocoder(nn.Module):
    """Stand-in with Vocos2D's interface: each frame -> 640 samples through a tiny MLP."""

    def __init__(self, hop: int = HOP_LENGTH, hidden: int = 32) -> None:
        super().__init__()
        self.hop = hop
        self.proj = nn.Linear(N_MELS, hidden)
        self.out = nn.Linear(hidden, hop)

    def forward(self, mel: Tensor) -> Tensor:  # (B, T, 80) -> (B, T * hop)
        frames = self.out(torch.tanh(self.proj(mel)))
        return (0.5 * torch.tanh(frames)).reshape(mel.shape[0], mel.shape[1] * self.hop)


def write_random_vocos2d(path: str | Path, seed: int = 0) -> Path:
    """Write a scripted stand-in for `generator_jit.ckpt`: (B, T, 80) -> (B, T * 640)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        module = _StandInVocoder()
    gen = torch.Generator().manual_seed(seed)
    state = {
        name: torch.randn(tuple(t.shape), generator=gen) * (0.3 if name.endswith("bias") else 1 / t.shape[-1] ** 0.5)
        for name, t in module.state_dict().items()
    }
    module.load_state_dict(state, assign=True)
    with torchscript_is_the_format():
        scripted = torch.jit.script(module.eval())
    scripted.save(str(path))
    return path
