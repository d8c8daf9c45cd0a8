"""The glmtts engine end to end on a tiny random checkpoint: audio lengths, manifest details,
seeding, the prompt cache, long text, phoneme mode, loading errors and OOM recovery.

Random weights never emit the stop token, so most tests load the engine with
`force_tokens`: every piece then gets exactly that many speech tokens.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from voices import write_voice

from glmtts_batch.api import run_batch
from glmtts_batch.engines.base import EngineOptions, SynthesisRequest
from glmtts_batch.errors import (
    CheckpointError,
    EngineLoadError,
    PromptAudioError,
    TaskError,
)
from glmtts_batch.glmtts import generate as generate_module
from glmtts_batch.glmtts.engine import CROSSFADE_MS, GlmTtsEngine, engine_settings
from glmtts_batch.glmtts.llm import GenerationOptions

FORCED = 6  # speech tokens per piece for the forced engines
PROMPT_SECONDS = 2.0  # a multiple of 40 ms: exactly 50 speech tokens and 100 mel frames
TOKEN_RATE = 25
MEL_RATE = 50
HOP = {24000: 480, 32000: 640}
LONG_ZH = (
    "今天早上天气很好，我们一起去公园散步。公园里有很多人在锻炼身体，有的跑步，有的打太极拳。"
    "湖边的柳树发出了新芽，小鸟在树上唱歌。我们走了一个小时，然后在长椅上休息了一会儿。"
    "中午我们去附近的饭馆吃饭，点了几个家常菜和一碗汤。下午回家以后，我读了一本关于历史的书，"
    "晚上和家人一起看电视，聊了聊最近的生活和工作。这真是轻松愉快的一天，我希望明天也一样。"
    "睡觉之前，我把明天要做的事情写在本子上，然后关灯休息。"
)


def quiet(_message: str) -> None:
    pass


pytestmark = pytest.mark.usefixtures("single_thread")


def piece_samples(n_tokens: int, prompt_tokens: int, prompt_frames: int, sample_rate: int) -> int:
    """Samples the vocoder makes for one piece of `n_tokens` speech tokens.

    The flow sizes the mel for prompt + piece tokens with upstream's float expression
    `int(tokens / 25 * 50)` and returns the frames after the prompt's own mel frames.
    """
    frames = int((prompt_tokens + n_tokens) / TOKEN_RATE * MEL_RATE) - prompt_frames
    return frames * HOP[sample_rate]


def joined_length(lengths: list[int], sample_rate: int) -> int:
    """Crossfade join: neighbours overlap by min(fade, left // 2, right // 2) samples."""
    fade = int(round(sample_rate * CROSSFADE_MS / 1000))
    overlaps = [min(fade, a // 2, b // 2) for a, b in zip(lengths, lengths[1:])]
    return sum(lengths) - sum(overlaps)


def sibling(engine: GlmTtsEngine, *, force_tokens: int | None = FORCED, **changes) -> GlmTtsEngine:
    """Another engine over the same loaded models (fresh prompt cache, other run options)."""
    options = dataclasses.replace(engine.options, **changes)
    generation = GenerationOptions(kv_cache=options.kv_cache, force_tokens=force_tokens)
    return GlmTtsEngine(engine.layout, engine.models, device=engine.device, options=options, generation=generation)


def request(
    text: str, voice: Path | None, *, prompt_text: str | None = "a short voice prompt", seed: int = 1, phoneme=None
):
    return SynthesisRequest(text=text, prompt_audio=voice, prompt_text=prompt_text, seed=seed, phoneme=phoneme)


class GenerateSpy:
    """Records every piece the LM generates, in order: its inputs and the tokens it returned.

    For one task per call: the prompt ids are caught where every LM path builds them
    (`build_input_ids`), the tokens from the engine's LM stage.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict] = []
        pending: list[dict] = []
        real_build, real_stage = generate_module.build_input_ids, GlmTtsEngine._speech_tokens

        def build(text_ids, prompt_text_ids, prompt_speech_tokens, special):
            pending.append(
                {
                    "text_ids": list(text_ids),
                    "prompt_text_ids": list(prompt_text_ids),
                    "prompt_speech_tokens": list(prompt_speech_tokens),
                }
            )
            return real_build(text_ids, prompt_text_ids, prompt_speech_tokens, special)

        def stage(engine, jobs):
            real_stage(engine, jobs)
            for job in jobs:
                for tokens in job.tokens:
                    self.calls.append({**pending.pop(0), "tokens": list(tokens)})

        monkeypatch.setattr(generate_module, "build_input_ids", build)
        monkeypatch.setattr(GlmTtsEngine, "_speech_tokens", stage)


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> Path:
    return write_voice(tmp_path_factory.mktemp("voices") / "voice.wav")


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> GlmTtsEngine:
    eng = GlmTtsEngine.load(EngineOptions(model_dir=tiny_checkpoint, device="cpu"), log=quiet, force_tokens=FORCED)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def engine32(tiny_checkpoint) -> GlmTtsEngine:
    options = EngineOptions(model_dir=tiny_checkpoint, device="cpu", sample_rate=32000)
    eng = GlmTtsEngine.load(options, log=quiet, force_tokens=FORCED + 3)
    yield eng
    eng.close()


# ----------------------------------------------------------------------------- audio length


def test_natural_generation_at_24k_wav_length_follows_the_token_count(engine, voice):
    free = sibling(engine, force_tokens=None)
    result = free.synthesize(request("Hi there.", voice))
    (piece,) = result.details["text_pieces"]
    (n,) = result.details["speech_tokens"]
    n_text = len(engine.models.text.ids(piece))
    # Between the LM's min_len and max_len (random weights rarely stop early).
    assert 2 * n_text <= n <= 20 * n_text
    if result.details["stop_reasons"] == ["max_len"]:
        assert n == 20 * n_text
    assert result.sample_rate == 24000
    assert result.audio.dtype == np.float32 and result.audio.ndim == 1
    p = result.details["prompt_speech_tokens"]
    assert p == PROMPT_SECONDS * TOKEN_RATE
    assert len(result.audio) == piece_samples(n, p, 2 * p, 24000)


@pytest.mark.parametrize("which", ["engine", "engine32"])
def test_pieces_are_vocoded_separately_and_joined_with_a_crossfade(which, request_fixture, voice, monkeypatch):
    eng: GlmTtsEngine = request_fixture(which)
    rate = eng.sample_rate
    per_piece: list[tuple[int, int]] = []  # (mel frames, samples) at the vocoder
    real = eng.models.vocoder
    assert real.sample_rate == rate

    class RecordingVocoder:  # any object with the `Vocoder` interface can stand in
        sample_rate = real.sample_rate

        def vocode(self, mel, generator=None):
            wav = real.vocode(mel, generator)
            per_piece.append((mel.shape[-1], wav.shape[-1]))
            return wav

    monkeypatch.setattr(eng.models, "vocoder", RecordingVocoder())
    result = eng.synthesize(request(LONG_ZH[:90], voice))

    tokens = result.details["speech_tokens"]
    assert len(tokens) >= 2 and len(result.details["text_pieces"]) == len(tokens)
    assert all(n == eng.generation.force_tokens for n in tokens)
    p = result.details["prompt_speech_tokens"]
    expected = [piece_samples(n, p, 2 * p, rate) for n in tokens]
    assert [s for _, s in per_piece] == expected
    assert [f * HOP[rate] for f, _ in per_piece] == expected
    assert result.sample_rate == rate == eng.info.sample_rate
    assert len(result.audio) == joined_length(expected, rate)
    assert np.all(np.isfinite(result.audio)) and np.abs(result.audio).max() <= 1.0


@pytest.fixture
def request_fixture(request):
    return request.getfixturevalue


# ------------------------------------------------------------------------------- details


def test_manifest_details_are_present_and_sane(engine, voice):
    started = time.perf_counter()
    result = engine.synthesize(request("Good morning, my friend.", voice))
    wall = time.perf_counter() - started
    d = result.details
    json.dumps(d)  # the manifest stores them as JSON
    assert d["text_pieces"] == ["good morning, my friend."]
    assert d["speech_tokens"] == [FORCED]
    assert d["prompt_speech_tokens"] == 50
    assert set(d["timings_s"]) == {"frontend", "llm", "flow", "vocoder"}
    assert all(v >= 0 for v in d["timings_s"].values())
    assert sum(d["timings_s"].values()) <= wall + 1e-3
    duration = len(result.audio) / result.sample_rate
    assert d["rtf"] == pytest.approx(sum(d["timings_s"].values()) / duration, rel=0.05, abs=1e-3)
    assert d["llm_tokens_per_s"] > 0
    assert d["stop_reasons"] == ["forced"]
    assert d["device"] == "cpu" == engine.info.device
    assert d["phoneme"] is False
    assert engine.info.name == "glmtts" and engine.info.clones_voice
    assert re.fullmatch(r"glmtts:[0-9a-f]{16}", engine.info.model)  # weights identity, not the folder name
    settings = engine.info.settings
    assert (settings["dtype"], settings["flow_dtype"], settings["prompt_cache"], settings["phoneme_dict_sha256"]) == (
        "fp32",
        "fp32",
        True,
        None,
    )
    assert (
        settings["sampling_rng"] == "fast"
        and settings["generation"]["sample_method"] == "ras"
        and "device" not in settings
    )
    assert settings["text_grammars"] == engine.models.text.normalizer.grammars
    assert settings["lm_kernel"] == engine.lm_kernel == "cpu-packed"  # the kernels round differently: in the key
    assert settings == engine_settings(  # what test_resume_settings covers
        engine.options, engine.generation, "cpu-packed", text_grammars=engine.models.text.normalizer.grammars
    )


# ------------------------------------------------------------------------------- seeding


def test_same_seed_same_audio_other_seed_other_audio(engine, voice):
    a = engine.synthesize(request("Hello there world.", voice, seed=7)).audio
    b = engine.synthesize(request("Hello there world.", voice, seed=7)).audio
    c = engine.synthesize(request("Hello there world.", voice, seed=8)).audio
    assert np.array_equal(a, b)
    assert a.shape == c.shape and not np.array_equal(a, c)


# -------------------------------------------------------------------------- prompt cache


def test_prompt_features_are_computed_once_per_prompt_and_again_after_an_edit(engine, tmp_path, monkeypatch):
    eng = sibling(engine)
    computed: list[Path] = []
    real = eng.prompt_features

    def counting(path, prompt_text):
        computed.append(Path(path))
        return real(path, prompt_text)

    monkeypatch.setattr(eng, "prompt_features", counting)
    voice = write_voice(tmp_path / "shared.wav", pitch=150.0)
    eng.synthesize(request("One task.", voice))
    eng.synthesize(request("Another task.", voice))
    assert computed == [voice]
    assert eng.stats()["prompt_cache_hits"] == 1
    assert eng.stats()["prompt_cache_hit_rate"] == 0.5

    write_voice(voice, pitch=210.0, seed=1)  # same name, new recording
    eng.synthesize(request("A third task.", voice))
    assert computed == [voice, voice]
    assert eng.stats()["prompt_cache_misses"] == 2


# ----------------------------------------------------------------------------- long text


@pytest.mark.parametrize("prompt_cache", [True, False])
def test_long_text_is_split_and_generated_in_order(engine, voice, monkeypatch, prompt_cache):
    eng = sibling(engine, force_tokens=4, prompt_cache=prompt_cache)
    spy = GenerateSpy(monkeypatch)
    prompt_text = "你好，这是一段提示语音。"
    result = eng.synthesize(request(LONG_ZH, voice, prompt_text=prompt_text))

    pieces = result.details["text_pieces"]
    assert len(pieces) >= 3
    assert "".join(pieces).replace("。", "").replace("，", "") == (
        LONG_ZH.replace("。", "").replace("，", "")
    )  # every character kept, in order (the pieces may end in a full stop)
    assert [c["text_ids"] for c in spy.calls] == [eng.models.text.ids(p) for p in pieces]
    assert result.details["speech_tokens"] == [4] * len(pieces)

    prompt = eng.prompts.get_or_compute(voice, prompt_text, lambda: pytest.fail("prompt features were not cached"))
    first, second = spy.calls[0], spy.calls[1]
    assert first["prompt_text_ids"] == prompt.prompt_text_ids
    assert first["prompt_speech_tokens"] == prompt.speech_tokens
    if prompt_cache:
        # Piece 2 is prompted with the original prompt followed by piece 1 and its speech.
        assert second["prompt_text_ids"] == prompt.prompt_text_ids + first["text_ids"]
        assert second["prompt_speech_tokens"] == prompt.speech_tokens + first["tokens"]
    else:
        assert second["prompt_text_ids"] == prompt.prompt_text_ids
        assert second["prompt_speech_tokens"] == prompt.speech_tokens


def test_the_flow_is_always_conditioned_on_the_original_prompt(engine, voice, monkeypatch):
    # The prompt-history cache only lengthens the LM's prompt; the flow and vocoder always
    # take the original recording's tokens, mel and speaker embedding.
    eng = sibling(engine, force_tokens=4, prompt_cache=True)
    flow = eng.models.flow
    seen = []
    real = flow.inference_padded

    def spy(
        tokens, token_lengths, prompt_tokens, prompt_token_lengths, prompt_mel, prompt_mel_lengths, embedding, **kw
    ):
        seen.append((tokens[0].tolist(), prompt_tokens[0].tolist(), prompt_mel[0].clone(), embedding[0].clone()))
        return real(
            tokens, token_lengths, prompt_tokens, prompt_token_lengths, prompt_mel, prompt_mel_lengths, embedding, **kw
        )

    monkeypatch.setattr(flow, "inference_padded", spy)
    prompt_text = "你好，这是一段提示语音。"
    result = eng.synthesize(request(LONG_ZH, voice, prompt_text=prompt_text))
    prompt = eng.prompts.get_or_compute(voice, prompt_text, lambda: pytest.fail("prompt features were not cached"))
    assert len(seen) == len(result.details["text_pieces"]) >= 3
    for tokens, prompt_tokens, prompt_mel, embedding in seen:
        assert len(tokens) == 4
        assert prompt_tokens == prompt.speech_tokens
        assert torch.equal(prompt_mel, prompt.prompt_mel) and torch.equal(embedding, prompt.embedding)


def test_kv_cache_off_generates_the_same_tokens(engine, voice, monkeypatch):
    spy = GenerateSpy(monkeypatch)
    on = sibling(engine, force_tokens=16).synthesize(request("Same tokens please.", voice, seed=3))
    off = sibling(engine, force_tokens=16, kv_cache=False).synthesize(request("Same tokens please.", voice, seed=3))
    with_cache, without_cache = spy.calls
    assert len(with_cache["tokens"]) == 16
    assert without_cache["tokens"] == with_cache["tokens"]
    assert np.array_equal(on.audio, off.audio)


# ------------------------------------------------------------------------- task problems


@pytest.mark.parametrize(
    ("voice_given", "prompt_text", "field"),
    [(False, "a prompt", "prompt_audio"), (True, None, "prompt_text"), (True, "   ", "prompt_text")],
)
def test_a_task_without_prompt_audio_or_text_fails_naming_the_field(engine, voice, voice_given, prompt_text, field):
    with pytest.raises(TaskError, match=field) as caught:
        engine.synthesize(request("Hello.", voice if voice_given else None, prompt_text=prompt_text))
    assert caught.value.field == field


def test_unreadable_or_too_short_prompt_is_a_prompt_audio_error(engine, tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    with pytest.raises(PromptAudioError, match="garbage.wav") as caught:
        engine.synthesize(request("Hello.", garbage))
    assert caught.value.field == "prompt_audio"

    short = write_voice(tmp_path / "short.wav", seconds=0.4)
    with pytest.raises(PromptAudioError, match="short.wav"):
        engine.synthesize(request("Hello.", short))


# ------------------------------------------------------------------------------- phoneme


def test_phoneme_mode_on_request_spells_ambiguous_characters(engine, voice, monkeypatch):
    spy = GenerateSpy(monkeypatch)
    text = "我去银行取钱。"
    on = engine.synthesize(request(text, voice, phoneme=True))
    off = engine.synthesize(request(text, voice, phoneme=False))
    default = engine.synthesize(request(text, voice))
    assert on.details["phoneme"] is True
    assert on.details["text_pieces"] == ["我去银<|H|><|ANG2|>取钱。"]
    assert off.details["text_pieces"] == default.details["text_pieces"] == ["我去银行取钱。"]
    assert default.details["phoneme"] is False  # no phoneme dictionary: off by default
    # Phoneme tokens reach the LM as single added-token ids.
    (ang2,) = engine.models.tokenizer.encode("<|ANG2|>")
    assert ang2 in spy.calls[0]["text_ids"] and ang2 not in spy.calls[1]["text_ids"]


def test_a_phoneme_dictionary_makes_phoneme_mode_the_default(tiny_checkpoint, voice, tmp_path):
    words = tmp_path / "words.jsonl"
    words.write_text(json.dumps({"word": "银行", "pinyin": "yin2 hang2"}, ensure_ascii=False) + "\n", encoding="utf-8")
    options = EngineOptions(model_dir=tiny_checkpoint, device="cpu", phoneme_dict=words)
    eng = GlmTtsEngine.load(options, log=quiet, force_tokens=2)
    try:
        default = eng.synthesize(request("我去银行取钱。", voice))
        opted_out = eng.synthesize(request("我去银行取钱。", voice, phoneme=False))
    finally:
        eng.close()
    assert default.details["phoneme"] is True
    assert default.details["text_pieces"] == ["我去<|IN2|><|H|><|ANG2|>取钱。"]  # the dictionary's reading
    assert opted_out.details["phoneme"] is False
    assert opted_out.details["text_pieces"] == ["我去银行取钱。"]


# ------------------------------------------------------------------------- loading errors


@pytest.fixture
def ckpt_copy(tiny_checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        GlmTtsEngine.load(EngineOptions(model_dir=tmp_path / "nowhere", device="cpu"), log=quiet)


def test_missing_files_are_all_listed(ckpt_copy):
    (ckpt_copy / "hift" / "hift.pt").unlink()
    (ckpt_copy / "frontend" / "campplus.onnx").unlink()
    with pytest.raises(CheckpointError) as caught:
        GlmTtsEngine.load(EngineOptions(model_dir=ckpt_copy, device="cpu"), log=quiet)
    message = str(caught.value)
    assert "hift.pt" in message and "campplus.onnx" in message


def test_a_renamed_flow_key_is_named(ckpt_copy):
    path = ckpt_copy / "flow" / "flow.pt"
    state = torch.load(path, weights_only=True)["model"]
    state = {
        k.replace("transformer_blocks.0.attn.to_out.0.weight", "transformer_blocks.0.attn.out_proj.weight"): v
        for k, v in state.items()
    }
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as caught:
        GlmTtsEngine.load(EngineOptions(model_dir=ckpt_copy, device="cpu"), log=quiet)
    message = str(caught.value)
    assert "estimator.transformer_blocks.0.attn.to_out.0.weight" in message  # missing
    assert "estimator.transformer_blocks.0.attn.out_proj.weight" in message  # unexpected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_machine_is_a_load_error(tiny_checkpoint):
    with pytest.raises(EngineLoadError, match="cuda"):
        GlmTtsEngine.load(EngineOptions(model_dir=tiny_checkpoint, device="cuda"), log=quiet)


# ---------------------------------------------------------------------- OOM through the runner


def test_out_of_memory_alone_fails_one_task_frees_memory_and_the_run_goes_on(engine, voice, tmp_path, monkeypatch):
    # At batch 1 there is nothing to split: the task that ran out of memory alone is failed.
    # (A batch that runs out is split and retried: test_runner_batching, test_glmtts_batch.)
    flow_calls = 0
    real_flow = engine.models.flow.inference_padded

    def flaky_flow(*args, **kwargs):
        nonlocal flow_calls
        flow_calls += 1
        if flow_calls == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_flow(*args, **kwargs)

    freed = 0
    real_free = engine.free_memory

    def counting_free():
        nonlocal freed
        freed += 1
        real_free()

    monkeypatch.setattr(engine.models.flow, "inference_padded", flaky_flow)
    monkeypatch.setattr(engine, "free_memory", counting_free)
    tasks = [
        {"input_text": text, "prompt_audio": str(voice), "prompt_text": "a short voice prompt", "output_name": name}
        for name, text in [("one", "First line."), ("two", "Second line."), ("three", "Third line.")]
    ]
    summary = run_batch(
        tasks, tmp_path / "out", engine=engine, progress=False, fsync=False, make_zip=False, log=quiet, batch_size=1
    )

    records = [json.loads(line) for line in summary.manifest.read_text(encoding="utf-8").splitlines()]
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert records[1]["error"]["type"] == "OutOfMemoryError"
    assert "out of memory" in records[1]["error"]["message"]
    assert freed == 1
    assert summary.exit_code == 1 and summary.ok == 2 and summary.failed == 1
    assert (tmp_path / "out" / records[2]["wav"]).is_file()
    assert records[2]["details"]["speech_tokens"] == [FORCED]


@pytest.mark.parametrize("flow_dtype", ["bf16", "fp16"])
def test_half_precision_flow_is_opt_in_and_a_recorded_setting(tiny_checkpoint, engine, voice, flow_dtype):
    text = "hello there"
    reference = engine.synthesize(request(text, voice, seed=3))
    options = EngineOptions(model_dir=tiny_checkpoint, device="cpu", flow_dtype=flow_dtype)
    half = GlmTtsEngine.load(options, log=quiet, force_tokens=FORCED)
    try:
        assert half.models.flow.estimator.proj_out.weight.dtype != torch.float32
        assert engine.models.flow.estimator.proj_out.weight.dtype == torch.float32  # the default stays fp32
        out = half.synthesize(request(text, voice, seed=3))
        assert out.audio.dtype == np.float32 and np.isfinite(out.audio).all()
        assert len(out.audio) == len(reference.audio)  # same tokens, same length; only the mel precision differs
        assert not np.array_equal(out.audio, reference.audio)
        # the same weights, another setting that shapes the audio: part of the resume key
        assert half.info.model == engine.info.model
        assert half.info.settings["flow_dtype"] == flow_dtype and engine.info.settings["flow_dtype"] == "fp32"
    finally:
        half.close()


def test_upstream_sampling_rng_is_a_recorded_setting_with_its_own_tokens(tiny_checkpoint, engine, voice, monkeypatch):
    options = EngineOptions(model_dir=tiny_checkpoint, device="cpu", sampling_rng="upstream")
    upstream = GlmTtsEngine.load(options, log=quiet, force_tokens=16)
    try:
        assert upstream.generation.sampling_rng == "upstream" and engine.generation.sampling_rng == "fast"
        assert upstream.info.settings["sampling_rng"] == "upstream"  # part of the resume key
        spy = GenerateSpy(monkeypatch)
        out = upstream.synthesize(request("Same seed.", voice, seed=3))
        sibling(engine, force_tokens=16).synthesize(request("Same seed.", voice, seed=3))
        reference, fast = spy.calls
        assert len(reference["tokens"]) == len(fast["tokens"]) == 16
        assert reference["tokens"] != fast["tokens"]  # same distribution, other random-number use
        assert out.audio.dtype == np.float32 and np.isfinite(out.audio).all()
    finally:
        upstream.close()
    with pytest.raises(EngineLoadError, match="sampling_rng"):
        GlmTtsEngine.load(dataclasses.replace(options, sampling_rng="numpy"), log=quiet)


def test_falling_back_to_the_wetext_graphs_is_logged_at_load_and_in_the_settings(tiny_checkpoint, engine, monkeypatch):
    """Without WeTextProcessing 1.0.3's graphs the engine still runs, with wetext's, and says so:
    a warning at load with the install command, and the grammars in the settings (resume key)."""
    from glmtts_batch.glmtts.text import tn_graphs
    from glmtts_batch.glmtts.text.normalize import GRAMMARS_WETEXT, UPSTREAM_GRAPHS_INSTALL

    def unavailable():
        raise tn_graphs.GraphsUnavailable("WeTextProcessing is not installed")

    monkeypatch.setattr(tn_graphs, "graph_dir", unavailable)
    lines: list[str] = []
    fallback = GlmTtsEngine.load(EngineOptions(model_dir=tiny_checkpoint, device="cpu"), log=lines.append)
    try:
        warnings = [line for line in lines if "WARNING" in line]
        assert len(warnings) == 1, lines
        assert "wetext" in warnings[0] and "WeTextProcessing is not installed" in warnings[0]
        assert UPSTREAM_GRAPHS_INSTALL in warnings[0]
        assert fallback.info.settings["text_grammars"] == GRAMMARS_WETEXT
        if engine.info.settings["text_grammars"] != GRAMMARS_WETEXT:  # upstream's graphs are installed here
            assert fallback.info.settings != engine.info.settings
    finally:
        fallback.close()
