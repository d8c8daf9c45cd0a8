"""GLM-TTS engine throughput: today's sequential path against the batched engine.

One process, one random-weight checkpoint, forced token counts (random weights never emit
the stop token, so every piece generates exactly `--tokens` speech tokens, 25 per second of
audio). The job is one narrator: one prompt WAV and transcript for every task, and texts
that normalise to one piece of similar length each. Configurations, in order:

- `sequential`: today's path, the transformers-based `SpeechLM`, one task at a time
  (`load_sequential_engine` below says how it is built);
- `batched` at each of `--batch-sizes`: `GlmTtsEngine.synthesize_many` over chunks of that
  many tasks (`load_batched_engine`, `synthesize_chunk`).

Each configuration loads its engine, runs `--warmup` untimed tasks (first-call kernels,
CUDA graph capture, the prompt cache's one miss, page faults of mapped weights), then its
tasks. Configurations that run fewer than `--subset-tasks` tasks at once (sequential and
small batches) measure the first `--subset-tasks` tasks only: every figure is per wall
second, so they compare with the others, and the ratio column says so.

Reported per configuration: audio seconds per wall second, LM tokens per second (LM stage
time) and per wall second, seconds per stage, peak memory (CUDA: max_memory_allocated;
CPU: peak RSS over the configuration minus RSS at its start), single-task RTF where one
task ran alone, and audio-s/s relative to `sequential` in the same run.

`--json OUT` gets a JSON list with one object per configuration (rewritten after each, so a
run cut short keeps what it measured). Keys: mode, batch_size, audio_s_per_s,
llm_tokens_per_s, peak_mem_gib, stages, single_task_rtf, vs_sequential, and the context.

    python bench/bench_glmtts.py --preset tiny --tasks 8 --tokens 25 --batch-sizes 1,8
    python bench/bench_glmtts.py --preset full --model-dir /work/bench-ckpt/full --device cpu \\
        --tasks 16 --tokens 30 --batch-sizes 16 --subset-tasks 4      # = make bench-glmtts
    bench/gpu.sh                                                       # the GPU job (256 tasks)
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glmtts_batch.engines.base import EngineOptions, Synthesis, SynthesisRequest  # noqa: E402
from glmtts_batch.glmtts.engine import GlmTtsEngine  # noqa: E402
from glmtts_batch.glmtts.make_checkpoint import build_random_checkpoint  # noqa: E402

STAGES = ("frontend", "llm", "flow", "vocoder")
PROMPT_WAV = REPO / "jobs" / "prompt_narrator.wav"
PROMPT_TEXT = "Good evening. Tonight I will read you a short story about the sea."
# One sentence each, 13-15 words, no inner punctuation: each normalises to one piece of
# about the same length, so prefill costs the same for every task and batch-mate.
TEXTS = (
    "The old lighthouse keeper climbed the stairs every evening to light the great lamp.",
    "A small boat drifted slowly across the quiet harbour as the sun went down behind it.",
    "She opened the heavy wooden door and found a garden full of roses and tall grass.",
    "The children ran along the beach collecting shells and smooth stones in their hats.",
    "Every morning the baker rose before dawn to prepare bread for the whole village.",
    "The wind carried the smell of salt and seaweed far inland over the green hills.",
    "He kept a small notebook in his coat pocket and wrote down every bird he saw.",
    "The train stopped at a tiny station where nobody had waited for many long years.",
    "Rain fell softly on the roof while the family sat together beside the warm fire.",
    "The captain studied the old map by candlelight and traced a path to the island.",
    "A grey cat slept on the window sill and watched the fishing boats come home.",
    "They walked through the forest until the path ended at a clear and silent lake.",
    "The teacher read a story aloud and the whole class listened without a sound.",
    "Snow covered the mountain village and the chimneys sent thin smoke into the sky.",
    "The musician played a slow song on the pier as the tide rolled gently in.",
    "At the end of the day the fishermen mended their nets and talked about the weather.",
)


class Skip(Exception):
    """A configuration this checkout cannot run; recorded with the reason, the rest goes on."""


# ------------------------------------------------------------------ engine adapters
# The only places that know how each path is built and called. When the batched engine
# lands, adapt these (and nothing else) if its names differ.


def load_sequential_engine(options: EngineOptions, tokens: int, log: Callable[[str], None]) -> tuple[Any, str]:
    """Today's path: transformers `SpeechLM`, batch-1 decode loop, one task per call."""
    params = inspect.signature(GlmTtsEngine.load).parameters
    if "legacy_lm" in params:
        engine = GlmTtsEngine.load(options, log=log, force_tokens=tokens, legacy_lm=True)
        return engine, "GlmTtsEngine.load(legacy_lm=True).synthesize: transformers SpeechLM, one task at a time"
    engine = GlmTtsEngine.load(options, log=log, force_tokens=tokens)
    if callable(getattr(engine, "synthesize_many", None)):
        log(
            "WARNING: this GlmTtsEngine has synthesize_many but no legacy_lm switch: 'sequential' "
            "is the new engine one request at a time, not today's transformers path"
        )
        return engine, "GlmTtsEngine.synthesize on the batched engine (no legacy_lm switch found)"
    return engine, "GlmTtsEngine.synthesize: transformers SpeechLM, one task at a time"


