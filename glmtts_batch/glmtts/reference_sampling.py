"""Reference sampling: upstream GLM-TTS's draws, random number for random number, at batch 1.

The fast sampler (`sampling.py`) draws from the same distributions but spends random
numbers differently (see its docstring), so for one seed its tokens differ from
upstream's. This module spends them exactly as upstream GLM-TTS (c5dc7ae) does in
`GLMTTS.inference` with `ras_sampling` / `sampling_ids`, so the same seed on the same
logits gives upstream's tokens. It works on one sequence and reads every decision back
to the host (a sync per step, plus a full-vocabulary sort): it is for reproducing
upstream's output and proving parity, not for throughput.

Upstream's rules, per step i (`logp` = float32 `log_softmax` of the full-vocabulary
logits of the last position):

- `ras`: before `min_len`, `logp[eoa] = -inf`. `p = softmax(logp / temperature)`, sorted
  descending (stable). The nucleus keeps sorted entries while the float32 running mass
  *before* the entry is below `top_p` and fewer than `top_k` are kept. Draw 1 is a
  multinomial over the kept, unnormalised probabilities. If the drawn id occurs at least
  `win_size * tau_r` times among the last `win_size` emitted ids, draw 2 is a multinomial
  over `softmax(logp)`, the whole vocabulary in id order, and its id is the step's
  (whatever it is: it may repeat, it may be eoa after `min_len`).
- `topk`: `q, ids = softmax(logp).topk(k)` (eoa not masked), draw over q; before
  `min_len` draw again over the same q while the drawn id is eoa.

A draw is `torch.multinomial(p, 1, replacement=True)` with the caller's generator, the
call upstream makes: on a CPU tensor it consumes two mt19937 outputs per entry of `p`,
zeros included, so the vector lengths above fix how far the stream advances.

The interface is small on purpose, so that any LM can drive it: `ras_step` / `topk_step`
choose one id from one step's logits, and `generate_reference` runs a whole batch-1
generation given a `step(new_ids) -> logits` callable that owns the model and its cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from glmtts_batch.glmtts.sampling import RasParams

# step(new_ids) -> (V,) logits of the last position. The first call gets the whole input
# sequence, every later call the one id chosen in the previous step.
StepFn = Callable[[Sequence[int]], Tensor]

UPSTREAM_RAS = RasParams()  # upstream's ras_sampling defaults


@dataclass(frozen=True)
class StepDraw:
    """What one step chose, and how (for statistics and tests)."""

    token: int  # absolute id in the vocabulary
    fell_back: bool = False  # ras: the repetition check fired and draw 2 chose the id
    redraws: int = 0  # topk: eoa draws rejected before min_len
    nucleus_size: int = 0  # ras: length of draw 1


@dataclass(frozen=True)
class ReferenceRun:
    """One batch-1 generation with upstream's random-number use."""

    tokens: list[int]  # absolute ids emitted, the stop token excluded
    stop_reason: Literal["eoa", "max_len"]
    steps: int  # forward passes made (= draws steps)
    ras_fallbacks: int
    topk_redraws: int


def upstream_log_probs(logits: Tensor) -> Tensor:
    """(V,) logits -> float32 log-probabilities, as upstream computes them for a step."""
    return torch.log_softmax(logits.float(), dim=-1)


def _draw(weights: Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(weights, 1, replacement=True, generator=generator).item())


def _nucleus_size(sorted_head: np.ndarray, top_p: float, top_k: int) -> int:
    """How many sorted entries upstream's nucleus loop keeps (at least one)."""
    # Upstream's running mass is a float32 tensor, so both the sum and the comparison with
    # top_p are float32; float64 (what torch.cumsum accumulates in on CPU) can cut differently.
    threshold = np.float32(top_p)
    mass = np.float32(0.0)
    kept = 0
    for value in sorted_head:
        if not (mass < threshold and kept < top_k):
            break
        mass = np.float32(mass + value)
        kept += 1
    return kept


