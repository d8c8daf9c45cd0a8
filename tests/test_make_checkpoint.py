"""Random-weight checkpoints: the released folder layout and key names, one consistent
vocabulary across the parts, and determinism for a seed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from glmtts_batch.cli import main
from glmtts_batch.errors import RunError
from glmtts_batch.glmtts.checkpoint import validate_checkpoint_dir
from glmtts_batch.glmtts.make_checkpoint import build_random_checkpoint
from glmtts_batch.glmtts.speaker import SpeakerEncoder
from glmtts_batch.glmtts.text.tokenizer import N_AUDIO_TOKENS, TextTokenizer
from glmtts_batch.glmtts.vocos import Vocos2D

REPO = Path(__file__).resolve().parents[1]
LLM_SHARDS = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sample_rate", [24000, 32000])
def test_tiny_checkpoint_passes_folder_validation(tiny_checkpoint, sample_rate):
    layout = validate_checkpoint_dir(tiny_checkpoint, sample_rate=sample_rate)
    assert layout.root == tiny_checkpoint
    assert json.loads((tiny_checkpoint / "RANDOM_WEIGHTS.json").read_text())["preset"] == "tiny"


def test_llm_is_an_index_and_two_shards_with_tied_embeddings(tiny_checkpoint):
    llm = tiny_checkpoint / "llm"
    index = json.loads((llm / "model.safetensors.index.json").read_text())
    weight_map: dict[str, str] = index["weight_map"]
    assert set(weight_map.values()) == LLM_SHARDS
    stored = {shard: set(safetensors_keys(llm / shard)) for shard in LLM_SHARDS}
    assert set().union(*stored.values()) == set(weight_map)
    assert all(key in stored[shard] for key, shard in weight_map.items())
    assert all(key.startswith("model.") for key in weight_map)
    assert not any("lm_head" in key for key in weight_map)
    assert json.loads((llm / "config.json").read_text())["tie_word_embeddings"] is True


def test_flow_is_a_model_wrapped_state_dict_prefixed_estimator(tiny_checkpoint):
    stored = torch.load(tiny_checkpoint / "flow" / "flow.pt", map_location="cpu", weights_only=True)
    # Upstream's load_flow_model does stored["model"] whenever torch.load returns a plain dict.
    assert type(stored) is dict and set(stored) == {"model"}
    state = stored["model"]
    assert state and all(key.startswith("estimator.") for key in state)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in state.values())


def test_speech_tokenizer_keys_are_model_encoder(tiny_checkpoint):
    keys = safetensors_keys(tiny_checkpoint / "speech_tokenizer" / "model.safetensors")
    assert keys and all(key.startswith("model.encoder.") for key in keys)


def test_hift_uses_parametrization_weight_norm_names(tiny_checkpoint):
    state = torch.load(tiny_checkpoint / "hift" / "hift.pt", map_location="cpu", weights_only=True)
    original0 = {k.removesuffix(".original0") for k in state if k.endswith(".parametrizations.weight.original0")}
    original1 = {k.removesuffix(".original1") for k in state if k.endswith(".parametrizations.weight.original1")}
    assert original0 and original0 == original1  # every weight-normed layer has both halves
    assert "conv_pre.parametrizations.weight" in original0
    assert not any(k.endswith(("weight_g", "weight_v")) for k in state)  # the old weight_norm names


def test_one_vocabulary_across_tokenizer_llm_and_flow(tiny_checkpoint):
    tokenizer = TextTokenizer.from_checkpoint(tiny_checkpoint / "vq32k-phoneme-tokenizer")
    llm = tiny_checkpoint / "llm"
    config = json.loads((llm / "config.json").read_text())
    assert config["vocab_size"] >= tokenizer.vocab_size
    index = json.loads((llm / "model.safetensors.index.json").read_text())
    shard = llm / index["weight_map"]["model.embed_tokens.weight"]
    with safe_open(str(shard), "pt") as f:
        rows = f.get_slice("model.embed_tokens.weight").get_shape()[0]
    assert rows == config["vocab_size"]
    special = tokenizer.special
    assert special.ate - special.ats + 1 == N_AUDIO_TOKENS
    assert max(special.ate, special.boa, special.eoa) < rows

    flow = torch.load(tiny_checkpoint / "flow" / "flow.pt", map_location="cpu", weights_only=True)["model"]
    # Generated tokens span the whole codebook: ids 0..32767 must all have a row.
    assert flow["estimator.text_emb_layer.text_embed.weight"].shape[0] >= N_AUDIO_TOKENS


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        build_random_checkpoint(tmp_path / "x", "medium")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    from glmtts_batch.glmtts.checkpoint_writers import hift

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hift, "write_random_hift", broken)  # after the LLM, flow and speech tokenizer
    with pytest.raises(OSError, match="disk full"):
        build_random_checkpoint(tmp_path / "ckpt", "tiny")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="already exists"):
        build_random_checkpoint(target, "tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert (target / "notes.txt").read_text() == "mine"
    result = CliRunner().invoke(main, ["make-checkpoint", str(target)])
    assert result.exit_code == 2 and "already exists" in result.output


def test_overwrite_replaces_a_folder_only_when_the_new_one_is_complete(tiny_checkpoint, tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    build_random_checkpoint(target, "tiny", overwrite=True)
    assert not (target / "stale.txt").exists()
    assert files(target).keys() == files(tiny_checkpoint).keys()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_make_checkpoint_needs_runtime_dependencies_only(tmp_path):
    """A plain `pip install` has neither onnx nor psutil (test/tools extras)."""
    out = tmp_path / "ckpt"
    code = (
        "import sys; sys.modules['onnx'] = None; sys.modules['psutil'] = None\n"
        "from glmtts_batch.cli import main\n"
        f"sys.argv = ['glmtts-batch', 'make-checkpoint', {str(out)!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    validate_checkpoint_dir(out)
    encoder = SpeakerEncoder.from_checkpoint(out / "frontend" / "campplus.onnx", threads=1)
    assert encoder.embed(np.random.default_rng(0).standard_normal(16000).astype(np.float32)).shape == (192,)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_cli_make_checkpoint_is_deterministic_for_a_seed(tiny_checkpoint, tmp_path):
    out = tmp_path / "again"
    result = CliRunner().invoke(main, ["make-checkpoint", str(out), "--preset", "tiny", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    validate_checkpoint_dir(out)

    same, original = files(out), files(tiny_checkpoint)  # the session checkpoint: seed 0 too
    assert same.keys() == original.keys()
    assert sha256(same["flow/flow.pt"]) == sha256(original["flow/flow.pt"])
    # TorchScript archives carry a random serialization id, so only the scripted vocoder's
    # weights are compared; every other file is byte-identical.
    differing = {name for name in same if sha256(same[name]) != sha256(original[name])}
    assert differing <= {"vocos2d/generator_jit.ckpt"}
    a = Vocos2D.from_checkpoint(same["vocos2d/generator_jit.ckpt"]).module.state_dict()
    b = Vocos2D.from_checkpoint(original["vocos2d/generator_jit.ckpt"]).module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_another_seed_gives_other_weights(tiny_checkpoint, tmp_path):
    other = build_random_checkpoint(tmp_path / "seed1", "tiny", seed=1)
    assert sha256(other / "flow" / "flow.pt") != sha256(tiny_checkpoint / "flow" / "flow.pt")
    assert sha256(other / "hift" / "hift.pt") != sha256(tiny_checkpoint / "hift" / "hift.pt")
    # Configs and the text tokenizer do not depend on the seed.
    assert sha256(other / "llm" / "config.json") == sha256(tiny_checkpoint / "llm" / "config.json")
