"""The fast sampler draws from the same distribution as upstream's (the reference sampler).

They spend random numbers differently, so they are compared by distribution: on fixed
logits, N draws from each, a chi-square goodness-of-fit test of each against the exact
distribution (computed here in float64 from upstream's rules) and a chi-square test of
homogeneity between the two. Seeds are fixed, so the outcome is deterministic; the
significance level is ALPHA = 0.001. A negative control shows that the same test rejects
a sampler that is wrong in the way the two could plausibly differ.

The fast side is called as `SpeechLM.generate` calls it at one step: for ras the caller
sets eoa to -inf before min_len; for topk it passes `exclude=eoa` before min_len.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from glmtts_batch.glmtts.reference_sampling import ras_step, topk_step
from glmtts_batch.glmtts.sampling import RasParams, ras_sample, topk_sample

ALPHA = 0.001
N = 20000  # draws per sampler per case
INF = float("-inf")
EOA = 1
# Ids 0 and 9 stand for masked text ids (-inf, as in the audio-only candidate rule).
LOGITS = torch.tensor([INF, 1.6, 2.0, 1.9, 1.2, 0.9, 0.4, 0.1, -0.3, INF, 1.0, 0.7])
SHARP = torch.tensor([INF, 0.5, 3.5, 2.4, 1.0, 0.2, INF, 0.0, -0.5, INF, 1.8, 0.3])


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # "ras" | "topk"
    logits: torch.Tensor
    allow_stop: bool  # False: before min_len
    history: tuple[int, ...] = ()
    k: int = 5


CASES = [
    # The nucleus holds several ids, two of which repeat: the fallback mixes in the whole distribution.
    Case("ras_fallback_mix", "ras", LOGITS, True, history=(2, 7, 3, 5)),
    Case("ras_before_min_len", "ras", LOGITS, False, history=(1, 3)),
    # Sharp logits: a short nucleus whose top id repeats, so most draws are fallbacks, eoa included.
    Case("ras_sharp_fallback", "ras", SHARP, True, history=(2,)),
    Case("ras_no_repeat", "ras", LOGITS, True, history=(8, 11)),
    # eoa is in the top-k set: upstream redraws it, the fast sampler removes it.
    Case("topk_eoa_before_min_len", "topk", LOGITS, False),
    Case("topk_eoa_allowed", "topk", LOGITS, True),
    Case("topk_eoa_dominant_before_min_len", "topk", SHARP.index_put((torch.tensor(EOA),), torch.tensor(4.0)), False),
]


def exact_distribution(case: Case) -> torch.Tensor:
    """Upstream's step distribution over ids, from its rules, in float64."""
    logits = case.logits.double().clone()
    if case.method == "ras":
        params = RasParams()
        if not case.allow_stop:
            logits[EOA] = INF
        p = torch.softmax(logits, dim=0)
        sorted_p, sorted_ids = p.sort(descending=True, stable=True)
        kept, mass = [], 0.0
        for value, token in zip(sorted_p.tolist(), sorted_ids.tolist()):
            if not (mass < params.top_p and len(kept) < params.top_k):
                break
            kept.append((token, value))
            mass += value
        out = torch.zeros_like(p)
        window = case.history[-params.win_size :]
        repeat_mass = 0.0
        for token, value in kept:
            if window.count(token) >= params.win_size * params.tau_r:
                repeat_mass += value / mass
            else:
                out[token] += value / mass
        return out + repeat_mass * p
    p = torch.softmax(logits, dim=0)
    top_p, top_ids = p.topk(case.k)
    if not case.allow_stop:
        top_p = top_p.masked_fill(top_ids == EOA, 0.0)
    return torch.zeros_like(p).index_put((top_ids,), top_p / top_p.sum())


