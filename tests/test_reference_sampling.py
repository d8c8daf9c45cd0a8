"""Reference sampling (`--sampling-rng upstream`): upstream GLM-TTS's tokens for a seed.

Golden: ../shared/golden/llm (README section 6), upstream c5dc7ae's tokens on a tiny
random LLM for single pieces, long texts (prompt-history cache, pruning, early stops) and
unmasked runs. Every case in cases.json is checked, whatever the file holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from glmtts_batch.glmtts.llm import GenerationOptions, SpeechLM
from glmtts_batch.glmtts.reference_sampling import (
    audio_only_logits,
    generate_reference,
    ras_step,
    topk_step,
)
from glmtts_batch.glmtts.sampling import RasParams

GOLDEN_LLM = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "llm"
ABSENT = f"golden LLM vectors not found at {GOLDEN_LLM} (they ship in ../shared beside the repo)"

pytestmark = pytest.mark.usefixtures("single_thread")


def golden_cases(section: str) -> list:
    """Every entry of one cases.json section, as pytest params named by the case id."""
    path = GOLDEN_LLM / "cases.json"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=ABSENT), id=f"{section}-absent")]
    return [pytest.param(case, id=case["id"]) for case in json.loads(path.read_text())[section]]


@dataclass(frozen=True)
class Special:
    ats: int
    ate: int
    boa: int
    eoa: int
    pad: int


@pytest.fixture(scope="module")
def special() -> Special:
    params = json.loads((GOLDEN_LLM / "params.json").read_text())
    return Special(**params["special_token_ids"])


@pytest.fixture(scope="module")
def golden_lms() -> dict[str, SpeechLM]:
    """The three weight sets of the golden: base, and base with the eoa row or final norm replaced."""
    variants = np.load(GOLDEN_LLM / "variants.npz")
    params = json.loads((GOLDEN_LLM / "params.json").read_text())
    eoa = params["special_token_ids"]["eoa"]
    lms = {name: SpeechLM.from_checkpoint(GOLDEN_LLM / "model") for name in ("base", "eoa", "sharp")}
    with torch.no_grad():
        base = lms["base"].model
        assert torch.equal(base.embed_tokens.weight[eoa], torch.from_numpy(variants["base_embed_row"]))
        assert torch.equal(base.norm.weight, torch.from_numpy(variants["base_norm_weight"]))
        lms["eoa"].model.embed_tokens.weight[eoa] = torch.from_numpy(variants["eoa_embed_row"])
        lms["sharp"].model.norm.weight.copy_(torch.from_numpy(variants["sharp_norm_weight"]))
    return lms


def steps_of(run_id: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_LLM / "steps.npz") as steps:
        prefix = run_id + "/"
        return {key[len(prefix) :]: steps[key] for key in steps.files if key.startswith(prefix)}


def first_difference(ours: list[int], golden: list[int]) -> str:
    step = next((i for i, (a, b) in enumerate(zip(ours, golden)) if a != b), min(len(ours), len(golden)))
    return f"first difference at step {step} of {len(golden)} (ours {len(ours)} tokens)"


def options(method: str) -> GenerationOptions:
    return GenerationOptions(sample_method=method, sampling_rng="upstream")


# ---------------------------------------------------------------------------- golden runs


@pytest.mark.parametrize("case", golden_cases("single"))
def test_single_piece_reproduces_upstream_tokens(case, golden_lms, special):
    lm = golden_lms[case["weights"]]
    tokens, stats = lm.generate(
        case["text_ids"],
        case["prompt_text_ids"],
        case["prompt_speech_tokens"],
        special,
        seed=case["seed"],
        options=options(case["method"]),
    )
    assert tokens == case["tokens"], first_difference(tokens, case["tokens"])
    assert stats.stop_reason == case["stop_reason"]
    assert stats.prompt_tokens == case["n_input_ids"]
    if case["method"] == "ras":
        assert stats.ras_fallbacks == case["ras_fallbacks"]
        assert stats.ras_fallbacks == int(steps_of(case["id"])["ras_fallback"].sum())


@pytest.mark.parametrize("case", golden_cases("long"))
def test_long_text_reproduces_upstream_tokens_piece_by_piece(case, golden_lms, special):
    lm = golden_lms[case["weights"]]
    pieces = [piece["text_ids"] for piece in case["pieces"]]
    prompts: list[tuple[list[int], list[int]]] = []
    generate = lm.generate

    def spy(text_ids, prompt_text_ids, prompt_speech_tokens, special, **kwargs):
        prompts.append((list(prompt_text_ids), list(prompt_speech_tokens)))
        return generate(text_ids, prompt_text_ids, prompt_speech_tokens, special, **kwargs)

    lm.generate = spy
    try:
        tokens, stats = lm.generate_long(
            pieces,
            case["prompt_text_ids"],
            case["prompt_speech_tokens"],
            special,
            seed=case["seed"],
            prompt_cache=case["use_cache"],
            options=options(case["method"]),
        )
    finally:
        del lm.generate
    for k, (piece, ours, stat) in enumerate(zip(case["pieces"], tokens, stats)):
        assert prompts[k] == (piece["prompt_text_ids"], piece["prompt_speech_tokens"]), f"piece {k}: prompt"
        assert ours == piece["tokens"], f"piece {k}: " + first_difference(ours, piece["tokens"])
        assert stat.stop_reason == piece["stop_reason"], f"piece {k}"
    assert len(tokens) == len(case["pieces"])
    assert [t for piece in tokens for t in piece] == case["all_tokens"]


@pytest.mark.parametrize("case", golden_cases("plain_reference"))
def test_unmasked_run_reproduces_upstream_tokens_over_the_whole_vocabulary(case, golden_lms, special):
    """Upstream unchanged: every id can be drawn, text ids included (the module API allows it)."""
    inputs = {c["id"]: c for c in json.loads((GOLDEN_LLM / "cases.json").read_text())["single"]}
    single = inputs[case["id"].removeprefix("plain_")]
    lm = golden_lms[case["weights"]]
    cache = lm._new_cache()

    def step(new_ids):
        hidden = lm.last_hidden(lm.embed(torch.tensor([list(new_ids)])), cache)
        return (hidden @ lm.model.embed_tokens.weight.T)[0]  # tied output layer, all V ids

    ids = [
        *single["prompt_text_ids"],
        *single["text_ids"],
        special.boa,
        *(t + special.ats for t in single["prompt_speech_tokens"]),
    ]
    with torch.inference_mode():
        run = generate_reference(
            step,
            ids,
            min_len=case["min_len"],
            max_len=case["max_len"],
            eoa=special.eoa,
            method=case["method"],
            generator=torch.Generator().manual_seed(case["seed"]),
        )
    tokens = [t - special.ats for t in run.tokens]
    assert tokens == case["tokens"], first_difference(tokens, case["tokens"])
    assert run.stop_reason == case["stop_reason"] and run.steps == case["n_steps"]
    assert not case["in_audio_or_eoa"] or all(0 <= t <= special.ate - special.ats for t in tokens)


@pytest.mark.skipif(not (GOLDEN_LLM / "cases.json").is_file(), reason=ABSENT)
def test_without_kv_cache_the_reference_mode_gives_the_same_tokens(golden_lms, special):
    cases = json.loads((GOLDEN_LLM / "cases.json").read_text())["single"]
    case = min(cases, key=lambda c: (c["n_steps"], c["id"]))  # the cheapest to recompute
    uncached = GenerationOptions(sample_method=case["method"], sampling_rng="upstream", kv_cache=False)
    tokens, _ = golden_lms[case["weights"]].generate(
        case["text_ids"],
        case["prompt_text_ids"],
        case["prompt_speech_tokens"],
        special,
        seed=case["seed"],
        options=uncached,
    )
    assert tokens == case["tokens"]


# ---------------------------------------------------------------------------- random-number use


def mt_outputs_used(generator: torch.Generator, seed: int) -> int:
    """How many 32-bit mt19937 outputs `generator` has consumed since `manual_seed(seed)`."""
    probe = torch.Generator().manual_seed(seed)
    target = generator.get_state()
    for used in range(0, 100_000, 2):  # exponential_ takes two outputs per entry
        if torch.equal(probe.get_state(), target):
            return used
        torch.empty(1).exponential_(1, generator=probe)
    raise AssertionError("generator state not reached")


def test_ras_step_consumes_the_nucleus_and_only_on_repeat_the_whole_vocabulary():
    logits = torch.tensor([3.0, 2.9, 0.0, 0.0, -1.0, float("-inf")])  # nucleus: ids 0 and 1
    g = torch.Generator().manual_seed(5)
    draw = ras_step(logits, [4, 4, 4], allow_stop=True, eoa=5, generator=g)
    assert draw.nucleus_size == 2 and not draw.fell_back
    assert mt_outputs_used(g, 5) == 2 * 2
    g = torch.Generator().manual_seed(5)
    draw = ras_step(logits, [0, 1], allow_stop=True, eoa=5, generator=g)  # both nucleus ids repeat
    assert draw.fell_back
    assert mt_outputs_used(g, 5) == 2 * 2 + 2 * 6  # fallback draws over all V entries, zeros too


def test_topk_step_redraws_eoa_before_min_len_over_the_same_set():
    logits = torch.tensor([0.0, 0.0, 5.0, 0.0])  # eoa=2 has ~94 % of the mass
    g = torch.Generator().manual_seed(0)
    draw = topk_step(logits, k=3, allow_stop=False, eoa=2, generator=g)
    assert draw.token != 2 and draw.redraws > 0
    assert mt_outputs_used(g, 0) == 2 * 3 * (1 + draw.redraws)
    allowed = topk_step(logits, k=3, allow_stop=True, eoa=2, generator=torch.Generator().manual_seed(0))
    assert allowed.redraws == 0
    with pytest.raises(RuntimeError, match="loops forever"):
        topk_step(torch.tensor([0.0, 0.0, 200.0]), k=2, allow_stop=False, eoa=2, generator=g)


def test_nucleus_cut_uses_float32_running_mass():
    # Entries 0.5 and 0.3: the float32 mass 0.8 equals float32(top_p) -> the third is cut;
    # with float64 (0.5 + 0.3 = 0.8 < 0.8000000119) it would be kept.
    probs = torch.tensor([0.5, 0.3, 0.2 - 1e-3, 1e-3])
    draw = ras_step(
        probs.log(), [], allow_stop=True, eoa=3, params=RasParams(top_p=0.8), generator=torch.Generator().manual_seed(0)
    )
    assert draw.nucleus_size == 2


def test_audio_only_logits_place_candidates_and_mask_the_rest():
    cand = torch.tensor([1.0, 2.0, 3.0, 9.0])  # audio ids 4..6, then eoa
    full = audio_only_logits(cand, 8, ats=4, ate=6, eoa=1)
    inf = float("-inf")
    assert full.tolist() == [inf, 9.0, inf, inf, 1.0, 2.0, 3.0, inf]
    with pytest.raises(ValueError):
        audio_only_logits(cand[:3], 8, ats=4, ate=6, eoa=1)


def test_generation_options_validate_the_sampling_rng():
    assert GenerationOptions().sampling_rng == "fast"
    with pytest.raises(ValueError, match="sampling_rng"):
        GenerationOptions(sampling_rng="numpy")
