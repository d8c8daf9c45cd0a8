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
    out = {"tokens": args.tokens, "threads": args.threads}
    for mode, legacy, reqs, batch in [
        ("batched", False, requests, args.batch),
        ("sequential", True, requests[: args.sequential_tasks], 1),
    ]:
        engine = GlmTtsEngine.load(options, log=print, force_tokens=args.tokens, legacy_lm=legacy)
        out[mode] = {"lm_kernel": engine.lm_kernel, **run(engine, reqs, batch)}
        print(mode, json.dumps(out[mode]), flush=True)
        engine.close()
        del engine
        gc.collect()
    out["ratio_audio_s_per_s"] = round(out["batched"]["audio_s_per_s"] / out["sequential"]["audio_s_per_s"], 2)
    out["ratio_llm_tokens_per_s"] = round(
        out["batched"]["llm_tokens_per_s"] / out["sequential"]["llm_tokens_per_s"], 2
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
