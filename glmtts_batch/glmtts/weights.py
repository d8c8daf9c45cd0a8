"""Reading state dicts and loading them into modules without a second host copy.

Modules are built on the meta device (no memory), then `load_state_dict(assign=True)`
adopts the tensors read from disk, which were read straight onto the target device
(safetensors) or memory-mapped (torch.load(mmap=True)). No second private copy is ever
made: an fp32 CPU load keeps the weights as clean, memory-mapped file pages (measured on
the full-shape checkpoint: 0.02 GiB RSS growth to load the 5.8 GiB LLM, one file-backed
copy once every weight has been read). Converting dtype or device reads the mapped pages,
which count as (reclaimable) resident file cache until a shard's last tensor is converted;
see bench/RESULTS.md.

Convention for model modules in this package: no non-persistent buffers. Anything not
in the checkpoint is computed in `forward` (or cached per device in a plain attribute),
so a module built on meta is complete once its state dict is assigned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from glmtts_batch.errors import CheckpointError

M = TypeVar("M", bound=nn.Module)


def read_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a `.safetensors` file, a sharded safetensors index, or a torch `.pt` file.

    A torch file may hold a raw state dict or `{"model": state_dict}` (upstream's
    wrapper). Torch files are memory-mapped and loaded with `weights_only=True`.
    """
    path = Path(path)
    device = torch.device(device)
    if path.name.endswith(".safetensors.index.json"):
        return _read_sharded_safetensors(path, device)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(device))
    try:
        obj = torch.load(path, map_location=device, mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"{path}: cannot be read as a torch state dict ({exc})") from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or {{'model': state_dict}})")
    return dict(obj)


def _read_sharded_safetensors(index_path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{index_path}: not a safetensors index ({exc})") from exc
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        part = load_file(str(index_path.parent / shard), device=str(device))
        state.update(part)
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index_path}: keys listed in the index but absent from the shards: {missing[:10]}")
    return state


def check_keys(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    where: str,
    ignore: Callable[[str], bool] | None = None,
) -> None:
    """Strict key and shape matching with an error that names every offending key."""
    expected = module.state_dict(keep_vars=True)
    given = {k: v for k, v in state_dict.items() if not (ignore and ignore(k))}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems: list[str] = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise CheckpointError(f"{where}: " + " | ".join(problems))


def load_module(
    build: Callable[[], M],
    state_dict: Mapping[str, torch.Tensor],
    *,
    where: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    ignore: Callable[[str], bool] | None = None,
) -> M:
    """Build a module on meta, check keys strictly, and adopt the given tensors.

    `dtype` converts floating-point tensors only (token ids, counters stay as they are).
    The caller's dict keeps its tensors, so a dtype or device change here briefly holds
    both copies: large models should be read onto the target device and converted one
    tensor at a time before calling (as `llm.SpeechLM.from_checkpoint` does).
    """
    device = torch.device(device)
    with torch.device("meta"):
        module = build()
    check_keys(module, state_dict, where=where, ignore=ignore)
    tensors = {}
    for key, value in state_dict.items():
        if ignore and ignore(key):
            continue
        if dtype is not None and value.is_floating_point():
            value = value.to(device=device, dtype=dtype)
        else:
            value = value.to(device=device)
        tensors[key] = value
    module.load_state_dict(tensors, strict=True, assign=True)
    leftover = [name for name, t in _named_tensors(module) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{where}: module has tensors not covered by the checkpoint: {leftover}")
    return module.eval().requires_grad_(False)


def _named_tensors(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()
