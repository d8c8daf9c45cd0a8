"""Sampling for the speech-token LM: nucleus, repetition-aware (RAS) and top-k draws."""

from __future__ import annotations

import math

import pytest
import torch

from glmtts_batch.glmtts.sampling import (
    RasParams,
    nucleus_sample,
    ras_sample,
    topk_sample,
)

N = 4000  # rows drawn at once: the functions are batched, so one call gives N samples


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows(values: list[float], n: int = N) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).expand(n, -1).contiguous()


def frequencies(ids: torch.Tensor, size: int) -> list[float]:
    return (torch.bincount(ids, minlength=size).float() / ids.numel()).tolist()


def test_nucleus_keeps_tokens_until_mass_before_reaches_top_p():
    # Mass before each sorted token: 0, .5, .75, .9 -> the fourth is cut at top_p=0.8.
    # Ids are shuffled so the sort (not the position) decides.
    probs = rows([0.15, 0.1, 0.5, 0.25])
    ids = nucleus_sample(probs, top_p=0.8, top_k=25, generator=gen())
    assert set(ids.tolist()) == {0, 2, 3}
    freq = frequencies(ids, 4)
    for token, p in [(2, 0.5), (3, 0.25), (0, 0.15)]:
        assert math.isclose(freq[token], p / 0.9, abs_tol=0.03)


def test_nucleus_top_k_caps_the_candidates():
    probs = rows([0.15, 0.1, 0.5, 0.25])
    ids = nucleus_sample(probs, top_p=0.8, top_k=2, generator=gen())
    assert set(ids.tolist()) == {2, 3}


def test_nucleus_always_keeps_the_most_likely_token_and_breaks_ties_by_lower_id():
    probs = rows([0.1, 0.45, 0.45])
    ids = nucleus_sample(probs, top_p=0.3, top_k=25, generator=gen())
    assert set(ids.tolist()) == {1}


def test_ras_without_repetition_is_the_nucleus_draw():
    # Token 0 has 85 % > top_p, so the nucleus is {0}; the history never saw token 0.
    scores = rows([0.85, 0.05, 0.05, 0.05]).log()
    history = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2, 3, 1]]).expand(N, -1)
    ids, fell_back = ras_sample(scores, history, generator=gen())
    assert not fell_back.any()
    assert set(ids.tolist()) == {0}


def test_ras_falls_back_to_the_full_distribution_when_the_draw_repeats():
    scores = rows([0.85, 0.05, 0.05, 0.05]).log()
    history = torch.tensor([[1, 2, 3, 0, 1, 2, 3, 1, 2, 3]]).expand(N, -1)  # one 0 in the window
    ids, fell_back = ras_sample(scores, history, generator=gen())
    assert fell_back.all()
    freq = frequencies(ids, 4)
    assert math.isclose(freq[0], 0.85, abs_tol=0.03)
    for token in (1, 2, 3):
        assert math.isclose(freq[token], 0.05, abs_tol=0.02)


def test_ras_only_looks_at_the_last_win_size_tokens():
    scores = rows([0.85, 0.05, 0.05, 0.05]).log()
    # The 0 is 11 tokens back: outside the window of 10.
    history = torch.tensor([[0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1]]).expand(N, -1)
    _, fell_back = ras_sample(scores, history, generator=gen())
    assert not fell_back.any()
    # Empty history (first step) and -1 padding never count as repeats.
    _, fell_back = ras_sample(scores, torch.empty(N, 0, dtype=torch.long), generator=gen())
    assert not fell_back.any()
    _, fell_back = ras_sample(scores, torch.full((N, 10), -1), generator=gen())
    assert not fell_back.any()


