"""The batch loop with a window of tasks (`batch_size`): order, isolation, out-of-memory
splitting, signals, max-failures and resume, with fake engines."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from fake_engines import BatchOomEngine, FakeEngine, OomEngine, RaisingEngine
from run_files import manifest, write_tasks

from glmtts_batch import RunError, run_batch
from glmtts_batch.batching import TaskWindow
from glmtts_batch.engines.base import Synthesis, SynthesisRequest, synthesize_each
from glmtts_batch.errors import TaskError
from glmtts_batch.manifest import RUN_DEPENDENT_KEYS
from glmtts_batch.outputs import TEMP_PREFIX


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in RUN_DEPENDENT_KEYS} for r in records]


def wavs(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.wav"))}


def journaled(out: Path) -> list[str]:
    path = out / ".glmtts-batch" / "journal.jsonl"
    return [json.loads(x)["output_name"] for x in path.read_text().splitlines()] if path.exists() else []


def run(tasks, out: Path, engine=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("fsync", False)
    return run_batch(tasks, out, engine=engine or FakeEngine(), **kw)


def chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def mixed_job(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """A job whose lines are runnable, invalid, and done by an earlier run (resumed), interleaved;
    returns the task file, an output folder holding the earlier run, and the task dicts."""
    tasks: list[dict | str] = []
    runnable: list[dict] = []
    done: list[dict] = []
    for i in range(20):
        task = {"input_text": f"sentence number {i}" + "!" * (i % 4), "output_name": f"s{i:02d}"}
        if i % 6 == 2:
            task["seed"] = 50 + i
        tasks.append(task)
        (done if i % 3 == 1 else runnable).append(task)
        if i % 5 == 3:
            tasks.append('{"input_text": ""}')  # invalid
            tasks.append("# a comment")
    earlier = tmp_path / "earlier"
    run(write_tasks(tmp_path / "done.jsonl", done), earlier)
    return write_tasks(tmp_path / "book.jsonl", tasks), earlier, runnable


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_records_come_in_input_order_with_invalid_resumed_and_runnable_lines_mixed(
    tmp_path: Path, batch_size: int
) -> None:
    tasks, earlier, runnable = mixed_job(tmp_path)
    reference = tmp_path / "reference"  # the same job with nothing done before, one task at a time
    run(tasks, reference, batch_size=1)

    out = tmp_path / f"out{batch_size}"
    shutil.copytree(earlier, out)
    engine = FakeEngine()
    s = run(tasks, out, engine=engine, batch_size=batch_size, adopt=True)  # the earlier job's folder
    done = {f"s{i:02d}" for i in range(20) if i % 3 == 1}
    assert (s.ok, s.resumed, s.invalid, s.failed) == (20, 20 - len(runnable), 4, 0)  # resumed count as ok

    records = manifest(out)
    assert [r["line"] for r in records] == sorted(r["line"] for r in records)
    assert [r["line"] for r in records] == [r["line"] for r in manifest(reference)]
    assert [r["status"] for r in records] == [
        "invalid" if r["status"] == "invalid" else "ok" for r in manifest(reference)
    ]
    assert [r["output_name"] for r in records if r["resumed"]] == sorted(done)
    # Only runnable tasks take window slots: they go to the engine in input order, `batch_size` at a time.
    assert engine.batches == chunks([t["input_text"] for t in runnable], batch_size)
    assert wavs(out) == wavs(reference)
    resumed = {r["line"] for r in records if r["resumed"]}
    assert stable([r for r in records if r["line"] not in resumed]) == stable(
        [r for r in manifest(reference) if r["line"] not in resumed]
    )
    assert json.loads((out / "summary.json").read_text())["batch_size"] == batch_size


def test_a_failing_task_never_fails_its_batch_mates(tmp_path: Path) -> None:
    texts = ["a", "bad", "c", "d", "e", "worse", "g"]
    engine = RaisingEngine({"bad", "worse"})
    out = tmp_path / "out"
    s = run(write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in texts]), out, engine=engine, batch_size=4)
    assert engine.batches == [["a", "bad", "c", "d"], ["e", "worse", "g"]]
    assert [r["status"] for r in manifest(out)] == ["ok", "failed", "ok", "ok", "ok", "failed", "ok"]
    assert manifest(out)[1]["error"] == {"type": "TaskError", "message": "boom", "field": "input_text"}
    assert (s.ok, s.failed, s.exit_code) == (5, 2, 1)
    assert sorted(wavs(out)) == ["1.wav", "3.wav", "4.wav", "5.wav", "7.wav"]


class ContractBreaker(FakeEngine):
    """Batches natively but raises out of the whole call (not out of memory) when one text is bad,
    and returns a non-Synthesis for another: the loop still isolates each task."""

    def synthesize_many(self, requests):
        self.batches.append([r.text for r in requests])
        if any(r.text == "bad" for r in requests):
            if len(requests) == 1:
                raise ValueError("cannot say 'bad'")
            raise ValueError("one of these is bad")
        return ["not audio" if r.text == "odd" else self.synthesize(r) for r in requests]


def test_an_engine_that_raises_for_a_whole_batch_is_retried_task_by_task(tmp_path: Path) -> None:
    log: list[str] = []
    texts = ["a", "bad", "odd", "d"]
    out = tmp_path / "out"
    engine = ContractBreaker()
    run(
        write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in texts]),
        out,
        engine=engine,
        batch_size=4,
        log=log.append,
    )
    assert engine.batches == [texts, ["a"], ["bad"], ["odd"], ["d"]]
    records = manifest(out)
    assert [r["status"] for r in records] == ["ok", "failed", "failed", "ok"]
    assert records[1]["error"]["message"] == "cannot say 'bad'"
    assert "expected Synthesis" in records[2]["error"]["message"]
    assert [m for m in log if "failed as a whole" in m] == [
        "a batch of 4 failed as a whole (ValueError: one of these is bad); retrying each task alone (lines 1-4)"
    ]


def test_out_of_memory_in_a_batch_splits_in_halves_and_gives_the_same_wavs(tmp_path: Path) -> None:
    # Ten tasks of 4 characters; a call fits 8 characters (2 tasks). "huge" runs out of memory even alone.
    texts = [f"t{i:02d}!" for i in range(10)]
    texts[5] = "huge"
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": t, "output_name": f"n{i}"} for i, t in enumerate(texts)])
    reference = tmp_path / "reference"
    run(tasks, reference, engine=RaisingEngine({"huge"}), batch_size=1)

    log: list[str] = []
    engine = BatchOomEngine(budget=8, always={"huge"})
    out = tmp_path / "out"
    s = run(tasks, out, engine=engine, batch_size=8, log=log.append)

    assert [len(b) for b in engine.batches] == [8, 4, 2, 2, 4, 2, 1, 1, 2, 2]
    records = manifest(out)
    assert [r["status"] for r in records] == ["ok"] * 5 + ["failed"] + ["ok"] * 4  # only the task OOM alone
    assert records[5]["error"]["type"] == "OutOfMemoryError"
    assert (s.ok, s.failed) == (9, 1)
    assert wavs(out) == wavs(reference)
    splits = [m for m in log if "out of memory" in m]
    assert splits == [
        "out of memory in a batch of 8 (OutOfMemoryError: CUDA error: tried to allocate 8 GiB); "
        "memory freed, retrying as 4 + 4 (lines 1-8)",
        "out of memory in a batch of 4 (OutOfMemoryError: CUDA error: tried to allocate 4 GiB); "
        "memory freed, retrying as 2 + 2 (lines 1-4)",
        "out of memory in a batch of 4 (OutOfMemoryError: CUDA error: tried to allocate 4 GiB); "
        "memory freed, retrying as 2 + 2 (lines 5-8)",
        "out of memory in a batch of 2 (OutOfMemoryError: CUDA error: tried to allocate 2 GiB); "
        "memory freed, retrying as 1 + 1 (lines 5-6)",
    ]  # each split once; the task alone is a failed record, not a split
    assert engine.free_memory_calls == 5  # after every out-of-memory call, the lone one included


def test_an_engine_with_only_synthesize_still_works_and_splits_on_oom(tmp_path: Path) -> None:
    class Legacy:
        """An engine written before batching: no synthesize_many, no default_batch_size."""

        def __init__(self) -> None:
            self.inner = OomEngine({"huge"})
            self.info = self.inner.info

        def synthesize(self, request):
            return self.inner.synthesize(request)

        def free_memory(self):
            self.inner.free_memory()

        def stats(self):
            return {}

        def close(self):
            pass

    texts = ["a", "b", "huge", "d", "e"]
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in texts])
    out = tmp_path / "out"
    log: list[str] = []
    s = run(tasks, out, engine=Legacy(), batch_size=4, log=log.append)
    assert [r["status"] for r in manifest(out)] == ["ok", "ok", "failed", "ok", "ok"]
    assert (s.ok, s.failed) == (4, 1)
    assert len([m for m in log if "out of memory in a batch of" in m]) == 2  # 4 -> 2 + 2, then [huge, d] -> 1 + 1
    reference = tmp_path / "reference"
    run(tasks, reference, engine=RaisingEngine({"huge"}))
    assert wavs(out) == wavs(reference)
    assert json.loads((out / "summary.json").read_text())["batch_size"] == 4


def test_the_engine_default_batch_size_applies_without_batch_size(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.default_batch_size = 3
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": str(i)} for i in range(7)])
    run(tasks, tmp_path / "out", engine=engine)
    assert [len(b) for b in engine.batches] == [3, 3, 1]
    explicit = FakeEngine()
    explicit.default_batch_size = 3
    run(tasks, tmp_path / "out2", engine=explicit, batch_size=2)
    assert [len(b) for b in explicit.batches] == [2, 2, 2, 1]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_a_bad_batch_size_is_a_run_error(tmp_path: Path, bad) -> None:
    with pytest.raises(RunError, match="batch_size must be a positive integer"):
        run([{"input_text": "a"}], tmp_path / "out", batch_size=bad)


class Signalling(FakeEngine):
    """Raises SIGTERM `times` times while synthesising `text`, swallowing what the handler raises
    (as espeak's ctypes callback would), and returns audio as if nothing happened."""

    def __init__(self, text: str, times: int) -> None:
        super().__init__()
        self.text, self.times = text, times

    def synthesize(self, request):
        if request.text == self.text:
            for _ in range(self.times):
                try:
                    signal.raise_signal(signal.SIGTERM)
                except BaseException:  # noqa: BLE001, S110 - the behaviour under test
                    pass
        return super().synthesize(request)


def test_first_signal_lets_the_batch_in_the_engine_finish(tmp_path: Path) -> None:
    texts = ["a", "b", "c", "d", "e", "f", "g"]
    out = tmp_path / "out"
    engine = Signalling("e", times=1)
    s = run(write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in texts]), out, engine=engine, batch_size=3)
    assert engine.batches == [["a", "b", "c"], ["d", "e", "f"]]  # the next window never started
    assert [(r["status"], r["reason"]) for r in manifest(out)] == [("ok", None)] * 6  # g: never read
    assert (s.ok, s.skipped, s.unread_lines, s.interrupted, s.exit_code) == (6, 0, 1, "SIGTERM", 143)
    assert len(wavs(out)) == 6


