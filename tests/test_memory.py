"""Constant memory: a 200,000-line task file costs no more than a few bytes per line more than a
20,000-line one (the only per-line state is the set of output names used to catch duplicates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "fake_engines.py"
TEXT = "The quick brown fox jumps over the lazy dog. " * 12  # ~540 bytes: holding lines would show


def make_task_file(path: Path, lines: int) -> None:
    """Every 10th line is synthesised (WAV, journal); the rest take the validation path, as
    invalid lines, so 200,000 lines run in seconds while every record still streams through."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            task = {"input_text": f"{i}: {TEXT}"}
            if i % 10:
                task["seed"] = "not an int"
            f.write(json.dumps(task) + "\n")


def run_driver(tasks: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(tasks), str(out), "--engine", "noop", "--no-zip", "--rss"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # the invalid lines make it exit 1
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_task_file(tmp_path: Path) -> None:
    growth = {}
    for n in (20_000, 200_000):
        tasks = tmp_path / f"t{n}.jsonl"
        make_task_file(tasks, n)
        result = run_driver(tasks, tmp_path / f"out{n}")
        assert result["ok"] == n // 10
        with open(tmp_path / f"out{n}" / "manifest.jsonl", "rb") as f:
            assert sum(1 for _ in f) == n
        growth[n] = (result["rss_after_kib"] - result["rss_before_kib"]) * 1024
        tasks.unlink()

    per_line = (growth[200_000] - growth[20_000]) / 180_000
    # The name set costs ~150 bytes a line; keeping lines or records would cost well over 500.
    assert per_line < 300, f"peak RSS grows by {per_line:.0f} bytes per task line"


def test_an_overlong_line_is_not_held_in_memory(tmp_path: Path) -> None:
    """A runaway 64 MiB line (a 300 MB one took RSS to ~1 GB) is skipped in chunks and recorded invalid."""
    tasks = tmp_path / "t.jsonl"
    with open(tasks, "wb") as f:
        f.write(b'{"input_text": "first"}\n{"input_text": "')
        f.writelines(b"x" * (1 << 20) for _ in range(64))
        f.write(b'"}\n{"input_text": "third"}\n')
    result = run_driver(tasks, tmp_path / "out")
    assert result["ok"] == 2
    records = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in records] == [(1, "ok"), (2, "invalid"), (3, "ok")]
    assert records[1]["error"]["message"] == "line 2: line longer than 1 MiB"
    growth = (result["rss_after_kib"] - result["rss_before_kib"]) * 1024
    assert growth < 16 << 20, f"peak RSS grew by {growth >> 20} MiB"
