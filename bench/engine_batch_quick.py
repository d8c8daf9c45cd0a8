"""Quick CPU check of the batched engine against the sequential (pre-batching) path.

One process, one random-weight checkpoint, forced token counts (random weights never
stop), one prompt for every task (the audiobook case, prompt features cached before the
clock starts). Sequential = `GlmTtsEngine.load(..., legacy_lm=True)` (transformers'
LlamaModel, one task at a time); batched = `synthesize_many` over `--batch` tasks.
The official benchmark is bench/bench_glmtts.py; this one only prints a few ratios.

    python bench/engine_batch_quick.py --model-dir /work/bench-ckpt/full --tokens 50
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from voices import write_voice  # noqa: E402

from glmtts_batch.engines.base import EngineOptions, SynthesisRequest  # noqa: E402
from glmtts_batch.glmtts.engine import GlmTtsEngine  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog while the narrator keeps reading."


def run(engine: GlmTtsEngine, requests: list[SynthesisRequest], batch: int) -> dict:
    engine._prompt(requests[0])  # features cached: one narrator
    started = time.perf_counter()
    results = []
    for i in range(0, len(requests), batch):
        results += engine.synthesize_many(requests[i : i + batch])
    wall = time.perf_counter() - started
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise bad[0]
    audio = sum(len(r.audio) / r.sample_rate for r in results)
    stages: dict[str, float] = {}
    for r in results:
        for k, v in r.details["timings_s"].items():
            stages[k] = stages.get(k, 0.0) + v
    tokens = sum(sum(r.details["speech_tokens"]) for r in results)
    return {
        "batch_size": batch,
        "tasks": len(requests),
        "wall_s": round(wall, 1),
        "audio_s": round(audio, 2),
        "audio_s_per_s": round(audio / wall, 4),
        "llm_tokens_per_s": round(tokens / stages["llm"], 2),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, default=Path("/work/bench-ckpt/full"))
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sequential-tasks", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-seconds", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    voice = write_voice(Path("/tmp") / "engine_batch_quick_voice.wav", seconds=args.prompt_seconds)
    requests = [
        SynthesisRequest(text=TEXT, prompt_audio=voice, prompt_text="a short voice prompt", seed=i)
        for i in range(args.batch)
    ]
    options = EngineOptions(model_dir=args.model_dir, device="cpu")
    out: dict = {"tokens": args.tokens, "threads": args.threads, "phases": []}
    # Sequential before and after the batched run: the shared machine's load drifts.
    half = max(1, args.sequential_tasks // 2)
    plan = [
        ("sequential", True, requests[:half], 1),
        ("batched", False, requests, args.batch),
        ("sequential", True, requests[half : args.sequential_tasks], 1),
    ]
    for mode, legacy, reqs, batch in plan:
        if not reqs:
            continue
        engine = GlmTtsEngine.load(options, log=print, force_tokens=args.tokens, legacy_lm=legacy)
        phase = {"mode": mode, "lm_kernel": engine.lm_kernel, **run(engine, reqs, batch)}
        out["phases"].append(phase)
        print(json.dumps(phase), flush=True)
        engine.close()
        del engine
        gc.collect()
    total = {mode: _summed([p for p in out["phases"] if p["mode"] == mode]) for mode in ("sequential", "batched")}
    out["summed"] = total
    ratio = lambda key: round(total["batched"][key] / total["sequential"][key], 2)  # noqa: E731
    out["ratio_audio_s_per_s"] = ratio("audio_s_per_s")
    out["ratio_llm_tokens_per_s"] = ratio("llm_tokens_per_s")
    # The flow does the same work per piece in both modes: its speed ratio is the load drift.
    out["flow_s_per_task"] = {m: round(t["flow_s"] / t["tasks"], 2) for m, t in total.items()}
    print(json.dumps(out, indent=1))


def _summed(phases: list[dict]) -> dict:
    wall, audio, tasks = (sum(p[k] for p in phases) for k in ("wall_s", "audio_s", "tasks"))
    llm = sum(p["stages_s"]["llm"] for p in phases)
    tokens = sum(p["llm_tokens_per_s"] * p["stages_s"]["llm"] for p in phases)
    flow = sum(p["stages_s"]["flow"] for p in phases)
    return {
        "tasks": tasks,
        "wall_s": wall,
        "audio_s_per_s": audio / wall,
        "llm_tokens_per_s": tokens / llm,
        "flow_s": flow,
    }


if __name__ == "__main__":
    main()
