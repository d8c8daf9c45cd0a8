"""The files around a run, as the batch-loop tests write and read them: tasks in, manifest out."""

from __future__ import annotations

import json
from pathlib import Path


def write_tasks(path: Path, tasks: list[dict | str]) -> Path:
    """A JSONL task file: dicts as JSON lines, strings written as they are (bad lines)."""
    lines = [t if isinstance(t, str) else json.dumps(t, ensure_ascii=False) for t in tasks]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
