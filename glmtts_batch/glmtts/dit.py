"""The DiT velocity estimator of the GLM-TTS flow decoder.

A plain re-implementation of upstream `flow/dit.py` + `flow/modules.py` (zai-org/GLM-TTS
c5dc7ae) for inference. Attribute names follow upstream so that `state_dict()` keys equal
the released `flow.pt` keys (minus the `estimator.` prefix that `flow.FlowDecoder` adds).

Upstream quirks reproduced on purpose (the released weights were trained with them):
- Rotary embedding (x_transformers `RotaryEmbedding(dim_head)`) is applied to q and k
  BEFORE the head split, to the first `dim_head` channels only: head 0 is rotated, the
  other heads get no positional rotation. Pairs are interleaved: (x0, x1) -> (-x1, x0).
- The final adaLN chunks its modulation as (scale, shift), the blocks as (shift, scale, ...).
- ConvNeXt GRN normalises over TIME (dim 1 of a (B, T, C) tensor), not over channels.

Padding (batching sequences of different lengths). Upstream only ever runs one sequence
(its padding mask is all ones) and the mask only zeroes attention OUTPUT rows, so a
padded frame would still be attended to and would leak into its neighbours through the
convolutions and the GRN statistics. Here `padding_mask` (B, T) additionally
  * masks attention keys,
  * zeroes padded frames before every convolution and before the GRN statistics,
  * aligns each item's tokens to its own valid length.
With an all-ones mask every one of these is an exact no-op, so a single sequence gives
upstream's numbers, and the valid frames of a padded batch equal each item run alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glmtts_batch.errors import CheckpointError

# Upstream precomputes 4096 text positions (~80 s of mel at 50 Hz); later frames reuse the last.
TEXT_MAX_POSITIONS = 4096


@dataclass(frozen=True)
class DiTConfig:
    """Shapes of the estimator. The released `flow.pt` stores none, so `from_state_dict` infers them."""

    dim: int = 768
    depth: int = 18
    heads: int = 12
    dim_head: int = 64
    ff_mult: int = 2
    mel_dim: int = 80
    condition_dim: int = 80  # mel condition only (upstream `remove_spkr_concat_condition: True`)
    text_vocab_size: int = 100000  # embedding has vocab + 1 rows (0 is the filler id)
    text_emb_dim: int = 512
    conv_layers: int = 4
    conv_mult: int = 2
    spk_dim: int = 192  # speaker embedding fed to adaLN; 0 when `spkr_emb_adaLN` is off
    time_freq_dim: int = 256

    @classmethod
    def full(cls) -> DiTConfig:
        """The released checkpoint (upstream `Flow` defaults with `big_model: False`)."""
        return cls()

    @classmethod
    def tiny(cls) -> DiTConfig:
        """The golden-vector dims: small enough for unit tests."""
        return cls(dim=128, depth=2, heads=2, text_vocab_size=300, text_emb_dim=64)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor], *, prefix: str = "", where: str = "flow") -> DiTConfig:
        """Infer every dim from tensor shapes, so the tiny golden file and the real file load alike."""

        def shape(key: str) -> tuple[int, ...]:
            if prefix + key not in sd:
                raise CheckpointError(f"{where}: cannot infer the DiT dims, missing key {prefix + key}")
            return tuple(sd[prefix + key].shape)

        def count(stem: str) -> int:
            # number of numbered children `stem.<i>.` (gaps are caught later by the strict key check)
            start = prefix + stem + "."
            indices = {key[len(start) :].split(".", 1)[0] for key in sd if key.startswith(start)}
            return max((int(i) for i in indices if i.isdigit()), default=-1) + 1

        dim, time_freq_dim = shape("time_embed.time_mlp.0.weight")
        vocab_rows, text_emb_dim = shape("text_emb_layer.text_embed.weight")
        conv_layers = count("text_emb_layer.text_blocks")
        conv_mult = shape("text_emb_layer.text_blocks.0.pwconv1.weight")[0] // text_emb_dim if conv_layers else 2
        depth = count("transformer_blocks")
        if depth == 0:
            raise CheckpointError(f"{where}: no {prefix}transformer_blocks.* keys")
        dim_head = 2 * shape("rotary_embed.inv_freq")[0]
        inner = shape("transformer_blocks.0.attn.to_q.weight")[0]
        ff_inner = shape("transformer_blocks.0.ff.ff.0.0.weight")[0]
        mel_dim = shape("proj_out.weight")[0]
        proj_in = shape("emb_concator.proj.weight")[1]
        ada_in = shape("transformer_blocks.0.attn_norm.linear.weight")[1]
        if inner % dim_head or ff_inner % dim:
            raise CheckpointError(
                f"{where}: inconsistent DiT shapes (attention {inner}, head {dim_head}, ff {ff_inner})"
            )
        return cls(
            dim=dim,
            depth=depth,
            heads=inner // dim_head,
            dim_head=dim_head,
            ff_mult=ff_inner // dim,
            mel_dim=mel_dim,
            condition_dim=proj_in - mel_dim - text_emb_dim,
            text_vocab_size=vocab_rows - 1,
            text_emb_dim=text_emb_dim,
            conv_layers=conv_layers,
            conv_mult=conv_mult,
            spk_dim=ada_in - dim,
            time_freq_dim=time_freq_dim,
        )


# ----------------------------------------------------------------------------- helpers


def _zero_padding(x: Tensor, keep: Tensor | None) -> Tensor:
    """x (B, T, C), keep (B, T) bool -> x with padded frames zeroed (so convs see zero padding)."""
    return x if keep is None else x * keep[..., None].to(x.dtype)


def text_positions(dim: int, length: int, device: torch.device) -> Tensor:
    """Upstream `precompute_freqs_cis(dim, 4096)[pos]`: (length, dim) = cat[cos, sin] of pos * freq."""
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))
    pos = torch.arange(length, device=device).clamp(max=TEXT_MAX_POSITIONS - 1)
    angles = torch.outer(pos, freqs).float()
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def nearest_token_index(text_lengths: Tensor, frame_lengths: Tensor, n_frames: int) -> Tensor:
    """Which token each frame shows: `F.interpolate(mode="nearest")` per item, vectorised.

    text_lengths, frame_lengths (B,) -> (B, n_frames) long. PyTorch's nearest rule is
    `min(floor(i * float32(in / out)), in - 1)`; frames past an item's length get index 0.
    """
    scale = text_lengths.float() / frame_lengths.clamp(min=1).float()  # (B,) float32 like ATen
    frames = torch.arange(n_frames, device=text_lengths.device).float()
    index = torch.floor(frames[None, :] * scale[:, None]).long()
    index = torch.minimum(index, (text_lengths - 1).clamp(min=0)[:, None])
    return torch.where(frames[None, :] < frame_lengths[:, None], index, torch.zeros_like(index))


def block_attention_mask(block_pattern: list[int], length: int, device: torch.device | None = None) -> Tensor:
    """Upstream `DiT.create_attn_mask` without batch/heads: (length, length) bool, True = may attend.

    Token-block sizes become mel blocks via `int(i / 12.5 * 22050 / 256)` (upstream's constants),
    the last block size repeats. A frame sees every earlier block, its own block, and enough of
    the next one to have at least half its block (2/3 for blocks over 172 frames) of look-ahead.
    """
    blocks = [int(i / 12.5 * 22050 / 256) for i in block_pattern]
    if not blocks or min(blocks) <= 0:
        raise ValueError(f"block_pattern {block_pattern} gives empty mel blocks")
    limits = []
    start = 0
    j = 0
    while start < length:
        size = blocks[min(j, len(blocks) - 1)]
        min_future = int(size / 2) if size <= 172 else int(size / 1.5)
        for index_in_block in range(min(size, length - start)):
            look_future = size - 1 - index_in_block
            delta = max(0, min_future - look_future)
            limits.append(start + size + delta)
        start += size
        j += 1
    limit = torch.tensor(limits[:length], device=device)
    return torch.arange(length, device=device)[None, :] < limit[:, None]


def _rotate_first(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, T, C); cos/sin (T, R) with interleaved pairs. Rotates x[..., :R] only (upstream quirk)."""
    r = cos.shape[-1]
    head, rest = x[..., :r], x[..., r:]
    pairs = head.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat((head * cos + rotated * sin, rest), dim=-1)


# ----------------------------------------------------------------------------- modules


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """t (B,) in [0, 1] -> (B, dim). Sinusoids of 1000 t: sin half then cos half."""
        half = self.freq_dim // 2
        step = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -step)
        angles = 1000 * t.float()[:, None] * freqs[None, :]
        first: nn.Linear = self.time_mlp[0]  # type: ignore[assignment]  # Sequential items are Modules to mypy
        emb = torch.cat((angles.sin(), angles.cos()), dim=-1).to(first.weight.dtype)
        return self.time_mlp(emb)


