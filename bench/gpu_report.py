"""bench/gpu.sh's last step: merge the per-dtype JSONs into RESULTS-gpu.json, check the
issue's GPU targets, print the table.

    python bench/gpu_report.py --results bench/RESULTS-gpu.json --out $OUT --tasks 256 \\
        --subset 16 --tokens 100 --dtypes "bf16 fp32"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_glmtts import table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder with gpu_<dtype>.json")
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--subset", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--dtypes", required=True, help="space-separated, in run order")
    args = parser.parse_args()
    rows: list[dict] = []
    for dtype in args.dtypes.split():
        path = args.out / f"gpu_{dtype}.json"
        if path.exists():
            rows += json.loads(path.read_text())
        else:
            rows.append(
                {
                    "mode": "all",
                    "batch_size": None,
                    "dtype": dtype,
                    "skipped": "no results: timed out or failed before its first configuration",
                }
            )
    measured = [r for r in rows if not r.get("skipped")]
    bf16 = [r for r in measured if r["dtype"] == "bf16" and r["mode"] == "batched"]
    best = max(bf16, key=lambda r: r["audio_s_per_s"] or 0, default=None)
    single = [r["single_task_rtf"] for r in bf16 if r["batch_size"] == 1 and r["single_task_rtf"] is not None]
    targets = {
        ">= 200 audio s per wall s (LM bf16, flow fp32, best batch size)": bool(best and best["audio_s_per_s"] >= 200),
        ">= 50x today's sequential path in the same run (bf16)": bool(best and (best["vs_sequential"] or 0) >= 50),
        "single-task RTF <= 0.1 (batched engine, B=1, bf16)": bool(single and min(single) <= 0.1),
    }
    report = {
        "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device_name": next((r["device_name"] for r in measured), None),
        "job": (
            f"{args.tasks} tasks, one narrator prompt, {args.tokens} forced tokens per task; sequential and "
            f"batch sizes below {args.subset} ran on the first {args.subset} tasks only (figures are per wall second)"
        ),
        "best_bf16": {k: best[k] for k in ("batch_size", "audio_s_per_s", "vs_sequential")} if best else None,
        "targets_met": targets,
        "rows": rows,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(report["job"])
    print(table(rows))
    for name, met in targets.items():
        print(f"  target {'MET' if met else 'NOT MET'}: {name}")
    print(f"  written {args.results}")


if __name__ == "__main__":
    main()
