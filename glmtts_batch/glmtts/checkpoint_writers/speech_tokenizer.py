"""Random Whisper-VQ speech tokenizer folders in the released layout.

`config.json` and `preprocessor_config.json` with the released keys, and a
`model.safetensors` holding every released key, including those the loader ignores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from glmtts_batch.glmtts.checkpoint_writers.safetensors_stream import (
    write_safetensors_stream,
)
from glmtts_batch.glmtts.speech_tokenizer import (
    CHECKPOINT_PREFIX,
    CHUNK_SAMPLES,
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    SAMPLE_RATE,
    WEIGHTS_FILE,
    SpeechTokenizerConfig,
)


def write_random_speech_tokenizer(
    out_dir: str | Path,
    config: SpeechTokenizerConfig,
    seed: int = 0,
    *,
    layers_in_file: int | None = None,
    name: str = "custom",
) -> Path:
    """Write `config.json`, `preprocessor_config.json` and a random `model.safetensors` to `out_dir`.

    The weights use the released key layout, including the keys the loader ignores (final
    `layer_norm`, layers >= quantize_position, `ema_count`/`ema_weight`, `embed_positions2`).
    `layers_in_file` defaults to every encoder layer (like the golden file); the full preset
    passes `quantize_position`: the released file is 1.63 GB, which is exactly layers
    0..15 plus codebook, EMA buffers and position tables in float32 (all 32 would be 2.9 GB).
    `name` goes into `_name_or_path`.
    Tensors are generated and written one at a time, so peak memory is about one codebook.
    """
    if layers_in_file is None:
        layers_in_file = config.encoder_layers
    if not config.quantize_position <= layers_in_file <= config.encoder_layers:
        raise ValueError(f"layers_in_file must be in [{config.quantize_position}, {config.encoder_layers}]")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config_json(config, name), indent=2) + "\n")
    (out_dir / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor_json(config), indent=2) + "\n")
    specs = released_tensor_layout(config, layers_in_file)
    write_safetensors_stream(out_dir / WEIGHTS_FILE, specs, _RandomTensors(config, seed))
    return out_dir


def released_tensor_layout(config: SpeechTokenizerConfig, layers_in_file: int) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every float32 tensor in a released-layout `model.safetensors`."""
    d, ffn, p = config.d_model, config.encoder_ffn_dim, CHECKPOINT_PREFIX
    specs = [
        (p + "conv1.weight", (d, config.num_mel_bins, 3)),
        (p + "conv1.bias", (d,)),
        (p + "conv2.weight", (d, d, 3)),
        (p + "conv2.bias", (d,)),
        (p + "embed_positions.weight", (config.max_source_positions, d)),
    ]
    for i in range(layers_in_file):
        layer = f"{p}layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs.append((f"{layer}self_attn.{proj}.weight", (d, d)))
            if proj != "k_proj":
                specs.append((f"{layer}self_attn.{proj}.bias", (d,)))
        specs += [
            (layer + "self_attn_layer_norm.weight", (d,)),
            (layer + "self_attn_layer_norm.bias", (d,)),
            (layer + "fc1.weight", (ffn, d)),
            (layer + "fc1.bias", (ffn,)),
            (layer + "fc2.weight", (d, ffn)),
            (layer + "fc2.bias", (d,)),
            (layer + "final_layer_norm.weight", (d,)),
            (layer + "final_layer_norm.bias", (d,)),
        ]
    pooled_positions = math.ceil(config.max_source_positions / config.pooling_kernel_size)
    # Order matters for generation: ema_weight is derived from codebook and ema_count,
    # embed_positions2 from embed_positions.
    specs += [
        (p + "layer_norm.weight", (d,)),
        (p + "layer_norm.bias", (d,)),
        (p + "codebook.weight", (config.quantize_vocab_size, d)),
        (p + "ema_count", (config.quantize_vocab_size,)),
        (p + "ema_weight", (config.quantize_vocab_size, d)),
        (p + "embed_positions2.weight", (pooled_positions, d)),
    ]
    return specs


