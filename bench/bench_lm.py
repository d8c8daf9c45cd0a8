"""LM decode-step timing: today's batch-1 transformers path vs the batched static-cache LM.

    python bench/bench_lm.py --llm-dir /work/bench-ckpt/full/llm --batch-sizes 1,8,16

One process, one checkpoint, the same prompt length for every row. A "step" is what
generation does per token: the forward pass, the candidate logits and one RAS draw per
row (from that row's own generator). Caches are filled with random keys/values of
`--context` positions instead of a prefill (the step cost is the same; a full-shape
prefill would dominate the run). Variants:

- sequential: `SpeechLM` (transformers `LlamaModel`, DynamicCache), one task at a time;
- batched-mkl: `SpeechLlama.decode`, rows padded to 16, plain `F.linear` (MKL);
- batched-packed: the same after `pack_for_cpu()` (oneDNN-packed weights), CPU only;
- rows-apart: `SpeechLlama` with `rows_apart` (each row a batch-1 step: today's numbers).

Prints a table and writes JSON (`--json`). The CPU may be shared: compare ratios within
one run only.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from glmtts_batch.glmtts.llm import SpeechLM
from glmtts_batch.glmtts.model import SpeechLlama
from glmtts_batch.glmtts.sampling import RasParams, ras_sample
from glmtts_batch.glmtts.weights import load_module

ATS, ATE, EOA = 61498, 94265, 59253  # the released special ids (full vocabulary)


def time_steps(step, steps: int) -> float:
    """Fastest of `steps` timed steps after a warm-up: on a shared CPU the minimum is the
    figure least disturbed by other processes."""
    step()
    best = float("inf")
    for _ in range(steps):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best


def sample_rows(scores: torch.Tensor, generators: list[torch.Generator]) -> list[int]:
    history = torch.zeros(1, 10, dtype=torch.long)
    tokens = [
        ras_sample(scores[k : k + 1], history, params=RasParams(), generator=g)[0] for k, g in enumerate(generators)
    ]
    return torch.cat(tokens).tolist()


def sequential_step_s(old: SpeechLM, context: int, steps: int) -> float:
    from transformers import DynamicCache

    config = old.model.config
    cache = DynamicCache(config=config)
    shape = (1, config.num_key_value_heads, context, config.head_dim)
    for layer in range(config.num_hidden_layers):
        cache.update(torch.randn(shape), torch.randn(shape), layer)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        hidden = old.last_hidden(old.embed(torch.tensor([[ATS + 5]])), cache)
        sample_rows(old.candidate_logits(hidden, _Special), [generator])

    with torch.inference_mode():
        return time_steps(step, steps)


class _Special:
    ats, ate, eoa = ATS, ATE, EOA


def batched_step_s(lm: SpeechLlama, batch: int, context: int, steps: int) -> float:
    lm.setup_cache(batch, context + steps + 2)
    generators = [torch.Generator().manual_seed(k) for k in range(batch)]
    ids = torch.full((batch,), ATS + 5)
    positions = [context] * batch  # the step overwrites the same position: same cost every time

    def step() -> None:
        hidden = lm.decode(ids, list(range(batch)), positions)
        sample_rows(lm.candidate_logits(hidden, ATS, ATE, EOA), generators)

    with torch.inference_mode():
        return time_steps(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm-dir", type=Path, default=Path("/work/bench-ckpt/full/llm"))
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--context", type=int, default=150, help="cached positions per row")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--variants", default="sequential,rows-apart,batched-mkl,batched-packed", help="packed last: packing is one-way"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/out/lm_steps.json"))
    args = parser.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    variants = args.variants.split(",")
    results = []

    old = SpeechLM.from_checkpoint(args.llm_dir)
    if "sequential" in variants:
        s = sequential_step_s(old, args.context, args.steps)
        results.append({"variant": "sequential", "batch_size": 1, "step_s": s, "tokens_per_s": 1 / s})
        print(f"sequential      B=1   {s * 1e3:8.1f} ms/step  {1 / s:6.2f} tok/s", flush=True)
    # The new model adopts the same tensors: no second copy of the weights.
    config, state = old.config, old.state_dict()
    del old
    new = load_module(lambda: SpeechLlama(config), state, where=str(args.llm_dir))
    del state
    gc.collect()
    for variant in [v for v in variants if v != "sequential"]:
        new.rows_apart = variant == "rows-apart"
        if variant == "batched-packed":
            new.pack_for_cpu()
        for b in batches:
            s = batched_step_s(new, b, args.context, args.steps)
            results.append({"variant": variant, "batch_size": b, "step_s": s, "tokens_per_s": b / s})
            print(f"{variant:15s} B={b:<3d} {s * 1e3:8.1f} ms/step  {b / s:6.2f} tok/s", flush=True)
    base = next((r["tokens_per_s"] for r in results if r["variant"] == "sequential"), None)
    for r in results:
        r["vs_sequential"] = r["tokens_per_s"] / base if base else None
    meta = {
        "threads": torch.get_num_threads(),
        "context": args.context,
        "steps": args.steps,
        "torch": torch.__version__,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