def load_batched_engine(options: EngineOptions, tokens: int, log: Callable[[str], None]) -> tuple[Any, str]:
    if not callable(getattr(GlmTtsEngine, "synthesize_many", None)):
        raise Skip(
            "this checkout's GlmTtsEngine has no synthesize_many (the batched engine of issue 8 is "
            "not merged yet): batched configurations are skipped"
        )
    engine = GlmTtsEngine.load(options, log=log, force_tokens=tokens)
    return engine, "GlmTtsEngine.synthesize_many over chunks of batch_size tasks"


def synthesize_chunk(engine: Any, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
    """One in-flight batch of all `requests` (the runner's window of `--batch-size` tasks)."""
    return list(engine.synthesize_many(list(requests)))


def chunk_stage_seconds(results: Sequence[Synthesis]) -> dict[str, float]:
    """Stage seconds of one batch call: the sum of its tasks' `timings_s`, because the
    batched engine gives each task its share of a shared stage (the batch's LM wall time
    split evenly, a flow batch's time split over its rows) and its own time elsewhere. A
    `batch_timings_s` detail, if an engine gives one, wins."""
    for result in results:
        if "batch_timings_s" in result.details:
            return dict(result.details["batch_timings_s"])
    stages: dict[str, float] = {}
    for result in results:
        for stage, seconds in result.details.get("timings_s", {}).items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return stages


# ------------------------------------------------------------------ measurement


def host_rss_gib() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class RssSampler:
    """Peak host RSS over a block, sampled every 20 ms (ru_maxrss only ever rises, so it
    cannot give a later configuration's own peak)."""

    def __init__(self) -> None:
        self.start = self.peak = host_rss_gib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, host_rss_gib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, host_rss_gib())


@dataclass
class Tally:
    audio_s: float = 0.0
    tokens: int = 0
    pieces: int = 0
    done: int = 0
    failed: list[str] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)
    call_rtfs: list[float] = field(default_factory=list)

    def add(self, results: Sequence[Synthesis | Exception], stages: dict[str, float], wall: float) -> None:
        ok = [r for r in results if isinstance(r, Synthesis)]
        self.failed += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, Exception)]
        audio = sum(len(r.audio) / r.sample_rate for r in ok)
        self.audio_s += audio
        self.tokens += sum(sum(r.details.get("speech_tokens", [])) for r in ok)
        self.pieces += sum(len(r.details.get("speech_tokens", [])) for r in ok)
        self.done += len(ok)
        for stage, seconds in stages.items():
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + seconds
        if audio > 0:
            self.call_rtfs.append(wall / audio)


