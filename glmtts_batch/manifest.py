"""The manifest, the resume journal and summary.json.

manifest.jsonl has exactly one record per non-blank, non-comment task line, in
input order. Every record has the same keys (null where not applicable):

    line          1-based physical line number in the task file (or position in the list)
    output_name   WAV name without ".wav" (null when the line had no usable name)
    status        ok | failed | invalid | skipped
    wav           relative path of the audio file (ok, and skipped with resumed=true); a WAV
                  with the default writer, the key keeps its name for other formats
    duration_s, sample_rate, sha256   of that WAV
    engine, model engine name and model identity (EngineInfo)
    seed          effective seed: the task's `seed`, else the run seed
    elapsed_s     wall time spent on this line in this run
    resumed       true when the WAV was carried over from an earlier run
    reason        why a line was skipped: "resumed", "max_failures" or "interrupted"
    error         {type, message, field} for failed and invalid lines
    text, prompt_audio, prompt_text, phoneme   the task's inputs (prompt_audio as found)
    prompt_base   where a relative prompt_audio was found: "task_file_dir" (the task
                  file's folder), "working_dir" (the working directory, e.g. upstream's
                  own task files run from upstream's folder) or "base_dir" (--base-dir);
                  null for an absolute path or no prompt
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
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .digests import sha256_file
from .engines.base import EngineInfo, Synthesis
from .outputs import STATE_DIR, AudioInfo, fsync_dir, temp_path, write_bytes_atomic
from .tasks import InvalidLine, Task, name_key
from .writers import AudioWriter

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.json"
JOURNAL_NAME = "journal.jsonl"
JOURNAL_VERSION = 1

Status = Literal["ok", "failed", "invalid", "skipped"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "invalid", "skipped")
SkipReason = Literal["resumed", "max_failures", "interrupted"]


@dataclass
class Record:
    """One manifest line. Field order is the JSON key order; see the module docstring.

    Build one with the builder for its status (`ok_record`, `failed_record`, ...):
    they fill exactly the fields that status has.
    """

    line: int
    output_name: str | None
    status: Status
    wav: str | None = None  # the audio file, whatever its format: the key name is the interface
    duration_s: float | None = None
    sample_rate: int | None = None
    sha256: str | None = None
    engine: str | None = None
    model: str | None = None
    seed: int | None = None
    elapsed_s: float | None = None
    resumed: bool = False
    reason: SkipReason | None = None
    error: dict[str, Any] | None = None
    text: str | None = None
    prompt_audio: str | None = None
    prompt_base: str | None = None  # tasks.TASK_FILE_DIR | WORKING_DIR | BASE_DIR
    prompt_text: str | None = None
    phoneme: bool | None = None
    warnings: list[str] | None = None
    details: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        # Not asdict(): it would deep-copy the engine's details for nothing.
        return {f.name: getattr(self, f.name) for f in fields(self)}


RECORD_KEYS = tuple(f.name for f in fields(Record))
# Fields that legitimately differ between a resumed record and the original one.
RUN_DEPENDENT_KEYS = ("status", "resumed", "reason", "elapsed_s")
# What a resumed record carries over from the journaled ok record.
CARRIED_KEYS = ("wav", "duration_s", "sample_rate", "sha256", "warnings", "details")


def effective_seed(task: Task | InvalidLine, run_seed: int) -> int:
    return task.seed if task.seed is not None else run_seed


def _task_record(task: Task, status: Status, info: EngineInfo, run_seed: int) -> Record:
    return Record(
        line=task.line,
        output_name=task.output_name,
        status=status,
        engine=info.name,
        model=info.model,
        seed=effective_seed(task, run_seed),
        text=task.text,
        prompt_audio=str(task.prompt_audio) if task.prompt_audio else None,
        prompt_base=task.prompt_base,
        prompt_text=task.prompt_text,
        phoneme=task.phoneme,
        warnings=[],
        details={},
    )


def ok_record(task: Task, info: EngineInfo, run_seed: int, file_name: str, audio: AudioInfo, synthesis: Synthesis) -> Record:
    record = _task_record(task, "ok", info, run_seed)
    record.wav = file_name
    record.duration_s = audio.duration_s
    record.sample_rate = audio.sample_rate
    record.sha256 = audio.sha256
    record.warnings = [str(w) for w in synthesis.warnings]
    record.details = dict(synthesis.details)
    return record


def failed_record(task: Task, info: EngineInfo, run_seed: int, exc: BaseException, *, type_name: str | None = None) -> Record:
    record = _task_record(task, "failed", info, run_seed)
    record.error = error_dict(exc, type_name=type_name)
    return record


def skipped_record(task: Task, info: EngineInfo, run_seed: int, reason: SkipReason) -> Record:
    """A valid line that was not run (max_failures reached, or the run was interrupted)."""
    record = _task_record(task, "skipped", info, run_seed)
    record.reason = reason
    return record


def resumed_record(task: Task, info: EngineInfo, run_seed: int, journaled: Mapping[str, Any]) -> Record:
    """A line whose file an earlier run wrote: the journaled ok record's audio fields carry over."""
    record = _task_record(task, "skipped", info, run_seed)
    for key in CARRIED_KEYS:
        setattr(record, key, journaled.get(key))
    record.resumed = True
    record.reason = "resumed"
    return record


