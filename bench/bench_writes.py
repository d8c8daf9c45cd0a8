"""Write-behind benchmark (`make bench-writes`): does writing WAVs in a writer thread pay?

The batch loop encodes, journals and renames a finished window's WAVs in a writer thread
while the engine computes the next window (`RunSettings.background_writes`, on by
default). This runs the same jobs with the writes inline and behind, in one process, and
reports wall time and the ratio inline / behind:

- the no-op engine (bench/engines.py: the worker's own cost), fsync off and on;
- a "GPU-like" engine whose batched call waits with the GIL released (as a CUDA sync
  does) and returns several seconds of audio per task, at batch 8 and 32;
- the espeak engine (its C synthesis releases the GIL), fsync on, when it loads.

Each configuration runs `--repeats` times per mode; the best time is reported.

    python bench/bench_writes.py [--repeats 2] [--json bench/out/writes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

from engines import NullEngine  # noqa: E402

from glmtts_batch.engines.base import Synthesis, SynthesisRequest  # noqa: E402
from glmtts_batch.runner import BatchRunner, RunSettings  # noqa: E402
from glmtts_batch.tasks import iter_task_dicts  # noqa: E402

SENTENCES = [
    "今天天气很好，阳光明媚，我们一起去公园散步吧。",
    "The quick brown fox jumps over the lazy dog, then curls up in the sun.",
    "我们今天用 GLM-TTS 合成了一段 speech，效果非常 good。",
    "Chapter seven. The lighthouse keeper climbed the stairs one last time.",
]


class GpuLikeEngine(NullEngine):
    """One batched call waits `call_s` with the GIL released, then returns `seconds` of audio per task."""

    def __init__(self, call_s: float, seconds: float) -> None:
        super().__init__(seconds=seconds)
        self.call_s = call_s

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        time.sleep(self.call_s)
        return [self.synthesize(r) for r in requests]


def one_run(engine: Any, tasks: int, batch_size: int, fsync: bool, background: bool, tmp: Path) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp(dir=tmp))
    items = iter_task_dicts(
        {"input_text": f"{SENTENCES[i % len(SENTENCES)]} ({i})", "output_name": f"u{i:05d}"} for i in range(tasks)
    )
    settings = RunSettings(
        out_dir=out,
        zip_name="job.zip",
        make_zip=False,
        progress=False,
        fsync=fsync,
        batch_size=batch_size,
        background_writes=background,
    )
    t0 = time.perf_counter()
    summary = BatchRunner(engine, items, settings).run()
    wall = time.perf_counter() - t0
    shutil.rmtree(out)
    if summary.ok != tasks:
        raise SystemExit(f"unexpected result: {summary}")
    return wall, summary.audio_seconds


def compare(
    name: str, make: Callable[[], Any], tasks: int, batch_size: int, fsync: bool, repeats: int, tmp: Path
) -> dict[str, Any]:
    engine = make()
    best: dict[bool, float] = {}
    audio = 0.0
    for _ in range(repeats):
        for background in (False, True):
            wall, audio = one_run(engine, tasks, batch_size, fsync, background, tmp)
            best[background] = min(best.get(background, wall), wall)
    row = {
        "name": name,
        "tasks": tasks,
        "batch_size": batch_size,
        "fsync": fsync,
        "audio_s": round(audio, 1),
        "inline_s": round(best[False], 3),
        "behind_s": round(best[True], 3),
        "inline_over_behind": round(best[False] / best[True], 2),
    }
    print(
        f"  {name:<34}{tasks:>6}{batch_size:>6}{'on' if fsync else 'off':>6}{row['inline_s']:>10.2f}"
        f"{row['behind_s']:>10.2f}{row['inline_over_behind']:>8.2f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "writes.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="glmtts-bench-writes-"))
    print(f"write-behind: {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"  {'configuration':<34}{'tasks':>6}{'batch':>6}{'fsync':>6}{'inline s':>10}{'behind s':>10}{'ratio':>8}")
    rows = []
    try:
        rows.append(
            compare("no-op engine, 0.1 s audio", lambda: NullEngine(seconds=0.1), 2000, 1, False, args.repeats, tmp)
        )
        rows.append(
            compare("no-op engine, 0.1 s audio", lambda: NullEngine(seconds=0.1), 500, 1, True, args.repeats, tmp)
        )
        for call_s, batch, seconds, fsync in ((0.02, 8, 5.0, False), (0.02, 8, 5.0, True), (0.2, 32, 8.0, True)):
            rows.append(
                compare(
                    f"GPU-like, {call_s * 1000:.0f} ms/call, {seconds:.0f} s audio",
                    lambda c=call_s, s=seconds: GpuLikeEngine(c, s),
                    10 * batch,
                    batch,
                    fsync,
                    args.repeats,
                    tmp,
                )
            )
        try:
            from glmtts_batch.engines.espeak import EspeakEngine

            espeak = EspeakEngine(sample_rate=24000)
        except Exception as exc:  # noqa: BLE001 - the other rows still stand
            print(f"  espeak skipped: {exc}")
        else:
            rows.append(compare("espeak", lambda: espeak, 60, 1, True, args.repeats, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
