"""Every file `make-checkpoint` writes, read by the loading rules of the reference README
(../shared/glmtts-reference/README.md), with generic readers only: safetensors, torch.load,
torch.jit.load, onnxruntime, yaml, json. Nothing from this package reads them here, so a
writer and a loader of ours cannot agree on something the released files do not do."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from glmtts_batch.glmtts.text.tokenizer import SPECIAL_NAMES


def _tagless_yaml(text: str) -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_mapping(node))
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def test_file_list_is_the_released_layout(tiny_checkpoint: Path) -> None:
    written = {str(p.relative_to(tiny_checkpoint)) for p in tiny_checkpoint.rglob("*") if p.is_file()}
    assert written == {
        "RANDOM_WEIGHTS.json",
        "llm/config.json",
        "llm/generation_config.json",
        "llm/model.safetensors.index.json",
        "llm/model-00001-of-00002.safetensors",
        "llm/model-00002-of-00002.safetensors",
        "flow/config.yaml",
        "flow/flow.pt",
        "speech_tokenizer/config.json",
        "speech_tokenizer/preprocessor_config.json",
        "speech_tokenizer/model.safetensors",
        "vq32k-phoneme-tokenizer/tokenizer.model",
        "vq32k-phoneme-tokenizer/tokenizer_config.json",
        "hift/hift.pt",
        "vocos2d/generator_jit.ckpt",
        "frontend/campplus.onnx",
    }


def test_llm_is_fp32_llama_shards_with_tied_embeddings(tiny_checkpoint: Path, reference_dir: Path) -> None:
    llm = tiny_checkpoint / "llm"
    config = json.loads((llm / "config.json").read_text())
    released = json.loads((reference_dir / "llm" / "config.json").read_text())
    assert config.keys() == released.keys()
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    weight_map = json.loads((llm / "model.safetensors.index.json").read_text())["weight_map"]
    released_map = json.loads((reference_dir / "llm" / "model.safetensors.index.json").read_text())["weight_map"]
    layers = {k for k in released_map if not k.startswith("model.layers.")} | {
        k for k in released_map if k.startswith("model.layers.0.")
    }
    assert layers <= set(weight_map)  # every non-layer key and every per-layer key, by the released names
    assert not any(k.startswith("lm_head") for k in weight_map)
    for shard in set(weight_map.values()):
        with safe_open(str(llm / shard), "pt") as f:
            for key in f.keys():
                assert weight_map[key] == shard
                assert f.get_slice(key).get_dtype() == "F32"


def test_flow_pt_loads_by_upstreams_rule_and_config_has_the_readme_settings(tiny_checkpoint: Path) -> None:
    stored = torch.load(tiny_checkpoint / "flow" / "flow.pt", map_location="cpu", weights_only=True)
    # README: a raw state dict or {"model": state_dict}. Upstream indexes ["model"] whenever
    # torch.load returns a plain dict, so for a plain dict only the wrapped form loads there.
    state = stored["model"] if type(stored) is dict else stored
    assert type(stored) is not dict or set(stored) == {"model"}
    assert state and all(k.startswith("estimator.") and isinstance(v, torch.Tensor) for k, v in state.items())
    config = _tagless_yaml((tiny_checkpoint / "flow" / "config.yaml").read_text())["flow"]
    assert config == {
        "spkr_emb_adaLN": True,
        "speech_token_cfg": False,
        "remove_spkr_concat_condition": True,
        "mel_dim": 80,
        "mel_framerate": 50,
        "input_frame_rate": 25,
    }


def test_speech_tokenizer_files(tiny_checkpoint: Path, reference_dir: Path) -> None:
    folder = tiny_checkpoint / "speech_tokenizer"
    config = json.loads((folder / "config.json").read_text())
    assert config.keys() == json.loads((reference_dir / "speech_tokenizer" / "config.json").read_text()).keys()
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor == json.loads((reference_dir / "speech_tokenizer" / "preprocessor_config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        codebook = f.get_slice("model.encoder.codebook.weight").get_shape()
    assert all(k.startswith("model.encoder.") for k in keys)
    assert codebook == [config["quantize_vocab_size"], config["d_model"]]
    # the loader drops layer_norm.* and layers >= quantize_position: the file must hold them to test that
    assert "model.encoder.layer_norm.weight" in keys
    assert any(k.startswith(f"model.encoder.layers.{config['quantize_position']}.") for k in keys)


def test_text_tokenizer_is_tiktoken_ranks_plus_added_tokens(tiny_checkpoint: Path) -> None:
    folder = tiny_checkpoint / "vq32k-phoneme-tokenizer"
    ranks = {}
    for line in (folder / "tokenizer.model").read_text().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token, validate=True)] = int(rank)
    assert sorted(ranks.values()) == list(range(len(ranks)))
    decoder = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    by_content: dict[str, list[int]] = {}
    for token_id, entry in decoder.items():
        by_content.setdefault(entry["content"], []).append(int(token_id))
    for name, content in SPECIAL_NAMES.items():
        assert len(by_content.get(content, [])) == 1, f"{name} {content} must name exactly one id"
    audio = [by_content[f"<|audio_{k}|>"][0] for k in range(32768)]
    assert audio == list(range(audio[0], audio[0] + 32768))  # contiguous: ate = ats + 32767


def test_hift_pt_is_a_plain_state_dict_with_parametrization_names(tiny_checkpoint: Path) -> None:
    state = torch.load(tiny_checkpoint / "hift" / "hift.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and "model" not in state  # upstream calls load_state_dict on it directly
    assert "conv_pre.parametrizations.weight.original0" in state
    assert "f0_predictor.classifier.weight" in state and "m_source.l_linear.weight" in state


def test_vocos2d_is_torchscript_taking_frames_by_mels(tiny_checkpoint: Path) -> None:
    module = torch.jit.load(str(tiny_checkpoint / "vocos2d" / "generator_jit.ckpt"), map_location="cpu")
    with torch.inference_mode():
        wav = module(torch.randn(2, 7, 80) - 7.85)  # (B, T, 80) after the README's offset
    assert wav.shape == (2, 7 * 640)


def test_campplus_is_onnx_from_fbank_frames_to_192_floats(tiny_checkpoint: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(tiny_checkpoint / "frontend" / "campplus.onnx"), providers=["CPUExecutionProvider"]
    )
    first = session.get_inputs()[0]  # README: the first input, whatever its name
    out = session.run(None, {first.name: np.zeros((1, 57, 80), dtype=np.float32)})[0]
    assert np.asarray(out).reshape(-1).shape == (192,)


def test_campplus_bytes_equal_the_onnx_packages_model_of_the_same_graph() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from glmtts_batch.glmtts.checkpoint_writers.campplus import (
        IR_VERSION,
        OPSET,
        campplus_stand_in_bytes,
    )

    rng = np.random.default_rng(3)
    weights = {
        "w1": rng.standard_normal((80, 64)) / np.sqrt(80),
        "b1": 0.5 * rng.standard_normal(64),
        "w2": rng.standard_normal((64, 192)) / np.sqrt(64),
        "b2": 0.1 * rng.standard_normal(192),
    }
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("ReduceMean", ["h2"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w2"], ["p0"]),
        helper.make_node("Add", ["p0", "b2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "campplus_test",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", "T", 80])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", 192])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="glmtts-batch")
    model.ir_version = IR_VERSION
    ours = campplus_stand_in_bytes(seed=3)
    onnx.checker.check_model(onnx.ModelProto.FromString(ours))
    assert ours == model.SerializeToString()


def test_campplus_computes_the_documented_function(tmp_path: Path) -> None:
    """mean over time of ReLU(x W1 + b1), then W2, b2: recomputed here in numpy."""
    import onnxruntime as ort

    from glmtts_batch.glmtts.checkpoint_writers.campplus import write_random_campplus

    path = write_random_campplus(tmp_path / "campplus.onnx", seed=5)
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((80, 64)) / np.sqrt(80)).astype(np.float32)
    b1 = (0.5 * rng.standard_normal(64)).astype(np.float32)
    w2 = (rng.standard_normal((64, 192)) / np.sqrt(64)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(192)).astype(np.float32)
    x = np.random.default_rng(0).standard_normal((2, 31, 80)).astype(np.float32)
    expected = np.maximum(x @ w1 + b1, 0).mean(axis=1) @ w2 + b2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-5)
