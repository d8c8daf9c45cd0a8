"""The speech-token Llama in plain PyTorch, with a static KV cache for batched decoding.

State-dict keys are the released `llm/` keys unchanged (`model.embed_tokens.weight`,
`model.layers.N.self_attn.q_proj.weight`, ..., `model.norm.weight`); the embeddings are
tied, so there is no output layer. Only what the released config uses is implemented:
default RoPE (theta from the config, no scaling), grouped-query attention, RMSNorm,
SiLU MLP, no biases (`LlmConfig.from_json` refuses anything else).

Every operation mirrors transformers' `LlamaModel` op for op (same expressions, same
dtypes), so fp32 results are bit-identical to it at equal shapes; transformers itself is
only a test reference.

Two attention modes, because CPU and GPU want different things:

- exact (`prefill`, `decode`): each row attends over exactly its own keys, one SDPA call
  per row, as a batch-1 run does. Padded keys would change the length of the reductions
  inside SDPA and so the rounding. The projections run once for all rows: on the CPU a
  matrix product's rows are independent of the other rows once it has enough rows
  (measured with MKL: from 4 rows on one thread, from 12 on two; 1..3 rows take other
  kernels), so rows are padded to `min_rows`. Result: a row's numbers never depend on
  its batch-mates, their number, lengths or order.
- static (`decode_static`): all slots `[0, S)` at once with a padding mask over the whole
  cache: fixed shapes, so a decode step can be captured as a CUDA graph.

Three ways to run the CPU projections, all batch-invariant:

- default: `F.linear` (MKL) on >= 16 rows. Slow: MKL repacks the weight per call.
- `pack_for_cpu()`: oneDNN with weights packed once, >= 2 rows. The CPU speed setting
  (about 7x the tokens/s of today's batch-1 path at 8-16 rows, bench/RESULTS.md).
- `rows_apart = True`: every row its own batch-1 step, i.e. matrix-vector products in
  decode, exactly what today's transformers path computes: bit-identical tokens, no
  batching gain. A matrix-vector product rounds differently from any matrix-matrix
  product (different summation order), so no batched kernel can equal today's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glmtts_batch.glmtts.llm import LlmConfig, read_llm_checkpoint, resolve_dtype
from glmtts_batch.glmtts.weights import load_module

if TYPE_CHECKING:
    from glmtts_batch.glmtts.generate import CudaGraphDecoder

# Rows a CPU matrix product needs before each row's result stops depending on how many
# rows there are (see the module docstring; 16 leaves room for up to 4 threads). oneDNN's
# packed product (`SpeechLlama.pack_for_cpu`) is row-independent from 2 rows on.
MIN_GEMM_ROWS = 16
MIN_PACKED_ROWS = 2


def pad_rows(x: Tensor, rows: int = MIN_GEMM_ROWS) -> Tensor:
    """(n, ...) -> (max(n, rows), ...), zero rows appended."""
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])


@dataclass
class KVCache:
    """One layer's preallocated keys and values: (slots, kv_heads, max_seq, head_dim) each."""

    k: Tensor
    v: Tensor


class Linear(nn.Linear):
    """`nn.Linear` (same keys) whose weight can be swapped for a oneDNN-packed copy.

    On the CPU, MKL's many-row product repacks the weight on every call: 16 rows of a
    6144 x 2048 weight take 10x the time of one row. The packed copy is made once and
    16 rows then cost about 3x one row (measured, bench/bench_lm.py). Packing drops the
    dense weight (inference only; the module then has no `weight` in its state dict).
    """

    packed: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return F.linear(x, self.weight)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def pack(self) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), MIN_GEMM_ROWS)
        del self.weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(dtype)


