"""CAM++ speaker embedding: Kaldi fbank parity, the ONNX interface, model validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glmtts_batch.errors import EngineLoadError, PromptAudioError
from glmtts_batch.glmtts.checkpoint_writers.campplus import write_random_campplus
from glmtts_batch.glmtts.speaker import (
    EMBEDDING_DIM,
    SpeakerEncoder,
    kaldi_fbank,
)

RATE = 16000


def kaldi_fbank_reference(x: np.ndarray, num_bins: int = 80) -> np.ndarray:
    """The Kaldi / torchaudio.compliance.kaldi.fbank recipe in float64 numpy, written out
    from the Kaldi documentation: 25 ms povey-windowed frames every 10 ms (snip_edges),
    DC removal, pre-emphasis 0.97, 512-point power spectrum, mel-scale (1127 ln(1 + f/700))
    triangles from 20 Hz to Nyquist over bins 0..255, log floored at float32 epsilon."""
    x = np.asarray(x, dtype=np.float64)
    length, shift, nfft = 400, 160, 512
    n_frames = 1 + (x.shape[0] - length) // shift
    frames = np.stack([x[i * shift : i * shift + length] for i in range(n_frames)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * previous
    n = np.arange(length)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))) ** 0.85
    power = np.abs(np.fft.rfft(frames * window, n=nfft)) ** 2  # (T, 257)

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    lo, hi = mel(20.0), mel(RATE / 2)
    delta = (hi - lo) / (num_bins + 1)
    bin_mels = mel(np.arange(nfft // 2) * RATE / nfft)  # Kaldi leaves out the Nyquist bin
    banks = np.zeros((num_bins, nfft // 2 + 1))
    for b in range(num_bins):
        left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        up = (bin_mels - left) / (centre - left)
        down = (right - bin_mels) / (right - centre)
        inside = (bin_mels > left) & (bin_mels < right)
        banks[b, : nfft // 2] = np.where(inside, np.where(bin_mels <= centre, up, down), 0.0)
    energies = power @ banks.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def speechish(seconds: float, seed: int, f0: float = 140.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 12))
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 3.5 * t) ** 2) + 0.05 * rng.standard_normal(t.shape)
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def campplus(tmp_path_factory):
    path = tmp_path_factory.mktemp("campplus") / "campplus.onnx"
    write_random_campplus(path, seed=0)
    return path


@pytest.fixture(scope="module")
def encoder(campplus):
    return SpeakerEncoder.from_checkpoint(campplus, "cpu", threads=1)


# --- fbank ----------------------------------------------------------------------------


def test_fbank_matches_independent_kaldi_recipe():
    x = speechish(0.5, seed=1)
    ours = kaldi_fbank(x)
    ref = kaldi_fbank_reference(x)
    assert ours.shape == ref.shape == (1 + (x.shape[0] - 400) // 160, 80)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=5e-4, rtol=0)


def test_fbank_uses_the_unscaled_waveform():
    # torchaudio.load gives floats in [-1, 1]; scaling by 32768 would shift every log
    # energy by 2*ln(32768). The features must follow the waveform's own scale.
    x = speechish(0.3, seed=2)
    shift = kaldi_fbank(2 * x) - kaldi_fbank(x)
    np.testing.assert_allclose(shift, 2 * math.log(2), atol=1e-3)
    assert np.abs(kaldi_fbank(x)).max() < 2 * math.log(32768)


def test_fbank_of_digital_silence_sits_at_the_log_floor():
    # Also the proof that dither is off: kaldi-native-fbank's default dither (3e-5) would add
    # noise energy to silence and lift every bin above the floor, differently on every call.
    feats = kaldi_fbank(np.zeros(RATE // 2, dtype=np.float32))
    np.testing.assert_allclose(feats, math.log(np.finfo(np.float32).eps), rtol=1e-6)


def test_fbank_frame_count():
    assert kaldi_fbank(np.zeros(399, dtype=np.float32)).shape == (0, 80)
    assert kaldi_fbank(np.zeros(400, dtype=np.float32)).shape == (1, 80)
    assert kaldi_fbank(np.zeros(RATE, dtype=np.float32)).shape == (98, 80)


# --- encoder --------------------------------------------------------------------------


def test_stand_in_model_has_campplus_interface(encoder):
    inputs = encoder.session.get_inputs()
    outputs = encoder.session.get_outputs()
    assert [i.name for i in inputs] == ["input"]
    assert inputs[0].type == "tensor(float)" and inputs[0].shape[2] == 80
    assert all(isinstance(d, str) for d in inputs[0].shape[:2])  # batch and frames are dynamic
    assert outputs[0].shape[1] == EMBEDDING_DIM


def test_features_are_mean_subtracted(encoder):
    feats = encoder.features(speechish(1.2, seed=4))
    assert feats.shape == (1, 118, 80) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0].mean(axis=0), 0.0, atol=1e-4)


def test_embedding_is_the_model_applied_to_mean_subtracted_fbank(encoder):
    """Recomputed independently: the numpy Kaldi recipe, then the stand-in's documented
    function `mean_t(ReLU(x W1 + b1)) W2 + b2` with its seed-0 weights."""
    x = speechish(1.5, seed=5)
    embedding = encoder.embed(x)
    assert embedding.shape == (EMBEDDING_DIM,) and embedding.dtype == np.float32
    feats = kaldi_fbank_reference(x)
    feats = feats - feats.mean(axis=0, keepdims=True)
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((80, 64)) / np.sqrt(80)
    b1 = 0.5 * rng.standard_normal(64)
    w2 = rng.standard_normal((64, EMBEDDING_DIM)) / np.sqrt(64)
    b2 = 0.1 * rng.standard_normal(EMBEDDING_DIM)
    expected = np.maximum(feats @ w1 + b1, 0).mean(axis=0) @ w2 + b2
    np.testing.assert_allclose(embedding, expected, atol=2e-3, rtol=0)


def test_different_audio_gives_different_embeddings(encoder):
    a = encoder.embed(speechish(1.5, seed=6, f0=110.0))
    b = encoder.embed(speechish(1.5, seed=7, f0=220.0))
    assert np.abs(a - b).max() > 1e-3


def test_same_model_seed_same_embedding(tmp_path, encoder):
    again = tmp_path / "again.onnx"
    write_random_campplus(again, seed=0)
    other = tmp_path / "other.onnx"
    write_random_campplus(other, seed=1)
    x = speechish(1.2, seed=8)
    np.testing.assert_array_equal(SpeakerEncoder.from_checkpoint(again, threads=1).embed(x), encoder.embed(x))
    assert not np.allclose(SpeakerEncoder.from_checkpoint(other, threads=1).embed(x), encoder.embed(x))


def test_audio_too_short_for_one_frame_is_a_prompt_error(encoder):
    with pytest.raises(PromptAudioError, match="too short"):
        encoder.embed(np.zeros(300, dtype=np.float32))


# --- wrong models ---------------------------------------------------------------------


def _write_linear_model(path, bins: int, out_dim: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((bins, out_dim), dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["feats"], ["m"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["emb"]),
        ],
        "wrong",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["B", "T", bins])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", out_dim])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_model_with_wrong_output_size_is_rejected_at_load(tmp_path):
    path = tmp_path / "emb256.onnx"
    _write_linear_model(path, bins=80, out_dim=256)
    with pytest.raises(EngineLoadError, match=r"returned 256 values.*expected 192") as info:
        SpeakerEncoder.from_checkpoint(path)
    assert str(path) in str(info.value)


def test_model_with_wrong_input_bins_is_rejected_at_load(tmp_path):
    path = tmp_path / "bins40.onnx"
    _write_linear_model(path, bins=40, out_dim=192)
    with pytest.raises(EngineLoadError, match=r"first input 'feats'.*\(batch, frames, 80\)"):
        SpeakerEncoder.from_checkpoint(path)


def test_non_onnx_file_is_rejected(tmp_path):
    path = tmp_path / "campplus.onnx"
    path.write_bytes(b"\x00not a protobuf at all" * 10)
    with pytest.raises(EngineLoadError, match="cannot be loaded as an ONNX model"):
        SpeakerEncoder.from_checkpoint(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(EngineLoadError, match="not found"):
        SpeakerEncoder.from_checkpoint(tmp_path / "absent.onnx")