def fast_draws(case: Case, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = case.logits.expand(n, -1).clone()
    if case.method == "ras":
        if not case.allow_stop:
            scores[:, EOA] = INF
        history = torch.tensor([case.history], dtype=torch.long).expand(n, -1)
        return ras_sample(scores, history, generator=generator)[0]
    exclude = None if case.allow_stop else EOA
    return topk_sample(scores, k=case.k, exclude=exclude, generator=generator)


def reference_draws(case: Case, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)

    def step() -> int:
        if case.method == "ras":
            return ras_step(case.logits, case.history, allow_stop=case.allow_stop, eoa=EOA, generator=generator).token
        return topk_step(case.logits, k=case.k, allow_stop=case.allow_stop, eoa=EOA, generator=generator).token

    return torch.tensor([step() for _ in range(n)])


# ---------------------------------------------------------------------------- chi-square


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square(df): the regularised upper incomplete gamma."""
    return float(
        torch.special.gammaincc(
            torch.tensor(df / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)
        )
    )


def pooled_bins(expected: torch.Tensor) -> list[list[int]]:
    """Ids with non-zero probability, those expecting fewer than 5 draws pooled into one bin."""
    big = [[i] for i in range(len(expected)) if expected[i] >= 5]
    small = [i for i in range(len(expected)) if 0 < expected[i] < 5]
    return big + ([small] if small else [])


def goodness_of_fit(draws: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of the draws under `probs`; any draw of a zero-probability id gives 0."""
    counts = torch.bincount(draws, minlength=len(probs)).double()
    if counts[probs == 0].sum() > 0:
        return 0.0
    expected = probs * len(draws)
    bins = pooled_bins(expected)
    observed = torch.stack([counts[b].sum() for b in bins])
    wanted = torch.stack([expected[b].sum() for b in bins])
    return chi2_sf(float(((observed - wanted) ** 2 / wanted).sum()), len(bins) - 1)


def homogeneity(a: torch.Tensor, b: torch.Tensor, size: int) -> float:
    """p-value that two samples come from one distribution (2 x K contingency table)."""
    table = torch.stack([torch.bincount(a, minlength=size), torch.bincount(b, minlength=size)]).double()
    table = table[:, table.sum(dim=0) > 0]
    expected = table.sum(dim=1, keepdim=True) * table.sum(dim=0, keepdim=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return chi2_sf(statistic, table.shape[1] - 1)


def test_chi2_survival_function_matches_known_critical_values():
    # Tabulated chi-square critical values at the 0.001 and 0.05 levels.
    assert chi2_sf(10.828, 1) == pytest.approx(0.001, rel=1e-3)
    assert chi2_sf(29.588, 10) == pytest.approx(0.001, rel=1e-3)
    assert chi2_sf(3.841, 1) == pytest.approx(0.05, rel=1e-3)


# ---------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fast_and_reference_samplers_draw_from_upstreams_distribution(case):
    probs = exact_distribution(case)
    fast = fast_draws(case, N, seed=1)
    reference = reference_draws(case, N, seed=2)
    assert goodness_of_fit(fast, probs) > ALPHA
    assert goodness_of_fit(reference, probs) > ALPHA
    assert homogeneity(fast, reference, len(probs)) > ALPHA


def test_the_cases_exercise_the_rules_they_are_about():
    by_name = {case.name: case for case in CASES}
    mix = exact_distribution(by_name["ras_fallback_mix"])
    assert mix[8] > 0 and mix[11] > 0  # outside the nucleus: reachable only through the fallback
    assert exact_distribution(by_name["ras_before_min_len"])[EOA] == 0
    assert exact_distribution(by_name["ras_sharp_fallback"])[EOA] > 0.01  # the fallback may stop
    topk = by_name["topk_eoa_before_min_len"]
    assert EOA in topk.logits.topk(topk.k).indices.tolist()  # so the eoa rule matters
    assert exact_distribution(topk)[EOA] == 0


WrongSampler = Callable[[Case, int, int], torch.Tensor]


def _nucleus_only(case: Case, n: int, seed: int) -> torch.Tensor:
    """RAS without its fallback."""
    return ras_sample(
        case.logits.expand(n, -1).clone(),
        torch.empty(n, 0, dtype=torch.long),
        generator=torch.Generator().manual_seed(seed),
    )[0]


def _eoa_mass_to_the_top_id(case: Case, n: int, seed: int) -> torch.Tensor:
    """top-k that replaces a drawn eoa by the most likely other id instead of redrawing."""
    ids = topk_sample(case.logits.expand(n, -1).clone(), k=case.k, generator=torch.Generator().manual_seed(seed))
    top_ids = case.logits.topk(case.k).indices.tolist()
    best_other = next(t for t in top_ids if t != EOA)
    return torch.where(ids == EOA, torch.full_like(ids, best_other), ids)


@pytest.mark.parametrize(
    ("case_name", "wrong"),
    [("ras_fallback_mix", _nucleus_only), ("topk_eoa_before_min_len", _eoa_mass_to_the_top_id)],
)
def test_the_test_rejects_a_sampler_with_another_distribution(case_name, wrong: WrongSampler):
    case = next(c for c in CASES if c.name == case_name)
    draws = wrong(case, N, 3)
    assert goodness_of_fit(draws, exact_distribution(case)) < ALPHA
    assert homogeneity(draws, reference_draws(case, N, seed=2), len(case.logits)) < ALPHA
