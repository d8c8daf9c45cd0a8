"""The speech-token language model: a Llama that continues text with speech tokens.

The released `llm/` folder is a plain Hugging Face Llama (config.json + sharded
safetensors, tied embeddings, no `lm_head` key). `SpeechLM` wraps transformers'
`LlamaModel` under the attribute `model`, so its state-dict keys are the released ones
(`model.embed_tokens.weight`, `model.layers.N.…`, `model.norm.weight`), and computes
logits with the embedding table itself (tied weights).

Generation follows upstream `GLMTTS.inference` (pretrain mode):

    input ids = prompt_text_ids + text_ids + [boa] + (prompt_speech_tokens + ats)

embedded with the LLM's own table, decoded one token at a time with a KV cache, eoa
masked for the first `min_len = int(2 * len(text_ids))` steps, at most
`max_len = int(20 * len(text_ids))` steps, returned tokens `id - ats`.

Deliberate differences from upstream:

- Candidates are only the audio ids `[ats, ate]` plus eoa. Upstream samples the whole
  vocabulary, prints a warning for out-of-range tokens and then fails in the flow;
  random-weight checkpoints hit that constantly. Only these rows of the (tied) output
  matrix are multiplied, which also saves two thirds of the output projection.
  The softmax is over the candidates, which for the trained model is the same
  distribution up to the negligible mass it gives to text tokens.
- Prompt speech tokens always get the `ats` offset. Upstream skips the offset when the
  prompt *text* is empty, feeding raw codebook indices as text ids (a bug).

Sampling: `GenerationOptions.sampling_rng="fast"` (default) draws on the device without
host syncs (`sampling.py`); `"upstream"` spends random numbers exactly as upstream does,
over the full vocabulary with the non-candidate ids at -inf (`reference_sampling.py`), so a
seed gives upstream's tokens, at the cost of a host sync per step.

Long text (`generate_long`) follows upstream `glmtts_inference.generate_long` and its
prompt-history cache; the pruning rule is the pure function `prune_prompt_history`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.reference_sampling import audio_only_logits, generate_reference
from glmtts_batch.glmtts.sampling import RasParams, ras_sample, topk_sample
from glmtts_batch.glmtts.text.tokenizer import SpecialTokens
from glmtts_batch.glmtts.weights import load_module, read_state_dict
from glmtts_batch.settings import run_only

# Upstream `MAX_LLM_SEQ_INP_LEN`: budget for cached + expected speech tokens in the prompt.
PROMPT_HISTORY_LIMIT = 750
TRANSFORMERS_VERSION = "4.47.1"  # as written in the released config files

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}") from None


# --------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class LlmConfig:
    """Shapes of the Llama. `full()` is the released checkpoint."""

    vocab_size: int = 98304
    hidden_size: int = 2048
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int = 128
    intermediate_size: int = 6144
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192

    @classmethod
    def full(cls, vocab_size: int = 98304) -> LlmConfig:
        return cls(vocab_size=vocab_size)

    @classmethod
    def tiny(cls, vocab_size: int = 98304) -> LlmConfig:
        return cls(
            vocab_size=vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
        )

    def to_json(self) -> dict:
        """The config.json a released checkpoint of these shapes has (same keys, same order)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": None,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "transformers_version": TRANSFORMERS_VERSION,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_json(cls, path: str | Path) -> LlmConfig:
        """Read an `llm/config.json`, refusing what this runtime does not implement."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read the LLM config ({exc})") from exc
        problems = []
        if raw.get("model_type") != "llama":
            problems.append(f"model_type is {raw.get('model_type')!r}, expected 'llama'")
        if raw.get("tie_word_embeddings", False) is not True:
            problems.append("tie_word_embeddings must be true (the released layout has no lm_head)")
        if raw.get("rope_scaling") not in (None, {}):
            problems.append(f"rope_scaling {raw.get('rope_scaling')!r} is not supported")
        for flag in ("attention_bias", "mlp_bias"):
            if raw.get(flag, False):
                problems.append(f"{flag} must be false")
        if raw.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {raw.get('hidden_act')!r} is not supported")
        values = {}
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if not isinstance(raw.get(name), int) or raw[name] <= 0:
                problems.append(f"{name} must be a positive integer, got {raw.get(name)!r}")
            else:
                values[name] = raw[name]
        if problems:
            raise CheckpointError(f"{path}: " + "; ".join(problems))
        heads = values["num_attention_heads"]
        return cls(
            **values,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or values["hidden_size"] // heads),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 8192)),
        )

    def llama_config(self):
        from transformers import LlamaConfig

        return LlamaConfig.from_dict(self.to_json())


# --------------------------------------------------------------------------------------
# Generation options, results, and the prompt-history cache


@dataclass(frozen=True)
class GenerationOptions:
    sample_method: Literal["ras", "topk"] = "ras"
    ras: RasParams = field(default_factory=RasParams)
    top_k: int = 25  # for sample_method="topk" (upstream's `sampling`)
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0
    kv_cache: bool = run_only(True)  # False: recompute the whole sequence each step (less memory)
    # Benchmarks: ignore eoa and generate exactly this many tokens (random weights never stop).
    force_tokens: int | None = None
    # "upstream": spend random numbers exactly as upstream GLM-TTS does (same seed, same
    # tokens; a host sync per step, see reference_sampling.py). "fast": same distribution.
    sampling_rng: Literal["fast", "upstream"] = "fast"

    def __post_init__(self) -> None:
        if self.sample_method not in ("ras", "topk"):
            raise ValueError(f"sample_method must be 'ras' or 'topk', got {self.sample_method!r}")
        if self.sample_method == "topk" and self.top_k < 2:
            raise ValueError("sample_method='topk' needs top_k >= 2 (the stop token may take one slot)")
        if self.force_tokens is not None and self.force_tokens < 0:
            raise ValueError(f"force_tokens must be >= 0, got {self.force_tokens}")
        if self.sampling_rng not in ("fast", "upstream"):
            raise ValueError(f"sampling_rng must be 'fast' or 'upstream', got {self.sampling_rng!r}")


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int  # length of the input sequence (prompt text + text + boa + prompt speech)
    generated_tokens: int
    seconds: float
    stop_reason: Literal["eoa", "max_len", "forced"]
    ras_fallbacks: int = 0  # steps where RAS resampled from the full distribution

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class PromptHistoryEntry:
    """One prompt-history item: the original prompt, or an earlier piece and its output."""

    text_ids: tuple[int, ...]
    speech_tokens: tuple[int, ...]  # offsets from ats, 0..ate-ats


def prune_prompt_history(
    history: Sequence[PromptHistoryEntry], new_text_len: int, *, limit: int = PROMPT_HISTORY_LIMIT
) -> list[PromptHistoryEntry]:
    """Upstream `get_cached_prompt`'s pruning: drop the oldest non-original entries.

    The expected length of the new piece is `int(cached speech / cached text * new text)`
    (float ratio, truncated product; a zero text count counts as 1), computed once over
    the whole history including the original prompt, before anything is dropped. Then
    entries from index 1 on are dropped while `cached speech + estimate > limit`; the
    original prompt (index 0) is always kept.
    """
    text_total = sum(len(e.text_ids) for e in history)
    speech_total = sum(len(e.speech_tokens) for e in history)
    ratio = speech_total / (text_total if text_total > 0 else 1.0)
    estimate = int(ratio * new_text_len)
    kept = list(history)
    while len(kept) > 1 and sum(len(e.speech_tokens) for e in kept) + estimate > limit:
        del kept[1]
    return kept


def flatten_prompt_history(history: Sequence[PromptHistoryEntry]) -> tuple[list[int], list[int]]:
    """Concatenate the entries into (prompt_text_ids, prompt_speech_tokens)."""
    text: list[int] = []
    speech: list[int] = []
    for entry in history:
        text.extend(entry.text_ids)
        speech.extend(entry.speech_tokens)
    return text, speech


def build_input_ids(
    text_ids: Sequence[int],
    prompt_text_ids: Sequence[int],
    prompt_speech_tokens: Sequence[int],
    special: SpecialTokens,
) -> list[int]:
    """`prompt_text_ids + text_ids + [boa] + (prompt_speech_tokens + ats)`."""
    n_audio = special.ate - special.ats + 1
    bad = [t for t in prompt_speech_tokens if not 0 <= t < n_audio]
    if bad:
        raise ValueError(f"prompt speech tokens outside 0..{n_audio - 1}: {bad[:5]}")
    return [*prompt_text_ids, *text_ids, special.boa, *(t + special.ats for t in prompt_speech_tokens)]


def check_special(special: SpecialTokens, vocab_size: int) -> None:
    problems = []
    if not 0 <= special.ats <= special.ate < vocab_size:
        problems.append(f"audio range [{special.ats}, {special.ate}] not inside the vocabulary ({vocab_size})")
    if special.ats <= special.eoa <= special.ate:
        problems.append(f"eoa {special.eoa} lies inside the audio range")
    for name in ("boa", "eoa"):
        if not 0 <= getattr(special, name) < vocab_size:
            problems.append(f"{name} {getattr(special, name)} outside the vocabulary ({vocab_size})")
    if problems:
        raise ValueError("special token ids do not fit this LLM: " + "; ".join(problems))


def reference_piece(
    step: Callable[[Sequence[int]], Tensor],
    ids: list[int],
    special: SpecialTokens,
    options: GenerationOptions,
    min_len: int,
    max_len: int,
    generator: torch.Generator,
    started: float,
) -> tuple[list[int], GenerationStats]:
    """One piece with upstream's random-number use (`reference_sampling.generate_reference`).

    `step` feeds new ids to an LM and returns its (V,) audio-only logits; both LM
    implementations decode their upstream-RNG pieces through here. Tokens count from 0.
    """
    run = generate_reference(
        step,
        ids,
        min_len=min_len,
        max_len=max_len,
        eoa=special.eoa,
        method=options.sample_method,
        ras=options.ras,
        top_k=options.top_k,
        generator=generator,
    )
    stop = "forced" if options.force_tokens is not None else run.stop_reason
    stats = GenerationStats(
        prompt_tokens=len(ids),
        generated_tokens=len(run.tokens),
        seconds=time.perf_counter() - started,
        stop_reason=stop,
        ras_fallbacks=run.ras_fallbacks,
    )
    return [t - special.ats for t in run.tokens], stats


def read_llm_checkpoint(
    llm_dir: str | Path, device: torch.device, dtype: torch.dtype
) -> tuple[LlmConfig, Path, dict[str, Tensor]]:
    """Config, weights file and state dict (floats in `dtype`, on `device`) of an `llm/` folder.

    Shared by both LM implementations, which build different modules over the same keys.
    """
    llm_dir = Path(llm_dir)
    config = LlmConfig.from_json(llm_dir / "config.json")
    index = llm_dir / "model.safetensors.index.json"
    weights = index if index.exists() else llm_dir / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{llm_dir}: no model.safetensors.index.json or model.safetensors")
    state = read_state_dict(weights, device=device)
    # Convert one tensor at a time so two full copies never coexist.
    for key in list(state):
        if state[key].is_floating_point():
            state[key] = state[key].to(dtype)
    return config, weights, state


# --------------------------------------------------------------------------------------
# The model


class SpeechLM(nn.Module):
    def __init__(self, config: LlmConfig) -> None:
        super().__init__()
        from transformers import LlamaModel

        self.config = config
        self.model = LlamaModel(config.llama_config())

    @classmethod
    def from_checkpoint(
        cls,
        llm_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> SpeechLM:
        """Load a released (or random) `llm/` folder straight onto `device` in `dtype`.

        Missing, unexpected or mis-shaped keys raise `CheckpointError` naming them.
        """
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        device, dtype = torch.device(device), resolve_dtype(dtype)
        config, weights, state = read_llm_checkpoint(llm_dir, device, dtype)

        def build() -> SpeechLM:
            lm = cls(config)
            # RoPE frequencies are a non-persistent buffer, absent from the checkpoint:
            # build them for real on the target device (float32, as transformers does).
            with torch.device(device):
                lm.model.rotary_emb = LlamaRotaryEmbedding(config=lm.model.config)
            return lm

        return load_module(build, state, where=str(weights), device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) int64 -> (B, T, D)."""
        return self.model.embed_tokens(ids)

    def last_hidden(self, inputs_embeds: Tensor, past_key_values=None) -> Tensor:
        """(B, T, D) -> hidden state of the last position (B, D), after the final norm.

        With `past_key_values` (a transformers `DynamicCache`) the cache is extended in place.
        """
        out = self.model(
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )
        return out.last_hidden_state[:, -1]

    def candidate_logits(self, hidden: Tensor, special: SpecialTokens) -> Tensor:
        """(B, D) -> float32 logits (B, n_audio + 1): audio ids ats..ate, then eoa."""
        table = self.model.embed_tokens.weight  # tied output projection
        if table.dtype == torch.float32:
            audio = hidden @ table[special.ats : special.ate + 1].T
            stop = hidden @ table[special.eoa : special.eoa + 1].T
            return torch.cat([audio, stop], dim=-1)
        # Half-precision model: rounding the logits themselves to bf16 would quantise them
        # in steps of 0.125 at |logit| 16-32, which changes the sampling distribution. One
        # float32 copy of the candidate rows (268 MB at full size) keeps this product exact.
        return hidden.float() @ self._fp32_candidates(special).T

    def _fp32_candidates(self, special: SpecialTokens) -> Tensor:
        key = (special.ats, special.ate, special.eoa)
        cached = getattr(self, "_candidates", None)
        if cached is None or cached[0] != key:
            table = self.model.embed_tokens.weight
            rows = torch.cat([table[special.ats : special.ate + 1], table[special.eoa : special.eoa + 1]])
            cached = (key, rows.float())
            self._candidates = cached
        return cached[1]

    @torch.inference_mode()
    def generate(
        self,
        text_ids: Sequence[int],
        prompt_text_ids: Sequence[int],
        prompt_speech_tokens: Sequence[int],
        special: SpecialTokens,
        *,
        seed: int,
        options: GenerationOptions = GenerationOptions(),
    ) -> tuple[list[int], GenerationStats]:
        """Speech tokens (offsets from ats) for one text, and how the generation went."""
        check_special(special, self.config.vocab_size)
        ids = build_input_ids(text_ids, prompt_text_ids, prompt_speech_tokens, special)
        device = self.device
        stop_index = special.ate - special.ats + 1  # eoa's column in candidate_logits
        if options.force_tokens is not None:
            steps = min_len = options.force_tokens
        else:
            min_len = int(len(text_ids) * options.min_token_text_ratio)
            steps = int(len(text_ids) * options.max_token_text_ratio)

        generator = torch.Generator(device=device).manual_seed(seed)
        started = time.perf_counter()
        if options.sampling_rng == "upstream":
            return self._generate_upstream(ids, special, min_len, steps, generator, options, started)
        prompt_embeds = self.embed(torch.tensor([ids], dtype=torch.long, device=device))  # (1, T, D)
        out = torch.zeros(1, max(steps, 1), dtype=torch.long, device=device)  # candidate index == token offset
        fallbacks = torch.zeros((), dtype=torch.long, device=device)
        cache = self._new_cache() if options.kv_cache else None
        step_embeds = prompt_embeds
        n_out = 0
        stop_reason: Literal["eoa", "max_len", "forced"] = "forced" if options.force_tokens is not None else "max_len"
        for i in range(steps):
            if cache is None:
                step_embeds = torch.cat([prompt_embeds, self.embed(out[:, :i] + special.ats)], dim=1)
            scores = self.candidate_logits(self.last_hidden(step_embeds, cache), special)  # (1, V')
            may_stop = i >= min_len
            if options.sample_method == "ras":
                if not may_stop:
                    scores[:, stop_index] = float("-inf")
                history = out[:, max(0, i - options.ras.win_size) : i]
                token, fell_back = ras_sample(scores, history, params=options.ras, generator=generator)
                fallbacks += fell_back.sum()
            else:
                exclude = None if may_stop else stop_index
                token = topk_sample(scores, k=options.top_k, exclude=exclude, generator=generator)
            # Before min_len the stop token cannot be drawn: no host sync needed.
            if may_stop and int(token.item()) == stop_index:
                stop_reason = "eoa"
                break
            out[:, i] = token
            n_out = i + 1
            if cache is not None:
                step_embeds = self.embed(token[:, None] + special.ats)
        tokens = out[0, :n_out].tolist()
        n_fallbacks = int(fallbacks.item())
        seconds = time.perf_counter() - started
        stats = GenerationStats(
            prompt_tokens=len(ids),
            generated_tokens=n_out,
            seconds=seconds,
            stop_reason=stop_reason,
            ras_fallbacks=n_fallbacks,
        )
        return tokens, stats

    def generate_long(
        self,
        pieces_text_ids: Sequence[Sequence[int]],
        prompt_text_ids: Sequence[int],
        prompt_speech_tokens: Sequence[int],
        special: SpecialTokens,
        *,
        seed: int,
        prompt_cache: bool = True,
        history_limit: int = PROMPT_HISTORY_LIMIT,
        options: GenerationOptions = GenerationOptions(),
    ) -> tuple[list[list[int]], list[GenerationStats]]:
        """Generate the pieces of a long text in order, each re-seeded with `seed`.

        With `prompt_cache`, earlier pieces (text ids + generated tokens) follow the
        original prompt, pruned by `prune_prompt_history` before each piece; the pruned
        history carries over to later pieces, as upstream's cache does.
        """
        history = [PromptHistoryEntry(tuple(prompt_text_ids), tuple(prompt_speech_tokens))]
        all_tokens: list[list[int]] = []
        all_stats: list[GenerationStats] = []
        for text_ids in pieces_text_ids:
            if prompt_cache:
                history = prune_prompt_history(history, len(text_ids), limit=history_limit)
                p_text, p_speech = flatten_prompt_history(history)
            else:
                p_text, p_speech = list(prompt_text_ids), list(prompt_speech_tokens)
            tokens, stats = self.generate(text_ids, p_text, p_speech, special, seed=seed, options=options)
            history.append(PromptHistoryEntry(tuple(text_ids), tuple(tokens)))
            all_tokens.append(tokens)
            all_stats.append(stats)
        return all_tokens, all_stats

    def _generate_upstream(
        self,
        ids: list[int],
        special: SpecialTokens,
        min_len: int,
        max_len: int,
        generator: torch.Generator,
        options: GenerationOptions,
        started: float,
    ) -> tuple[list[int], GenerationStats]:
        """`generate` with upstream's random-number use (`reference_sampling.generate_reference`)."""
        cache = self._new_cache() if options.kv_cache else None
        seen: list[int] = []
        vocab = self.config.vocab_size

        def step(new_ids: Sequence[int]) -> Tensor:
            seen.extend(new_ids)
            fed = new_ids if cache is not None else seen
            hidden = self.last_hidden(self.embed(torch.tensor([fed], dtype=torch.long, device=self.device)), cache)
            scores = self.candidate_logits(hidden, special)[0]
            return audio_only_logits(scores, vocab, ats=special.ats, ate=special.ate, eoa=special.eoa)

        return reference_piece(step, ids, special, options, min_len, max_len, generator, started)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)