def invalid_record(item: InvalidLine, info: EngineInfo, run_seed: int) -> Record:
    return Record(
        line=item.line,
        output_name=item.output_name,
        status="invalid",
        engine=info.name,
        model=info.model,
        seed=effective_seed(item, run_seed),
        error=error_dict(item.error),
    )


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

    def write(self, record: Record) -> None:
        self._f.write(dumps(record.to_dict()) + "\n")

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


def resume_key(task: Task, seed: int, info: EngineInfo, prompt_sha256: str | None, writer: AudioWriter) -> str:
    """Everything that determines a task's output file. Equal keys: the old file can be reused.

    Run-wide settings that shape the audio come from the engine itself
    (`EngineInfo.settings`, built from its configuration dataclasses): only the engine
    knows which of its options matter, so e.g. `--dtype` does not redo espeak tasks.
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
        "format": writer.format,
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
        record: dict[str, Any] = entry["record"]
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

    def append(self, key: str, record: Record) -> None:
        name = record.output_name
        if name is None:
            raise ValueError("only a record with an output_name can be journaled")
        entry = {"v": JOURNAL_VERSION, "key": key, "output_name": name, "record": record.to_dict()}
        offset = self._append.tell()
        self._append.write((dumps(entry) + "\n").encode("utf-8"))
        self._append.flush()
        if self._fsync:
            os.fsync(self._append.fileno())
        self._index[name_key(name)] = offset

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


# summary.json ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Running totals over the records written so far."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    resumed: int = 0
    audio_seconds: float = 0.0  # every file in the manifest (ok + resumed)

    def add(self, record: Record) -> None:
        self.counts[record.status] += 1
        self.resumed += record.resumed
        self.audio_seconds += record.duration_s or 0.0


@dataclass(frozen=True)
class Summary:
    """What a run did. The same numbers are in summary.json."""

    ok: int
    failed: int
    invalid: int
    skipped: int
    resumed: int  # skipped because an earlier run's file was reused
    audio_seconds: float  # all files in the manifest (ok + resumed)
    wall_seconds: float
    out_dir: Path
    manifest: Path
    summary: Path
    zip: Path | None
    exit_code: int
    interrupted: str | None = None  # "SIGINT" / "SIGTERM"
    stopped_early: bool = False  # max_failures reached

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.invalid + self.skipped

    @property
    def counts(self) -> dict[str, int]:
        return {"ok": self.ok, "failed": self.failed, "invalid": self.invalid, "skipped": self.skipped}


@dataclass(frozen=True)
class RunFacts:
    """What summary.json says about the run besides the `Summary` numbers."""

    engine: EngineInfo
    engine_stats: Mapping[str, Any]
    seed: int
    resume: bool
    max_failures: int | None
    task_source: str | None
    started_at: str
    finished_at: str


def make_summary(
    tally: Tally,
    *,
    out_dir: Path,
    wall_seconds: float,
    zip_path: Path | None,
    exit_code: int,
    interrupted: str | None,
    stopped_early: bool,
) -> Summary:
    return Summary(
        ok=tally.counts["ok"],
        failed=tally.counts["failed"],
        invalid=tally.counts["invalid"],
        skipped=tally.counts["skipped"],
        resumed=tally.resumed,
        audio_seconds=round(tally.audio_seconds, 3),
        wall_seconds=round(wall_seconds, 3),
        out_dir=out_dir,
        manifest=out_dir / MANIFEST_NAME,
        summary=out_dir / SUMMARY_NAME,
        zip=zip_path,
        exit_code=exit_code,
        interrupted=interrupted,
        stopped_early=stopped_early,
    )


def summary_document(summary: Summary, facts: RunFacts) -> dict[str, Any]:
    """summary.json's content; README documents the keys."""
    return {
        "counts": summary.counts,
        "total": summary.total,
        "resumed": summary.resumed,
        "not_run": summary.skipped - summary.resumed,
        "audio_seconds": summary.audio_seconds,
        "wall_seconds": summary.wall_seconds,
        "engine": engine_info_dict(facts.engine),
        "engine_stats": dict(facts.engine_stats),
        "seed": facts.seed,
        "resume": facts.resume,
        "max_failures": facts.max_failures,
        "stopped_early": summary.stopped_early,
        "interrupted": summary.interrupted,
        "task_source": facts.task_source,
        "out_dir": str(summary.out_dir),
        "manifest": summary.manifest.name,
        "zip": summary.zip.name if summary.zip else None,
        "started_at": facts.started_at,
        "finished_at": facts.finished_at,
        "exit_code": summary.exit_code,
    }


def write_summary(summary: Summary, facts: RunFacts, *, fsync: bool = True) -> Path:
    text = dumps(summary_document(summary, facts), indent=2, separators=None) + "\n"
    write_bytes_atomic(summary.summary, text.encode("utf-8"), fsync=fsync)
    return summary.summary


def engine_info_dict(info: EngineInfo) -> dict[str, Any]:
    # Not asdict(): `settings` may be any Mapping (e.g. a read-only proxy), written as a dict.
    return {f.name: getattr(info, f.name) for f in fields(info)} | {"settings": dict(info.settings)}
