"""Random flow weights (`flow/flow.pt`) and the released `flow/config.yaml`."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from glmtts_batch.glmtts.dit import DiT, DiTConfig

# The released `flow/config.yaml`, verbatim.
RELEASED_CONFIG_YAML = """flow: !new:flow.flow.Flow
    spkr_emb_adaLN: True
    speech_token_cfg: False
    remove_spkr_concat_condition: True
    mel_dim: 80
    mel_framerate: 50
    input_frame_rate: 25"""


def write_flow_config(directory: str | Path) -> Path:
    """Write the released `config.yaml` into `directory` (created if needed); returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(RELEASED_CONFIG_YAML, encoding="utf-8")
    return path


def _random_tensor(name: str, shape: torch.Size, config: DiTConfig, g: torch.Generator) -> Tensor:
    """Weights that keep activations in a sane range: N(0, 1/fan_in) matrices, small biases."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("rotary_embed.inv_freq"):
        d = config.dim_head
        return 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    if name.endswith("text_embed.weight"):
        return torch.randn(shape, generator=g)
    if ".norm." in name:  # ConvNeXt LayerNorm affine
        return (1.0 if leaf == "weight" else 0.0) + 0.1 * torch.randn(shape, generator=g)
    if leaf in ("gamma", "beta"):  # GRN (upstream zero-inits; non-zero so it is exercised)
        return 0.1 * torch.randn(shape, generator=g)
    if leaf == "bias":
        return 0.02 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


def random_flow_state_dict(config: DiTConfig, seed: int = 0) -> dict[str, Tensor]:
    """Random float32 weights in exactly the released key layout (`estimator.*`)."""
    with torch.device("meta"):
        shapes = {f"estimator.{k}": v.shape for k, v in DiT(config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    return {name: _random_tensor(name, shape, config, g).float().contiguous() for name, shape in shapes.items()}


def write_random_flow(directory: str | Path, config: DiTConfig, seed: int = 0) -> Path:
    """Write a random `flow.pt` and the released `config.yaml` into `directory`; returns `flow.pt`.

    `flow.pt` holds `{"model": state_dict}`: upstream's `load_flow_model` takes
    `tmp["model"]` from any plain dict it loads, so a bare state dict (itself a plain dict
    once `torch.load` returns it) would not load there. `FlowDecoder.from_checkpoint` reads both.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ckpt = directory / "flow.pt"
    torch.save({"model": random_flow_state_dict(config, seed)}, ckpt)
    write_flow_config(directory)
    return ckpt
