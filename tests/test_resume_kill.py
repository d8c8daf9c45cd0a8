"""SIGKILL at random moments, then re-run: the result equals an uninterrupted run.

Each round starts the batch in a subprocess (a slow fake engine, fsync on), kills it
with SIGKILL after a random delay (before startup finishes, mid-task, mid-manifest,
mid-zip: wherever it lands), and checks that every WAV under its final name is
complete. A final run to completion must then give the same WAVs (sha256) and the
same manifest content as a run that was never interrupted. The rounds use different
batch sizes (windows of tasks in the engine, WAVs written behind by a writer thread),
so a kill lands mid-window and mid-write-behind, and each resume changes the batch size.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from fake_engines import FakeEngine

from glmtts_batch import run_batch
from glmtts_batch.manifest import RUN_DEPENDENT_KEYS
from glmtts_batch.outputs import TEMP_PREFIX

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "fake_engines.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}


def task_lines(prompt: Path) -> list[str]:
    lines = ["# audiobook chapter"]
    for i in range(40):
        task: dict = {"input_text": f"sentence {i}", "output_name": f"s{i:02d}"}
        if i % 5 == 0:
            task["seed"] = 100 + i
        if i % 7 == 0:
            task["prompt_audio"] = prompt.name
            task["prompt_text"] = "reference words"
        lines.append(json.dumps(task))
        if i % 9 == 4:
            lines.append('{"input_text": ""}')  # invalid lines must come out the same too
            lines.append("")
    return lines


def wav_hashes(out: Path) -> dict[str, str]:
    """WAVs under their final names (a killed run may leave temp files; the next run removes them)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.glob("*.wav"))
        if not p.name.startswith(TEMP_PREFIX)
    }


def lock_holder(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def stable_manifest(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in RUN_DEPENDENT_KEYS} for r in records]


def test_sigkill_at_random_points_then_rerun_matches_uninterrupted_run(tmp_path: Path) -> None:
    prompt = tmp_path / "voice.wav"
    prompt.write_bytes(b"prompt audio bytes")
    tasks = tmp_path / "book.jsonl"
    tasks.write_text("\n".join(task_lines(prompt)) + "\n", encoding="utf-8")

    reference = tmp_path / "reference"
    ref = run_batch(tasks, reference, engine=FakeEngine(), progress=False, fsync=False)
    assert ref.exit_code == 1 and ref.ok == 40 and ref.invalid == 4
    expected_wavs = wav_hashes(reference)
    assert len(expected_wavs) == 40

    out = tmp_path / "killed"
    lock = out / ".glmtts-batch" / "lock"
    rng = random.Random(int(os.environ.get("KILL_TEST_SEED", "20240611")))
    progress: list[int] = []  # WAVs journaled after each round
    for batch_size in (4, 1, 3, 8, 1, 5):
        proc = subprocess.Popen(
            [
                sys.executable,
                str(DRIVER),
                str(tasks),
                str(out),
                "--engine",
                "slow",
                "--delay",
                "0.05",
                "--fsync",
                "--batch-size",
                str(batch_size),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        # Kill at a random moment after the run took the folder lock (startup time varies
        # with machine load; a kill before that point writes nothing worth testing).
        deadline = time.monotonic() + 30
        while proc.poll() is None and lock_holder(lock) != proc.pid and time.monotonic() < deadline:
            time.sleep(0.005)
        delay = rng.uniform(0.0, 1.0)
        time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=30)
        journal = out / ".glmtts-batch" / "journal.jsonl"
        progress.append(journal.read_bytes().count(b"\n") if journal.exists() else 0)
        # Whatever moment the kill hit, a WAV under its final name is complete and correct.
        for name, digest in wav_hashes(out).items():
            assert digest == expected_wavs[name], f"{name} is damaged after a kill {delay:.2f}s into the run"
        if (out / "manifest.jsonl").exists():
            json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])  # never half-written

    assert any(0 < done < 40 for done in progress), f"no kill landed mid-run: {progress}"

    final = subprocess.run(
        [sys.executable, str(DRIVER), str(tasks), str(out), "--engine", "fake", "--fsync", "--batch-size", "6"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert final.returncode == 1, final.stderr  # the invalid lines, as in the reference run
    assert wav_hashes(out) == expected_wavs
    # The manifest describes the outputs: equal to the uninterrupted run's apart from the
    # run-history fields (resumed, elapsed_s); every finished task is "ok", however many runs it took.
    assert stable_manifest(out) == stable_manifest(reference)
    assert RUN_DEPENDENT_KEYS == ("resumed", "elapsed_s")
    statuses = [r["status"] for r in stable_manifest(out)]
    assert statuses.count("ok") == 40 and statuses.count("skipped") == 0
    summary, ref_summary = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert summary["counts"] == ref_summary["counts"] == {"ok": 40, "failed": 0, "invalid": 4, "skipped": 0}
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    with zipfile.ZipFile(out / "book.zip") as zf, zipfile.ZipFile(reference / "book.zip") as zref:
        assert sorted(zf.namelist()) == sorted(zref.namelist())
        for name in expected_wavs:
            assert zf.read(name) == zref.read(name)

    # and one more clean run resumes everything
    again = run_batch(tasks, out, engine=FakeEngine(), progress=False, fsync=False)
    assert (again.ok, again.resumed, again.exit_code) == (40, 40, 1)  # 1: the invalid lines
