"""The single worker thread: takes jobs from the queue and runs each through `run_batch`.

A user's cancel (DELETE) and a server shutdown both set the running job's cancel event,
which the runner treats as a first SIGTERM. They differ in what happens next: a
cancelled job is finished as `cancelled`; a job stopped by shutdown stays `running` in
the queue, so the next start resumes it first (the journal keeps finished WAVs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from glmtts_batch.api import run_batch
from glmtts_batch.errors import GlmttsBatchError
from glmtts_batch.server.engine_host import EngineHost
from glmtts_batch.server.queue import CANCELLED, DONE, FAILED, JobQueue, JobRow
from glmtts_batch.server.store import Store

Log = Callable[[str], None]


class LiveCounts:
    """Per-status counts of the running job, fed by the runner's `on_record`."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.counts = {"ok": 0, "failed": 0, "invalid": 0, "skipped": 0}
        self.resumed = 0
        self.audio_seconds = 0.0
        self._lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.counts[record["status"]] += 1
            self.resumed += bool(record.get("resumed"))
            self.audio_seconds += record.get("duration_s") or 0.0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"counts": dict(self.counts), "resumed": self.resumed, "audio_seconds": round(self.audio_seconds, 3)}


class Worker:
    def __init__(
        self,
        host: EngineHost,
        queue: JobQueue,
        store: Store,
        *,
        log: Log,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.host = host
        self.batch_size = batch_size
        self.queue = queue
        self.store = store
        self.log = log
        self.on_record = on_record
        self.live: LiveCounts | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel = threading.Event()
        self._current: str | None = None
        self._guard = threading.Lock()  # current job id and its cancel event change together
        self._thread = threading.Thread(target=self._loop, name="glmtts-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> str | None:
        state = self.queue.request_cancel(job_id)
        with self._guard:
            if self._current == job_id:
                self._cancel.set()
        return state

    def stop(self, timeout: float = 600.0) -> None:
        """Finish the task in progress, leave the job queued for the next start, and return."""
        self._stopping.set()
        with self._guard:
            self._cancel.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.queue.claim_next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - one job's crash must not stop the queue
                self.log(f"job {job.id}: failed: {type(exc).__name__}: {exc}")
                self.queue.finish(job.id, FAILED, error=f"{type(exc).__name__}: {exc}")

    def _cancel_requested(self, job_id: str) -> bool:
        row = self.queue.get(job_id)
        return row is not None and row.cancel_requested

    def _run(self, job: JobRow) -> None:
        paths = self.store.job(job.id)
        live = LiveCounts(job.id)
        with self._guard:
            self._current = job.id
            self._cancel = threading.Event()
            if self._stopping.is_set():
                self._cancel.set()
        cancel = self._cancel
        if self._cancel_requested(job.id):  # cancelled between claim and start
            cancel.set()
        self.live = live
        self.log(f"job {job.id}: {'resuming' if job.runs > 1 else 'starting'} ({job.tasks} tasks)")

        def record(rec: dict[str, Any]) -> None:
            live.add(rec)
            if self.on_record is not None:
                self.on_record(rec)

        try:
            summary = run_batch(
                paths.task_file,
                paths.out,
                engine=self.host.runner_view,
                seed=job.seed,
                base_dir=paths.input,
                max_failures=job.max_failures,
                progress=False,
                fsync=True,
                log=lambda m: self.log(f"job {job.id}: {m}"),
                cancel=cancel,
                on_record=record,
                batch_size=self.batch_size,
            )
        except GlmttsBatchError as exc:
            self.queue.finish(job.id, FAILED, exit_code=exc.exit_code, error=str(exc))
            return
        finally:
            with self._guard:
                self._current = None
        if summary.interrupted is None:
            self.queue.finish(job.id, DONE, exit_code=summary.exit_code)
        elif self._cancel_requested(job.id):
            self.queue.finish(job.id, CANCELLED, exit_code=summary.exit_code)
        else:
            self.log(f"job {job.id}: stopped by shutdown; it resumes on the next start")
        self.log(f"job {job.id}: {summary.counts} in {summary.wall_seconds:.1f} s")
