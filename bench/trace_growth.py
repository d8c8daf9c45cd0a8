"""What a big job holds per task: tracemalloc on a no-op-engine run (`make bench` prints it).

Runs jobs of `--tasks` / 4 and `--tasks` lines (WAVs, manifest, journal, zip; fsync
off) with tracemalloc on, and takes a snapshot just before the zip is renamed into
place, when everything a run keeps until its end is still alive (the task reader's
duplicate-name table, the journal's index, the zip writer's state). Prints the
allocation sites whose holdings grow with the job, in bytes per extra task.

    python bench/trace_growth.py --tasks 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_worker import write_task_file  # noqa: E402
from engines import NullEngine  # noqa: E402

from glmtts_batch.api import run_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--tmp", type=Path, help="folder for the generated job (default: the system temp folder)")
    args = parser.parse_args()

    # Two sizes, so what a run holds once (caches, the interpreter's tables) cancels out.
    small, large = args.tasks // 4, args.tasks
    held = {n: held_by_site(n, args.tmp) for n in (small, large)}
    extra = large - small
    growth = {site: (held[large].get(site, 0) - held[small].get(site, 0)) / extra for site in held[large]}
    total = sum(growth.values())
    print(f"\nheld at the end of a run, growth from {small} to {large} tasks: {total:.0f} bytes/task")
    by_file: dict[str, float] = {}
    for (filename, _), size in growth.items():
        by_file[filename] = by_file.get(filename, 0.0) + size
    print(f"{'bytes/task':>10}  file")
    for name, size in sorted(by_file.items(), key=lambda kv: -kv[1])[:6]:
        print(f"{size:>10.1f}  {name}")
    print(f"{'bytes/task':>10}  allocation site")
    for (filename, lineno), size in sorted(growth.items(), key=lambda kv: -kv[1])[: args.top]:
        if size < 0.5:
            break
        print(f"{size:>10.1f}  {filename}:{lineno}")


def held_by_site(n: int, tmp_root: Path | None) -> dict[tuple[str, int], int]:
    """Bytes held per allocation site just before the zip is renamed into place, for an n-task job."""
    tmp = Path(tempfile.mkdtemp(prefix="glmtts-trace-", dir=tmp_root))
    snapshots: list[tracemalloc.Snapshot] = []
    real_replace = os.replace

    def replace_and_snapshot(src, dst, *a, **kw):  # type: ignore[no-untyped-def]
        if str(dst).endswith(".zip"):
            snapshots.append(tracemalloc.take_snapshot())
        return real_replace(src, dst, *a, **kw)

    try:
        write_task_file(tmp / "tasks.jsonl", n)
        os.replace = replace_and_snapshot  # type: ignore[assignment]
        tracemalloc.start(1)
        base = tracemalloc.take_snapshot()
        summary = run_batch(
            tmp / "tasks.jsonl",
            tmp / "out",
            engine=NullEngine(),
            seed=0,
            make_zip=True,
            progress=False,
            fsync=False,
            log=lambda _: None,
        )
        tracemalloc.stop()
    finally:
        os.replace = real_replace  # type: ignore[assignment]
        shutil.rmtree(tmp, ignore_errors=True)
    if summary.exit_code != 0 or not snapshots:
        raise SystemExit(f"unexpected run result: {summary}")
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    held: dict[tuple[str, int], int] = {}
    for stat in snapshots[-1].filter_traces(filters).compare_to(base.filter_traces(filters), "lineno"):
        frame = stat.traceback[0]
        name = os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(str(ROOT)) else frame.filename
        held[(name, frame.lineno)] = held.get((name, frame.lineno), 0) + stat.size_diff
    return held


if __name__ == "__main__":
    main()