def requests_for(n: int, offset: int = 0) -> list[SynthesisRequest]:
    return [
        SynthesisRequest(TEXTS[(offset + i) % len(TEXTS)], PROMPT_WAV, PROMPT_TEXT, seed=offset + i) for i in range(n)
    ]


def now() -> str:
    return time.strftime("%H:%M:%S", time.gmtime())


def say(message: str) -> None:
    print(f"[{now()}] {message}", flush=True)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def measure(
    engine: Any,
    mode: str,
    batch_size: int,
    n_tasks: int,
    warmup: int,
) -> tuple[Tally, float, dict[str, float]]:
    """Warm up, then run `n_tasks` tasks; returns the tally, wall seconds and memory."""
    cuda = engine.device.type == "cuda"
    if warmup:
        warm = requests_for(warmup, offset=10_000)
        if mode == "sequential":
            for request in warm:
                engine.synthesize(request)
        else:
            synthesize_chunk(engine, warm[:batch_size])
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tally = Tally()
    requests = requests_for(n_tasks)
    with RssSampler() as rss:
        started = time.perf_counter()
        if mode == "sequential":
            for request in requests:
                t0 = time.perf_counter()
                try:
                    out: Synthesis | Exception = engine.synthesize(request)
                except Exception as exc:  # one failing task is recorded, the run goes on
                    out = exc
                stages = out.details.get("timings_s", {}) if isinstance(out, Synthesis) else {}
                tally.add([out], stages, time.perf_counter() - t0)
                say(f"  task {tally.done + len(tally.failed)}/{n_tasks}: {time.perf_counter() - t0:.2f} s")
        else:
            for first in range(0, n_tasks, batch_size):
                t0 = time.perf_counter()
                results = synthesize_chunk(engine, requests[first : first + batch_size])
                ok = [r for r in results if isinstance(r, Synthesis)]
                tally.add(results, chunk_stage_seconds(ok), time.perf_counter() - t0)
                say(
                    f"  tasks {tally.done + len(tally.failed)}/{n_tasks}: batch of {len(results)} in {time.perf_counter() - t0:.2f} s"
                )
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    memory = {"host_rss_start_gib": rss.start, "host_rss_peak_gib": rss.peak}
    if cuda:
        memory["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return tally, wall, memory


def record(
    args: argparse.Namespace,
    mode: str,
    batch_size: int,
    path: str,
    engine: Any,
    load_s: float,
    tally: Tally,
    wall: float,
    memory: dict[str, float],
    load_before: list[float] | None,
) -> dict[str, Any]:
    cuda = engine.device.type == "cuda"
    stage_total = sum(tally.stage_s.values())
    stages = {
        stage: {
            "s": round(seconds, 3),
            "share": round(seconds / wall, 3) if wall > 0 else None,
            "audio_s_per_s": round(tally.audio_s / seconds, 3) if seconds > 0 else None,
        }
        for stage, seconds in {**{s: tally.stage_s.get(s, 0.0) for s in STAGES}, **tally.stage_s}.items()
    }
    stages["other"] = {"s": round(max(wall - stage_total, 0.0), 3), "share": None, "audio_s_per_s": None}
    llm_s = tally.stage_s.get("llm", 0.0)
    alone = mode == "sequential" or batch_size == 1
    return {
        "mode": mode,
        "batch_size": batch_size,
        "tasks": tally.done + len(tally.failed),
        "failed": len(tally.failed),
        "first_error": tally.failed[0] if tally.failed else None,
        "tokens_per_piece": args.tokens,
        "pieces": tally.pieces,
        "llm_tokens": tally.tokens,
        "audio_s": round(tally.audio_s, 3),
        "wall_s": round(wall, 3),
        "audio_s_per_s": round(tally.audio_s / wall, 4) if wall > 0 else None,
        "rtf": round(wall / tally.audio_s, 4) if tally.audio_s > 0 else None,
        # One task alone per call: its mean wall/audio is the single-task RTF.
        "single_task_rtf": round(sum(tally.call_rtfs) / len(tally.call_rtfs), 4) if alone and tally.call_rtfs else None,
        "llm_tokens_per_s": round(tally.tokens / llm_s, 3) if llm_s > 0 else None,
        "llm_tokens_per_wall_s": round(tally.tokens / wall, 3) if wall > 0 else None,
        "stages": stages,
        "peak_mem_gib": round(
            memory["cuda_max_allocated_gib"] if cuda else memory["host_rss_peak_gib"] - memory["host_rss_start_gib"], 3
        ),
        "peak_mem_kind": "torch.cuda.max_memory_allocated" if cuda else "host peak RSS minus RSS at start",
        "host_rss_peak_gib": round(memory["host_rss_peak_gib"], 3),
        "vs_sequential": None,
        "engine_path": path,
        "lm_kernel": getattr(engine, "lm_kernel", None),
        "engine_default_batch_size": getattr(engine, "default_batch_size", None),
        "load_s": round(load_s, 2),
        "warmup_tasks": args.warmup,
        "preset": args.preset,
        "device": str(engine.device),
        "device_name": device_name(engine.device),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "flow_dtype": args.flow_dtype,
        "sample_rate": args.sample_rate,
        "load_average_before_after": [load_before, load_average()],
        "torch": torch.__version__,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def skipped(args: argparse.Namespace, mode: str, batch_size: int, reason: str) -> dict[str, Any]:
    return {
        "mode": mode,
        "batch_size": batch_size,
        "skipped": reason,
        "audio_s_per_s": None,
        "llm_tokens_per_s": None,
        "peak_mem_gib": None,
        "stages": None,
        "single_task_rtf": None,
        "vs_sequential": None,
        "preset": args.preset,
        "dtype": args.dtype,
        "flow_dtype": args.flow_dtype,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ensure_checkpoint(preset: str, folder: Path) -> Path:
    marker = folder / "RANDOM_WEIGHTS.json"
    if marker.exists() and json.loads(marker.read_text()).get("preset") == preset:
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} exists but is not a random {preset} checkpoint (no matching RANDOM_WEIGHTS.json)")
    say(f"building a random {preset} checkpoint in {folder} ...")
    started = time.perf_counter()
    build_random_checkpoint(folder, preset, overwrite=True, log=lambda m: say(f"  {m}"))
    say(f"  built in {time.perf_counter() - started:.0f} s")
    return folder


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["mode"] == "sequential" and r.get("audio_s_per_s")), None)
    for row in rows:
        if base and row.get("audio_s_per_s") is not None:
            row["vs_sequential"] = round(row["audio_s_per_s"] / base["audio_s_per_s"], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    tmp.replace(path)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| mode | B | tasks | dtype | audio s/s | vs seq | LM tok/s | RTF 1 task | LM s | flow s | voc s | other s | peak GiB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['mode']} | {r['batch_size']} | | {r['dtype']} | skipped: {r['skipped']} |||||||||")
            continue
        st = r["stages"]

        def cell(value: Any, fmt: str = "{}") -> str:
            return "" if value is None else fmt.format(value)

        lines.append(
            f"| {r['mode']} | {r['batch_size']} | {r['tasks']} | {r['dtype']} | **{cell(r['audio_s_per_s'])}** "
            f"| {cell(r['vs_sequential'], '{}x')} | {cell(r['llm_tokens_per_s'])} | {cell(r['single_task_rtf'])} "
            f"| {st['llm']['s']} | {st['flow']['s']} | {st['vocoder']['s']} | {st['other']['s']} | {r['peak_mem_gib']} |"
        )
    return "\n".join(lines)