def test_second_signal_abandons_the_batch_in_the_engine(tmp_path: Path) -> None:
    texts = ["a", "b", "c", "d", "long", "f", "g"]
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in texts])
    out = tmp_path / "out"
    engine = Signalling("long", times=2)
    s = run(tasks, out, engine=engine, batch_size=3)
    assert engine.batches == [["a", "b", "c"], ["d", "long", "f"]]  # the engine computed f; it is dropped too
    assert [(r["status"], r["reason"], r["wav"]) for r in manifest(out)] == (
        [("ok", None, f"{i}.wav") for i in (1, 2, 3)] + [("skipped", "interrupted", None)] * 3
    )
    assert (s.ok, s.skipped, s.unread_lines, s.interrupted, s.exit_code) == (3, 3, 1, "SIGTERM", 143)
    assert sorted(wavs(out)) == ["1.wav", "2.wav", "3.wav"]
    assert journaled(out) == ["1", "2", "3"]  # nothing of the abandoned batch is journaled
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    again = run(tasks, out, batch_size=3)  # and it is redone on resume
    assert (again.ok, again.resumed) == (7, 3)


def test_max_failures_with_batches(tmp_path: Path) -> None:
    texts = ["a", "f1", "b", "f2", "c", "f3", "d", "e"]
    engine = RaisingEngine({"f1", "f2", "f3"})
    out = tmp_path / "out"
    s = run(
        write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in texts]),
        out,
        engine=engine,
        max_failures=2,
        batch_size=3,
    )
    # The limit is reached at f2; its window-mates c and f3 were computed in the same call and are
    # recorded as they came back. No window starts after it.
    assert engine.batches == [["a", "f1", "b"], ["f2", "c", "f3"]]
    records = manifest(out)
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "failed", "ok", "failed", "skipped", "skipped"]
    assert [r["reason"] for r in records[6:]] == ["max_failures"] * 2
    assert (s.ok, s.failed, s.skipped, s.stopped_early, s.exit_code) == (3, 3, 2, True, 1)


