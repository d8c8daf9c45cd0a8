"""Random-weight `llm/` folders in the released layout (config, sharded safetensors, index)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from glmtts_batch.glmtts.checkpoint_writers.safetensors_stream import (
    write_safetensors_stream,
)
from glmtts_batch.glmtts.llm import TRANSFORMERS_VERSION, LlmConfig

# The released checkpoint was saved by transformers' `save_pretrained` with its default
# 5 GB shard limit; reproducing it gives exactly the released weight map.
HF_MAX_SHARD_BYTES = 5_000_000_000


def llm_tensor_shapes(config: LlmConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Released key names and shapes, in the order `save_pretrained` writes them."""
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    q, ff = config.num_attention_heads * config.head_dim, config.intermediate_size
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (config.vocab_size, h))]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "mlp.gate_proj.weight", (ff, h)),
            (p + "mlp.up_proj.weight", (ff, h)),
            (p + "mlp.down_proj.weight", (h, ff)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    shapes.append(("model.norm.weight", (h,)))
    return shapes


def plan_llm_shards(config: LlmConfig, num_shards: int = 2) -> list[list[str]]:
    """Which keys go in which shard, in `save_pretrained` order.

    The full preset in two shards uses transformers' 5 GB greedy rule, which reproduces
    the released weight map exactly. Otherwise keys are cut into `num_shards` contiguous
    runs of about equal bytes (fewer if one tensor dominates).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    shapes = llm_tensor_shapes(config)
    sizes = [4 * math.prod(shape) for _, shape in shapes]  # float32
    total = sum(sizes)
    shards: list[list[str]] = []
    if config == LlmConfig.full(config.vocab_size) and num_shards == 2 and total > HF_MAX_SHARD_BYTES:
        current = 0
        for (name, _), size in zip(shapes, sizes):
            if not shards or current + size > HF_MAX_SHARD_BYTES:
                shards.append([])
                current = 0
            shards[-1].append(name)
            current += size
        return shards
    before = 0
    assignment: dict[int, list[str]] = {}
    for (name, _), size in zip(shapes, sizes):
        assignment.setdefault(min(num_shards - 1, before * num_shards // total), []).append(name)
        before += size
    return [assignment[k] for k in sorted(assignment)]


def iter_random_llm_tensors(config: LlmConfig, seed: int) -> Iterator[tuple[str, Tensor]]:
    """Random float32 weights in `save_pretrained` order: N(0, 0.02) matrices, unit norms.

    One generator walks the keys in order, so the values depend only on (config, seed),
    and only one tensor exists at a time.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, shape in llm_tensor_shapes(config):
        if len(shape) == 1:
            yield name, torch.ones(shape)
        else:
            yield name, torch.randn(shape, generator=generator).mul_(0.02)


def write_random_llm(directory: str | Path, config: LlmConfig, seed: int = 0, num_shards: int = 2) -> Path:
    """Write a random-weight `llm/` folder in the released layout and return it.

    config.json, generation_config.json, `model-0000K-of-0000N.safetensors` shards and
    `model.safetensors.index.json`; float32, tied embeddings, no lm_head key. Tensors are
    generated and streamed to disk one at a time, so even the full preset (6.2 GB) never
    holds more than its largest tensor in memory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan = plan_llm_shards(config, num_shards)
    shapes = dict(llm_tensor_shapes(config))
    (directory / "config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")
    generation: dict[str, object] = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2}
    generation["transformers_version"] = TRANSFORMERS_VERSION
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")

    tensors = iter_random_llm_tensors(config, seed)
    weight_map: dict[str, str] = {}
    total = 0
    for k, names in enumerate(plan, start=1):
        shard = f"model-{k:05d}-of-{len(plan):05d}.safetensors"
        total += write_safetensors_stream(directory / shard, [(n, shapes[n]) for n in names], _next_of(tensors))
        weight_map.update({n: shard for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return directory


def _next_of(tensors: Iterator[tuple[str, Tensor]]) -> Callable[[str, tuple[int, ...]], Tensor]:
    """Adapt a stream of (name, tensor) to `write_safetensors_stream`'s `make`, checking order."""

    def make(name: str, shape: tuple[int, ...]) -> Tensor:
        got, tensor = next(tensors)
        if got != name:
            raise RuntimeError(f"tensor stream out of order: expected {name}, got {got}")
        return tensor

    return make
