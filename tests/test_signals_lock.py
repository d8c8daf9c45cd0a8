"""SIGINT/SIGTERM handling and the output-folder lock, in real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from glmtts_batch.lock import LockedError, OutputLock
from glmtts_batch.outputs import TEMP_PREFIX

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "fake_engines.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}


def write_tasks(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"input_text": f"task {i}"}) + "\n" for i in range(n)), encoding="utf-8")
    return path


def start(tasks: Path, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(tasks), str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def journal_lines(out: Path) -> int:
    try:
        return (out / ".glmtts-batch" / "journal.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_current_task_writes_manifest_and_exits(tmp_path: Path, sig: int, code: int) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", 40)
    out = tmp_path / "out"
    proc = start(tasks, out, "--engine", "slow", "--delay", "0.1")
    wait_for(lambda: journal_lines(out) >= 2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr

    records = manifest(out)
    done = len(records)
    # The current task finished; no line after it was read (no records for the rest), and the
    # summary counts what was left of this regular file.
    assert 2 <= done < 40
    assert [r["line"] for r in records] == list(range(1, done + 1))
    assert [r["status"] for r in records] == ["ok"] * done
    for r in records:
        assert sf.info(out / r["wav"]).frames == 1600
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == signal.Signals(sig).name and summary["exit_code"] == code
    assert summary["unread_lines"] == 40 - done and summary["total"] == done
    assert summary["zip"] is None and not (out / "t.zip").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert json.loads(stdout)["interrupted"] == signal.Signals(sig).name

    # the same command again resumes and completes
    proc = start(tasks, out, "--engine", "fake")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert (result["resumed"], result["ok"]) == (done, 40)  # ok counts the resumed tasks
    assert (out / "t.zip").exists()


@pytest.mark.parametrize("batch_size", ["1", "3"])
def test_second_signal_abandons_the_current_task(tmp_path: Path, batch_size: str) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", 3)
    out = tmp_path / "out"
    proc = start(tasks, out, "--engine", "slow", "--delay", "20", "--batch-size", batch_size)
    # The manifest's temp file appears once the loop (and its signal handling) is running.
    wait_for(lambda: out.is_dir() and any(p.name.endswith("manifest.jsonl") for p in out.iterdir()))
    time.sleep(0.3)  # inside the first engine call
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=15)
    assert time.monotonic() - t0 < 10  # did not wait for the 20 s task
    assert proc.returncode == 143, stderr
    records = manifest(out)
    # At batch 3 the whole window was read and in the engine; at batch 1 only the first task.
    in_engine = int(batch_size)
    assert [(r["status"], r["reason"]) for r in records] == [("skipped", "interrupted")] * in_engine
    assert json.loads((out / "summary.json").read_text())["unread_lines"] == 3 - in_engine
    assert not list(out.glob("*.wav"))
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_run_whose_pipe_never_sends_more(tmp_path: Path, sig: int) -> None:
    """`producer | glmtts-batch run /dev/stdin`: the producer stays alive and silent; the run
    must not wait for it. Every line read has its record; what was left is unknown (null)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), "/dev/stdin", str(out), "--engine", "fake"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"".join(json.dumps({"input_text": f"task {i}"}).encode() + b"\n" for i in range(3)))
        proc.stdin.flush()
        wait_for(lambda: journal_lines(out) >= 3)  # all three done; now blocked reading the pipe
        time.sleep(0.2)
        proc.send_signal(sig)
        proc.wait(timeout=15)  # the pipe is still open: a run that reads on would hang here
    finally:
        proc.kill()
        stdout, stderr = proc.communicate()
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], stderr
    assert [(r["line"], r["status"]) for r in manifest(out)] == [(1, "ok"), (2, "ok"), (3, "ok")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unread_lines"] is None and summary["interrupted"] == signal.Signals(sig).name


def test_signal_stops_a_run_over_endless_input(tmp_path: Path) -> None:
    """`run /dev/urandom`: endless (invalid) lines, each read in no time; a signal ends the run."""
    out = tmp_path / "out"
    proc = start(Path("/dev/urandom"), out, "--engine", "fake")
    try:
        wait_for(lambda: out.is_dir() and any(p.name.endswith("manifest.jsonl") for p in out.iterdir()))
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert proc.returncode == 143, stderr
    records = manifest(out)
    assert records and {r["status"] for r in records} == {"invalid"}
    lines = [r["line"] for r in records]
    assert lines == sorted(lines) and len(set(lines)) == len(lines)  # one record per line read, in order
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unread_lines"] is None and summary["counts"]["invalid"] == len(records)


def test_concurrent_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", 30)
    out = tmp_path / "out"
    first = start(tasks, out, "--engine", "slow", "--delay", "0.3")  # still running when the second starts
    try:
        wait_for(lambda: journal_lines(out) >= 1)
        second = start(tasks, out, "--engine", "fake")
        _, stderr = second.communicate(timeout=30)
        assert second.returncode == 2
        assert "in use by another glmtts-batch run" in stderr
        assert f"pid {first.pid}" in stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 143
    # the refused run touched nothing: the manifest is the interrupted first run's
    records = manifest(out)
    assert 1 <= len(records) < 30
    assert json.loads((out / "summary.json").read_text())["unread_lines"] == 30 - len(records)


def test_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", 30)
    out = tmp_path / "out"
    proc = start(tasks, out, "--engine", "slow", "--delay", "0.1")
    wait_for(lambda: journal_lines(out) >= 1)
    proc.kill()
    proc.communicate(timeout=10)
    lock_file = out / ".glmtts-batch" / "lock"
    assert json.loads(lock_file.read_text())["pid"] == proc.pid  # the dead holder's record is still there

    again = start(tasks, out, "--engine", "fake")
    stdout, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    assert json.loads(stdout)["resumed"] >= 1


def test_stale_lock_file_from_a_dead_pid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".glmtts-batch").mkdir(parents=True)
    (out / ".glmtts-batch" / "lock").write_text(
        json.dumps({"pid": 2**22 + 12345, "host": "elsewhere", "started": "yesterday"})
    )
    lock = OutputLock(out)
    lock.acquire()
    try:
        info = json.loads((out / ".glmtts-batch" / "lock").read_text())
        assert info["pid"] == os.getpid()
    finally:
        lock.release()


