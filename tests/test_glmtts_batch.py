"""`GlmTtsEngine.synthesize_many`: the same WAV whatever the batch (CPU, fp32).

A task's WAV, encoded as 16-bit PCM, is byte-identical whether it runs alone or in a batch
of any size, at any position, beside tasks of any length, tasks that stop early and tasks
that fail. Its draws come from its own generators (LM sampling, flow noise, HiFT noise),
the LM computes each row independently of the others (oneDNN-packed kernels), and the
flow and the vocoder render each piece alone on the CPU.

The tiny random LM never stops by itself, so the engine here gets an eoa embedding row
that makes every piece stop after its minimum length, each at its own step.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from voices import write_voice

from glmtts_batch.engines.base import EngineOptions, Synthesis, SynthesisRequest
from glmtts_batch.errors import PromptAudioError, TaskError
from glmtts_batch.glmtts import engine as engine_module
from glmtts_batch.glmtts.engine import DEFAULT_BATCH_SIZE, GlmTtsEngine
from glmtts_batch.glmtts.generate import LmRequest, LmResult
from glmtts_batch.glmtts.llm import GenerationOptions, SpeechLM
from glmtts_batch.writers import WavWriter

pytestmark = pytest.mark.usefixtures("single_thread")

LONG_ZH = (
    "今天早上天气很好，我们一起去公园散步。公园里有很多人在锻炼身体，有的跑步，有的打太极拳。"
    "湖边的柳树发出了新芽，小鸟在树上唱歌。"
)


def quiet(_message: str) -> None:
    pass


def make_it_stop(engine: GlmTtsEngine, scale: float = 4.0) -> None:
    """Give eoa an embedding row along the typical final hidden state: its logit then beats
    the audio logits now and then, so pieces stop by eoa after min_len at different steps."""
    lm, special = engine.models.llm, engine.models.special
    g = torch.Generator().manual_seed(0)
    lm.setup_cache(8, 256)
    with torch.inference_mode():
        prompts = [torch.randint(special.ats, special.ate + 1, (40,), generator=g).tolist() for _ in range(8)]
        u = lm.prefill(prompts, list(range(8))).mean(0)
        lm.model.embed_tokens.weight[special.eoa] = scale * u / u.dot(u)
    if hasattr(lm, "_candidates"):
        del lm._candidates  # the packed copy of the candidate rows, rebuilt from the new row


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("voices")
    garbage = folder / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    return {
        "low": write_voice(folder / "low.wav", pitch=140.0),
        "high": write_voice(folder / "high.wav", seconds=3.0, pitch=230.0, seed=1),  # longer prompt
        "garbage": garbage,
    }


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> GlmTtsEngine:
    eng = GlmTtsEngine.load(EngineOptions(model_dir=tiny_checkpoint, device="cpu"), log=quiet)
    make_it_stop(eng)
    yield eng
    eng.close()


def requests_for(voices: dict[str, Path]) -> list[SynthesisRequest]:
    """Mixed lengths, two voices, a long text of several pieces, and two tasks that fail."""

    def task(text: str, voice: str = "low", seed: int = 1, prompt_text: str | None = "a short voice prompt"):
        return SynthesisRequest(text=text, prompt_audio=voices[voice], prompt_text=prompt_text, seed=seed)

    return [
        task("Hello there.", seed=3),
        task(LONG_ZH, voice="high", seed=4),
        task("A somewhat longer line of text, which goes on for a while before it ends.", seed=5),
        task("Broken prompt.", voice="garbage"),
        task("Yes.", voice="high", seed=6),
        task("No transcript.", prompt_text=None),
        task("The same seed as the first task, another text.", seed=3),
        task("One two three four five six seven.", voice="high", seed=8),
    ]


def wav_bytes(result: Synthesis | Exception) -> bytes | str:
    """The task's WAV as written (16-bit PCM) and, stricter, its float32 samples; or its
    error's type and message."""
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    return WavWriter().encode(result.audio, result.sample_rate)[0] + result.audio.tobytes()


