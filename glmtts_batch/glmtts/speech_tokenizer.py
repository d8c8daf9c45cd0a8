"""Whisper-VQ speech tokenizer: 16 kHz prompt audio -> 25 Hz discrete speech tokens.

Pipeline (behaviour of upstream GLM-TTS `SpeechTokenizer.extract_speech_token`):

1. Each utterance is cut into 30 s chunks (480000 samples); all chunks of a batch of
   utterances go through the model together (at most `max_chunks_per_forward` at a time,
   128 as upstream).
2. Whisper log-mel features (128 bins, hop 160) from `transformers.WhisperFeatureExtractor`,
   the reference implementation, with its torch path on the model's device, padded to the
   longest chunk and to a multiple of 640 samples (conv stride 2 x pool 2 x hop 160), with a
   frame-level validity mask.
3. The Whisper encoder up to `quantize_position`: GELU(conv1), GELU(conv2, stride 2), learned
   positions read from the checkpoint, pre-LN layers with a block-causal + key-padding
   attention mask, average pooling (kernel 2) after layer `pooling_position - 1`.
4. Nearest-codebook lookup: `argmin_j |h - c_j|^2`, computed as `|c|^2 + |h|^2 - 2 h.c`.
5. Tokens at padded positions are dropped (mask = frame mask[::2][::2]) and the valid tokens
   of an utterance's chunks are concatenated in order.

Numerics: everything runs in float32 by default and matches the upstream reference on CPU
exactly (token ids) and to ~2e-6 (hidden states). The nearest-code decision is a hard
threshold: the golden vectors' closest token sits 0.028 (L2) from flipping against a
per-frame norm of ~15, i.e. a relative error of ~2e-3 flips it, and TF32 (about 1e-3
relative per product) can therefore change some tokens. On CUDA, PyTorch's default runs
cuDNN convolutions in TF32 (`torch.backends.cudnn.allow_tf32 = True`) while matmuls stay
IEEE fp32. `encode` therefore runs with cuDNN TF32 switched off for its own duration (a
scoped `torch.backends.cudnn.flags`, not a process-wide change): the two convolutions are a
negligible cost, and float32 tokens stay as close to the CPU reference as float32 allows.
(Upstream runs them in TF32, so its GPU tokens may differ in near-tie frames.) Reduced-precision `dtype`s (bf16/fp16) run the encoder in that
dtype, but the codebook search is always done in float32.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.weights import load_module

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # upstream segments prompt audio into 30 s pieces
CHECKPOINT_PREFIX = "model.encoder."
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILE = "model.safetensors"
_CONV_STRIDE = 2  # conv1 stride 1 x conv2 stride 2


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """The encoder dimensions that matter for tokenization (a subset of `config.json`)."""

    d_model: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    encoder_layers: int  # layers of the whole Whisper encoder; only `quantize_position` are built
    quantize_position: int  # number of layers before the codebook lookup
    pooling_position: int  # pool after this many layers
    quantize_vocab_size: int
    num_mel_bins: int = 128
    max_source_positions: int = 1500  # frames after conv2: 30 s at 50 Hz
    pooling_kernel_size: int = 2
    pooling_type: str = "avg"  # "avg" | "max"
    quantize_causal_block_size: int | None = 200  # None: plain key-padding attention

    def __post_init__(self) -> None:
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by {self.encoder_attention_heads} heads")
        if not 1 <= self.pooling_position <= self.quantize_position <= self.encoder_layers:
            raise ValueError(
                "need 1 <= pooling_position <= quantize_position <= encoder_layers, got "
                f"{self.pooling_position}, {self.quantize_position}, {self.encoder_layers}"
            )
        if self.pooling_kernel_size < 1:
            raise ValueError(f"pooling_kernel_size must be >= 1, got {self.pooling_kernel_size}")
        if self.pooling_type not in ("avg", "max"):
            raise ValueError(f"pooling_type must be 'avg' or 'max', got {self.pooling_type!r}")
        if self.quantize_causal_block_size is not None and self.quantize_causal_block_size < self.pooling_kernel_size:
            raise ValueError("quantize_causal_block_size must be at least pooling_kernel_size")

    @classmethod
    def tiny(cls) -> SpeechTokenizerConfig:
        """Dims of the golden test checkpoint: 3 of 4 layers used, 256 codes."""
        return cls(
            d_model=64,
            encoder_attention_heads=4,
            encoder_ffn_dim=128,
            encoder_layers=4,
            quantize_position=3,
            pooling_position=3,
            quantize_vocab_size=256,
        )

    @classmethod
    def full(cls) -> SpeechTokenizerConfig:
        """The released checkpoint: Whisper-large-v3 layers 0..15, 32768 x 1280 codebook."""
        return cls(
            d_model=1280,
            encoder_attention_heads=20,
            encoder_ffn_dim=5120,
            encoder_layers=32,
            quantize_position=16,
            pooling_position=16,
            quantize_vocab_size=32768,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = CONFIG_FILE) -> SpeechTokenizerConfig:
        """Read the released `config.json`; refuse variants whose behaviour is not implemented."""
        unsupported = [
            f"{key}={data.get(key)!r}"
            for key in ("encoder_causal_attention", "encoder_causal_convolution", "quantize_causal_encoder")
            if data.get(key)
        ]
        if data.get("activation_function", "gelu") != "gelu":
            unsupported.append(f"activation_function={data['activation_function']!r}")
        for key in ("pooling_kernel_size", "pooling_position", "quantize_vocab_size"):
            if key in data and data[key] is None:
                unsupported.append(f"{key}=None")
        if unsupported:
            raise CheckpointError(f"{where}: unsupported speech tokenizer settings: {', '.join(unsupported)}")
        layers = data.get("encoder_layers", data.get("num_hidden_layers"))
        required = {
            "d_model": data.get("d_model"),
            "encoder_attention_heads": data.get("encoder_attention_heads"),
            "encoder_ffn_dim": data.get("encoder_ffn_dim"),
            "encoder_layers": layers,
            "quantize_position": data.get("quantize_position"),
            "pooling_position": data.get("pooling_position"),
            "quantize_vocab_size": data.get("quantize_vocab_size"),
            "num_mel_bins": data.get("num_mel_bins"),
            "max_source_positions": data.get("max_source_positions"),
            "pooling_kernel_size": data.get("pooling_kernel_size"),
        }
        missing = [key for key, value in required.items() if value is None]
        if missing:
            raise CheckpointError(f"{where}: missing keys: {', '.join(missing)}")
        try:
            return cls(
                **{key: int(value) for key, value in required.items()},
                pooling_type=str(data.get("pooling_type", "max")),  # upstream's default
                quantize_causal_block_size=(
                    None if data.get("quantize_causal_block_size") is None else int(data["quantize_causal_block_size"])
                ),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Model


class WhisperAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)  # Whisper's key projection has no bias
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D); allowed: (B, 1, T, T) bool, True where query t may attend to key s
        b, t, d = x.shape
        q, k, v = (
            proj(x).view(b, t, self.n_heads, -1).transpose(1, 2)  # (B, H, T, D/H)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, T, D/H)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class WhisperEncoderLayer(nn.Module):
    """Pre-LN transformer layer (names as in the checkpoint)."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = WhisperAttention(dim, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), allowed)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


