"""Baseline benchmark of the glmtts engine on a random-weight checkpoint.

Random weights never emit the stop token, so every task generates a fixed number of speech
tokens (`--tokens`, default 250 = 10 s of audio). Reports, per stage and overall, seconds of
audio per wall second (1 / RTF), LLM tokens per second, load time and peak memory, for one
task and for a job of `--tasks` tasks sharing one prompt (the audiobook case).

    python bench/bench_glmtts.py --preset tiny                 # CPU smoke figures
    python bench/bench_glmtts.py --preset full --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glmtts_batch.engines.base import EngineOptions, SynthesisRequest  # noqa: E402
from glmtts_batch.glmtts.engine import GlmTtsEngine  # noqa: E402
from glmtts_batch.glmtts.make_checkpoint import build_random_checkpoint  # noqa: E402

STAGES = ("frontend", "llm", "flow", "vocoder")
TEXT_EN = "The quick brown fox jumps over the lazy dog while the narrator keeps reading."


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ensure_checkpoint(preset: str, folder: Path) -> Path:
    marker = folder / "RANDOM_WEIGHTS.json"
    if marker.exists() and json.loads(marker.read_text()).get("preset") == preset:
        return folder
    print(f"building a random {preset} checkpoint in {folder} ...", flush=True)
    started = time.perf_counter()
    build_random_checkpoint(folder, preset, overwrite=True, log=lambda m: print(f"  {m}", flush=True))
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def prompt_wav(folder: Path) -> Path:
    """A 4 s voiced-like prompt at 24 kHz (harmonics of a gliding f0 plus a little noise)."""
    path = folder / "bench_prompt.wav"
    if not path.exists():
        rate, seconds = 24000, 4.0
        t = np.arange(int(rate * seconds)) / rate
        f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        wav = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2
        wav += 0.01 * np.random.default_rng(0).standard_normal(len(t))
        sf.write(path, wav.astype(np.float32), rate, subtype="PCM_16")
    return path


def summarise(runs: list[dict], sample_rate: int) -> dict:
    audio_s = sum(r["audio_s"] for r in runs)
    wall_s = sum(r["wall_s"] for r in runs)
    stage_s = {s: sum(r["timings_s"].get(s, 0.0) for r in runs) for s in STAGES}
    tokens = sum(r["tokens"] for r in runs)
    return {
        "tasks": len(runs),
        "audio_s": round(audio_s, 3),
        "wall_s": round(wall_s, 3),
        "audio_s_per_wall_s": round(audio_s / wall_s, 3),
        "rtf": round(wall_s / audio_s, 4),
        "stage_s": {k: round(v, 3) for k, v in stage_s.items()},
        "stage_audio_s_per_wall_s": {k: (round(audio_s / v, 2) if v > 0 else None) for k, v in stage_s.items()},
        "llm_tokens_per_s": round(tokens / stage_s["llm"], 2) if stage_s["llm"] > 0 else None,
    }


def run(args: argparse.Namespace) -> dict:
    ckpt = ensure_checkpoint(args.preset, Path(args.checkpoint_dir or REPO / "bench" / "checkpoints" / args.preset))
    options = EngineOptions(
        model_dir=ckpt,
        device=args.device,
        sample_rate=args.sample_rate,
        dtype=args.dtype,
        flow_dtype=args.flow_dtype,
        kv_cache=not args.no_kv_cache,
    )
    rss_before = peak_rss_gib()
    started = time.perf_counter()
    engine = GlmTtsEngine.load(options, force_tokens=args.tokens, log=lambda m: print(m, flush=True))
    load_s = time.perf_counter() - started
    rss_after_load = peak_rss_gib()
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prompt = prompt_wav(ckpt)
    prompt_text = "This is the narrator's prompt recording."

    def one(seed: int) -> dict:
        t0 = time.perf_counter()
        out = engine.synthesize(SynthesisRequest(TEXT_EN, prompt, prompt_text, seed=seed))
        wall = time.perf_counter() - t0
        return {
            "audio_s": len(out.audio) / out.sample_rate,
            "wall_s": wall,
            "timings_s": out.details["timings_s"],
            "tokens": sum(out.details["speech_tokens"]),
        }

    def phase(seeds: range) -> dict:
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        summary = summarise([one(seed) for seed in seeds], args.sample_rate)
        # ru_maxrss never decreases: this is the process peak up to the end of this phase.
        summary["peak_host_rss_gib"] = round(peak_rss_gib(), 3)
        summary["peak_gpu_gib"] = (
            round(torch.cuda.max_memory_allocated() / 2**30, 3) if engine.device.type == "cuda" else None
        )
        return summary

    # Warm-up: first-call kernels and the prompt cache's first (miss) entry. With --warmup 0
    # the single task pays for both, prompt features (speech tokenizer, CAM++) included.
    for i in range(args.warmup):
        one(i)
    single = phase(range(1, 2))
    job = phase(range(100, 100 + args.tasks))
    result = {
        "preset": args.preset,
        "device": str(engine.device),
        "device_name": torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "dtype_llm": args.dtype,
        "dtype_flow": args.flow_dtype,
        "sample_rate": args.sample_rate,
        "forced_tokens_per_task": args.tokens,
        "warmup_tasks": args.warmup,
        "kv_cache": not args.no_kv_cache,
        "load_s": round(load_s, 2),
        "peak_host_rss_gib_after_load": round(rss_after_load, 3),
        "host_rss_gib_before_load": round(rss_before, 3),
        "peak_host_rss_gib": round(peak_rss_gib(), 3),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if engine.device.type == "cuda" else None,
        "prompt_cache": engine.stats(),
        "single_task": single,
        "job": job,
        "torch": torch.__version__,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "full"), default="full")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--flow-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--sample-rate", type=int, default=24000, choices=(24000, 32000))
    parser.add_argument(
        "--tokens", type=int, default=None,
        help="speech tokens generated per task, 25 per second [default: 250 on a GPU, 100 on CPU]",
    )
    parser.add_argument(
        "--tasks", type=int, default=None,
        help="tasks in the job, one shared prompt [default: 32 on a GPU, 3 on CPU]",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed tasks before the single task")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-kv-cache", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = parser.parse_args()
    # The full-shape model decodes ~2-4 tokens/s on a 2-core CPU: the GPU-sized job would
    # take hours there, so CPU defaults keep `make bench-glmtts` to a few minutes.
    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    if args.tokens is None:
        args.tokens = 250 if on_gpu else 100
    if args.tasks is None:
        args.tasks = 32 if on_gpu else 3
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flow_tag = "" if args.flow_dtype == "fp32" else f"_flow-{args.flow_dtype}"
    name = f"glmtts_{args.preset}_{result['device'].replace(':', '')}_{args.dtype}{flow_tag}_{args.sample_rate}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\nwritten {out / name}")


if __name__ == "__main__":
    main()