def run_in_batches(engine: GlmTtsEngine, requests: list[SynthesisRequest], size: int, order: list[int]):
    """Every request, in windows of `size` taken in `order`: results indexed like `requests`."""
    results: dict[int, bytes | str] = {}
    for start in range(0, len(order), size):
        window = order[start : start + size]
        out = engine.synthesize_many([requests[i] for i in window])
        assert len(out) == len(window)
        results.update({i: wav_bytes(r) for i, r in zip(window, out)})
    return [results[i] for i in range(len(requests))]


@pytest.fixture(scope="module")
def alone(engine, voices) -> list[bytes | str]:
    return [wav_bytes(engine.synthesize_many([r])[0]) for r in requests_for(voices)]


def test_alone_the_tasks_stop_early_at_different_steps_and_two_fail(engine, voices, alone):
    requests = requests_for(voices)
    results = engine.synthesize_many(requests)
    ok = [r for r in results if isinstance(r, Synthesis)]
    assert len(ok) == 6
    assert all(set(r.details["stop_reasons"]) == {"eoa"} for r in ok)
    assert len({n for r in ok for n in r.details["speech_tokens"]}) >= 4
    assert len(ok[1].details["text_pieces"]) >= 2  # the long text
    assert isinstance(results[3], PromptAudioError) and "garbage.wav" in str(results[3])
    assert isinstance(results[5], TaskError) and results[5].field == "prompt_text"
    assert alone[0] != alone[6]  # the same seed, another text


@pytest.mark.parametrize("size", [1, 3, 8])
def test_a_tasks_wav_is_byte_identical_whatever_the_batch(engine, voices, alone, size):
    requests = requests_for(voices)
    assert run_in_batches(engine, requests, size, list(range(len(requests)))) == alone


def test_a_tasks_wav_does_not_depend_on_its_position_or_neighbours(engine, voices, alone):
    requests = requests_for(voices)
    order = [7, 2, 5, 0, 4, 1, 6, 3]
    assert run_in_batches(engine, requests, 8, order) == alone
    assert run_in_batches(engine, requests, 3, order[::-1]) == alone


def test_the_frontend_thread_changes_nothing(engine, voices, alone):
    # On CUDA the text normalisation runs on a worker thread; results are taken in order.
    eng = GlmTtsEngine(
        engine.layout, engine.models, device=engine.device, options=engine.options, generation=engine.generation
    )
    eng._text_pool = ThreadPoolExecutor(1)
    try:
        assert run_in_batches(eng, requests_for(voices), 8, list(range(8))) == alone
    finally:
        eng._text_pool.shutdown()


def test_out_of_memory_leaves_the_call_and_the_halves_give_the_same_wavs(engine, voices, alone, monkeypatch):
    requests = requests_for(voices)
    flow = engine.models.flow
    real, calls = flow.inference_padded, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(flow, "inference_padded", flaky)
    with pytest.raises(torch.OutOfMemoryError):
        engine.synthesize_many(requests)
    assert engine.models.llm.max_slots == 0  # the call's KV cache was released
    # What the runner does next: split in halves and retry.
    halves = engine.synthesize_many(requests[:4]) + engine.synthesize_many(requests[4:])
    assert [wav_bytes(r) for r in halves] == alone


def test_the_default_batch_size_and_the_kernel_are_the_devices(engine):
    assert engine.default_batch_size == DEFAULT_BATCH_SIZE["cpu"]
    assert engine.lm_kernel == engine.info.settings["lm_kernel"] == "cpu-packed"


