"""Next-token sampling for the speech-token LM, vectorised on the device.

Every function takes a batch of score rows `(B, V)` (logits or log-probabilities: both
give the same softmax) and draws with an explicit `torch.Generator`, so a task seed fixes
the result on a given device. Nothing here loops over the vocabulary in Python or reads
a value back to the host; the caller decides when to synchronise.

Behaviour follows upstream GLM-TTS (`cosyvoice/utils/common.py`, `llm/glmtts.py`):

- `nucleus_sample`: sort descending (stable, so ties keep the lower id first) and keep a
  token while the probability mass *before* it is below `top_p` and fewer than `top_k`
  tokens are kept; sample among the kept tokens in proportion to their probabilities.
- `ras_sample`: repetition-aware sampling (VALL-E 2). Take the nucleus draw; if that token
  already occurs at least `win_size * tau_r` times among the last `win_size` generated
  tokens, draw again from the whole distribution instead.
- `topk_sample`: upstream's `sampling_ids`: sample among the `k` most likely tokens; while
  the minimum length is not reached upstream redraws until the result is not the stop
  token, which is the same distribution as dropping the stop token from the top-k set.

Randomness is consumed differently from upstream, on purpose (no host sync per step), so
a seed gives other tokens than upstream's; `reference_sampling.py` reproduces upstream's
stream when that is wanted. The distributions are the same (`tests/test_sampling_distribution.py`
checks it with a chi-square test):

- RAS: the full-distribution fallback is drawn on every step, from its own exponentials,
  and kept only where the repetition check fires (upstream draws it only then). The two
  draws are independent either way, so the step's distribution is the same mixture. The
  fallback covers the candidate set (audio ids + eoa) where upstream covers the whole
  vocabulary: the same distribution wherever the non-candidates have probability 0,
  which the audio-only candidate rule (llm.py) makes so.
- top-k: before min_len eoa is removed from the top-k set and one draw is made; upstream
  redraws over the same set while eoa comes up. Redrawing until not-eoa gives each other
  member q_i / (sum(q) - q_eoa), the conditional distribution, which is exactly the draw
  without eoa. (Where eoa holds all of the set's mass upstream loops forever; this draws
  the other members uniformly.)
- The nucleus cut compares a cumulative sum (`torch.cumsum`) with top_p; upstream adds
  float32 values one by one. They can differ only when the mass before a token is within
  rounding of top_p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RasParams:
    """Repetition-aware sampling settings; the defaults are upstream's."""

    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.win_size < 0:
            raise ValueError(f"win_size must be >= 0, got {self.win_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def draw_one(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row, with probability proportional to `weights` (B, V) -> (B, 1).

    The exponential race `argmax(w / Exp(1))` is what `torch.multinomial(w, 1)` computes
    (same draws from the same generator), minus its argument checks, which read values
    back to the host: on a GPU that would be two synchronisations per call, per token.
    """
    race = torch.empty_like(weights).exponential_(1, generator=generator)
    return (weights / race).argmax(dim=-1, keepdim=True)


def nucleus_sample(probs: Tensor, *, top_p: float, top_k: int, generator: torch.Generator | None) -> Tensor:
    """Top-p / top-k draw. probs: (B, V), rows summing to 1. Returns ids (B,) int64."""
    k = min(top_k, probs.shape[-1])
    sorted_p, sorted_ids = probs.sort(dim=-1, descending=True, stable=True)
    sorted_p, sorted_ids = sorted_p[:, :k], sorted_ids[:, :k]  # (B, k)
    # Mass strictly before each candidate; the first candidate is always kept.
    cumulative = torch.cumsum(sorted_p, dim=-1)
    mass_before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
    weights = torch.where(mass_before < top_p, sorted_p, torch.zeros_like(sorted_p))
    choice = draw_one(weights, generator)  # (B, 1)
    return sorted_ids.gather(-1, choice).squeeze(-1)


def ras_sample(
    scores: Tensor,
    history: Tensor,
    *,
    params: RasParams = RasParams(),
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Repetition-aware sampling.

    scores: (B, V) logits; disallowed tokens must already be -inf.
    history: (B, H) int64, previously generated ids in the same id space as `scores`
        (oldest first); only the last `win_size` columns count. Use -1 for "no token".
    Returns (ids (B,) int64, fell_back (B,) bool: the full-distribution draw was used).
    """
    scores = scores.float()
    first = nucleus_sample(
        torch.softmax(scores / params.temperature, dim=-1),
        top_p=params.top_p,
        top_k=params.top_k,
        generator=generator,
    )
    recent = history[:, history.shape[1] - min(params.win_size, history.shape[1]) :]
    repeats = (recent == first[:, None]).sum(dim=-1)  # (B,)
    fell_back = repeats >= params.win_size * params.tau_r
    # Upstream's fallback ignores the temperature: plain softmax of the scores.
    anywhere = draw_one(torch.softmax(scores, dim=-1), generator).squeeze(-1)
    return torch.where(fell_back, anywhere, first), fell_back


def topk_sample(
    scores: Tensor,
    *,
    k: int,
    exclude: int | None = None,
    generator: torch.Generator | None,
) -> Tensor:
    """Sample among the `k` most likely tokens. scores: (B, V). Returns ids (B,) int64.

    `exclude` (an id) is removed from the top-k set after the set is chosen (upstream
    rejects and redraws it). If it held all of the set's mass, the remaining members are
    drawn uniformly instead of failing (upstream would loop forever).
    """
    k = min(k, scores.shape[-1])
    top_p, top_ids = torch.softmax(scores.float(), dim=-1).topk(k, dim=-1)  # (B, k)
    if exclude is not None:
        banned = top_ids == exclude
        if k == 1:
            raise ValueError("topk_sample with exclude needs k >= 2")
        top_p = torch.where(banned, torch.zeros_like(top_p), top_p)
        empty = top_p.sum(dim=-1, keepdim=True) <= 0
        top_p = torch.where(empty, (~banned).float(), top_p)
    choice = draw_one(top_p, generator)
    return top_ids.gather(-1, choice).squeeze(-1)
