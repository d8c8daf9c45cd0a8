"""Where a job's and a voice's files live under the jobs folder, and unguessable ids."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

TASK_FILE_NAME = "tasks.jsonl"
ZIP_NAME = "tasks.zip"  # run_batch names the zip after the task file's stem
_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16)


def new_id() -> str:
    """128 random bits: a job or voice id cannot be guessed from another one."""
    return secrets.token_urlsafe(16)


def is_id(value: str) -> bool:
    return bool(_ID.match(value))


@dataclass(frozen=True)
class JobPaths:
    root: Path  # jobs/<id>/

    @property
    def input(self) -> Path:  # the uploaded task file and the prompt files it names
        return self.root / "input"

    @property
    def task_file(self) -> Path:
        return self.input / TASK_FILE_NAME

    @property
    def out(self) -> Path:  # run_batch's output folder: WAVs, manifest, summary, zip, journal
        return self.root / "out"


@dataclass(frozen=True)
class Store:
    jobs_dir: Path

    def job(self, job_id: str) -> JobPaths:
        if not is_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return JobPaths(self.jobs_dir / "jobs" / job_id)

    def voice_dir(self, voice_id: str) -> Path:
        if not is_id(voice_id):
            raise ValueError(f"not a voice id: {voice_id!r}")
        return self.jobs_dir / "voices" / voice_id

    @property
    def voices_root(self) -> Path:
        return self.jobs_dir / "voices"