def test_upstream_rng_reproduces_the_transformers_path_token_for_token(tiny_checkpoint, voices, monkeypatch):
    """`--sampling-rng upstream`: each task at batch 1 with matrix-vector kernels, so the
    tokens equal transformers' batch-1 `SpeechLM` run with upstream's random-number use."""
    options = EngineOptions(model_dir=tiny_checkpoint, device="cpu", sampling_rng="upstream")
    eng = GlmTtsEngine.load(options, log=quiet, force_tokens=12)
    reference = SpeechLM.from_checkpoint(Path(tiny_checkpoint) / "llm")
    seen: list[tuple[LmRequest, LmResult]] = []
    real = engine_module.generate_upstream

    def spy(lm, request, special, options):
        seen.append((request, real(lm, request, special, options)))
        return seen[-1][1]

    monkeypatch.setattr(engine_module, "generate_upstream", spy)
    try:
        assert eng.lm_kernel == eng.info.settings["lm_kernel"] == "cpu-rows-apart"
        requests = [r for r in requests_for(voices) if r.prompt_text and "garbage" not in r.prompt_audio.name][:3]
        together = [wav_bytes(r) for r in eng.synthesize_many(requests)]
        assert [wav_bytes(eng.synthesize_many([r])[0]) for r in requests] == together
        upstream = GenerationOptions(force_tokens=12, sampling_rng="upstream")
        assert len(seen) == 2 * len(requests)
        for lm_request, result in seen[:3]:
            tokens, _ = reference.generate_long(
                lm_request.pieces_text_ids,
                lm_request.prompt_text_ids,
                lm_request.prompt_speech_tokens,
                eng.models.special,
                seed=lm_request.seed,
                options=upstream,
            )
            assert result.tokens == tokens
    finally:
        eng.close()


def test_the_legacy_lm_is_todays_sequential_path(tiny_checkpoint, voices):
    """`legacy_lm=True`: transformers' LlamaModel, one task at a time (the benchmarks' baseline)."""
    eng = GlmTtsEngine.load(
        EngineOptions(model_dir=tiny_checkpoint, device="cpu"), log=quiet, force_tokens=5, legacy_lm=True
    )
    try:
        assert isinstance(eng.models.llm, SpeechLM) and eng.lm_kernel == "transformers"
        assert eng.info.settings["lm_kernel"] == "transformers"
        requests = requests_for(voices)[:4]
        out = eng.synthesize_many(requests)
        assert [r.details["speech_tokens"] for r in out[:3]] == [[5], [5] * len(out[1].details["text_pieces"]), [5]]
        assert isinstance(out[3], PromptAudioError)
    finally:
        eng.close()


def test_synthesize_is_the_one_request_form(engine, voices, alone):
    requests = requests_for(voices)
    assert wav_bytes(engine.synthesize(requests[0])) == alone[0]
    with pytest.raises(PromptAudioError):
        engine.synthesize(requests[3])


def test_a_failure_inside_a_padded_flow_batch_fails_only_its_task(engine, voices, monkeypatch):
    # CUDA renders padded flow batches; the CPU path is forced into them here.
    eng = GlmTtsEngine(
        engine.layout, engine.models, device=engine.device, options=engine.options, generation=engine.generation
    )
    eng.flow_batch = 4
    flow = engine.models.flow
    real = flow.inference_padded
    high = len(eng._prompt(requests_for(voices)[1]).speech_tokens)  # the 3 s voice's prompt length

    def refuses_the_high_voice(tokens, token_lengths, prompt_tokens, prompt_token_lengths, *args, **kwargs):
        if high in prompt_token_lengths.tolist():
            raise ValueError("this voice breaks the flow")
        return real(tokens, token_lengths, prompt_tokens, prompt_token_lengths, *args, **kwargs)

    monkeypatch.setattr(flow, "inference_padded", refuses_the_high_voice)
    requests = requests_for(voices)
    results = eng.synthesize_many(requests)
    for request, result in zip(requests, results):
        if request.prompt_audio == voices["high"]:
            assert isinstance(result, ValueError) and "breaks the flow" in str(result)
        elif request.prompt_text and request.prompt_audio != voices["garbage"]:
            assert isinstance(result, Synthesis) and len(result.audio) > 0
