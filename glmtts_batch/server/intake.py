"""Accepting a job: uploaded file names, the task file's prompt paths, limits, `check`.

A task file arrives with the prompt files it names, and is checked before it is
queued: every line must pass `check_tasks`, and every `prompt_audio` must be the bare
name of a file uploaded with it. Server paths, `..`, folders, `~` and absolute paths
are refused, so a job can read nothing on the server but its own uploads. A bad file
is answered with the per-line report `glmtts-batch check` prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from glmtts_batch.api import LineProblem, check_tasks
from glmtts_batch.errors import InvalidTaskError, RequestRejected
from glmtts_batch.server.config import ServerLimits
from glmtts_batch.server.store import TASK_FILE_NAME, JobPaths
from glmtts_batch.tasks import (
    ALIASES,
    MAX_LINE_BYTES,
    check_output_name,
    is_skippable,
    name_key,
)

_PROMPT_KEYS = ("prompt_audio",) + tuple(a for a, c in ALIASES.items() if c == "prompt_audio")
_TEXT_KEYS = ("input_text",) + tuple(a for a, c in ALIASES.items() if c == "input_text")
_COPY_CHUNK = 1 << 20


def limit_error(what: str, limit: int, unit: str, option: str) -> RequestRejected:
    status = 413 if unit == "bytes" else 400
    return RequestRejected(status, f"{what} exceeds the limit of {limit} {unit} ({option})", limit=option)


def check_upload_name(name: str | None) -> str:
    """An uploaded file keeps its name only if it is a plain, portable file name."""
    if not name:
        raise RequestRejected(400, "every uploaded file needs a file name")
    try:
        check_output_name(name)  # the same rules as a WAV name: no separators, dots, devices, ...
    except InvalidTaskError as e:
        raise RequestRejected(400, f"uploaded file name {name!r} is not allowed: {str(e).split(': ', 1)[-1]}") from None
    if name.startswith("~"):
        raise RequestRejected(400, f"uploaded file name {name!r} is not allowed: it starts with '~'")
    if name_key(name) == name_key(TASK_FILE_NAME):
        raise RequestRejected(400, f"uploaded file name {name!r} is reserved for the task file")
    return name


def save_upload(source: BinaryIO, target: Path, limits: ServerLimits) -> int:
    """Copy an upload to `target` (exclusively created), enforcing the per-file limit."""
    written = 0
    with open(target, "xb") as out:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > limits.max_file_bytes:
                raise limit_error(f"uploaded file {target.name!r}", limits.max_file_bytes, "bytes", "--max-file-mb")
            out.write(chunk)
    return written


def write_json_tasks(tasks: Any, target: Path, limits: ServerLimits) -> None:
    """A JSON body's `tasks` list, written as the JSONL task file the runner reads."""
    if not isinstance(tasks, list):
        raise RequestRejected(400, "'tasks' must be a list of task objects")
    if len(tasks) > limits.max_lines:
        raise limit_error("the number of tasks", limits.max_lines, "lines", "--max-lines")
    with open(target, "x", encoding="utf-8") as f:
        # ASCII JSON: a lone surrogate reaches `check` as an escape and is reported for its line
        f.writelines(json.dumps(task, ensure_ascii=True) + "\n" for task in tasks)


def validate_job_input(paths: JobPaths, uploaded: Iterable[str], limits: ServerLimits) -> int:
    """Check the saved task file; returns its number of tasks or raises `RequestRejected` (400)."""
    uploaded = set(uploaded)
    task_lines, ours = _prescan(paths.task_file, uploaded, limits)
    if task_lines > limits.max_lines:
        raise limit_error("the task file", limits.max_lines, "lines", "--max-lines")
    report = check_tasks(paths.task_file, base_dir=paths.input)  # never the server's working directory
    problems = {p.line: p for p in report.problems}
    problems.update(ours)  # a path trick is the line's real problem, whatever `check` saw
    if not problems:
        return report.valid
    hidden = str(paths.input) + os.sep  # messages never show where the server keeps uploads
    listed = [
        LineProblem(p.line, p.output_name, p.field, p.type, p.message.replace(hidden, ""))
        for _, p in sorted(problems.items())
    ]
    raise RequestRejected(
        400,
        "the task file has invalid lines; nothing was queued",
        valid=report.valid + report.invalid - len(listed),
        invalid=len(listed),
        problems=[asdict(p) for p in listed],
        report="".join(f"{format_problem(p)}\n" for p in listed),
    )


def format_problem(p: LineProblem) -> str:
    """One line as `glmtts-batch check` prints it."""
    where = f" [{p.field}]" if p.field else ""
    return f"line {p.line}: invalid{where} {p.type}: {p.message}"


def _prescan(task_file: Path, uploaded: set[str], limits: ServerLimits) -> tuple[int, dict[int, LineProblem]]:
    """Task line count, and the lines whose prompt path or text length the server refuses."""
    problems: dict[int, LineProblem] = {}
    count = 0
    for line, obj in _objects(task_file):
        count += 1
        if not isinstance(obj, dict):
            continue
        name = obj.get("output_name", obj.get("uttid"))
        name = (
            str(line)
            if name is None
            else str(name)
            if isinstance(name, (str, int)) and not isinstance(name, bool)
            else None
        )
        for key in _PROMPT_KEYS:
            raw = obj.get(key)
            if isinstance(raw, str):
                why = _prompt_path_problem(raw, uploaded)
                if why:
                    problems[line] = LineProblem(
                        line, name, key, "InvalidTaskError", f"line {line}: {key} {raw!r} {why}"
                    )
        for key in _TEXT_KEYS:
            text = obj.get(key)
            if isinstance(text, str) and len(text) > limits.max_text_chars and line not in problems:
                problems[line] = LineProblem(
                    line,
                    name,
                    key,
                    "InvalidTaskError",
                    f"line {line}: {key} has {len(text)} characters, over the limit of "
                    f"{limits.max_text_chars} (--max-text-chars)",
                )
    return count, problems


def _prompt_path_problem(raw: str, uploaded: set[str]) -> str | None:
    if raw in uploaded:
        return None
    if os.path.isabs(raw) or raw.startswith(("~", "\\")) or (len(raw) > 1 and raw[1] == ":"):
        return "is an absolute path; name a file uploaded with the task file"
    parts = raw.replace("\\", "/").split("/")
    if ".." in parts:
        return "contains '..'; name a file uploaded with the task file"
    if len(parts) > 1:
        return "names a folder; prompt_audio must be the bare name of a file uploaded with the task file"
    listed = ", ".join(sorted(map(repr, uploaded))) or "none"
    return f"names no file uploaded with the task file (uploaded: {listed})"


def _objects(task_file: Path) -> Iterator[tuple[int, Any]]:
    """(line, decoded JSON) for each task line; lines `check` will reject are yielded as None."""
    with open(task_file, "rb") as f:
        line = 0
        while raw := f.readline(MAX_LINE_BYTES + 2):
            line += 1
            while not raw.endswith(b"\n") and (rest := f.readline(1 << 16)):
                raw = b""  # an over-long line: `check` reports it; drain it here
                if rest.endswith(b"\n"):
                    break
            text = raw.decode("utf-8", "replace").lstrip("\ufeff")
            if raw and is_skippable(text):
                continue
            try:
                yield line, json.loads(text)
            except ValueError:
                yield line, None
