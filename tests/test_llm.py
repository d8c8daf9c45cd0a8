"""The speech-token LLM: checkpoint layout and loading, prompt layout, generation, long text."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_llm import SPECIAL, VOCAB, Special

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.checkpoint_writers.llm import (
    llm_tensor_shapes,
    plan_llm_shards,
    write_random_llm,
)
from glmtts_batch.glmtts.llm import (
    GenerationOptions,
    LlmConfig,
    PromptHistoryEntry,
    SpeechLM,
    build_input_ids,
    prune_prompt_history,
)

N_AUDIO = SPECIAL.ate - SPECIAL.ats + 1


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def lm(llm_dir) -> SpeechLM:
    return SpeechLM.from_checkpoint(llm_dir)  # fresh per test: some tests steer the weights


def steer_stop_token(lm: SpeechLM, sign: float) -> None:
    """Make eoa overwhelmingly likely (sign > 0) or unlikely (sign < 0) at every step.

    The final norm's output is replaced by all-ones, so each logit is the sum of that
    token's (tied) embedding row; eoa's row is set to +-1 everywhere (sum +-64, while the
    audio rows sum to about N(0, 0.16)).
    """
    lm.model.norm.register_forward_hook(lambda module, args, output: torch.ones_like(output))
    lm.model.embed_tokens.weight[SPECIAL.eoa] = sign


def record_model_inputs(lm: SpeechLM) -> list[torch.Tensor]:
    calls: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        calls.append(kwargs["inputs_embeds"].clone())

    lm.model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


# ---------------------------------------------------------------------------- checkpoint


def test_full_config_is_the_released_config(reference_dir):
    released = json.loads((reference_dir / "llm" / "config.json").read_text())
    assert LlmConfig.full().to_json() == released
    assert LlmConfig.from_json(reference_dir / "llm" / "config.json") == LlmConfig.full()


def test_full_shard_plan_is_the_released_weight_map(reference_dir):
    index = json.loads((reference_dir / "llm" / "model.safetensors.index.json").read_text())
    plan = plan_llm_shards(LlmConfig.full(), 2)
    weight_map = {name: f"model-{k:05d}-of-00002.safetensors" for k, names in enumerate(plan, 1) for name in names}
    assert weight_map == index["weight_map"]
    total = sum(4 * torch.Size(shape).numel() for _, shape in llm_tensor_shapes(LlmConfig.full()))
    assert total == index["metadata"]["total_size"]


def test_random_checkpoint_has_the_released_layout(llm_dir):
    config = LlmConfig.tiny(VOCAB)
    assert json.loads((llm_dir / "config.json").read_text()) == config.to_json()
    assert json.loads((llm_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    index = json.loads((llm_dir / "model.safetensors.index.json").read_text())
    shapes = dict(llm_tensor_shapes(config))
    assert set(index["weight_map"]) == set(shapes)
    assert "lm_head.weight" not in index["weight_map"]  # tied embeddings
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    total = 0
    for shard in shards:
        with safe_open(str(llm_dir / shard), framework="pt") as f:
            assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == shard}
            for key in f.keys():
                tensor = f.get_tensor(key)
                assert tensor.dtype == torch.float32 and tuple(tensor.shape) == shapes[key]
                total += tensor.numel() * 4
                if key.endswith("norm.weight"):
                    assert torch.equal(tensor, torch.ones_like(tensor))
    assert index["metadata"]["total_size"] == total


def test_random_checkpoint_depends_only_on_the_seed(tmp_path):
    a = write_random_llm(tmp_path / "a", LlmConfig.tiny(vocab_size=VOCAB), seed=1)
    b = write_random_llm(tmp_path / "b", LlmConfig.tiny(vocab_size=VOCAB), seed=1)
    c = write_random_llm(tmp_path / "c", LlmConfig.tiny(vocab_size=VOCAB), seed=2)
    name = "model-00001-of-00002.safetensors"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_loader_adopts_the_weights_on_the_device_in_the_dtype(llm_dir):
    lm = SpeechLM.from_checkpoint(llm_dir, "cpu", "bf16")
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in lm.parameters())
    assert lm.model.rotary_emb.inv_freq.dtype == torch.float32
    assert not any(t.is_meta for t in [*lm.parameters(), *lm.buffers()])
    stored = load_file(str(llm_dir / "model-00001-of-00002.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(lm.model.embed_tokens.weight, stored.to(torch.bfloat16))
    tokens, _ = lm.generate([10, 11], [1, 2], [3, 4], SPECIAL, seed=0, options=GenerationOptions(force_tokens=3))
    assert len(tokens) == 3


def _edit_checkpoint(src, dst, edit) -> None:
    shutil.copytree(src, dst)
    shard = dst / "model-00002-of-00002.safetensors"
    state = load_file(str(shard))
    edit(state)
    save_file(state, str(shard))
    index_path = dst / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    index["weight_map"].update({k: shard.name for k in state})
    index_path.write_text(json.dumps(index))


def test_loader_names_a_missing_key(llm_dir, tmp_path):
    _edit_checkpoint(llm_dir, tmp_path / "llm", lambda state: state.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: model\.norm\.weight"):
        SpeechLM.from_checkpoint(tmp_path / "llm")


def test_loader_names_an_unexpected_key(llm_dir, tmp_path):
    def add_lm_head(state):
        state["lm_head.weight"] = torch.zeros(VOCAB, 64)

    _edit_checkpoint(llm_dir, tmp_path / "llm", add_lm_head)
    with pytest.raises(CheckpointError, match=r"unexpected keys: lm_head\.weight"):
        SpeechLM.from_checkpoint(tmp_path / "llm")


def test_loader_names_a_mis_shaped_key(llm_dir, tmp_path):
    def shrink(state):
        state["model.norm.weight"] = torch.ones(32)

    _edit_checkpoint(llm_dir, tmp_path / "llm", shrink)
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight: checkpoint \(32,\) vs model \(64,\)"):
        SpeechLM.from_checkpoint(tmp_path / "llm")


def test_loader_refuses_an_untied_config_and_missing_weights(llm_dir, tmp_path):
    shutil.copytree(llm_dir, tmp_path / "llm")
    config = json.loads((llm_dir / "config.json").read_text())
    (tmp_path / "llm" / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):
        SpeechLM.from_checkpoint(tmp_path / "llm")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        SpeechLM.from_checkpoint(tmp_path / "empty")


# ---------------------------------------------------------------------------- generation


def test_model_input_is_prompt_text_text_boa_prompt_speech(lm):
    calls = record_model_inputs(lm)
    prompt_text, text, prompt_speech = [1, 2, 3], [10, 11], [0, 5, 255]
    options = GenerationOptions(force_tokens=4)
    tokens, stats = lm.generate(text, prompt_text, prompt_speech, SPECIAL, seed=0, options=options)

    expected = [1, 2, 3, 10, 11, SPECIAL.boa, 100, 105, 355]
    assert build_input_ids(text, prompt_text, prompt_speech, SPECIAL) == expected
    table = lm.model.embed_tokens.weight
    assert torch.equal(calls[0], table[expected][None])
    assert stats.prompt_tokens == len(expected)
    # Each later step feeds back exactly the sampled audio id, i.e. ats + returned token.
    assert len(calls) == 4
    for step, token in zip(calls[1:], tokens):
        assert torch.equal(step, table[SPECIAL.ats + token][None, None])


def test_returned_tokens_are_offsets_into_the_audio_range(lm):
    steer_stop_token(lm, -1.0)
    tokens, _ = lm.generate([10, 11, 12, 13], [1], [7], SPECIAL, seed=4)
    assert len(tokens) == 80
    assert all(0 <= t < N_AUDIO for t in tokens)
    assert len(set(tokens)) > 20  # drawn from the whole audio range, not a corner of it


def test_prompt_speech_tokens_and_special_ids_are_checked(lm):
    with pytest.raises(ValueError, match="prompt speech tokens"):
        lm.generate([10], [1], [N_AUDIO], SPECIAL, seed=0)
    with pytest.raises(ValueError, match="eoa"):
        lm.generate([10], [1], [0], Special(eoa=200), seed=0)


@pytest.mark.parametrize("method", ["ras", "topk"])
def test_stop_token_is_masked_until_min_len(lm, method):
    steer_stop_token(lm, +1.0)
    options = GenerationOptions(sample_method=method)
    tokens, stats = lm.generate([10, 11, 12], [1], [7], SPECIAL, seed=0, options=options)
    assert len(tokens) == 6  # min_len = 2 * 3: eoa is drawn at the first step it is allowed
    assert stats.stop_reason == "eoa"
    assert all(0 <= t < N_AUDIO for t in tokens)


def test_min_and_max_ratios_are_options(lm):
    steer_stop_token(lm, +1.0)
    options = GenerationOptions(min_token_text_ratio=3.5)
    tokens, _ = lm.generate([10, 11, 12], [1], [7], SPECIAL, seed=0, options=options)
    assert len(tokens) == 10  # int(3 * 3.5)


def test_generation_stops_at_max_len(lm):
    steer_stop_token(lm, -1.0)
    tokens, stats = lm.generate([10, 11], [1], [7], SPECIAL, seed=0)
    assert len(tokens) == 40  # max_len = 20 * 2
    assert stats.stop_reason == "max_len"
    options = GenerationOptions(max_token_text_ratio=7.5)
    tokens, _ = lm.generate([10, 11], [1], [7], SPECIAL, seed=0, options=options)
    assert len(tokens) == 15


def test_force_tokens_ignores_the_stop_token(lm):
    steer_stop_token(lm, +1.0)
    tokens, stats = lm.generate([10, 11], [1], [7], SPECIAL, seed=0, options=GenerationOptions(force_tokens=50))
    assert len(tokens) == 50  # more than max_len (40), and eoa is the likeliest token
    assert stats.stop_reason == "forced"
    assert stats.generated_tokens == 50 and stats.seconds > 0 and stats.tokens_per_s > 0


def test_empty_text_generates_nothing(lm):
    tokens, stats = lm.generate([], [1], [7], SPECIAL, seed=0)
    assert tokens == [] and stats.generated_tokens == 0


def test_same_seed_same_tokens_other_seed_other_tokens(lm):
    run = lambda seed: lm.generate([10, 11, 12], [1, 2], [3, 4], SPECIAL, seed=seed)[0]  # noqa: E731
    first = run(11)
    assert len(first) >= 6
    assert run(11) == first
    assert run(12) != first


@pytest.mark.parametrize("method", ["ras", "topk"])
def test_kv_cache_on_and_off_give_the_same_tokens(lm, method):
    cached = GenerationOptions(sample_method=method)
    uncached = GenerationOptions(sample_method=method, kv_cache=False)
    with_cache = lm.generate([10, 11, 12], [1, 2], [3, 4], SPECIAL, seed=5, options=cached)
    without = lm.generate([10, 11, 12], [1, 2], [3, 4], SPECIAL, seed=5, options=uncached)
    assert len(with_cache[0]) >= 6
    assert with_cache[0] == without[0]


def test_ras_falls_back_during_generation(lm):
    # 256 near-uniform candidates: a draw repeats one of the last 10 tokens now and then.
    options = GenerationOptions(force_tokens=120)
    tokens, stats = lm.generate([10, 11, 12, 13], [1], [7], SPECIAL, seed=2, options=options)
    repeats = sum(1 for i, t in enumerate(tokens) if t in tokens[max(0, i - 10) : i])
    assert stats.ras_fallbacks > 0
    assert repeats <= stats.ras_fallbacks  # a repeat is only ever the fallback draw's doing
    options = GenerationOptions(sample_method="topk", force_tokens=30)
    assert lm.generate([10], [1], [7], SPECIAL, seed=2, options=options)[1].ras_fallbacks == 0


# ---------------------------------------------------------------------------- long text


def entry(n_text: int, n_speech: int) -> PromptHistoryEntry:
    return PromptHistoryEntry(tuple(range(n_text)), tuple(range(n_speech)))


def test_pruning_keeps_everything_within_the_budget():
    history = [entry(3, 10), entry(3, 20)]
    # ratio 30 / 6 = 5, estimate 5 * 2 = 10: 30 + 10 = 40 is not over 40.
    assert prune_prompt_history(history, 2, limit=40) == history
    assert prune_prompt_history(history, 2, limit=39) == history[:1]


def test_pruning_truncates_the_estimate():
    history = [entry(3, 10), entry(4, 19)]
    # ratio 29 / 7 = 4.14..., * 3 = 12.43 -> 12: 29 + 12 = 41 fits a limit of 41.
    assert prune_prompt_history(history, 3, limit=41) == history
    assert prune_prompt_history(history, 3, limit=40) == history[:1]


def test_pruning_drops_oldest_pieces_first_and_keeps_the_original():
    history = [entry(2, 50), entry(2, 100), entry(2, 100), entry(2, 100)]
    # ratio 350 / 8 = 43.75, estimate for 4 ids = 175; 350 + 175 > 400 -> drop one -> 250 + 175 > 400
    # -> drop another -> 150 + 175 = 325.
    assert prune_prompt_history(history, 4, limit=400) == [history[0], history[3]]
    # The original prompt stays even when it alone is over the budget.
    assert prune_prompt_history([entry(2, 900), entry(2, 10)], 4, limit=750) == [entry(2, 900)]


def test_pruning_estimates_once_over_the_whole_history():
    # Estimate from all entries: 150 / 21 * 10 = 71.4 -> 71. After dropping entry 1 the
    # cache holds 50 + 71 > 100, so entry 2 goes too (re-estimating would have kept it).
    history = [entry(10, 10), entry(1, 100), entry(10, 40)]
    assert prune_prompt_history(history, 10, limit=100) == [history[0]]


def test_pruning_counts_zero_text_as_one():
    history = [PromptHistoryEntry((), tuple(range(10))), PromptHistoryEntry((), tuple(range(10)))]
    # ratio 20 / 1 = 20, estimate 20 * 2 = 40: 20 + 40 = 60.
    assert prune_prompt_history(history, 2, limit=60) == history
    assert prune_prompt_history(history, 2, limit=59) == history[:1]


def record_generate_calls(lm: SpeechLM, monkeypatch) -> list[dict]:
    calls: list[dict] = []
    original = lm.generate

    def spy(text_ids, prompt_text_ids, prompt_speech_tokens, special, **kwargs):
        prompt = {"prompt_text": list(prompt_text_ids), "prompt_speech": list(prompt_speech_tokens)}
        calls.append({"text": list(text_ids), **prompt, **kwargs})
        return original(text_ids, prompt_text_ids, prompt_speech_tokens, special, **kwargs)

    monkeypatch.setattr(lm, "generate", spy)
    return calls


def test_long_text_appends_earlier_pieces_to_the_prompt_and_prunes(lm, monkeypatch):
    calls = record_generate_calls(lm, monkeypatch)
    pieces = [[10, 11], [12, 13], [14, 15], [16, 17]]
    options = GenerationOptions(force_tokens=4)
    tokens, stats = lm.generate_long(pieces, [1, 2], [0, 1, 2, 3], SPECIAL, seed=9, history_limit=12, options=options)
    assert [len(t) for t in tokens] == [4, 4, 4, 4] and len(stats) == 4
    assert all(call["seed"] == 9 for call in calls)
    prompts = [(c["prompt_text"], c["prompt_speech"]) for c in calls]
    # Piece 2: 8 cached speech + estimate 8 / 4 * 2 = 4 fits 12. Piece 3: 12 + 4 > 12, so
    # piece 1 is dropped; piece 4 likewise drops piece 2.
    assert prompts == [
        ([1, 2], [0, 1, 2, 3]),
        ([1, 2, 10, 11], [0, 1, 2, 3, *tokens[0]]),
        ([1, 2, 12, 13], [0, 1, 2, 3, *tokens[1]]),
        ([1, 2, 14, 15], [0, 1, 2, 3, *tokens[2]]),
    ]


def test_long_text_without_prompt_cache_reuses_the_original_prompt_and_seed(lm):
    pieces = [[10, 11, 12], [13, 14], [10, 11, 12]]
    tokens, _ = lm.generate_long(pieces, [1, 2], [3, 4], SPECIAL, seed=6, prompt_cache=False)
    alone = [lm.generate(piece, [1, 2], [3, 4], SPECIAL, seed=6)[0] for piece in pieces]
    assert tokens == alone
    assert tokens[0] == tokens[2]  # re-seeded per piece
    cached, _ = lm.generate_long(pieces, [1, 2], [3, 4], SPECIAL, seed=6, prompt_cache=True)
    assert cached[0] == tokens[0]  # the first piece only ever sees the original prompt


def test_half_precision_model_computes_candidate_logits_in_float32(llm_dir):
    lm = SpeechLM.from_checkpoint(llm_dir, "cpu", torch.bfloat16)
    hidden = torch.randn(2, lm.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    logits = lm.candidate_logits(hidden, SPECIAL)
    table = lm.model.embed_tokens.weight.float()
    rows = torch.cat([table[SPECIAL.ats : SPECIAL.ate + 1], table[SPECIAL.eoa : SPECIAL.eoa + 1]])
    assert logits.dtype == torch.float32 and logits.shape == (2, N_AUDIO + 1)
    assert torch.allclose(logits, hidden.float() @ rows.T, atol=1e-5)