class _RandomTensors:
    """Draws each tensor of `released_tensor_layout` in order from one seeded generator."""

    def __init__(self, config: SpeechTokenizerConfig, seed: int) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)
        self.kept: dict[str, torch.Tensor] = {}  # tensors later ones are derived from

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    def __call__(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        name = key[len(CHECKPOINT_PREFIX) :]
        if name == "embed_positions.weight":
            # Noise on the sinusoids, so a loader that regenerates them instead of reading fails tests.
            t = _sinusoids(*shape) + 0.05 * self._randn(*shape)
            self.kept[name] = t
        elif name == "embed_positions2.weight":
            t = self.kept.pop("embed_positions.weight")[: shape[0]].clone()  # upstream's initialisation
        elif name == "codebook.weight":
            t = self._randn(*shape)
            self.kept[name] = t
        elif name == "ema_count":
            t = torch.rand(shape, generator=self.generator) * 100 + 1
            self.kept[name] = t
        elif name == "ema_weight":  # ema_weight / ema_count == codebook, as in training
            t = self.kept.pop("codebook.weight") * self.kept.pop("ema_count")[:, None]
        elif name.endswith("layer_norm.weight"):
            t = 1 + 0.1 * self._randn(*shape)
        elif name.endswith(".bias"):
            t = 0.1 * self._randn(*shape)
        else:  # conv kernels and linear matrices: unit-variance outputs
            fan_in = math.prod(shape[1:])
            t = self._randn(*shape) / math.sqrt(fan_in)
        return t.contiguous()


def _sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table: sin over the first half of the channels, cos over the second."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def config_json(config: SpeechTokenizerConfig, name: str) -> dict[str, Any]:
    """`config.json` with the released file's keys; dims from `config`, the rest as released."""
    return {
        "_name_or_path": f"glmtts-batch-random-whisper-vq-{name}",
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "apply_spec_augment": False,
        "architectures": ["WhisperVQForConditionalGeneration"],
        "attention_dropout": 0.0,
        "begin_suppress_tokens": [220, 50257],
        "bos_token_id": 50257,
        "classifier_proj_size": 256,
        "d_model": config.d_model,
        "decoder_attention_heads": config.encoder_attention_heads,
        "decoder_ffn_dim": config.encoder_ffn_dim,
        "decoder_layerdrop": 0.0,
        "decoder_layers": config.encoder_layers,
        "decoder_start_token_id": 50258,
        "dropout": 0.0,
        "encoder_attention_heads": config.encoder_attention_heads,
        "encoder_causal_attention": False,
        "encoder_causal_convolution": False,
        "encoder_ffn_dim": config.encoder_ffn_dim,
        "encoder_layerdrop": 0.0,
        "encoder_layers": config.encoder_layers,
        "eos_token_id": 50257,
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "mask_feature_length": 10,
        "mask_feature_min_masks": 0,
        "mask_feature_prob": 0.0,
        "mask_time_length": 10,
        "mask_time_min_masks": 2,
        "mask_time_prob": 0.05,
        "max_length": 448,
        "max_source_positions": config.max_source_positions,
        "max_target_positions": 448,
        "median_filter_width": 7,
        "model_type": "whisper",
        "num_hidden_layers": config.encoder_layers,
        "num_mel_bins": config.num_mel_bins,
        "pad_token_id": 50256,
        "pitch_control": "fcpe_f0",
        "pitch_loss_scale": 2.0,
        "pitch_upsample_scale": 2,
        "pooling_kernel_size": config.pooling_kernel_size,
        "pooling_position": config.pooling_position,
        "pooling_type": config.pooling_type,
        "quantize_causal_block_size": config.quantize_causal_block_size,
        "quantize_causal_encoder": False,
        "quantize_commit_coefficient": 0.25,
        "quantize_ema_decay": 0.99,
        "quantize_encoder_only": False,
        "quantize_hidden_dim": None,
        "quantize_loss_scale": 10.0,
        "quantize_position": config.quantize_position,
        "quantize_restart_interval": 100,
        "quantize_vocab_size": config.quantize_vocab_size,
        "scale_embedding": False,
        "skip_language_detection": True,
        "torch_dtype": "float32",
        "transformers_version": "4.44.1",
        "use_cache": True,
        "use_weighted_layer_sum": False,
        "vocab_size": 51866,
    }


def preprocessor_json(config: SpeechTokenizerConfig) -> dict[str, Any]:
    """The released `preprocessor_config.json` (Whisper-large-v3's 128-bin extractor)."""
    return {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": config.num_mel_bins,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": CHUNK_SAMPLES,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": SAMPLE_RATE,
    }
