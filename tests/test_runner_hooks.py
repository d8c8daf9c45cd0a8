"""run_batch's embedding hooks: `cancel` (a first SIGTERM from any thread) and `on_record`."""

from __future__ import annotations

import threading
from pathlib import Path

from fake_engines import FakeEngine

from glmtts_batch import run_batch
from glmtts_batch.engines.base import Synthesis, SynthesisRequest


class CancelAfter(FakeEngine):
    """Sets the cancel event while synthesising its n-th task (as a DELETE mid-task would)."""

    def __init__(self, n: int, cancel: threading.Event) -> None:
        super().__init__()
        self.n, self.cancel = n, cancel

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        if len(self.requests) + 1 == self.n:
            self.cancel.set()
        return super().synthesize(request)


def test_cancel_in_a_worker_thread_finishes_the_current_task_and_reads_no_further(tmp_path: Path) -> None:
    cancel = threading.Event()
    engine = CancelAfter(3, cancel)
    records: list[dict] = []
    result: dict = {}
    tasks = [{"input_text": f"line {i}", "output_name": f"t{i}"} for i in range(8)]

    def work() -> None:  # off the main thread: no signal handler can be installed there
        result["summary"] = run_batch(
            tasks, tmp_path / "out", engine=engine, progress=False, fsync=False, cancel=cancel, on_record=records.append
        )

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=60)
    summary = result["summary"]
    assert (summary.ok, summary.skipped, summary.unread_lines) == (3, 0, 5)
    assert summary.interrupted == "SIGTERM" and summary.exit_code == 143 and summary.zip is None
    assert len(engine.requests) == 3  # the task running when cancel came was finished, no more
    assert [r["status"] for r in records] == ["ok"] * 3  # as after SIGTERM: the rest is not read
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == ["t0.wav", "t1.wav", "t2.wav"]


def test_cancel_set_before_the_run_runs_nothing(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    engine = FakeEngine()
    summary = run_batch(
        [{"input_text": "a"}, {"input_text": "b"}],
        tmp_path / "out",
        engine=engine,
        progress=False,
        fsync=False,
        cancel=cancel,
    )
    assert (summary.ok, summary.skipped, summary.unread_lines, summary.exit_code) == (0, 0, 2, 143)
    assert engine.requests == []


def test_an_unset_cancel_changes_nothing(tmp_path: Path) -> None:
    records: list[dict] = []
    summary = run_batch(
        [{"input_text": "a"}, {"input_text": ""}],
        tmp_path / "out",
        engine=FakeEngine(),
        progress=False,
        fsync=False,
        cancel=threading.Event(),
        on_record=records.append,
    )
    assert (summary.ok, summary.invalid, summary.exit_code, summary.interrupted) == (1, 1, 1, None)
    assert [r["status"] for r in records] == ["ok", "invalid"]
