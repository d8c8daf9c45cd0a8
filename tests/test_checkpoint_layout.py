"""Checkpoint folder validation: every problem reported at once, before large files are read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.checkpoint import validate_checkpoint_dir


def _write_minimal_folder(root: Path) -> None:
    """Small stand-ins for every file, valid at the level the validator checks (headers, JSON)."""
    (root / "llm").mkdir(parents=True)
    (root / "llm" / "config.json").write_text(json.dumps({"hidden_size": 8, "vocab_size": 16}))
    save_file({"model.embed_tokens.weight": torch.zeros(16, 8)}, str(root / "llm" / "model-00001-of-00002.safetensors"))
    save_file({"model.norm.weight": torch.zeros(8)}, str(root / "llm" / "model-00002-of-00002.safetensors"))
    index = {
        "metadata": {},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors",
        },
    }
    (root / "llm" / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "flow").mkdir()
    (root / "flow" / "config.yaml").write_text("flow: !new:flow.flow.Flow\n    mel_dim: 80\n")
    torch.save({"estimator.x": torch.zeros(1)}, root / "flow" / "flow.pt")
    (root / "speech_tokenizer").mkdir()
    (root / "speech_tokenizer" / "config.json").write_text(json.dumps({"d_model": 8, "quantize_position": 1}))
    (root / "speech_tokenizer" / "preprocessor_config.json").write_text(json.dumps({"feature_size": 128}))
    save_file({"model.encoder.conv1.weight": torch.zeros(2)}, str(root / "speech_tokenizer" / "model.safetensors"))
    (root / "vq32k-phoneme-tokenizer").mkdir()
    (root / "vq32k-phoneme-tokenizer" / "tokenizer.model").write_text("IQ== 0\n")
    (root / "vq32k-phoneme-tokenizer" / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {}}))
    (root / "hift").mkdir()
    torch.save({"conv_pre.bias": torch.zeros(1)}, root / "hift" / "hift.pt")
    (root / "frontend").mkdir()
    (root / "frontend" / "campplus.onnx").write_bytes(b"onnx-bytes")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    _write_minimal_folder(root)
    return root


def test_complete_folder_validates_and_resolves_paths(folder: Path) -> None:
    layout = validate_checkpoint_dir(folder)
    assert layout.llm_dir == folder / "llm" and layout.vocoder_weights(24000) == folder / "hift" / "hift.pt"
    assert layout.campplus == folder / "frontend" / "campplus.onnx"
    assert len(layout.fingerprint()) == 16


def test_missing_folder_says_how_to_download(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="huggingface-cli download zai-org/GLM-TTS"):
        validate_checkpoint_dir(tmp_path / "nope")


def test_every_problem_is_listed_in_one_message(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as info:
        validate_checkpoint_dir(tmp_path / "empty")
    message = str(info.value)
    for expected in (
        "llm/config.json",
        "llm/model.safetensors.index.json",
        "flow/config.yaml",
        "flow/flow.pt",
        "speech_tokenizer/model.safetensors",
        "vq32k-phoneme-tokenizer/tokenizer.model",
        "hift/hift.pt",
        "frontend/campplus.onnx",
    ):
        assert expected in message
    assert "from the GitHub repository zai-org/GLM-TTS" in message


def test_truncated_shard_and_malformed_json_are_reported_together(folder: Path) -> None:
    shard = folder / "llm" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])
    (folder / "speech_tokenizer" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as info:
        validate_checkpoint_dir(folder)
    message = str(info.value)
    assert "truncated safetensors file" in message and "model-00002-of-00002" in message
    assert "malformed JSON" in message and "speech_tokenizer/config.json" in message


def test_index_listing_a_key_the_shard_lacks(folder: Path) -> None:
    index_path = folder / "llm" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lacks keys its index lists: lm_head.weight"):
        validate_checkpoint_dir(folder)


def test_flow_weights_that_are_not_a_torch_archive(folder: Path) -> None:
    (folder / "flow" / "flow.pt").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(CheckpointError, match="flow.pt: not a torch archive"):
        validate_checkpoint_dir(folder)


def test_campplus_can_be_given_separately(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "campplus.onnx"
    (folder / "frontend" / "campplus.onnx").rename(elsewhere)
    with pytest.raises(CheckpointError, match="CAM\\+\\+ speaker encoder"):
        validate_checkpoint_dir(folder)
    assert validate_checkpoint_dir(folder, campplus=elsewhere).campplus == elsewhere


def test_32k_needs_the_vocos_script_not_hift(folder: Path) -> None:
    with pytest.raises(CheckpointError, match="vocos2d/generator_jit.ckpt"):
        validate_checkpoint_dir(folder, sample_rate=32000)
    (folder / "hift" / "hift.pt").unlink()
    (folder / "vocos2d").mkdir()
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(folder / "vocos2d" / "generator_jit.ckpt"))
    assert validate_checkpoint_dir(folder, sample_rate=32000).vocoder_weights(32000).name == "generator_jit.ckpt"


def test_unsupported_sample_rate(folder: Path) -> None:
    with pytest.raises(CheckpointError, match="unsupported sample rate 16000"):
        validate_checkpoint_dir(folder, sample_rate=16000)


def test_fingerprint_changes_when_a_config_changes(folder: Path) -> None:
    before = validate_checkpoint_dir(folder).fingerprint()
    (folder / "llm" / "config.json").write_text(json.dumps({"hidden_size": 8, "vocab_size": 17}))
    assert validate_checkpoint_dir(folder).fingerprint() != before


def test_fingerprint_follows_the_weights_not_the_folder_name(folder: Path, tmp_path: Path) -> None:
    import os
    import shutil

    before = validate_checkpoint_dir(folder).fingerprint()
    renamed = tmp_path / "another-name"
    shutil.copytree(folder, renamed, copy_function=shutil.copy2)  # copy2 keeps modification times
    assert validate_checkpoint_dir(renamed).fingerprint() == before

    # same size, new weights (a fine-tune or re-download): a new identity
    weights = renamed / "flow" / "flow.pt"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert validate_checkpoint_dir(renamed).fingerprint() != before
