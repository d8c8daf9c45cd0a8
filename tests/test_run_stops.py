"""Runs that stop as a whole: the task source breaks, or an output file cannot be written.

Either way what was done is recorded first (the manifest and summary.json for the lines
read so far), then a clear error is raised, and the same run again completes.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fake_engines import FakeEngine
from run_files import manifest

from glmtts_batch import OutputWriteError, RunError, TaskSourceError, run_batch
from glmtts_batch.errors import EXIT_OUTPUT_ERROR, EXIT_RUN_ERROR
from glmtts_batch.outputs import TEMP_PREFIX

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "fake_engines.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}


def run(tasks: Any, out: Path, engine: Any = None, **kw: Any):
    kw.setdefault("progress", False)
    kw.setdefault("fsync", False)
    return run_batch(tasks, out, engine=engine or FakeEngine(), **kw)


def summary_json(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def temp_files(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]


TASKS = [{"input_text": f"task {i}", "output_name": f"t{i}"} for i in range(5)]


# The task source -------------------------------------------------------------------------


def test_an_iterable_that_raises_midway_records_what_was_done_then_raises(tmp_path: Path) -> None:
    def tasks() -> Iterator[dict]:
        yield from TASKS[:3]
        raise ConnectionError("database went away")

    out = tmp_path / "out"
    with pytest.raises(TaskSourceError, match=r"ConnectionError: database went away \(after line 3\)") as info:
        run(tasks(), out)
    assert isinstance(info.value, RunError) and info.value.exit_code == EXIT_RUN_ERROR
    assert [(r["line"], r["status"]) for r in manifest(out)] == [(1, "ok"), (2, "ok"), (3, "ok")]
    summary = summary_json(out)
    assert summary["counts"]["ok"] == 3 and summary["exit_code"] == EXIT_RUN_ERROR
    assert summary["error"]["type"] == "TaskSourceError" and "database went away" in summary["error"]["message"]
    assert summary["zip"] is None and not list(out.glob("*.zip"))  # an incomplete job is not packed
    assert summary["unread_lines"] is None  # a generator has no length
    assert info.value.summary is not None and info.value.summary.ok == 3
    assert not temp_files(out)

    again = run(TASKS, out)  # the same job again: the three are reused, the rest run
    assert (again.resumed, again.ok, again.exit_code) == (3, 5, 0)  # ok counts the resumed ones


class _BrokenMapping(Mapping[str, Any]):
    """A task whose lookup raises (a lazy row whose backing store failed)."""

    def __iter__(self) -> Iterator[str]:
        return iter(["input_text"])

    def __len__(self) -> int:
        return 1

    def __getitem__(self, key: str) -> Any:
        raise OSError(errno.EIO, "Input/output error")


def test_an_item_whose_lookup_raises_records_the_lines_before_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tasks = [*TASKS[:2], _BrokenMapping(), *TASKS[2:]]
    with pytest.raises(TaskSourceError, match=r"after line 2") as info:
        run(tasks, out)
    assert [(r["line"], r["status"]) for r in manifest(out)] == [(1, "ok"), (2, "ok")]
    summary = summary_json(out)
    assert summary["error"]["type"] == "TaskSourceError"
    assert summary["unread_lines"] == 4  # a list has a length: lines 3..6 were not run
    assert info.value.summary is not None and info.value.summary.unread_lines == 4


def test_unread_lines_of_a_list_interrupted_by_a_signal(tmp_path: Path) -> None:
    class SignalOnSecond(FakeEngine):
        def synthesize(self, request):
            if request.text == "task 1":
                signal.raise_signal(signal.SIGTERM)  # the current task still finishes
            return super().synthesize(request)

    out = tmp_path / "out"
    s = run(TASKS, out, engine=SignalOnSecond())
    assert (s.ok, s.interrupted, s.unread_lines, s.exit_code) == (2, "SIGTERM", 3, 143)
    assert len(manifest(out)) == 2 and summary_json(out)["unread_lines"] == 3
    assert run(TASKS, tmp_path / "whole").unread_lines == 0  # read to the end


# Output files ----------------------------------------------------------------------------


def test_summary_that_cannot_be_written_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import glmtts_batch.runner as runner

    def no_space(*args: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "write_summary", no_space)
    out = tmp_path / "out"
    with pytest.raises(OutputWriteError, match=r"cannot write the summary .*summary\.json.*No space left") as info:
        run(TASKS, out)
    assert info.value.exit_code == EXIT_OUTPUT_ERROR == 3
    assert len(manifest(out)) == 5 and not temp_files(out)
    monkeypatch.undo()
    again = run(TASKS, out)
    assert (again.resumed, again.exit_code) == (5, 0) and (out / "summary.json").exists()


def _limited(max_bytes: int):
    """A child process whose files cannot grow beyond `max_bytes` (writes fail with EFBIG)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def _driver(tasks: Path, out: Path, *args: str, max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DRIVER), str(tasks), str(out), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        preexec_fn=_limited(max_file_bytes) if max_file_bytes else None,
    )


def _task_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"input_text": f"line number {i} " * 3}) + "\n" for i in range(n)))
    return path


def test_a_manifest_the_disk_cannot_hold_is_a_clear_error_and_a_rerun_completes(tmp_path: Path) -> None:
    tasks, out = _task_file(tmp_path / "t.jsonl", 200), tmp_path / "out"
    assert _driver(tasks, out, "--no-zip").returncode == 0
    before = (out / "manifest.jsonl").read_bytes()
    assert len(before) > 40_000
    # Every task is resumed (nothing new to write but the manifest), which outgrows the limit.
    failed = _driver(tasks, out, "--no-zip", max_file_bytes=20_000)
    assert failed.returncode == EXIT_OUTPUT_ERROR, failed.stderr
    assert "cannot write the manifest" in failed.stderr and str(out / "manifest.jsonl") in failed.stderr
    assert "File too large" in failed.stderr and "Traceback" not in failed.stderr
    assert (out / "manifest.jsonl").read_bytes() == before  # the last complete manifest is kept
    assert not temp_files(out)
    again = _driver(tasks, out)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed"] == 200 and (out / "t.zip").exists()


def test_a_zip_the_disk_cannot_hold_leaves_a_summary_without_it(tmp_path: Path) -> None:
    tasks, out = _task_file(tmp_path / "t.jsonl", 200), tmp_path / "out"
    assert _driver(tasks, out, "--no-zip").returncode == 0
    wav_bytes = sum(p.stat().st_size for p in out.glob("*.wav"))
    assert wav_bytes > 500_000 and (out / "manifest.jsonl").stat().st_size < 150_000
    failed = _driver(tasks, out, max_file_bytes=300_000)  # manifest and summary fit, the zip does not
    assert failed.returncode == EXIT_OUTPUT_ERROR, failed.stderr
    assert "cannot write the zip" in failed.stderr and str(out / "t.zip") in failed.stderr
    assert "Traceback" not in failed.stderr
    summary = summary_json(out)
    assert summary["zip"] is None and summary["exit_code"] == EXIT_OUTPUT_ERROR  # names no missing zip
    assert summary["error"]["type"] == "OutputWriteError" and "t.zip" in summary["error"]["message"]
    assert not (out / "t.zip").exists() and not temp_files(out)
    again = _driver(tasks, out)
    assert again.returncode == 0, again.stderr
    assert summary_json(out)["zip"] == "t.zip" and (out / "t.zip").exists()