def ras_step(
    logits: Tensor,
    history: Sequence[int],
    *,
    allow_stop: bool,
    eoa: int,
    params: RasParams = UPSTREAM_RAS,
    generator: torch.Generator | None,
) -> StepDraw:
    """Upstream's repetition-aware sampling step over full-vocabulary `logits` (V,).

    history: the absolute ids emitted so far (oldest first).
    allow_stop: False before `min_len` (eoa gets probability 0).
    """
    logp = upstream_log_probs(logits)
    if not allow_stop:
        logp[eoa] = float("-inf")
    probs = torch.softmax(logp / params.temperature, dim=0)
    sorted_p, sorted_ids = probs.sort(descending=True, stable=True)
    head = sorted_p[: params.top_k].cpu().numpy()
    n = _nucleus_size(head, params.top_p, params.top_k)
    nucleus_id = int(sorted_ids[_draw(sorted_p[:n], generator)].item())
    # `history[-0:]` is the whole list, as in upstream (whose threshold is then 0 anyway).
    window = list(history)[-params.win_size :]
    if window.count(nucleus_id) >= params.win_size * params.tau_r:
        # Upstream's fallback ignores the temperature: softmax of logp itself.
        fallback = _draw(torch.softmax(logp, dim=0), generator)
        return StepDraw(token=fallback, fell_back=True, nucleus_size=n)
    return StepDraw(token=nucleus_id, nucleus_size=n)


def topk_step(
    logits: Tensor,
    *,
    k: int,
    allow_stop: bool,
    eoa: int,
    generator: torch.Generator | None,
) -> StepDraw:
    """Upstream's top-k step over full-vocabulary `logits` (V,): redraw eoa before min_len.

    Where upstream would redraw forever (eoa holds all of the top-k mass before
    `min_len`), this raises `RuntimeError` instead.
    """
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"top-k needs 1 <= k <= {logits.shape[-1]}, got {k}")
    top_p, top_ids = torch.softmax(upstream_log_probs(logits), dim=-1).topk(k)
    if not allow_stop:
        others = top_p.masked_fill(top_ids == eoa, 0.0)
        if float(others.sum().item()) <= 0.0:
            raise RuntimeError("top-k sampling: eoa holds all the top-k mass before min_len (upstream loops forever)")
    redraws = 0
    while True:
        token = int(top_ids[_draw(top_p, generator)].item())
        if allow_stop or token != eoa:
            return StepDraw(token=token, redraws=redraws)
        redraws += 1


def generate_reference(
    step: StepFn,
    input_ids: Sequence[int],
    *,
    min_len: int,
    max_len: int,
    eoa: int,
    method: Literal["ras", "topk"] = "ras",
    ras: RasParams = UPSTREAM_RAS,
    top_k: int = 25,
    generator: torch.Generator | None,
) -> ReferenceRun:
    """Upstream's decoding loop (`GLMTTS.inference`) around a caller's model step.

    Up to `max_len` steps; eoa cannot be chosen in the first `min_len`. Stops, without
    emitting it, when eoa is chosen. The generator is used as it is: seed it as upstream's
    `set_seed` does (`manual_seed(seed)` right before the generation, so again before
    every piece of a long text), on the device of the logits.

    An LM with candidate-only logits passes `audio_only_logits(...)` of them from `step`;
    the returned ids are absolute (subtract ats for speech tokens).
    """
    if method not in ("ras", "topk"):
        raise ValueError(f"method must be 'ras' or 'topk', got {method!r}")
    emitted: list[int] = []
    fallbacks = redraws = steps = 0
    new_ids: Sequence[int] = list(input_ids)
    for i in range(max_len):
        logits = step(new_ids)
        steps += 1
        allow_stop = i >= min_len
        if method == "ras":
            draw = ras_step(logits, emitted, allow_stop=allow_stop, eoa=eoa, params=ras, generator=generator)
        else:
            draw = topk_step(logits, k=top_k, allow_stop=allow_stop, eoa=eoa, generator=generator)
        fallbacks += draw.fell_back
        redraws += draw.redraws
        if draw.token == eoa:
            return ReferenceRun(emitted, "eoa", steps, fallbacks, redraws)
        emitted.append(draw.token)
        new_ids = [draw.token]
    return ReferenceRun(emitted, "max_len", steps, fallbacks, redraws)


def audio_only_logits(candidate_logits: Tensor, vocab_size: int, *, ats: int, ate: int, eoa: int) -> Tensor:
    """Full-vocabulary logits (V,) from the candidate logits (audio ids ats..ate, then eoa).

    Every other id gets -inf: the same vector as upstream's logits under a hook that drops
    the non-candidate ids (how the golden runs of `../shared/golden/llm` were made), so the
    draws over V consume the same random numbers while only candidates can be chosen.
    """
    n_audio = ate - ats + 1
    if candidate_logits.shape[-1] != n_audio + 1:
        raise ValueError(f"expected {n_audio + 1} candidate logits, got {candidate_logits.shape[-1]}")
    full = candidate_logits.new_full((vocab_size,), float("-inf"), dtype=torch.float32)
    full[ats : ate + 1] = candidate_logits[:n_audio].float()
    full[eoa] = candidate_logits[n_audio].float()
    return full
