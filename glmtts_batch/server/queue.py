"""The persistent job queue: one SQLite file in the jobs folder.

A job's row is the only record that it exists; its files live in `jobs/<id>/`. The
queue survives SIGKILL: a job left `running` by a dead server is handed out first
on the next start, and the runner's journal then resumes it where it stopped.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

QUEUE_NAME = "queue.sqlite3"

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    tasks INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    max_failures INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    runs INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    error TEXT
)
"""


@dataclass(frozen=True)
class JobRow:
    id: str
    state: str
    tasks: int  # valid task lines in the uploaded file
    seed: int
    max_failures: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    runs: int  # how many times a worker started it (>1: resumed after a restart)
    cancel_requested: bool
    exit_code: int | None
    error: str | None


_COLUMNS = ", ".join(JobRow.__dataclass_fields__)


class JobQueue:
    """Thread-safe access to the queue file (one connection, serialised by a lock)."""

    def __init__(self, jobs_dir: Path) -> None:
        self.path = jobs_dir / QUEUE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted job survives a power cut
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, job_id: str, *, tasks: int, seed: int, max_failures: int | None) -> JobRow:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, state, tasks, seed, max_failures, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, tasks, seed, max_failures, time.time()),
            )
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(row) if row else None

    def list(self) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq").fetchall()
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        found = dict(rows)
        return {state: found.get(state, 0) for state in STATES}

    def claim_next(self) -> JobRow | None:
        """The job to run now: one left running by a dead server first, then the oldest queued."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE state IN (?, ?) ORDER BY state = ? DESC, seq LIMIT 1",
                    (RUNNING, QUEUED, RUNNING),
                ).fetchone()
                if row is not None:
                    self._db.execute(
                        "UPDATE jobs SET state = ?, runs = runs + 1, started_at = COALESCE(started_at, ?) WHERE id = ?",
                        (RUNNING, time.time(), row[0]),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row[0]) if row is not None else None

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, or flag a running one; returns the job's state after."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, cancel_requested = 1, finished_at = ? WHERE id = ? AND state = ?",
                (CANCELLED, time.time(), job_id, QUEUED),
            )
            self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = ?", (job_id, RUNNING))
            row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def finish(self, job_id: str, state: str, *, exit_code: int | None = None, error: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, error = ?, finished_at = ? WHERE id = ?",
                (state, exit_code, error, time.time(), job_id),
            )


def _row(row: tuple) -> JobRow:
    values = dict(zip(JobRow.__dataclass_fields__, row))
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRow(**values)