def configurations(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(mode, batch size, tasks) in run order."""
    subset = min(args.subset_tasks or args.tasks, args.tasks)
    out: list[tuple[str, int, int]] = []
    if "sequential" in args.modes:
        out.append(("sequential", 1, subset))
    if "batched" in args.modes:
        out += [("batched", b, subset if b < subset else args.tasks) for b in args.batch_sizes]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("tiny", "full"), default="full")
    parser.add_argument(
        "--model-dir",
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="reuse this checkpoint [default: bench/checkpoints/<preset>, built if missing]",
    )
    parser.add_argument("--tasks", type=int, default=16, help="tasks in the job (one narrator)")
    parser.add_argument("--tokens", type=int, default=30, help="speech tokens forced per piece (25 per audio second)")
    parser.add_argument("--batch-sizes", default="16", help="comma-separated batch sizes of the batched configurations")
    parser.add_argument("--modes", default="sequential,batched", help="comma-separated: sequential, batched")
    parser.add_argument(
        "--subset-tasks",
        type=int,
        default=None,
        help="sequential and batch sizes below this run on the first N tasks only [default: all]",
    )
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="LM dtype")
    parser.add_argument("--flow-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--sample-rate", type=int, default=24000, choices=(24000, 32000))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed tasks before each configuration (batched: one call of min(N, B) tasks)",
    )
    parser.add_argument(
        "--warmup-batched",
        type=int,
        default=None,
        help="untimed tasks before each batched configuration, one call of min(N, B) [default: --warmup]",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice]")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="output: a JSON list, one object per configuration [default: bench/out/glmtts_<preset>_<device>_<dtype>.json]",
    )
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - {"sequential", "batched"}
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}; use sequential, batched")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if any(b < 1 for b in args.batch_sizes) or args.tasks < 1 or args.tokens < 1:
        parser.error("--tasks, --tokens and --batch-sizes must be positive")
    if args.warmup_batched is None:
        args.warmup_batched = args.warmup
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = ensure_checkpoint(args.preset, args.model_dir or REPO / "bench" / "checkpoints" / args.preset)
    options = EngineOptions(
        model_dir=model_dir,
        device=args.device,
        sample_rate=args.sample_rate,
        dtype=args.dtype,
        flow_dtype=args.flow_dtype,
    )
    out = args.json or REPO / "bench" / "out" / f"glmtts_{args.preset}_{args.device}_{args.dtype}.json"
    rows: list[dict[str, Any]] = []
    loaders = {"sequential": load_sequential_engine, "batched": load_batched_engine}
    plan = configurations(args)
    say(f"{len(plan)} configurations: " + ", ".join(f"{m} B={b} ({n} tasks)" for m, b, n in plan))
    engines: dict[str, tuple[Any, str, float]] = {}
    for mode, batch_size, n_tasks in plan:
        # One engine per mode, kept over its batch sizes; the other mode's is closed first so
        # that only one set of weights is resident.
        for other in [m for m in engines if m != mode]:
            engines.pop(other)[0].close()
            gc.collect()
        try:
            if mode not in engines:
                started = time.perf_counter()
                engine, path = loaders[mode](options, args.tokens, say)
                engines[mode] = (engine, path, time.perf_counter() - started)
            engine, path, load_s = engines[mode]
            load_before = load_average()
            warmup = args.warmup if mode == "sequential" else min(args.warmup_batched, batch_size)
            say(f"{mode} B={batch_size}: {n_tasks} tasks x {args.tokens} tokens, {warmup} warm-up")
            tally, wall, memory = measure(engine, mode, batch_size, n_tasks, warmup)
            row = record(args, mode, batch_size, path, engine, load_s, tally, wall, memory, load_before)
            row["warmup_tasks"] = warmup
        except Skip as reason:
            say(f"{mode} B={batch_size}: SKIPPED: {reason}")
            row = skipped(args, mode, batch_size, str(reason))
        rows.append(row)
        write_json(out, rows)
        if not row.get("skipped"):
            say(
                f"{mode} B={batch_size}: {row['audio_s_per_s']} audio s/s, {row['llm_tokens_per_s']} LM tok/s, "
                f"wall {row['wall_s']} s, peak {row['peak_mem_gib']} GiB, failed {row['failed']}"
                + (f" (first: {row['first_error']})" if row["failed"] else "")
            )
    for engine, _, _ in engines.values():
        engine.close()
    write_json(out, rows)
    print(table(rows))
    say(f"written {out}")


if __name__ == "__main__":
    main()