def test_lock_conflict_in_process_names_the_holder(tmp_path: Path) -> None:
    with OutputLock(tmp_path):
        with pytest.raises(LockedError, match=rf"pid {os.getpid()} on .*started"):
            OutputLock(tmp_path).acquire()
    with OutputLock(tmp_path):  # released on exit, so it can be taken again
        pass


def test_a_state_file_where_the_state_folder_belongs_is_named(tmp_path: Path) -> None:
    from glmtts_batch.errors import RunError

    out = tmp_path / "out"
    out.mkdir()
    (out / ".glmtts-batch").write_text("a user's file")
    with pytest.raises(RunError, match=r"\.glmtts-batch' is a file, not a folder"):  # exit 2 (test_cli)
        OutputLock(out).acquire()
    assert (out / ".glmtts-batch").read_text() == "a user's file"


def test_links_at_the_state_folder_or_lock_are_refused_and_not_followed(tmp_path: Path) -> None:
    from glmtts_batch.errors import RunError

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    (out / ".glmtts-batch").mkdir(parents=True)
    (out / ".glmtts-batch" / "lock").symlink_to(victim)
    with pytest.raises(RunError, match="symbolic link"):
        OutputLock(out).acquire()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".glmtts-batch").symlink_to(elsewhere)
    with pytest.raises(RunError, match="is a symbolic link, not a folder"):
        OutputLock(linked).acquire()
    assert victim.read_text() == "precious" and list(elsewhere.iterdir()) == []
