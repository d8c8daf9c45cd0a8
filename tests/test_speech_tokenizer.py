"""Whisper-VQ speech tokenizer: golden parity, loader strictness, segmentation, random checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.checkpoint_writers.speech_tokenizer import (
    config_json,
    preprocessor_json,
    released_tensor_layout,
    write_random_speech_tokenizer,
)
from glmtts_batch.glmtts.speech_tokenizer import (
    CHUNK_SAMPLES,
    SpeechTokenizer,
    SpeechTokenizerConfig,
    attention_mask,
)

SR = 16000


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict:
    folder = golden_dir / "speech_tokenizer"
    arrays = dict(np.load(folder / "golden.npz"))
    arrays["tokens_json"] = json.loads((folder / "tokens.json").read_text())
    arrays["model_dir"] = folder / "model"
    return arrays


@pytest.fixture(scope="module")
def golden_tokenizer(golden: dict) -> SpeechTokenizer:
    return SpeechTokenizer.from_checkpoint(golden["model_dir"])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_speech_tokenizer(
        tmp_path_factory.mktemp("tiny_speech_tokenizer"), SpeechTokenizerConfig.tiny(), seed=7
    )


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_dir: Path) -> SpeechTokenizer:
    return SpeechTokenizer.from_checkpoint(tiny_dir)


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """A voiced, amplitude-modulated test signal with a little noise."""
    t = np.arange(int(round(seconds * SR))) / SR
    rng = np.random.default_rng(seed)
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * envelope * voiced + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Golden parity (upstream reference, tiny random weights)


def test_features_match_golden(golden: dict, golden_tokenizer: SpeechTokenizer) -> None:
    features, frame_mask = golden_tokenizer.extract_features([golden["wav_3p3s"][0]])
    assert features.shape == golden["features_3p3s"].shape
    np.testing.assert_allclose(features.numpy(), golden["features_3p3s"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(frame_mask.numpy(), golden["feature_mask_3p3s"].astype(bool))


def test_prequant_hidden_matches_golden_3p3s(golden: dict, golden_tokenizer: SpeechTokenizer) -> None:
    features = torch.from_numpy(golden["features_3p3s"])
    hidden, token_mask = golden_tokenizer.encode(features, torch.from_numpy(golden["feature_mask_3p3s"]))
    assert hidden.shape == golden["prequant_hidden_3p3s"].shape
    np.testing.assert_allclose(hidden.numpy(), golden["prequant_hidden_3p3s"], atol=1e-4, rtol=0)
    assert token_mask.all()  # 330 valid frames -> 165 -> 83 tokens, none padded
    np.testing.assert_array_equal(golden_tokenizer.quantize(hidden)[0].numpy(), golden["tokens_3p3s"])


def test_prequant_hidden_matches_golden_31s_two_chunks(golden: dict, golden_tokenizer: SpeechTokenizer) -> None:
    wav = golden["wav_31s"][0]
    features, frame_mask = golden_tokenizer.extract_features([wav[:CHUNK_SAMPLES], wav[CHUNK_SAMPLES:]])
    np.testing.assert_array_equal(frame_mask.numpy(), golden["feature_mask_31s"].astype(bool))
    hidden, token_mask = golden_tokenizer.encode(features, frame_mask)
    # 1500 frames per chunk after the convs: the block-causal mask has 8 blocks here.
    np.testing.assert_allclose(hidden.numpy(), golden["prequant_hidden_31s"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(token_mask.numpy(), golden["token_mask_31s"].astype(bool))


def test_tokens_match_golden_exactly(golden: dict, golden_tokenizer: SpeechTokenizer) -> None:
    expected = golden["tokens_json"]
    assert golden_tokenizer.tokenize(golden["wav_3p3s"][0]) == golden["tokens_3p3s"].tolist() == expected["3p3s"]
    assert golden_tokenizer.tokenize(golden["wav_31s"][0]) == golden["tokens_31s"].tolist() == expected["31s"]


def test_batched_call_matches_golden_and_separate_calls(golden: dict, golden_tokenizer: SpeechTokenizer) -> None:
    short, long = golden["wav_3p3s"][0], golden["wav_31s"][0]
    batched = golden_tokenizer.tokenize_batch([short, long])
    expected = golden["tokens_json"]
    assert batched == expected["batched_call_[3p3s,31s]"]
    assert batched == [expected["3p3s"], expected["31s"]]  # what separate calls give (previous test)


# ---------------------------------------------------------------------------------------------
# Model pieces


def test_block_causal_mask_sees_past_and_own_block_but_no_padding() -> None:
    key_mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    allowed = attention_mask(key_mask, block_size=3)
    assert allowed.shape == (2, 1, 7, 7)
    for b in range(2):
        for q in range(7):
            for k in range(7):
                visible = (k <= q or k // 3 == q // 3) and bool(key_mask[b, k])
                assert bool(allowed[b, 0, q, k]) == visible, (b, q, k)


def test_without_block_size_only_padding_is_masked() -> None:
    key_mask = torch.tensor([[True, True, True, False]])
    allowed = attention_mask(key_mask, block_size=None)
    assert allowed.shape == (1, 1, 4, 4)
    assert torch.equal(allowed[0, 0], key_mask.expand(4, 4))


# ---------------------------------------------------------------------------------------------
# Loader strictness


def _copy_with_weights(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(src / name, dst / name)
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_needed_key_is_named(golden: dict, tmp_path: Path) -> None:
    key = "model.encoder.layers.1.fc1.weight"
    folder = _copy_with_weights(golden["model_dir"], tmp_path / "m", lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=r"missing keys: .*layers\.1\.fc1\.weight"):
        SpeechTokenizer.from_checkpoint(folder)


def test_unexpected_keys_are_named(golden: dict, tmp_path: Path) -> None:
    def add(state: dict) -> None:
        state["model.encoder.extra_scale"] = torch.ones(3)
        state["model.decoder.layers.0.fc1.weight"] = torch.ones(2, 2)

    folder = _copy_with_weights(golden["model_dir"], tmp_path / "m", add)
    with pytest.raises(CheckpointError) as info:
        SpeechTokenizer.from_checkpoint(folder)
    assert "model.encoder.extra_scale" in str(info.value)
    assert "model.decoder.layers.0.fc1.weight" in str(info.value)


def test_shape_mismatch_is_named(golden: dict, tmp_path: Path) -> None:
    key = "model.encoder.codebook.weight"
    folder = _copy_with_weights(golden["model_dir"], tmp_path / "m", lambda s: s.update({key: s[key][:100]}))
    with pytest.raises(CheckpointError, match=r"shape mismatches: model\.encoder\.codebook\.weight"):
        SpeechTokenizer.from_checkpoint(folder)


def test_ignored_keys_are_neither_needed_nor_read(golden: dict, tmp_path: Path) -> None:
    ignored = [
        "model.encoder.layer_norm.weight",
        "model.encoder.layer_norm.bias",
        "model.encoder.ema_count",
        "model.encoder.ema_weight",
        "model.encoder.embed_positions2.weight",
    ]

    def drop(state: dict) -> None:
        layer3 = [k for k in state if k.startswith("model.encoder.layers.3.")]
        assert len(layer3) == 15
        for key in ignored + layer3:
            del state[key]

    folder = _copy_with_weights(golden["model_dir"], tmp_path / "dropped", drop)
    tokenizer = SpeechTokenizer.from_checkpoint(folder)
    assert len(tokenizer.encoder.layers) == 3  # layers >= quantize_position are not built
    assert tokenizer.tokenize(golden["wav_3p3s"][0]) == golden["tokens_json"]["3p3s"]

    def scramble(state: dict) -> None:
        for key in list(state):
            if key in ignored or key.startswith("model.encoder.layers.3."):
                state[key] = torch.full_like(state[key], 1e6)

    folder = _copy_with_weights(golden["model_dir"], tmp_path / "scrambled", scramble)
    assert SpeechTokenizer.from_checkpoint(folder).tokenize(golden["wav_3p3s"][0]) == golden["tokens_json"]["3p3s"]


def test_missing_files_and_unsupported_settings_raise(golden: dict, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(golden["model_dir"], folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        SpeechTokenizer.from_checkpoint(folder)

    shutil.rmtree(folder)
    shutil.copytree(golden["model_dir"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["encoder_causal_attention"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="encoder_causal_attention"):
        SpeechTokenizer.from_checkpoint(folder)

    del config["encoder_causal_attention"], config["d_model"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing keys: d_model"):
        SpeechTokenizer.from_checkpoint(folder)


def test_config_presets_equal_the_released_and_golden_configs(golden: dict, reference_dir: Path) -> None:
    released = json.loads((reference_dir / "speech_tokenizer" / "config.json").read_text())
    assert SpeechTokenizerConfig.from_json(released) == SpeechTokenizerConfig.full()
    tiny = json.loads((golden["model_dir"] / "config.json").read_text())
    assert SpeechTokenizerConfig.from_json(tiny) == SpeechTokenizerConfig.tiny()

    written = config_json(SpeechTokenizerConfig.full(), "full")
    assert {k: v for k, v in written.items() if k != "_name_or_path"} == {
        k: v for k, v in released.items() if k != "_name_or_path"
    }
    preprocessor = json.loads((reference_dir / "speech_tokenizer" / "preprocessor_config.json").read_text())
    assert preprocessor_json(SpeechTokenizerConfig.full()) == preprocessor


def test_full_layout_has_the_released_size() -> None:
    # The released model.safetensors is 1.63 GB: layers 0..15, codebook, EMA buffers, positions.
    full = SpeechTokenizerConfig.full()
    n_bytes = sum(4 * math.prod(shape) for _, shape in released_tensor_layout(full, full.quantize_position))
    assert 1.62e9 < n_bytes < 1.64e9


# ---------------------------------------------------------------------------------------------
# Segmentation and batching (random tiny checkpoint)


def test_random_tiny_checkpoint_has_the_golden_key_layout(golden: dict, tiny_dir: Path) -> None:
    def layout(path: Path) -> dict:
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}

    assert layout(tiny_dir / "model.safetensors") == layout(golden["model_dir"] / "model.safetensors")
    golden_config = json.loads((golden["model_dir"] / "config.json").read_text())
    assert set(json.loads((tiny_dir / "config.json").read_text())) == set(golden_config)
    assert json.loads((tiny_dir / "preprocessor_config.json").read_text()) == json.loads(
        (golden["model_dir"] / "preprocessor_config.json").read_text()
    )


def test_random_checkpoint_depends_only_on_the_seed(tiny_dir: Path, tmp_path: Path) -> None:
    same = write_random_speech_tokenizer(tmp_path / "same", SpeechTokenizerConfig.tiny(), seed=7)
    other = write_random_speech_tokenizer(tmp_path / "other", SpeechTokenizerConfig.tiny(), seed=8)
    data = (tiny_dir / "model.safetensors").read_bytes()
    assert (same / "model.safetensors").read_bytes() == data
    assert (other / "model.safetensors").read_bytes() != data


def test_random_tiny_round_trip_gives_25_tokens_per_second(tiny_tokenizer: SpeechTokenizer) -> None:
    tokens = tiny_tokenizer.tokenize(_speechlike(2.0, seed=1))
    assert len(tokens) == 50
    assert all(0 <= t < SpeechTokenizerConfig.tiny().quantize_vocab_size for t in tokens)
    assert len(set(tokens)) > 1
    # A partial last token still counts: ceil(samples / 640).
    assert len(tiny_tokenizer.tokenize(_speechlike(0.5, seed=2))) == math.ceil(8000 / 640)


def test_long_audio_is_cut_into_30s_chunks(tiny_tokenizer: SpeechTokenizer) -> None:
    audio = _speechlike(31.0, seed=3)
    tokens = tiny_tokenizer.tokenize(audio)
    assert len(tokens) == 750 + 25
    # The first chunk is processed exactly as a 30 s utterance of its own.
    assert tokens[:750] == tiny_tokenizer.tokenize(audio[:CHUNK_SAMPLES])


def test_batched_call_equals_separate_calls(tiny_tokenizer: SpeechTokenizer) -> None:
    # Lengths that are not multiples of 640 samples: padding never changes valid frames then.
    audios = [_speechlike(s, seed=10 + i) for i, s in enumerate((1.3, 4.7, 0.9, 2.05))]
    assert tiny_tokenizer.tokenize_batch(audios) == [tiny_tokenizer.tokenize(a) for a in audios]
    small_batches = SpeechTokenizer(tiny_tokenizer.encoder, tiny_tokenizer.feature_extractor, max_chunks_per_forward=2)
    assert small_batches.tokenize_batch(audios) == tiny_tokenizer.tokenize_batch(audios)


def test_bad_waveforms_are_rejected(tiny_tokenizer: SpeechTokenizer) -> None:
    with pytest.raises(ValueError, match="non-empty 1-D"):
        tiny_tokenizer.tokenize(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        tiny_tokenizer.tokenize(np.zeros((2, 16000), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        tiny_tokenizer.tokenize(np.full(16000, np.nan, dtype=np.float32))