class FeedForward(nn.Module):
    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        h, ff = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(h, ff, bias=False)
        self.up_proj = Linear(h, ff, bias=False)
        self.down_proj = Linear(ff, h, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """positions (B, T) int64 -> cos, sin (B, T, head_dim) in `dtype`, computed in fp32.

    Called once per row with that row's own shape: a batch-1 run computes cos/sin on
    (1, T, d), and vectorised cos differs from the scalar one in the last bit, so the
    element count (which decides what the vector tail is) must not depend on the batch.
    """
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.scale = d**-0.5
        self.q_proj = Linear(h, self.n_heads * d, bias=False)
        self.k_proj = Linear(h, self.n_kv * d, bias=False)
        self.v_proj = Linear(h, self.n_kv * d, bias=False)
        self.o_proj = Linear(self.n_heads * d, h, bias=False)
        self.cache: KVCache | None = None  # set by SpeechLlama.setup_cache; not a buffer

    @property
    def kv(self) -> KVCache:
        if self.cache is None:
            raise RuntimeError("no KV cache: call SpeechLlama.setup_cache first")
        return self.cache

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D), cos/sin (B, T, d) -> q (B, H, T, d), k, v (B, Hkv, T, d), rotated."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, mask: Tensor | None = None) -> Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, is_causal=causal, enable_gqa=True
        )

    def prefill(self, x: Tensor, cos: Tensor, sin: Tensor, spans: Sequence[tuple[int, int, int]]) -> Tensor:
        """Packed rows x (1, N, D); spans (slot, start, length) into N. Writes the cache."""
        q, k, v = self._qkv(x, cos, sin)  # (1, H, N, d), (1, Hkv, N, d)
        out = []
        for slot, start, length in spans:
            rows = slice(start, start + length)
            self.kv.k[slot, :, :length] = k[0, :, rows]
            self.kv.v[slot, :, :length] = v[0, :, rows]
            out.append(self._sdpa(q[:, :, rows], k[:, :, rows], v[:, :, rows], causal=length > 1))
        y = torch.cat(out, dim=2).transpose(1, 2)  # (1, N, H, d)
        return self.o_proj(y.reshape(1, x.shape[1], -1))

    def decode(self, x: Tensor, cos: Tensor, sin: Tensor, slots: Sequence[int], positions: Sequence[int]) -> Tensor:
        """x (M, 1, D), M >= len(slots): rows beyond the slots are padding. Exact attention."""
        q, k, v = self._qkv(x, cos, sin)  # (M, H, 1, d), (M, Hkv, 1, d)
        out = torch.zeros_like(q)
        for row, (slot, pos) in enumerate(zip(slots, positions)):
            self.kv.k[slot, :, pos] = k[row, :, 0]
            self.kv.v[slot, :, pos] = v[row, :, 0]
            keys = self.kv.k[slot : slot + 1, :, : pos + 1]  # (1, Hkv, pos + 1, d)
            values = self.kv.v[slot : slot + 1, :, : pos + 1]
            out[row : row + 1] = self._sdpa(q[row : row + 1], keys, values, causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], 1, -1))

    def decode_static(self, x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """x (S, 1, D) for slots [0, S); positions (S,); mask (S, 1, 1, max_seq) bool."""
        q, k, v = self._qkv(x, cos, sin)
        s = x.shape[0]
        slots = torch.arange(s, device=x.device)
        self.kv.k[slots, :, positions] = k[:, :, 0]
        self.kv.v[slots, :, positions] = v[:, :, 0]
        y = self._sdpa(q, self.kv.k[:s], self.kv.v[:s], causal=False, mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(s, 1, -1))


class Block(nn.Module):
    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = FeedForward(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: Tensor, attend) -> Tensor:
        """`attend(normed x) -> attention output`: the mode (prefill/decode/static) is the caller's."""
        h = x + attend(self.self_attn, self.input_layernorm(x))
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaBody(nn.Module):
    """Holds the released `model.*` keys."""

    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class SpeechLlama(nn.Module):
    """The LM: `load`, then `setup_cache`, then `prefill` new rows and `decode` steps."""

    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaBody(config)
        self.max_slots = 0
        self.max_seq = 0
        self.min_rows = MIN_GEMM_ROWS  # rows every projection runs on (see pad_rows)
        # True: decode each row as its own batch-1 step, taking the matrix-vector kernels
        # of a batch-1 run: bit-identical to today's transformers path, no batching gain.
        self.rows_apart = False
        self.graph_decoder: CudaGraphDecoder | None = None  # graphs over the current cache (CUDA only)

    @classmethod
    def from_checkpoint(
        cls, llm_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32
    ) -> SpeechLlama:
        """Load a released (or random) `llm/` folder onto `device` in `dtype`; strict keys."""
        device, dtype = torch.device(device), resolve_dtype(dtype)
        config, weights, state = read_llm_checkpoint(llm_dir, device, dtype)
        return load_module(lambda: cls(config), state, where=str(weights), device=device, dtype=dtype)

    def pack_for_cpu(self) -> SpeechLlama:
        """Swap every projection's weight for a oneDNN-packed copy (fp32 CPU, inference):
        the batched speed setting on CPU. Rounds differently from MKL, so tokens equal
        those of an unpacked model only up to last-bit differences, and stay batch-invariant."""
        if self.device.type != "cpu" or self.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
            raise ValueError("pack_for_cpu needs a float32 model on a CPU with oneDNN")
        for module in self.modules():
            if isinstance(module, Linear) and module.packed is None:
                module.pack()
        self.min_rows = MIN_PACKED_ROWS
        return self

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def attentions(self) -> list[Attention]:
        """Every layer's attention (typed: ModuleList items are plain Modules to mypy)."""
        return [block.self_attn for block in self.model.layers if isinstance(block, Block)]

    def setup_cache(self, max_slots: int, max_seq: int) -> None:
        """Preallocate every layer's cache: (max_slots, kv_heads, max_seq, head_dim), zeros."""
        c = self.config
        shape = (max_slots, c.num_key_value_heads, max_seq, c.head_dim)
        for attention in self.attentions():
            k, v = (torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(2))
            attention.cache = KVCache(k, v)
        self.max_slots, self.max_seq = max_slots, max_seq
        self.graph_decoder = None  # captured graphs hold the old cache tensors
        d = c.head_dim  # transformers' default RoPE frequencies, same expression
        self._inv_freq = (1.0 / (c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float) / d))).to(self.device)

    def _rope_rows(self, positions: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """One (1, T_i) position row each -> cos, sin concatenated on dim 1 (1, sum T_i, d)."""
        parts = [rope(p, self._inv_freq, self.dtype) for p in positions]
        return torch.cat([c for c, _ in parts], dim=1), torch.cat([s for _, s in parts], dim=1)

    @torch.inference_mode()
    def prefill(self, rows: Sequence[Sequence[int]], slots: Sequence[int]) -> Tensor:
        """Prompt ids of newly admitted rows -> last-position hidden (R, D), after the norm.

        Rows are packed into one sequence (no padded FLOPs) and each writes its keys and
        values into its slot, positions [0, len). The packed sequence is padded to
        `min_rows` rows so the projections always take the many-row kernels.
        """
        self._check_fits(rows, slots)
        if self.rows_apart and len(rows) > 1:
            return torch.cat([self.prefill(rows[i : i + 1], slots[i : i + 1]) for i in range(len(rows))])
        lengths = [len(r) for r in rows]
        spans, start = [], 0
        for slot, n in zip(slots, lengths):
            spans.append((slot, start, n))
            start += n
        pad = 0 if self.rows_apart else max(0, self.min_rows - start)
        ids = torch.tensor([[t for r in rows for t in r] + [0] * pad], dtype=torch.long, device=self.device)
        x = self.model.embed_tokens(ids)  # (1, N + pad, D)
        positions = [torch.arange(n, device=self.device)[None] for n in [*lengths, pad] if n]
        cos, sin = self._rope_rows(positions)

        def attend(attn: Attention, h: Tensor) -> Tensor:
            y = attn.prefill(h[:, :start], cos[:, :start], sin[:, :start], spans)
            return torch.cat([y, torch.zeros_like(h[:, start:])], dim=1) if pad else y

        for block in self.model.layers:
            x = block(x, attend)
        x = self.model.norm(x)
        last = torch.tensor([s + n - 1 for _, s, n in spans], device=self.device)
        return x[0, last]

    @torch.inference_mode()
    def decode(self, ids: Tensor, slots: Sequence[int], positions: Sequence[int]) -> Tensor:
        """One step, exact attention: row i feeds id `ids[i]` to slot `slots[i]` at
        `positions[i]`. ids (n,) -> hidden (n, D) after the final norm. Rows are padded to
        `min_rows` internally, so n = 1 takes the same kernels as n = 16; with
        `rows_apart` each row runs as its own batch-1 step instead."""
        n = ids.shape[0]
        if len(slots) != n or len(positions) != n:
            raise ValueError("decode: one slot and one position per id")
        if any(p >= self.max_seq for p in positions):
            raise ValueError(f"decode: position beyond the cache ({self.max_seq})")
        if self.rows_apart:
            return torch.cat(
                [self._decode_rows(ids[i : i + 1], slots[i : i + 1], positions[i : i + 1], 1) for i in range(n)]
            )
        return self._decode_rows(ids, slots, positions, self.min_rows)

    def _decode_rows(self, ids: Tensor, slots: Sequence[int], positions: Sequence[int], min_rows: int) -> Tensor:
        n = ids.shape[0]
        x = pad_rows(self.model.embed_tokens(ids), min_rows)[:, None]  # (M, 1, D), M >= min_rows
        rows = [torch.tensor([[p]], device=self.device) for p in positions]
        rows += [torch.zeros(1, 1, dtype=torch.long, device=self.device)] * (x.shape[0] - n)
        cos, sin = (t.transpose(0, 1) for t in self._rope_rows(rows))  # (M, 1, d)
        for block in self.model.layers:
            x = block(x, lambda attn, h: attn.decode(h, cos, sin, slots, positions))
        return self.model.norm(x)[:n, 0]

    def decode_static(self, ids: Tensor, positions: Tensor) -> Tensor:
        """One step over slots [0, S) with fixed shapes (CUDA graphs). ids, positions (S,).
        Rows of free slots compute on whatever they are given; their output is ignored."""
        x = self.model.embed_tokens(ids[:, None])  # (S, 1, D)
        cos, sin = rope(positions[:, None], self._inv_freq, self.dtype)  # (S, 1, d)
        keys = torch.arange(self.max_seq, device=ids.device)
        mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # (S, 1, 1, max_seq)
        for block in self.model.layers:
            x = block(x, lambda attn, h: attn.decode_static(h, cos, sin, positions, mask))
        return self.model.norm(x)[:, 0]

    def candidate_logits(self, hidden: Tensor, ats: int, ate: int, eoa: int) -> Tensor:
        """(M, D) -> float32 logits (M, ate - ats + 2): audio ids ats..ate, then eoa.

        Only these rows of the tied table are multiplied. Under half-precision weights a
        float32 copy of them (268 MB at full size) keeps the logits unrounded: bf16 logits
        would move in steps of 0.125 at |logit| 16-32 and change the distribution.
        """
        n, table = hidden.shape[0], self.model.embed_tokens.weight
        if self.rows_apart and n > 1:
            return torch.cat([self.candidate_logits(hidden[i : i + 1], ats, ate, eoa) for i in range(n)])
        if self.min_rows == MIN_PACKED_ROWS:  # packed model: pack the candidate rows too
            packed = self._candidate_rows(ats, ate, eoa, packed=True)
            return torch.ops.mkldnn._linear_pointwise(pad_rows(hidden, self.min_rows), packed, None, "none", [], "")[:n]
        hidden = pad_rows(hidden, 1 if self.rows_apart else self.min_rows)  # same kernels whatever n is
        if table.dtype == torch.float32:
            audio = hidden @ table[ats : ate + 1].T
            return torch.cat([audio, hidden @ table[eoa : eoa + 1].T], dim=-1)[:n]
        return (hidden.float() @ self._candidate_rows(ats, ate, eoa).T)[:n]

    def _candidate_rows(self, ats: int, ate: int, eoa: int, packed: bool = False) -> Tensor:
        """Float32 copy of the candidate rows of the table (V', D), cached; oneDNN-packed if asked."""
        key = (ats, ate, eoa, packed)
        if getattr(self, "_candidates", (None,))[0] != key:
            table = self.model.embed_tokens.weight
            rows = torch.cat([table[ats : ate + 1], table[eoa : eoa + 1]]).float()
            if packed:
                rows = torch.ops.mkldnn._reorder_linear_weight(rows, MIN_GEMM_ROWS)
            self._candidates = (key, rows)
        return self._candidates[1]

    def _check_fits(self, rows: Sequence[Sequence[int]], slots: Sequence[int]) -> None:
        if not self.max_slots:
            raise RuntimeError("call setup_cache before prefill/decode")
        if len(rows) != len(slots) or not rows or any(not r for r in rows):
            raise ValueError("prefill: one non-empty id row per slot")
        if any(not 0 <= s < self.max_slots for s in slots) or len(set(slots)) != len(slots):
            raise ValueError(f"prefill: slots must be distinct and in [0, {self.max_slots})")
        if max(len(r) for r in rows) > self.max_seq:
            raise ValueError(f"prefill: a prompt of {max(len(r) for r in rows)} ids exceeds the cache ({self.max_seq})")

    def release_cache(self) -> None:
        """Drop the KV cache (and any graphs over it), e.g. after an out-of-memory error."""
        for attention in self.attentions():
            attention.cache = None
        self.max_slots = self.max_seq = 0
        self.graph_decoder = None

    def grow_cache(self, max_seq: int) -> None:
        """Lengthen every layer's cache to `max_seq` positions, keeping what it holds."""
        if max_seq <= self.max_seq:
            return
        old, n = [attention.kv for attention in self.attentions()], self.max_seq
        self.setup_cache(self.max_slots, max_seq)
        for attention, cache in zip(self.attentions(), old):
            attention.kv.k[:, :, :n] = cache.k
            attention.kv.v[:, :, :n] = cache.v
