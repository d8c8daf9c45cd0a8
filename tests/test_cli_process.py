"""The console entry point in a real process: signals outside the batch loop, and output
to readers that have gone away. The engine is a fake one (tests/cli_driver.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "cli_driver.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def write_tasks(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"input_text": f"task {i}"}) + "\n" for i in range(n)), encoding="utf-8")
    return path


def start(tasks: Path, out: Path, mode: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), "run", str(tasks), "--out", str(out), *args],
        env={**ENV, "FAKE_ENGINE": mode, **kw.pop("env", {})},
        text=True,
        **kw,
    )


def wait_for_line(stream, text: str, timeout: float = 60.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never appeared; got {seen}")


def interrupt_at(line: str, sig: int, tasks: Path, out: Path, mode: str, *args: str) -> None:
    """Send `sig` once `line` is on stderr; the run must end with a message and the signal's code."""
    proc = start(tasks, out, mode, *args, stderr=subprocess.PIPE)
    try:
        wait_for_line(proc.stderr, line)
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == CODES[sig], rest
    assert f"glmtts-batch: interrupted by {signal.Signals(sig).name}" in rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_model_loads_gives_a_message_and_the_signal_code(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    interrupt_at("fake: loading", sig, write_tasks(tmp_path / "t.jsonl", 3), out, "slow-load")
    assert (out / ".glmtts-batch" / "lock").read_text() == ""  # the lock was let go
    assert not (out / "manifest.jsonl").exists()  # nothing ran


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_exiting_gives_a_message_and_the_signal_code(tmp_path: Path, sig: int) -> None:
    """The run is complete (manifest, summary, zip); the engine's clean-up is then interrupted."""
    out = tmp_path / "out"
    interrupt_at("fake: closing", sig, write_tasks(tmp_path / "t.jsonl", 3), out, "slow-close", "--no-progress")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ok"] == 3 and (out / "t.zip").exists()
    assert (out / ".glmtts-batch" / "lock").read_text() == ""


def test_output_to_a_closed_pipe_is_dropped_and_the_run_goes_on(tmp_path: Path) -> None:
    """`glmtts-batch run ... 2>&1 | head -1`: progress and log lines to a closed pipe."""
    out, gate = tmp_path / "out", tmp_path / "gate"
    proc = start(
        write_tasks(tmp_path / "t.jsonl", 250),
        out,
        "gated",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"FAKE_GATE": str(gate)},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the engine banner; the first task waits for the gate
    assert "engine: fake" in first
    proc.stdout.close()  # `head -1` exits
    gate.touch()  # from here on every progress line, the summary lines and "manifest: ..." hit EPIPE
    assert proc.wait(timeout=60) == 0
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 250 and {r["status"] for r in records} == {"ok"}
    assert json.loads((out / "summary.json").read_text())["exit_code"] == 0


def test_a_run_whose_stdout_reader_has_gone_keeps_its_exit_code(tmp_path: Path) -> None:
    out, gate = tmp_path / "out", tmp_path / "gate"
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"input_text": "fine"}) + "\n" + "not json\n")  # exit code 1: one invalid line
    proc = start(
        tasks,
        out,
        "gated",
        "--no-progress",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"FAKE_GATE": str(gate)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody will read "manifest: ..." / "zip: ..."
    gate.touch()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err

    gate_ok = tmp_path / "ok.jsonl"
    gate_ok.write_text(json.dumps({"input_text": "fine"}) + "\n")
    proc = start(
        gate_ok,
        tmp_path / "out2",
        "gated",
        "--no-progress",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"FAKE_GATE": str(gate)},
    )
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0


class _DeadPipe:
    """A stream whose reader has gone away; a terminal, so Progress draws a tqdm bar on it."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.writes = 0

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("tty", [True, False])
def test_progress_to_a_dead_pipe_is_dropped(tty: bool) -> None:
    from glmtts_batch.progress import Progress

    stream = _DeadPipe(tty)
    progress = Progress(300, enabled=True, stream=stream, every_lines=1)  # type: ignore[arg-type]
    for line in range(1, 301):
        progress.update("ok", 1.0, line=line)
    progress.close()
    assert progress.lines == 300 and progress.counts["ok"] == 300  # still counting
    assert stream.writes >= 1
