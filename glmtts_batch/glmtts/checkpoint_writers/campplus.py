"""A small random ONNX model with CAM++'s interface, written without the `onnx` package.

`onnx` is 31 MB installed and only ever needed here, for a six-node graph, so
`glmtts-batch make-checkpoint` writes the ONNX protobuf itself: the handful of message
types below, in protobuf's wire format (field numbers from onnx/onnx.proto), fields in
field-number order as protobuf serialises them. The test suite checks the bytes against
`onnx.helper`'s model of the same graph and runs them in onnxruntime.

Model: input "input" float (B, T, 80), T dynamic; output "output" float (B, 192);
`mean over time of ReLU(x W1 + b1)`, then a linear map to 192. It depends on the input
nonlinearly, so different audio gives different embeddings even after the fbank mean has
been removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from glmtts_batch.glmtts.speaker import EMBEDDING_DIM, NUM_MEL_BINS

# Opset 17 / IR 8 load in every onnxruntime the project supports (>= 1.17); from opset 18
# on, ReduceMean takes its axes as an input instead of an attribute.
OPSET = 17
IR_VERSION = 8
_FLOAT = 1  # TensorProto.DataType.FLOAT
_ATTRIBUTE_INT, _ATTRIBUTE_INTS = 2, 7  # AttributeProto.AttributeType


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 two's complement, as protobuf encodes it
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, array: np.ndarray) -> bytes:  # TensorProto
    dims = b"".join(_int(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return dims + _int(2, _FLOAT) + _bytes(8, name) + _bytes(9, raw)


def _value_info(name: str, shape: list[int | str]) -> bytes:  # ValueInfoProto of a float tensor
    dims = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in shape)
    tensor_type = _int(1, _FLOAT) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op_type: str, inputs: list[str], outputs: list[str], *attributes: bytes) -> bytes:  # NodeProto
    fields = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    return fields + _bytes(4, op_type) + b"".join(_bytes(5, a) for a in attributes)


def _ints_attribute(name: str, values: list[int]) -> bytes:  # AttributeProto
    return _bytes(1, name) + b"".join(_int(8, v) for v in values) + _int(20, _ATTRIBUTE_INTS)


def _int_attribute(name: str, value: int) -> bytes:
    return _bytes(1, name) + _int(3, value) + _int(20, _ATTRIBUTE_INT)


def campplus_stand_in_bytes(seed: int = 0, *, hidden: int = 64) -> bytes:
    """The serialised ModelProto of the stand-in (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((NUM_MEL_BINS, hidden)) / np.sqrt(NUM_MEL_BINS),
        "b1": 0.5 * rng.standard_normal(hidden),
        "w2": rng.standard_normal((hidden, EMBEDDING_DIM)) / np.sqrt(hidden),
        "b2": 0.1 * rng.standard_normal(EMBEDDING_DIM),
    }
    nodes = [
        _node("MatMul", ["input", "w1"], ["h0"]),
        _node("Add", ["h0", "b1"], ["h1"]),
        _node("Relu", ["h1"], ["h2"]),
        _node("ReduceMean", ["h2"], ["pooled"], _ints_attribute("axes", [1]), _int_attribute("keepdims", 0)),
        _node("MatMul", ["pooled", "w2"], ["p0"]),
        _node("Add", ["p0", "b2"], ["output"]),
    ]
    graph = (
        b"".join(_bytes(1, n) for n in nodes)
        + _bytes(2, "campplus_test")
        + b"".join(_bytes(5, _tensor(name, value.astype(np.float32))) for name, value in weights.items())
        + _bytes(11, _value_info("input", ["B", "T", NUM_MEL_BINS]))
        + _bytes(12, _value_info("output", ["B", EMBEDDING_DIM]))
    )
    opset = _bytes(1, "") + _int(2, OPSET)  # OperatorSetIdProto, default domain
    return _int(1, IR_VERSION) + _bytes(2, "glmtts-batch") + _bytes(7, graph) + _bytes(8, opset)


def write_random_campplus(path: str | Path, seed: int = 0, *, hidden: int = 64) -> Path:
    """Write the stand-in `campplus.onnx` (via a temporary file, so never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(campplus_stand_in_bytes(seed, hidden=hidden))
    os.replace(tmp, path)
    return path
