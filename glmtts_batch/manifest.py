"""The manifest, the resume journal and summary.json.

manifest.jsonl has exactly one record per non-blank, non-comment task line, in
input order. Every record has the same keys (null where not applicable):

    line          1-based physical line number in the task file (or position in the list)
    output_name   WAV name without ".wav" (null when the line had no usable name)
    status        ok | failed | invalid | skipped
    wav           relative path of the WAV (ok, and skipped with resumed=true)
    duration_s, sample_rate, sha256   of that WAV
    engine, model engine name and model identity (EngineInfo)
    seed          effective seed: the task's `seed`, else the run seed
    elapsed_s     wall time spent on this line in this run
    resumed       true when the WAV was carried over from an earlier run
    reason        why a line was skipped: "resumed", "max_failures" or "interrupted"
    error         {type, message, field} for failed and invalid lines
    text, prompt_audio, prompt_text, phoneme   the task's inputs
    warnings, details                          from the engine's Synthesis

Status semantics:
    ok       synthesised in this run; the WAV is written.
    failed   the line was valid but synthesis (or writing) raised; the run went on. Also
             when a file this tool did not write already has the task's WAV name
             (error field `output_name`): it is never replaced.
    invalid  the line failed validation (bad JSON, wrong type, unsafe name, ...).
    skipped  either resumed (`resumed: true`, `reason: "resumed"`: an earlier run
             wrote a WAV whose hash the journal recorded for these exact inputs;
             wav/sha256/duration/details are carried over) or not run
             (`reason: "max_failures"` or `"interrupted"`; no wav).

The manifest is streamed to a temporary file and renamed into place at the end.

The journal (`.glmtts-batch/journal.jsonl`) is append-only: once a WAV's temp
file is complete and just before it is renamed into place, one line recording
the WAV's resume key and its full ok record is appended, flushed and fsynced.
A later run looks names up there to resume (only when the WAV on disk still has
the recorded sha256, so an entry whose rename never happened is harmless); a
torn last line (killed mid-write) is cut off when the journal opens. Journaling
before the rename means every WAV this tool ever put under a final name is known
to the journal, which is how a run tells its own WAVs (free to overwrite) from a
user's file that happens to have a task's name (never overwritten).

Records are written as UTF-8 JSON; a string that cannot be encoded (a lone
surrogate, e.g. from a file name in a non-UTF-8 locale) is written as a JSON \\u escape rather
than crashing the writer.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from .digests import sha256_file
from .engines.base import EngineInfo
from .outputs import fsync_dir, temp_path, write_bytes_atomic
from .tasks import Task, name_key

STATE_DIR = ".glmtts-batch"
MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.json"
JOURNAL_NAME = "journal.jsonl"
JOURNAL_VERSION = 1

RECORD_KEYS = (
    "line", "output_name", "status", "wav", "duration_s", "sample_rate", "sha256",
    "engine", "model", "seed", "elapsed_s", "resumed", "reason", "error",
    "text", "prompt_audio", "prompt_text", "phoneme", "warnings", "details",
)
# Fields that legitimately differ between a resumed record and the original one.
RUN_DEPENDENT_KEYS = ("status", "resumed", "reason", "elapsed_s")


def new_record(line: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    record["line"] = line
    record["resumed"] = False
    for key, value in fields.items():
        if key not in record:
            raise KeyError(f"unknown manifest field {key!r}")
        record[key] = value
    return record


def error_dict(exc: BaseException, *, type_name: str | None = None) -> dict[str, Any]:
    return {
        "type": type_name or type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "field": getattr(exc, "field", None),
    }


def dumps(record: Any, **kw: Any) -> str:
    """JSON text that is always encodable as UTF-8 (see the module docstring)."""
    kw.setdefault("separators", (",", ":"))
    text = json.dumps(record, ensure_ascii=False, default=_json_default, **kw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate slipped in: ASCII-only JSON spells it as a \u escape instead.
        text = json.dumps(record, ensure_ascii=True, default=_json_default, **kw)
    return text


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars in engine details
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return repr(value)


class ManifestWriter:
    """Streams records to a temp file; `commit` renames it to manifest.jsonl."""

    def __init__(self, out_dir: Path, *, fsync: bool = True) -> None:
        self.path = out_dir / MANIFEST_NAME
        self._tmp = temp_path(self.path)
        self._fsync = fsync
        self._f = open(self._tmp, "w", encoding="utf-8", newline="\n")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(dumps(record) + "\n")

    def commit(self) -> Path:
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        if self._fsync:
            fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def resume_key(task: Task, seed: int, info: EngineInfo, prompt_sha256: str | None) -> str:
    """Everything that determines a task's audio. Equal keys: the old WAV can be reused.

    Run-wide settings that shape the audio (dtypes, a phoneme dictionary's content)
    come from the engine itself (`EngineInfo.settings`): only the engine knows which
    of its options matter, so e.g. `--dtype` does not redo espeak tasks.
    """
    material = {
        "v": JOURNAL_VERSION,
        "text": task.text,
        "prompt_audio_sha256": prompt_sha256,
        "prompt_text": task.prompt_text,
        "seed": seed,
        "phoneme": task.phoneme,
        "engine": info.name,
        "model": info.model,
        "sample_rate": info.sample_rate,
        "output_name": task.output_name,
        "settings": dict(info.settings),
    }
    blob = dumps(material, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class Journal:
    """Append-only record of WAVs written, used to resume after a crash or a re-run.

    Only the byte offset of each name's latest entry is kept in memory; the
    entry itself is re-read when that name comes up.
    """

    def __init__(self, out_dir: Path, *, fsync: bool = True) -> None:
        self.out_dir = out_dir
        state = out_dir / STATE_DIR
        state.mkdir(exist_ok=True)
        self.path = state / JOURNAL_NAME
        self._fsync = fsync
        self._index: dict[str, int] = {}  # name_key -> offset of that name's latest entry
        self._append = open(self.path, "ab+")
        self._load()
        self._read = open(self.path, "rb")

    def _load(self) -> None:
        f = self._append
        f.seek(0)
        offset = 0
        good_end = 0
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn last line from a killed run
            entry = _parse_entry(raw)
            if entry is not None:
                self._index[name_key(entry["output_name"])] = offset
            offset += len(raw)
            good_end = offset
        if good_end != os.fstat(f.fileno()).st_size:
            f.truncate(good_end)
        f.seek(0, os.SEEK_END)

    def lookup(self, task: Task, key: str) -> dict[str, Any] | None:
        """The earlier ok record for this task if its WAV is still there, unchanged."""
        offset = self._index.get(name_key(task.output_name))
        if offset is None:
            return None
        self._read.seek(offset)
        entry = _parse_entry(self._read.readline())
        if entry is None or entry["key"] != key:
            return None
        record = entry["record"]
        wav = self.out_dir / record["wav"]
        try:
            if not wav.is_file() or sha256_file(wav) != record["sha256"]:
                return None
        except OSError:
            return None
        return record

    def knows(self, output_name: str) -> bool:
        """Whether an earlier (or this) run journaled a WAV under this name."""
        return name_key(output_name) in self._index

    def append(self, key: str, record: dict[str, Any]) -> None:
        entry = {"v": JOURNAL_VERSION, "key": key, "output_name": record["output_name"], "record": record}
        offset = self._append.tell()
        self._append.write((dumps(entry) + "\n").encode("utf-8"))
        self._append.flush()
        if self._fsync:
            os.fsync(self._append.fileno())
        self._index[name_key(record["output_name"])] = offset

    def close(self) -> None:
        self._append.close()
        self._read.close()


def _parse_entry(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if (
        not isinstance(entry, dict)
        or entry.get("v") != JOURNAL_VERSION
        or not isinstance(entry.get("output_name"), str)
        or not isinstance(entry.get("record"), dict)
    ):
        return None
    return entry


def write_summary(out_dir: Path, summary: dict[str, Any], *, fsync: bool = True) -> Path:
    path = out_dir / SUMMARY_NAME
    text = dumps(summary, indent=2, separators=None) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)
    return path


def engine_info_dict(info: EngineInfo) -> dict[str, Any]:
    # Not asdict(): `settings` may be any Mapping (e.g. a read-only proxy), written as a dict.
    return {f.name: getattr(info, f.name) for f in fields(info)} | {"settings": dict(info.settings)}