class GRN(nn.Module):
    """Global response normalisation over time; padded frames are left out of the statistics."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        gx = torch.norm(_zero_padding(x, keep), p=2, dim=1, keepdim=True)  # (B, 1, C)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """x (B, T, C)."""
        h = self.dwconv(_zero_padding(x, keep).transpose(1, 2)).transpose(1, 2)
        h = self.act(self.pwconv1(self.norm(h)))
        h = self.pwconv2(self.grn(h, keep))
        return x + h


class TextEmbedding(nn.Module):
    """Speech tokens -> (B, T, text_emb_dim) aligned to T mel frames (`interpolate_token`)."""

    def __init__(self, vocab_size: int, dim: int, conv_layers: int, conv_mult: int) -> None:
        super().__init__()
        self.text_embed = nn.Embedding(vocab_size + 1, dim)
        self.text_blocks = nn.ModuleList([ConvNeXtV2Block(dim, dim * conv_mult) for _ in range(conv_layers)])

    def forward(
        self, text: Tensor, text_lengths: Tensor, frame_lengths: Tensor, n_frames: int, keep: Tensor | None
    ) -> Tensor:
        index = nearest_token_index(text_lengths, frame_lengths, n_frames)  # (B, T)
        h = self.text_embed(torch.gather(text, 1, index))
        if len(self.text_blocks):
            h = h + text_positions(h.shape[-1], n_frames, h.device).to(h.dtype)
            for block in self.text_blocks:
                h = block(h, keep)
        return h


class ConvPositionEmbedding(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 31, groups: int = 16) -> None:
        super().__init__()
        # Indices 1 and 3 are upstream's Mish activations (no weights).
        self.conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2),
            nn.Mish(),
            nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2),
            nn.Mish(),
        )

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        h = _zero_padding(x, keep).transpose(1, 2)
        h = self.conv1d[1](self.conv1d[0](h))
        if keep is not None:
            h = h * keep[:, None, :].to(h.dtype)
        h = self.conv1d[3](self.conv1d[2](h))
        return h.transpose(1, 2)


class EmbeddingConcater(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.conv_pos_embed = ConvPositionEmbedding(dim)

    def forward(self, x: Tensor, cond: Tensor, text: Tensor, keep: Tensor | None) -> Tensor:
        h = self.proj(torch.cat((x, cond, text), dim=-1))
        return self.conv_pos_embed(h, keep) + h


class RotaryEmbedding(nn.Module):
    """x_transformers' rotary frequencies; `inv_freq` is a persistent buffer in the checkpoint."""

    def __init__(self, dim_head: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head)))

    def forward(self, length: int) -> tuple[Tensor, Tensor]:
        """-> cos, sin (T, dim_head), each frequency repeated for its (interleaved) pair. Always fp32."""
        inv_freq: Tensor = self.inv_freq  # type: ignore[assignment]  # a registered buffer
        t = torch.arange(length, device=inv_freq.device).float()
        freqs = t[:, None] * inv_freq.float()[None, :]
        freqs = torch.stack((freqs, freqs), dim=-1).flatten(-2)
        return freqs.cos(), freqs.sin()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # upstream's index 1 is a dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], keep: Tensor | None, attn_mask: Tensor | None) -> Tensor:
        """x (B, T, C); attn_mask (B, 1, T, T) bool or None -> (B, T, C), padded rows zeroed."""
        b, t, _ = x.shape
        cos, sin = rope
        q = _rotate_first(self.to_q(x), cos.to(x.dtype), sin.to(x.dtype))
        k = _rotate_first(self.to_k(x), cos.to(x.dtype), sin.to(x.dtype))
        v = self.to_v(x)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))
        return _zero_padding(out, keep)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        # Key layout `ff.0.0` / `ff.2` as upstream: (Linear, GELU-tanh), dropout, Linear.
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(approximate="tanh")),
            nn.Identity(),
            nn.Linear(dim * mult, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x)