def attention_mask(key_mask: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """(B, T) bool key validity -> (B, 1, T, T) bool `allowed[b, 0, query, key]`.

    With a block size, a query sees every earlier key plus the rest of its own block
    (block-causal, as the VQ encoder was trained); padded keys are never visible.
    """
    t = key_mask.shape[1]
    valid_keys = key_mask[:, None, None, :]  # (B, 1, 1, T)
    if block_size is None:
        return valid_keys.expand(-1, 1, t, -1)
    pos = torch.arange(t, device=key_mask.device)
    visible_until = (pos // block_size + 1) * block_size  # (T,) first key index a query cannot see
    return (pos[None, :] < visible_until[:, None]) & valid_keys  # (B, 1, T, T)


class WhisperVQEncoder(nn.Module):
    """The Whisper encoder layers below the quantizer, plus the codebook.

    State-dict names equal the released `model.safetensors` names without `model.encoder.`.
    """

    def __init__(self, config: SpeechTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, d)
        self.layers = nn.ModuleList(
            WhisperEncoderLayer(d, config.encoder_attention_heads, config.encoder_ffn_dim)
            for _ in range(config.quantize_position)
        )
        self.codebook = nn.Embedding(config.quantize_vocab_size, d)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, n_mels, F), frame_mask (B, F) -> pre-quantisation hidden (B, N, D), token mask (B, N) bool."""
        cfg = self.config
        x = F.gelu(self.conv1(features))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T, D), T = ceil(F / 2)
        t = x.shape[1]
        if t > cfg.max_source_positions:
            raise ValueError(
                f"{features.shape[-1]} feature frames exceed the encoder's "
                f"{cfg.max_source_positions * _CONV_STRIDE} (30 s)"
            )
        x = x + self.embed_positions.weight[:t]
        mask = frame_mask[:, ::_CONV_STRIDE].bool()  # (B, T)
        block = cfg.quantize_causal_block_size
        allowed = attention_mask(mask, block)
        for i, layer in enumerate(self.layers):
            x = layer(x, allowed)
            if i + 1 == cfg.pooling_position:
                x, mask = self._pool(x, mask)
                if block is not None:
                    block //= cfg.pooling_kernel_size
                if i + 1 < len(self.layers):
                    allowed = attention_mask(mask, block)
        return x, mask

    def _pool(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.config.pooling_kernel_size
        x = x.transpose(1, 2)  # (B, D, T)
        if x.shape[-1] % k:
            x = F.pad(x, (0, k - x.shape[-1] % k))  # zeros, averaged into the last frame as upstream does
        x = F.avg_pool1d(x, k) if self.config.pooling_type == "avg" else F.max_pool1d(x, k)
        return x.transpose(1, 2), mask[:, ::k]

    def quantize(self, hidden: torch.Tensor, *, rows_per_step: int = 4096) -> torch.Tensor:
        """(B, N, D) -> (B, N) int64 nearest-code ids, distances in float32 as upstream computes them."""
        codebook = self.codebook.weight.float()  # (V, D)
        code_sq = codebook.square().sum(1)  # (V,)
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        ids = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        # Row blocks bound the (rows, V) distance matrix: 96000 x 32768 floats would be 12 GB.
        for start in range(0, flat.shape[0], rows_per_step):
            h = flat[start : start + rows_per_step]
            dist = torch.addmm(code_sq + h.square().sum(1, keepdim=True), h, codebook.t(), alpha=-2.0)
            ids[start : start + rows_per_step] = dist.argmin(1)
        return ids.view(hidden.shape[:-1])


class _ReleasedLayout(nn.Module):
    """Nests the encoder as `model.encoder` so state-dict keys equal the file's keys."""

    def __init__(self, config: SpeechTokenizerConfig) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.encoder = WhisperVQEncoder(config)


def is_ignored_key(key: str, config: SpeechTokenizerConfig) -> bool:
    """Keys the released file holds that tokenization never reads (upstream drops or never uses them).

    `layer_norm.*` and layers >= quantize_position belong to the rest of the Whisper encoder;
    `ema_count`/`ema_weight` are training statistics; `embed_positions2` is only added after
    the quantizer, so it cannot change a token.
    """
    if not key.startswith(CHECKPOINT_PREFIX):
        return False
    name = key[len(CHECKPOINT_PREFIX) :]
    if name in ("ema_count", "ema_weight", "embed_positions2.weight") or name.startswith("layer_norm."):
        return True
    parts = name.split(".")
    return len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit() and int(parts[1]) >= config.quantize_position


# ---------------------------------------------------------------------------------------------
# Tokenizer


class SpeechTokenizer:
    """Feature extractor + encoder + codebook; `tokenize_batch` is the entry point."""

    def __init__(self, encoder: WhisperVQEncoder, feature_extractor: Any, *, max_chunks_per_forward: int = 128) -> None:
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.max_chunks_per_forward = max_chunks_per_forward
        self._pad_multiple = _CONV_STRIDE * encoder.config.pooling_kernel_size * feature_extractor.hop_length

    @property
    def config(self) -> SpeechTokenizerConfig:
        return self.encoder.config

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv1.weight.dtype

    @classmethod
    def from_checkpoint(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        max_chunks_per_forward: int = 128,
    ) -> SpeechTokenizer:
        """Load `config.json`, `preprocessor_config.json` and `model.safetensors` as released.

        Only tensors the encoder uses are read, straight onto `device`. Any key that is neither
        used nor one of the known ignored keys (see `is_ignored_key`), and any used key that is
        missing or misshapen, raises `CheckpointError` naming it.
        """
        model_dir = Path(model_dir)
        device = torch.device(device)
        config_path = model_dir / CONFIG_FILE
        config = SpeechTokenizerConfig.from_json(_read_json(config_path), where=str(config_path))
        feature_extractor = _load_feature_extractor(model_dir, config)
        weights_path = model_dir / WEIGHTS_FILE
        state = _read_used_tensors(weights_path, device, lambda key: is_ignored_key(key, config))
        wrapper = load_module(
            lambda: _ReleasedLayout(config),
            state,
            where=str(weights_path),
            device=device,
            dtype=dtype,
            ignore=lambda key: is_ignored_key(key, config),
        )
        encoder: WhisperVQEncoder = wrapper.model.encoder  # type: ignore[assignment]  # a submodule
        return cls(encoder, feature_extractor, max_chunks_per_forward=max_chunks_per_forward)

    @torch.inference_mode()
    def extract_features(self, chunks: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks of <= 30 s -> features (B, n_mels, F) in the model dtype and frame mask (B, F) bool, on device."""
        out = self.feature_extractor(
            [np.asarray(c, dtype=np.float32) for c in chunks],
            sampling_rate=SAMPLE_RATE,
            return_attention_mask=True,
            return_tensors="pt",
            device=str(self.device),
            padding="longest",
            pad_to_multiple_of=self._pad_multiple,
        )
        features = out["input_features"].to(self.device, self.dtype)
        frame_mask = out["attention_mask"].to(self.device).bool()
        return features, frame_mask

    @torch.inference_mode()
    def encode(self, features: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-quantisation hidden states (B, N, D) and the token validity mask (B, N)."""
        cudnn = torch.backends.cudnn
        with cudnn.flags(
            enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
        ):
            return self.encoder(features.to(self.device, self.dtype), frame_mask.to(self.device))

    @torch.inference_mode()
    def quantize(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N) int64 token ids."""
        return self.encoder.quantize(hidden)

    def tokenize_batch(self, audios: Sequence[np.ndarray]) -> list[list[int]]:
        """16 kHz mono float waveforms -> one list of 25 Hz token ids per waveform."""
        chunks: list[np.ndarray] = []
        owners: list[int] = []
        for index, audio in enumerate(audios):
            samples = _mono_float32(audio, index)
            for start in range(0, samples.shape[0], CHUNK_SAMPLES):
                chunks.append(samples[start : start + CHUNK_SAMPLES])
                owners.append(index)
        tokens: list[list[int]] = [[] for _ in audios]
        for start in range(0, len(chunks), self.max_chunks_per_forward):
            batch = chunks[start : start + self.max_chunks_per_forward]
            features, frame_mask = self.extract_features(batch)
            hidden, token_mask = self.encode(features, frame_mask)
            ids = self.quantize(hidden).cpu()
            token_mask = token_mask.cpu()
            for row, owner in enumerate(owners[start : start + len(batch)]):
                tokens[owner].extend(ids[row][token_mask[row]].tolist())
        return tokens

    def tokenize(self, samples: np.ndarray) -> list[int]:
        """One 16 kHz mono float waveform -> its 25 Hz token ids."""
        return self.tokenize_batch([samples])[0]


def _mono_float32(audio: np.ndarray, index: int) -> np.ndarray:
    samples = np.asarray(audio)
    if samples.ndim != 1 or samples.shape[0] == 0:
        raise ValueError(f"audio {index}: expected a non-empty 1-D waveform, got shape {samples.shape}")
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio {index}: expected float samples in [-1, 1], got {samples.dtype}")
    samples = samples.astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise ValueError(f"audio {index}: waveform contains NaN or infinity")
    return samples


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _load_feature_extractor(model_dir: Path, config: SpeechTokenizerConfig) -> Any:
    from transformers import WhisperFeatureExtractor

    path = model_dir / PREPROCESSOR_FILE
    _read_json(path)  # a clear error for a missing or broken file before transformers tries
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(str(model_dir))
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; name the file
        raise CheckpointError(f"{path}: cannot build the Whisper feature extractor ({exc})") from exc
    problems = []
    if extractor.feature_size != config.num_mel_bins:
        problems.append(f"feature_size {extractor.feature_size} != num_mel_bins {config.num_mel_bins}")
    if extractor.sampling_rate != SAMPLE_RATE:
        problems.append(f"sampling_rate {extractor.sampling_rate} != {SAMPLE_RATE}")
    if getattr(extractor, "dither", 0.0):
        problems.append("dither must be 0 (it would make tokens random)")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return extractor


def _read_used_tensors(path: Path, device: torch.device, ignore: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """Read every tensor except ignored ones, straight onto `device` (the file holds ~170 MB of unused EMA data)."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {key: f.get_tensor(key) for key in f.keys() if not ignore(key)}
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types; name the file
        raise CheckpointError(f"{path}: cannot be read as safetensors ({exc})") from exc
