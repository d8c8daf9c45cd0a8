"""CAM++ speaker embedding: Kaldi fbank of the 16 kHz prompt -> ONNX model -> 192 floats.

Upstream computes `torchaudio.compliance.kaldi.fbank(wav, num_mel_bins=80, dither=0,
sample_frequency=16000)` on the waveform as `torchaudio.load` returns it (floats in
[-1, 1], not int16 counts), subtracts the per-bin mean over time, and feeds (1, T, 80) to
`campplus.onnx`. `kaldi_native_fbank` implements the same Kaldi recipe; `fbank_options`
sets it to torchaudio's defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glmtts_batch.errors import EngineLoadError, PromptAudioError

EMBEDDING_DIM = 192
NUM_MEL_BINS = 80
SAMPLE_RATE = 16000
# Frames fed to the model once at load time to check what it returns (1 s of fbank).
_PROBE_FRAMES = 100


def fbank_options():  # -> kaldi_native_fbank.FbankOptions
    """Kaldi fbank settings equal to torchaudio's `kaldi.fbank` defaults with 80 bins, dither 0."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    frame = opts.frame_opts
    frame.samp_freq = float(SAMPLE_RATE)
    frame.frame_length_ms = 25.0
    frame.frame_shift_ms = 10.0
    frame.dither = 0.0  # knf's default is 3e-5; upstream passes 0, so features are deterministic
    frame.preemph_coeff = 0.97
    frame.remove_dc_offset = True
    frame.window_type = "povey"
    frame.round_to_power_of_two = True
    frame.snip_edges = True
    mel = opts.mel_opts
    mel.num_bins = NUM_MEL_BINS
    mel.low_freq = 20.0
    mel.high_freq = 0.0  # 0 means the Nyquist frequency
    opts.use_energy = False
    opts.raw_energy = True
    opts.htk_compat = False
    # torchaudio's default; it only matters with use_energy, which is off.
    opts.energy_floor = 1.0
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def kaldi_fbank(samples_16k: np.ndarray) -> np.ndarray:
    """Mono float samples at 16 kHz (scale [-1, 1]) -> (T, 80) float32 log mel filterbank.

    T = 1 + (N - 400) // 160 for N >= 400 samples (25 ms frames every 10 ms, snip_edges),
    and 0 for shorter input.
    """
    import kaldi_native_fbank as knf

    samples = np.ascontiguousarray(samples_16k, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"kaldi_fbank expects mono samples of shape (N,), got {samples.shape}")
    computer = knf.OnlineFbank(fbank_options())
    computer.accept_waveform(float(SAMPLE_RATE), samples)
    computer.input_finished()
    frames = computer.num_frames_ready
    if frames == 0:
        return np.zeros((0, NUM_MEL_BINS), dtype=np.float32)
    return np.stack([np.asarray(computer.get_frame(i), dtype=np.float32) for i in range(frames)])


class SpeakerEncoder:
    """CAM++ through onnxruntime. Load once per run; `embed` one prompt at a time."""

    def __init__(self, session: Any, path: Path) -> None:
        """Adopt an onnxruntime session of `path` after checking it computes a CAM++ embedding."""
        self.path = path
        self.session = session
        self.providers = list(session.get_providers())
        self._check_interface()

    @classmethod
    def from_checkpoint(
        cls, onnx_path: str | Path, device: str | torch.device = "cpu", *, threads: int | None = None
    ) -> SpeakerEncoder:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise EngineLoadError(f"CAM++ speaker model not found: {path}")
        device = torch.device(device)
        providers: list = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One prompt per call and small convolutions: a few threads saturate it, more
        # only contend with torch's own pool for the same cores.
        options.intra_op_num_threads = threads if threads is not None else max(1, min(4, os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise EngineLoadError(f"{path}: cannot be loaded as an ONNX model ({exc})") from exc
        return cls(session, path)

    def _check_interface(self) -> None:
        inputs = self.session.get_inputs()
        if not inputs:
            raise EngineLoadError(f"{self.path}: not a CAM++ speaker model (it has no inputs)")
        first = inputs[0]
        self.input_name = first.name
        shape = list(first.shape or [])
        # Symbolic or unknown dims (str / None) are fine; a fixed bin count must be 80.
        bins_ok = len(shape) == 3 and (shape[2] == NUM_MEL_BINS or not isinstance(shape[2], int))
        if first.type != "tensor(float)" or not bins_ok:
            raise EngineLoadError(
                f"{self.path}: not a CAM++ speaker model: its first input '{first.name}' is {first.type} "
                f"{shape}, expected float (batch, frames, {NUM_MEL_BINS})"
            )
        # A model of the right input shape may still compute something else; one probe
        # run at load time turns that into a load error instead of a failure per task.
        probe = np.zeros((1, _PROBE_FRAMES, NUM_MEL_BINS), dtype=np.float32)
        self._run(probe)

    def _run(self, features: np.ndarray) -> np.ndarray:
        try:
            outputs = self.session.run(None, {self.input_name: features})
        except Exception as exc:  # noqa: BLE001
            raise EngineLoadError(
                f"{self.path}: the speaker model failed on (1, {features.shape[1]}, {NUM_MEL_BINS}) fbank input ({exc})"
            ) from exc
        embedding = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        if embedding.shape[0] != EMBEDDING_DIM:
            raise EngineLoadError(
                f"{self.path}: not a CAM++ speaker model: it returned {embedding.shape[0]} values "
                f"(shape {tuple(np.shape(outputs[0]))}), expected {EMBEDDING_DIM}"
            )
        if not np.all(np.isfinite(embedding)):
            raise EngineLoadError(f"{self.path}: the speaker model returned non-finite values")
        return embedding

    def features(self, samples_16k: np.ndarray) -> np.ndarray:
        """(N,) samples at 16 kHz -> (1, T, 80) float32 fbank with the per-bin mean over time removed."""
        feats = kaldi_fbank(samples_16k)
        if feats.shape[0] == 0:
            raise PromptAudioError(
                f"prompt audio too short for the speaker encoder ({np.shape(samples_16k)[0]} samples at 16 kHz)"
            )
        feats = feats - feats.mean(axis=0, keepdims=True)
        return feats[None].astype(np.float32, copy=False)

    def embed(self, samples_16k: np.ndarray) -> np.ndarray:
        """(N,) mono float samples at 16 kHz -> (192,) float32 speaker embedding (not normalised)."""
        return self._run(self.features(samples_16k))