class AdaLayerNormZero(nn.Module):
    """Modulation for one block: (shift, scale, gate) for attention, then for the MLP."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, dim * 6)

    def forward(self, cond: Tensor) -> tuple[Tensor, ...]:
        return torch.chunk(self.linear(F.silu(cond)), 6, dim=1)


class AdaLayerNormZeroFinal(nn.Module):
    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, dim * 2)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = torch.chunk(self.linear(F.silu(cond)), 2, dim=1)  # (scale, shift): upstream order
        return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale)[:, None, :] + shift[:, None, :]


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, cond_dim: int) -> None:
        super().__init__()
        self.attn_norm = AdaLayerNormZero(dim, cond_dim)
        self.attn = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim, ff_mult)

    def forward(
        self, x: Tensor, cond: Tensor, rope: tuple[Tensor, Tensor], keep: Tensor | None, attn_mask: Tensor | None
    ) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(cond)
        norm = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        x = x + gate_msa[:, None] * self.attn(norm, rope, keep, attn_mask)
        norm = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(norm)


class DiT(nn.Module):
    """Velocity estimator v(x_t, t | mel condition, speech tokens, speaker)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.time_embed = TimestepEmbedding(c.dim, c.time_freq_dim)
        self.text_emb_layer = TextEmbedding(c.text_vocab_size, c.text_emb_dim, c.conv_layers, c.conv_mult)
        self.emb_concator = EmbeddingConcater(c.mel_dim + c.condition_dim + c.text_emb_dim, c.dim)
        self.rotary_embed = RotaryEmbedding(c.dim_head)
        self.transformer_blocks = nn.ModuleList(
            [DiTBlock(c.dim, c.heads, c.dim_head, c.ff_mult, c.dim + c.spk_dim) for _ in range(c.depth)]
        )
        self.norm_out = AdaLayerNormZeroFinal(c.dim, c.dim + c.spk_dim)
        self.proj_out = nn.Linear(c.dim, c.mel_dim)

    def forward(
        self,
        x: Tensor,
        cond: Tensor,
        text: Tensor,
        t: Tensor,
        spk: Tensor | None = None,
        *,
        padding_mask: Tensor | None = None,
        text_lengths: Tensor | None = None,
        block_mask: Tensor | None = None,
    ) -> Tensor:
        """One velocity evaluation.

        x, cond: (B, T, mel_dim), (B, T, condition_dim); text: (B, N) token ids (0..vocab);
        t: (B,) or (1,) flow time; spk: (B, spk_dim) L2-normalised speaker embedding (zeros for
        the unconditional pass); padding_mask: (B, T) bool/int, 1 = valid frame (None: all valid);
        text_lengths: (B,) valid tokens per item (None: all N); block_mask: (T, T) bool, True =
        may attend (block-causal streaming variant) or None for full attention.
        Returns (B, T, mel_dim).
        """
        b, n_frames, _ = x.shape
        keep = None
        frame_lengths = torch.full((b,), n_frames, device=x.device, dtype=torch.long)
        if padding_mask is not None:
            padding_mask = padding_mask.bool()
            frame_lengths = padding_mask.sum(dim=1)
            if not bool(padding_mask.all()):
                keep = padding_mask
        if text_lengths is None:
            text_lengths = torch.full((b,), text.shape[1], device=x.device, dtype=torch.long)

        emb = self.time_embed(t.expand(b) if t.shape[0] == 1 else t)
        if self.config.spk_dim:
            if spk is None:
                raise ValueError("this estimator needs a speaker embedding (spkr_emb_adaLN)")
            emb = torch.cat([emb, spk.to(emb.dtype)], dim=-1)

        text_h = self.text_emb_layer(text, text_lengths, frame_lengths, n_frames, keep)
        h = self.emb_concator(x, cond, text_h, keep)
        rope = self.rotary_embed(n_frames)

        attn_mask = None  # None keeps SDPA on its unmasked path: upstream's numbers
        if block_mask is not None:
            attn_mask = block_mask[None, None]
        if keep is not None:
            key_mask = keep[:, None, None, :]
            attn_mask = key_mask if attn_mask is None else attn_mask & key_mask

        for block in self.transformer_blocks:
            h = block(h, emb, rope, keep, attn_mask)
        return self.proj_out(self.norm_out(h, emb))
