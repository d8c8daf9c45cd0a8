"""In-flight batched decoding: a task's tokens are the same whatever runs beside it."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_llm import SPECIAL, Special

from glmtts_batch.glmtts.generate import DecodingTask, LmRequest, generate_many
from glmtts_batch.glmtts.llm import GenerationOptions, SpeechLM
from glmtts_batch.glmtts.model import SpeechLlama

pytestmark = pytest.mark.usefixtures("single_thread")


def stop_row(lm: SpeechLlama) -> torch.Tensor:
    """An eoa row whose logit is about 3 where the audio logits are about +-1: tasks stop
    soon after min_len, each at its own step (eoa is output only, so nothing else changes)."""
    g = torch.Generator().manual_seed(0)
    lm.setup_cache(16, 64)
    with torch.inference_mode():
        prompts = [torch.randint(SPECIAL.ats, SPECIAL.ate + 1, (12,), generator=g).tolist() for _ in range(16)]
        u = lm.prefill(prompts, list(range(16))).mean(0)
    return 3 * u / u.dot(u)


@pytest.fixture(scope="module", params=["random", "stopping"])
def models(request, llm_dir) -> tuple[SpeechLlama, SpeechLM]:
    """(new LM, today's transformers LM) with the same weights; 'stopping' stops early."""
    new, old = SpeechLlama.from_checkpoint(llm_dir), SpeechLM.from_checkpoint(llm_dir)
    if request.param == "stopping":
        row = stop_row(new)
        new.model.embed_tokens.weight[SPECIAL.eoa] = row
        old.model.embed_tokens.weight[SPECIAL.eoa] = row
    return new, old


def make_requests(n: int, seed: int = 0) -> list[LmRequest]:
    """Mixed tasks: 1..3 pieces of 1..4 text ids, prompts of different lengths."""
    rng = random.Random(seed)

    def ids(k: int) -> list[int]:
        return [rng.randrange(1, 90) for _ in range(k)]

    return [
        LmRequest(
            pieces_text_ids=[ids(rng.randint(1, 4)) for _ in range(rng.randint(1, 3))],
            prompt_text_ids=ids(rng.randint(2, 8)),
            prompt_speech_tokens=[rng.randrange(256) for _ in range(rng.randint(5, 20))],
            seed=rng.randrange(10_000),
            history_limit=rng.choice([750, 40]),  # 40: earlier pieces get pruned
        )
        for _ in range(n)
    ]


def alone(lm: SpeechLlama, request: LmRequest, options: GenerationOptions | None = None):
    return generate_many(lm, [request], SPECIAL, options, max_batch=1)[0]


def test_rows_apart_equals_todays_generate_long_bit_for_bit(models):
    """`rows_apart` decodes each row with a batch-1 run's kernels: today's tokens, guaranteed."""
    new, old = models
    new.rows_apart = True
    try:
        requests = make_requests(6, seed=5)
        results = generate_many(new, requests, SPECIAL, max_batch=4)
    finally:
        new.rows_apart = False
    for request, result in zip(requests, results):
        tokens, _ = todays_generate_long(old, request)
        assert result.tokens == tokens


def todays_generate_long(old, request: LmRequest, options: GenerationOptions | None = None):
    """The same request through today's `SpeechLM.generate_long` (the reference)."""
    return old.generate_long(
        request.pieces_text_ids,
        request.prompt_text_ids,
        request.prompt_speech_tokens,
        SPECIAL,
        seed=request.seed,
        history_limit=request.history_limit,
        options=options or GenerationOptions(),
    )


@pytest.mark.parametrize("method", ["ras", "topk"])
def test_tokens_equal_todays_generate_long(models, method):
    """Same tokens, stop reasons and RAS fallbacks as `SpeechLM.generate_long`.

    Not guaranteed bit for bit: decode projections run as many-row matrix products where
    today's batch-1 path uses a matrix-vector product, which rounds differently in the
    last bit; a token changes only if a sampling decision falls within that difference.
    """
    new, old = models
    options = GenerationOptions(sample_method=method)
    requests = make_requests(6, seed=1)
    results = generate_many(new, requests, SPECIAL, options, max_batch=4)
    for request, result in zip(requests, results):
        tokens, stats = todays_generate_long(old, request, options)
        assert result.tokens == tokens
        assert [s.stop_reason for s in result.stats] == [s.stop_reason for s in stats]
        assert [s.ras_fallbacks for s in result.stats] == [s.ras_fallbacks for s in stats]
        assert [s.prompt_tokens for s in result.stats] == [s.prompt_tokens for s in stats]


INVARIANCE_REQUESTS = make_requests(9, seed=2)


@pytest.fixture(scope="module")
def solo(models):
    """Each task of INVARIANCE_REQUESTS run alone: the reference for every batch."""
    return [alone(models[0], r).tokens for r in INVARIANCE_REQUESTS]


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_a_tasks_tokens_do_not_depend_on_the_batch(models, solo, max_batch):
    new, _ = models
    requests = INVARIANCE_REQUESTS
    forward = generate_many(new, requests, SPECIAL, max_batch=max_batch)
    backward = generate_many(new, requests[::-1], SPECIAL, max_batch=max_batch)[::-1]
    assert [r.tokens for r in forward] == solo
    assert [r.tokens for r in backward] == solo
    assert len({len(t) for tokens in solo for t in tokens}) > 3  # tasks of many lengths side by side


def test_two_threads_keep_a_batch_invariant(models, solo):
    """Matrix products split rows between threads; padded to MIN_GEMM_ROWS they still agree."""
    torch.set_num_threads(2)
    try:
        batched = generate_many(models[0], INVARIANCE_REQUESTS[::-1], SPECIAL, max_batch=8)[::-1]
    finally:
        torch.set_num_threads(1)
    assert [r.tokens for r in batched] == solo


def test_the_packed_cpu_model_is_batch_invariant_too(llm_dir):
    lm = SpeechLlama.from_checkpoint(llm_dir).pack_for_cpu()
    solo = [alone(lm, r).tokens for r in INVARIANCE_REQUESTS]
    batched = generate_many(lm, INVARIANCE_REQUESTS[::-1], SPECIAL, max_batch=8)[::-1]
    assert [r.tokens for r in batched] == solo


def test_freed_slots_take_the_next_piece_while_others_decode(models, monkeypatch):
    new, _ = models
    calls: list[tuple[str, list[int]]] = []
    prefill, decode = new.prefill, new.decode
    monkeypatch.setattr(
        new, "prefill", lambda rows, slots: calls.append(("prefill", list(slots))) or prefill(rows, slots)
    )
    monkeypatch.setattr(
        new, "decode", lambda ids, slots, pos: calls.append(("decode", list(slots))) or decode(ids, slots, pos)
    )
    task = DecodingTask(new, SPECIAL, max_batch=3)
    results = task.run(make_requests(8, seed=3))
    assert all(r.tokens for r in results)
    counters = task.counters
    assert counters.host_syncs == counters.decode_steps + counters.prefills  # one read-back per step
    assert counters.prefilled_rows == sum(len(r.tokens) for r in results) and counters.max_live_rows == 3
    assert counters.tokens == sum(len(t) for r in results for t in r.tokens)
    assert max(len(slots) for _, slots in calls) == 3 and all(0 <= s < 3 for _, slots in calls for s in slots)
    mid_flight = [
        k
        for k in range(1, len(calls) - 1)
        if calls[k][0] == "prefill"
        and calls[k - 1][0] == "decode"
        and set(calls[k - 1][1]) - set(calls[k][1]) & set(calls[k + 1][1])  # a row kept decoding
    ]
    assert mid_flight


def test_force_tokens_generates_exactly_that_many_per_piece(llm_dir):
    lm = SpeechLlama.from_checkpoint(llm_dir)
    lm.model.embed_tokens.weight[SPECIAL.eoa] = 10 * stop_row(lm)  # eoa is the likeliest token
    requests = make_requests(5, seed=4)
    results = generate_many(lm, requests, SPECIAL, GenerationOptions(force_tokens=9), max_batch=2)
    for request, result in zip(requests, results):
        assert [len(t) for t in result.tokens] == [9] * len(request.pieces_text_ids)
        assert {s.stop_reason for s in result.stats} == {"forced"}
    assert {s.stop_reason for s in alone(lm, requests[0]).stats} == {"eoa"}


def test_an_empty_piece_generates_nothing_and_the_next_piece_follows(models):
    new, old = models
    request = LmRequest([[10, 11], [], [12, 13, 14]], [1, 2], [3, 4, 5], seed=7)
    result = alone(new, request)
    tokens, _ = old.generate_long(request.pieces_text_ids, [1, 2], [3, 4, 5], SPECIAL, seed=7)
    assert result.tokens[1] == [] and result.tokens == tokens
    assert result.stats[1].generated_tokens == 0


def test_the_cache_grows_for_long_pieces(llm_dir):
    lm = SpeechLlama.from_checkpoint(llm_dir)
    request = LmRequest([[10] * 5], [1], [2], seed=0)  # max_len 100 > max_seq 16
    task = DecodingTask(lm, SPECIAL, GenerationOptions(force_tokens=60), max_batch=2, max_seq=16)
    assert [len(t) for t in task.run([request])[0].tokens] == [60]
    assert lm.max_seq >= 60 + 5


def test_cuda_graphs_are_never_built_on_the_cpu(llm_dir):
    from glmtts_batch.glmtts.generate import CudaGraphDecoder

    lm = SpeechLlama.from_checkpoint(llm_dir)
    assert DecodingTask(lm, SPECIAL, max_batch=3).graphs is None
    with pytest.raises(ValueError, match="CUDA"):
        CudaGraphDecoder(lm)
    assert [CudaGraphDecoder.bucket(s) for s in (0, 1, 2, 3, 4, 100, 600)] == [1, 2, 4, 4, 8, 128, 601]


def test_a_task_with_bad_input_fails_alone(models):
    new, _ = models
    requests = make_requests(4, seed=8)
    bad = LmRequest([[10, 11], [12]], [1], [3, 999], seed=1)  # 999: outside the 256 audio tokens
    results = generate_many(new, [requests[0], bad, *requests[1:]], SPECIAL, max_batch=2)
    assert isinstance(results[1].error, ValueError) and "prompt speech tokens" in str(results[1].error)
    assert results[1].tokens == []
    others = [results[0], *results[2:]]
    assert all(r.error is None for r in others)
    assert [r.tokens for r in others] == [alone(new, r).tokens for r in requests]


def test_special_ids_are_checked_against_the_vocabulary(llm_dir):
    with pytest.raises(ValueError, match="eoa"):
        DecodingTask(SpeechLlama.from_checkpoint(llm_dir), Special(eoa=200))