def test_max_failures_reached_while_a_window_fills_still_runs_the_earlier_lines(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.wav").write_bytes(b"not written by glmtts-batch")
    tasks = [
        {"input_text": "a"},
        {"input_text": "b"},
        {"input_text": "x", "output_name": "mine"},
        {"input_text": "c"},
        {"input_text": "d"},
    ]
    engine = FakeEngine()
    s = run(write_tasks(tmp_path / "t.jsonl", tasks), tmp_path / "out", engine=engine, max_failures=1, batch_size=4)
    assert engine.batches == [["a", "b"]]  # before the failing line: run, as at batch size 1
    assert [r["status"] for r in manifest(tmp_path / "out")] == ["ok", "ok", "failed", "skipped", "skipped"]
    assert s.stopped_early


def test_batch_size_is_not_part_of_the_resume_key(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": f"line {i}" * (i + 1)} for i in range(9)])
    at4, at1 = tmp_path / "at4", tmp_path / "at1"
    run(tasks, at4, batch_size=4)
    run(tasks, at1, batch_size=1)
    assert wavs(at4) == wavs(at1) and len(wavs(at4)) == 9
    assert stable(manifest(at4)) == stable(manifest(at1))
    engine = FakeEngine()
    again = run(tasks, at4, engine=engine, batch_size=1)
    assert (again.ok, again.resumed, engine.batches) == (9, 9, [])


def test_background_and_inline_writes_give_the_same_outputs(tmp_path: Path) -> None:
    from glmtts_batch.runner import BatchRunner, RunSettings
    from glmtts_batch.tasks import iter_task_file

    tasks, _, _ = mixed_job(tmp_path)
    outs = {}
    for background in (True, False):
        out = tmp_path / f"bg{background}"
        out.mkdir()
        settings = RunSettings(
            out_dir=out, zip_name="z.zip", progress=False, fsync=False, batch_size=3, background_writes=background
        )
        BatchRunner(FakeEngine(), iter_task_file(tasks), settings).run()
        outs[background] = (wavs(out), stable(manifest(out)))
    assert outs[True] == outs[False]


# The window alone ------------------------------------------------------------------------


def test_window_releases_in_input_order_and_waits_for_the_previous_windows_writes() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    runs: list[list[str]] = []

    def slow_write(job: str) -> str:
        gate.wait(5)
        return f"wrote {job}"

    def run_jobs(jobs: list[str]) -> list[str | Future[str]]:
        runs.append(jobs)
        return [pool.submit(slow_write, job) for job in jobs]

    window: TaskWindow[str, str] = TaskWindow(2, run_jobs)
    assert window.add_record("r0") == ["r0"]  # nothing before it
    assert window.add_job("j1") == []
    assert window.add_record("r2") == []  # held behind j1
    assert window.add_job("j3") == []  # window full: ran; its writes are not done, and need not be yet
    assert runs == [["j1", "j3"]] and window.pending == 0
    assert window.add_record("r4") == []
    gate.set()
    time.sleep(0.05)
    assert window.add_record("r5") == ["wrote j1", "r2", "wrote j3", "r4", "r5"]
    assert window.add_job("j6") == []
    assert window.finish() == ["wrote j6"]
    pool.shutdown()


def test_window_runs_early_when_too_many_records_wait() -> None:
    runs: list[list[int]] = []
    window: TaskWindow[int, str] = TaskWindow(
        8, lambda jobs: runs.append(jobs) or [f"job {j}" for j in jobs], max_held=3
    )
    assert window.add_job(1) == []
    assert window.add_record("a") == [] and window.add_record("b") == []
    assert window.add_record("c") == ["job 1", "a", "b", "c"]  # four held: ran with one job
    assert runs == [[1]]


def test_synthesize_each_returns_task_errors_and_raises_out_of_memory() -> None:
    def request(text: str) -> SynthesisRequest:
        return SynthesisRequest(text=text, prompt_audio=None, prompt_text=None, seed=0)

    results = synthesize_each(RaisingEngine({"bad"}), [request("a"), request("bad"), request("c")])
    assert isinstance(results[0], Synthesis) and isinstance(results[2], Synthesis)
    assert isinstance(results[1], TaskError) and str(results[1]) == "boom"
    engine = OomEngine({"huge"})
    with pytest.raises(RuntimeError, match="allocate"):
        synthesize_each(engine, [request("a"), request("huge"), request("c")])
    assert [r.text for r in engine.requests] == ["a", "huge"]  # nothing ran after it


def test_the_servers_locked_engine_view_batches_under_the_lock(tmp_path: Path) -> None:
    from glmtts_batch.server.engine_host import EngineHost

    engine = FakeEngine()
    engine.default_batch_size = 3
    host = EngineHost(engine)
    view = host.runner_view
    assert view.default_batch_size == 3
    s = run([{"input_text": str(i)} for i in range(4)], tmp_path / "out", engine=view)
    assert s.ok == 4 and [len(b) for b in engine.batches] == [3, 1]
    assert not host.lock.locked()


def test_tasks_waiting_for_a_window_are_not_started_after_a_stop(tmp_path: Path) -> None:
    cancel = threading.Event()

    def tasks():
        yield {"input_text": "a"}
        yield {"input_text": "b"}
        cancel.set()  # as a DELETE (or a first SIGTERM) while the window fills
        yield {"input_text": "c"}

    engine = FakeEngine()
    s = run(tasks(), tmp_path / "out", engine=engine, batch_size=4, cancel=cancel)
    assert engine.batches == []
    assert [(r["line"], r["status"], r["reason"]) for r in manifest(tmp_path / "out")][:2] == [
        (1, "skipped", "interrupted"),
        (2, "skipped", "interrupted"),
    ]
    assert (s.ok, s.interrupted, s.exit_code) == (0, "SIGTERM", 143)
    assert not wavs(tmp_path / "out")
