"""Random HiFT weights in the released `hift/hift.pt` layout (a plain state dict)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from glmtts_batch.glmtts.hift import HiFT, HiFTConfig


def random_hift_state_dict(config: HiFTConfig, seed: int = 0) -> dict[str, Tensor]:
    """Random weights in the released key layout, scaled so the output is a finite, audible signal.

    Weight-norm magnitudes g are drawn independently of |v| (so a loader must use both),
    Snake alphas around 1, and the F0 head is biased to a speech-like 80-200 Hz.
    """
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in HiFT(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: tuple[int, ...], std: float = 1.0, mean: float = 0.0) -> Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    state: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith(".original1"):  # v: direction only
            value = normal(shape)
        elif key.endswith(".original0"):  # g: per-channel gain near 1 (unit-norm filters keep variance)
            value = torch.exp(normal(shape, 0.1))
            if key.startswith("conv_post."):
                value *= 0.25  # log-magnitudes with std ~1: exp() stays tame
        elif key.endswith(".alpha"):
            value = torch.exp(normal(shape, 0.3))
        elif key == "f0_predictor.classifier.weight":
            value = normal(shape, 20.0 / math.sqrt(shape[1]))
        elif key == "f0_predictor.classifier.bias":
            value = torch.full(shape, 140.0)
        elif key == "conv_post.bias":
            value = normal(shape, 0.1)
            value[: config.n_fft // 2 + 1] -= 3.0  # quiet magnitudes: output well inside the clamp
        elif key.endswith(".bias"):
            value = normal(shape, 0.05)
        else:  # plain conv / linear weights: N(0, 1 / fan_in)
            fan_in = math.prod(shape[1:])
            value = normal(shape, 1.0 / math.sqrt(fan_in))
        state[key] = value.contiguous()
    return state


def write_random_hift(path: str | Path, config: HiFTConfig, seed: int = 0) -> Path:
    """Write `hift.pt` (a plain state dict, as released) with random weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_hift_state_dict(config, seed), path)
    return path
