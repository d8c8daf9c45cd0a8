"""Streaming safetensors writer: random checkpoints of the real shapes in bounded memory."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def write_safetensors_stream(
    path: str | Path,
    entries: Sequence[tuple[str, tuple[int, ...]]],
    make: Callable[[str, tuple[int, ...]], torch.Tensor],
) -> int:
    """Write float32 tensors to a safetensors file one at a time; returns the data bytes.

    Random checkpoints of the real shapes are several GB: generating and writing each
    tensor in turn keeps peak memory at one tensor. The header comes first (u64 length,
    JSON padded to 8 bytes, as the format wants), so every shape is declared up front and
    `make(name, shape)` must return exactly that shape. Written via a temporary file.
    """
    path = Path(path)
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in entries:
            tensor = make(name, shape)
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != torch.float32:
                raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, expected {tuple(shape)} float32")
            f.write(tensor.contiguous().numpy().data.cast("B"))
    os.replace(tmp, path)
    return offset