def test_ras_threshold_is_win_size_times_tau_r():
    scores = rows([0.85, 0.05, 0.05, 0.05], n=8).log()
    params = RasParams(win_size=10, tau_r=0.3)  # needs 3 repeats
    twice = torch.tensor([[0, 1, 0, 1, 2, 3, 1, 2, 3, 1]]).expand(8, -1)
    thrice = torch.tensor([[0, 1, 0, 1, 0, 3, 1, 2, 3, 1]]).expand(8, -1)
    assert not ras_sample(scores, twice, params=params, generator=gen())[1].any()
    assert ras_sample(scores, thrice, params=params, generator=gen())[1].all()


def test_ras_rows_are_independent():
    scores = rows([0.85, 0.05, 0.05, 0.05], n=2).log()
    history = torch.tensor([[1, 2, 3], [1, 0, 3]])
    _, fell_back = ras_sample(scores, history, generator=gen())
    assert fell_back.tolist() == [False, True]


def test_ras_never_draws_a_masked_token():
    scores = rows([0.4, 0.3, 0.2, 0.1]).log()
    scores[:, 1] = float("-inf")
    history = torch.tensor([[0, 2, 3]]).expand(N, -1)  # every nucleus draw repeats -> fallback
    ids, fell_back = ras_sample(scores, history, generator=gen())
    assert fell_back.all()
    assert 1 not in set(ids.tolist())


def test_sampling_is_deterministic_for_a_seed():
    scores = torch.randn(64, 300, generator=gen(5))
    history = torch.randint(0, 300, (64, 10), generator=gen(6))
    a = ras_sample(scores, history, generator=gen(1))[0]
    b = ras_sample(scores, history, generator=gen(1))[0]
    c = ras_sample(scores, history, generator=gen(2))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(topk_sample(scores, k=25, generator=gen(1)), topk_sample(scores, k=25, generator=gen(1)))


def test_topk_draws_only_from_the_k_most_likely():
    scores = rows([0.05, 0.3, 0.1, 0.35, 0.2]).log()
    ids = topk_sample(scores, k=3, generator=gen())
    assert set(ids.tolist()) == {1, 3, 4}
    freq = frequencies(ids, 5)
    assert math.isclose(freq[3], 0.35 / 0.85, abs_tol=0.03)


def test_topk_exclude_removes_the_token_after_choosing_the_set():
    # Upstream picks the top-k set first and rejects the stop token: the set stays {1, 3, 4}.
    scores = rows([0.05, 0.3, 0.1, 0.35, 0.2]).log()
    ids = topk_sample(scores, k=3, exclude=3, generator=gen())
    assert set(ids.tolist()) == {1, 4}
    freq = frequencies(ids, 5)
    assert math.isclose(freq[1], 0.3 / 0.5, abs_tol=0.03)


def test_topk_exclude_of_all_the_mass_draws_the_rest_uniformly():
    scores = rows([1000.0, 0.0, 0.0, 0.0, 0.0])  # softmax underflows: token 0 has all the mass
    ids = topk_sample(scores, k=3, exclude=0, generator=gen())
    drawn = torch.bincount(ids, minlength=5)
    assert drawn[0] == 0
    assert (drawn > 0).sum() == 2  # the two other members of the top-3 set, evenly
    assert math.isclose(drawn.max().item() / N, 0.5, abs_tol=0.03)
    with pytest.raises(ValueError):
        topk_sample(scores, k=1, exclude=0, generator=gen())


@pytest.mark.parametrize("kwargs", [{"top_p": 0.0}, {"top_k": 0}, {"temperature": 0.0}, {"win_size": -1}])
def test_ras_params_are_validated(kwargs):
    with pytest.raises(ValueError):
        RasParams(**kwargs)


def test_draw_one_equals_torch_multinomial_for_the_same_generator():
    # The sampler avoids multinomial's host-syncing checks but must keep its draws.
    from glmtts_batch.glmtts.sampling import draw_one

    weights = torch.rand(4, 300, generator=torch.Generator().manual_seed(0))
    weights[:, 100:] = 0  # zero weights are never drawn
    ours = draw_one(weights, torch.Generator().manual_seed(7))
    reference = torch.multinomial(weights, 1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, reference)
    assert (ours < 100).all()
