"""The plain-PyTorch speech Llama: released keys, parity with transformers, the static cache."""

from __future__ import annotations

import pytest
import torch
from tiny_llm import VOCAB

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.checkpoint_writers.llm import llm_tensor_shapes
from glmtts_batch.glmtts.llm import LlmConfig, SpeechLM
from glmtts_batch.glmtts.model import SpeechLlama

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def reference(llm_dir) -> SpeechLM:
    return SpeechLM.from_checkpoint(llm_dir)  # transformers' LlamaModel: the test-only reference


@pytest.fixture
def lm(llm_dir) -> SpeechLlama:
    lm = SpeechLlama.from_checkpoint(llm_dir)
    lm.setup_cache(max_slots=4, max_seq=64)
    return lm


def random_ids(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def reference_run(reference: SpeechLM, prompts, steps):
    """Batch-1 transformers runs: last hidden after each prompt, then after each fed id."""
    from transformers import DynamicCache

    out = []
    for prompt, fed in zip(prompts, steps):
        cache = DynamicCache(config=reference.model.config)
        hidden = [reference.last_hidden(reference.embed(torch.tensor([prompt])), cache)[0]]
        hidden += [reference.last_hidden(reference.embed(torch.tensor([[t]])), cache)[0] for t in fed]
        out.append(torch.stack(hidden))
    return out  # per row: (1 + n_steps, D)


def batched_run(lm: SpeechLlama, prompts, steps, slots):
    with torch.inference_mode():
        hidden = [[h] for h in lm.prefill(prompts, slots)]
        positions = [len(p) for p in prompts]
        for k in range(len(steps[0])):
            ids = torch.tensor([fed[k] for fed in steps])
            for row, h in enumerate(lm.decode(ids, slots, positions)):
                hidden[row].append(h)
            positions = [p + 1 for p in positions]
    return [torch.stack(h) for h in hidden]


def test_loads_the_released_keys_unchanged(llm_dir, lm):
    expected = [name for name, _ in llm_tensor_shapes(LlmConfig.tiny(VOCAB))]
    assert sorted(lm.state_dict()) == sorted(expected)
    assert not any(t.is_meta for t in lm.parameters())
    assert all(p.dtype == torch.bfloat16 for p in SpeechLlama.from_checkpoint(llm_dir, dtype="bf16").parameters())


def test_loader_names_a_missing_key(llm_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(llm_dir, tmp_path / "llm")
    shard = tmp_path / "llm" / "model-00002-of-00002.safetensors"
    state = load_file(str(shard))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(shard))
    (tmp_path / "llm" / "model.safetensors.index.json").unlink()
    (tmp_path / "llm" / "model-00001-of-00002.safetensors").rename(tmp_path / "llm" / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing keys"):
        SpeechLlama.from_checkpoint(tmp_path / "llm")


def test_prefill_and_decode_equal_transformers_for_rows_of_different_lengths(lm, reference):
    prompts = random_ids([9, 23, 5], seed=1)
    steps = random_ids([6, 6, 6], seed=2)
    got = batched_run(lm, prompts, steps, slots=[2, 0, 1])
    want = reference_run(reference, prompts, steps)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5, rtol=0)
        assert torch.equal(g[0], w[0])  # prefill: the same operations at the same shapes, bit for bit


def test_rows_apart_is_transformers_bit_for_bit(lm, reference):
    """With `rows_apart` every row takes a batch-1 run's kernels (matrix-vector products in
    decode), so prefill and decode equal transformers exactly, in a batch of any lengths."""
    lm.rows_apart = True
    prompts, steps = random_ids([11, 3, 26], seed=3), random_ids([5, 5, 5], seed=4)
    for got, want in zip(batched_run(lm, prompts, steps, slots=[3, 0, 2]), reference_run(reference, prompts, steps)):
        assert torch.equal(got, want)
        table = reference.model.embed_tokens.weight
        logits = torch.cat([want[-1:] @ table[100:356].T, want[-1:] @ table[91:92].T], dim=-1)
        assert torch.equal(lm.candidate_logits(got[-1:], 100, 355, 91), logits)


@pytest.mark.parametrize("packed", [False, True], ids=["mkl", "onednn-packed"])
def test_a_rows_numbers_do_not_depend_on_its_batch_mates(llm_dir, packed):
    prompts = random_ids([13, 30, 7, 21, 16], seed=5)
    steps = random_ids([8] * 5, seed=6)
    lm = SpeechLlama.from_checkpoint(llm_dir).pack_for_cpu() if packed else SpeechLlama.from_checkpoint(llm_dir)
    lm.setup_cache(max_slots=8, max_seq=64)
    alone = batched_run(lm, prompts[:1], steps[:1], slots=[0])[0]
    for mates, slots in [([1], [5, 2]), ([1, 2, 3, 4], [7, 0, 3, 1, 6]), ([4, 2], [1, 2, 0])]:
        together = batched_run(
            lm, [prompts[0]] + [prompts[m] for m in mates], [steps[0]] + [steps[m] for m in mates], slots
        )
        assert torch.equal(together[0], alone)


def test_packed_model_equals_transformers(llm_dir, reference):
    lm = SpeechLlama.from_checkpoint(llm_dir).pack_for_cpu()
    lm.setup_cache(max_slots=3, max_seq=64)
    assert not any(k.endswith("proj.weight") for k in lm.state_dict())  # the dense copies are gone
    prompts, steps = random_ids([9, 23, 5], seed=11), random_ids([4, 4, 4], seed=12)
    got = batched_run(lm, prompts, steps, slots=[1, 2, 0])
    for g, w in zip(got, reference_run(reference, prompts, steps)):
        assert torch.allclose(g, w, atol=1e-5, rtol=0)
    hidden = got[0][:2]
    table = reference.model.embed_tokens.weight
    want = torch.cat([hidden @ table[100:356].T, hidden @ table[91:92].T], dim=-1)
    assert torch.allclose(lm.candidate_logits(hidden, 100, 355, 91), want, atol=1e-5, rtol=0)


def test_static_decode_equals_exact_decode(lm):
    """The fixed-shape, masked step (the one CUDA graphs capture) computes the same thing."""
    prompts, steps = random_ids([10, 4, 17], seed=7), random_ids([3, 3, 3], seed=8)
    exact = batched_run(lm, prompts, steps, slots=[0, 1, 2])
    with torch.inference_mode():
        first = lm.prefill(prompts, [0, 1, 2])
        positions = torch.tensor([len(p) for p in prompts] + [0])
        static = [first]
        for k in range(3):
            ids = torch.tensor([fed[k] for fed in steps] + [0])  # slot 3 is free: a dummy row
            static.append(lm.decode_static(ids, positions)[:3])
            positions[:3] += 1
    for row in range(3):
        assert torch.allclose(torch.stack([s[row] for s in static]), exact[row], atol=1e-5, rtol=0)


def test_cache_grows_and_keeps_its_contents(lm):
    prompts, steps = random_ids([20], seed=9), random_ids([4], seed=10)
    before = batched_run(lm, prompts, steps, slots=[1])[0]
    with torch.inference_mode():
        lm.prefill(prompts, [1])
        lm.grow_cache(200)
        assert lm.max_seq == 200
        after = [lm.decode(torch.tensor([t]), [1], [20 + k])[0] for k, t in enumerate(steps[0])]
    assert torch.equal(torch.stack(after), before[1:])


def test_half_precision_weights_give_float32_candidate_logits(llm_dir):
    lm = SpeechLlama.from_checkpoint(llm_dir, dtype=torch.bfloat16)
    hidden = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    logits = lm.candidate_logits(hidden, 100, 355, 91)
    table = lm.model.embed_tokens.weight.float()
    rows = torch.cat([table[100:356], table[91:92]])
    assert logits.dtype == torch.float32 and logits.shape == (3, 257)
    assert torch.allclose(logits, hidden.float() @ rows.T, atol=1e-5)


def test_prefill_refuses_bad_slots_and_overlong_prompts(lm):
    with pytest.raises(ValueError, match="slots"):
        lm.prefill([[1, 2], [3]], [0, 0])
    with pytest.raises(ValueError, match="exceeds the cache"):
        lm.prefill([list(range(65))], [0])
