"""The manifest, the resume journal and summary.json.

manifest.jsonl has exactly one record per non-blank, non-comment task line, in
input order. Every record has the same keys (null where not applicable):

    line          1-based physical line number in the task file (or position in the list)
    output_name   WAV name without ".wav" (null when the line had no usable name)
    status        ok | failed | invalid | skipped
    wav           file name of the audio file (ok records); a WAV with the default
                  writer, the key keeps its name for other formats
    duration_s, sample_rate, sha256   of that WAV
    engine, model engine name and model identity (EngineInfo)
    seed          effective seed: the task's `seed`, else the run seed
    elapsed_s     wall time spent on this line in this run
    resumed       true when the WAV was carried over from an earlier run
    reason        why a line was skipped: "max_failures" or "interrupted"
    error         {type, message, field} for failed and invalid lines
    text, prompt_audio, prompt_text, phoneme   the task's inputs (prompt_audio as found)
    prompt_base   where a relative prompt_audio was found: "task_file_dir" (the task
                  file's folder), "working_dir" (the working directory, e.g. upstream's
                  own task files run from upstream's folder) or "base_dir" (--base-dir);
                  null for an absolute path or no prompt
    warnings, details                          from the engine's Synthesis

Status semantics (the manifest describes the outputs, not the run history):
    ok       the task's WAV is there and matches its inputs: synthesised in this run, or
             (`resumed: true`) by an earlier one, whose journaled record's
             wav/sha256/duration/warnings/details are carried over, so a job that took
             several runs has the same manifest as one uninterrupted run apart from
             `resumed` and `elapsed_s` (RUN_DEPENDENT_KEYS).
    failed   the line was valid but synthesis (or writing) raised; the run went on. Also
             when a file this tool did not write already has the task's WAV name
             (error field `output_name`): it is never replaced.
    invalid  the line failed validation (bad JSON, wrong type, unsafe name, ...).
    skipped  not run: `reason` "max_failures" or "interrupted"; no wav.

The manifest is streamed to a temporary file and renamed into place at the end.

The journal (`.glmtts-batch/journal.jsonl`) is append-only: once a WAV's temp
file is complete and just before it is renamed into place, one line recording
the WAV's resume key and its full ok record is appended, flushed and fsynced.
A later run looks names up there to resume (only when the WAV on disk still has
the recorded sha256, so an entry whose rename never happened is harmless).
Names are looked up exactly (case and Unicode form included): the journal knows
`A.wav`, not a user's `a.wav`. Every entry starts on a fresh line: a torn last
line (killed or out of disk space mid-write) is cut off when the journal opens and
after a failed append, and if it cannot be cut, the next append starts with a line
break; an unparsable line is skipped, keeping the good ones (an entry glued after
torn bytes is recovered). Names read back (`output_name`, `wav`) are checked like
a task's output_name, so a hand-edited entry cannot point outside the folder.
Journaling before the rename means every WAV this tool put under a final name is
known to the journal; the WAV's own tag (writers.FileTag) tells the same without
it (see runner.py).

Records are written as UTF-8 JSON; a string that cannot be encoded (a lone
surrogate, e.g. from a file name in a non-UTF-8 locale) is written as a JSON \\u escape rather
than crashing the writer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .digests import sha256_file
from .engines.base import EngineInfo, Synthesis
from .errors import InvalidTaskError
from .nameindex import NameIndex
from .outputs import (
    AudioInfo,
    create_exclusive,
    ensure_state_dir,
    fsync_dir,
    open_nofollow,
    temp_path,
    write_bytes_atomic,
)
from .tasks import InvalidLine, Task, check_output_name
from .writers import TOOL_NAME, AudioWriter

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.json"
JOURNAL_NAME = "journal.jsonl"
JOURNAL_VERSION = 1

Status = Literal["ok", "failed", "invalid", "skipped"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "invalid", "skipped")
SkipReason = Literal["max_failures", "interrupted"]


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
RUN_DEPENDENT_KEYS = ("resumed", "elapsed_s")
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


def ok_record(
    task: Task, info: EngineInfo, run_seed: int, file_name: str, audio: AudioInfo, synthesis: Synthesis
) -> Record:
    record = _task_record(task, "ok", info, run_seed)
    record.wav = file_name
    record.duration_s = audio.duration_s
    record.sample_rate = audio.sample_rate
    record.sha256 = audio.sha256
    record.warnings = [str(w) for w in synthesis.warnings]
    record.details = dict(synthesis.details)
    return record


def failed_record(
    task: Task, info: EngineInfo, run_seed: int, exc: BaseException, *, type_name: str | None = None
) -> Record:
    record = _task_record(task, "failed", info, run_seed)
    record.error = error_dict(exc, type_name=type_name)
    return record


def skipped_record(task: Task, info: EngineInfo, run_seed: int, reason: SkipReason) -> Record:
    """A valid line that was not run (max_failures reached, or the run was interrupted)."""
    record = _task_record(task, "skipped", info, run_seed)
    record.reason = reason
    return record


def resumed_record(task: Task, info: EngineInfo, run_seed: int, journaled: Mapping[str, Any]) -> Record:
    """An ok line whose file an earlier run wrote: the journaled ok record's audio fields carry over."""
    record = _task_record(task, "ok", info, run_seed)
    for key in CARRIED_KEYS:
        setattr(record, key, journaled.get(key))
    record.warnings = list(record.warnings or [])
    record.details = dict(record.details or {})
    record.resumed = True
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
        self._f = os.fdopen(create_exclusive(self._tmp), "w", encoding="utf-8", newline="\n")

    def write(self, record: Record) -> None:
        self._f.write(dumps(record.to_dict()) + "\n")

    def commit(self, before_replace: Callable[[], None] | None = None) -> Path:
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())
        self._f.close()
        if before_replace is not None:
            before_replace()
        os.replace(self._tmp, self.path)
        if self._fsync:
            fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            try:
                self._f.close()
            except OSError:
                pass  # closing flushes the buffer, which fails again on a full disk; the file goes anyway
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
    entry itself is re-read when that name comes up. The file is opened without
    following links (a link planted at its name is refused with a `RunError`).
    """

    def __init__(self, out_dir: Path, *, fsync: bool = True) -> None:
        self.out_dir = out_dir
        self.path = ensure_state_dir(out_dir) / JOURNAL_NAME
        self._fsync = fsync
        # exact output_name -> offset of its latest entry; digests keep memory flat per line, and
        # every use re-reads the entry and compares the exact name, so a collision is harmless
        self._index = NameIndex()
        self._fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        self._fresh_line = True  # the file ends with a line break (or is empty)
        try:
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    def _load(self) -> None:
        offset = 0
        for raw in _lines(self._fd):
            if not raw.endswith(b"\n"):
                break  # torn last line from a killed run
            found = parse_journal_line(raw)
            if found is not None:
                start, entry = found
                self._index[entry["output_name"]] = offset + start
            offset += len(raw)
        self._cut(offset)

    def _cut(self, good_end: int) -> None:
        """Drop a torn tail after `good_end`; if that fails, the next append starts a fresh line."""
        size = os.fstat(self._fd).st_size
        if size == good_end:
            self._fresh_line = True
            return
        try:
            os.ftruncate(self._fd, good_end)
            self._fresh_line = True
        except OSError:
            self._fresh_line = False

    def _entry(self, output_name: str | None) -> dict[str, Any] | None:
        """This exact name's latest entry, re-read from the file."""
        offset = self._index.get(output_name) if output_name is not None else None
        if offset is None:
            return None
        found = parse_journal_line(_read_line(self._fd, offset))
        if found is None or found[1]["output_name"] != output_name:
            return None
        return found[1]

    def lookup(self, task: Task, key: str, file_name: str) -> dict[str, Any] | None:
        """The earlier ok record for this task if its file `file_name` is still there, unchanged."""
        entry = self._entry(task.output_name)
        if entry is None:
            return None
        record: dict[str, Any] = entry["record"]
        if entry["key"] != key or record.get("wav") != file_name:
            return None
        try:
            if not (self.out_dir / file_name).is_file() or sha256_file(self.out_dir / file_name) != record.get(
                "sha256"
            ):
                return None
        except OSError:
            return None
        return record

    def knows(self, output_name: str) -> bool:
        """Whether an earlier (or this) run journaled a file under exactly this name."""
        return self._entry(output_name) is not None

    def append(self, key: str, record: Record) -> None:
        name = record.output_name
        if name is None:
            raise ValueError("only a record with an output_name can be journaled")
        entry = {"v": JOURNAL_VERSION, "key": key, "output_name": name, "record": record.to_dict()}
        data = (dumps(entry) + "\n").encode("utf-8")
        if not self._fresh_line:
            data = b"\n" + data
        start = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, data)
            if self._fsync:
                os.fsync(self._fd)
        except BaseException:
            self._cut(start)  # e.g. the disk filled mid-line: no torn bytes before the next entry
            raise
        self._fresh_line = True
        self._index[name] = start + (data[0] == 0x0A)

    def close(self) -> None:
        os.close(self._fd)


def _lines(fd: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines (the last one possibly without its line break), read from the start."""
    pending = b""
    offset = 0
    while block := os.pread(fd, chunk, offset):
        offset += len(block)
        pending += block
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def _read_line(fd: int, offset: int, chunk: int = 1 << 16) -> bytes:
    parts = []
    while block := os.pread(fd, chunk, offset):
        cut = block.find(b"\n")
        if cut >= 0:
            parts.append(block[: cut + 1])
            break
        parts.append(block)
        offset += len(block)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def parse_journal_line(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    """(offset of the entry in the line, entry), or None. An entry glued after torn bytes
    (an older version appended after a failed write) is found at its own start."""
    entry = _parse_entry(raw)
    if entry is not None:
        return 0, entry
    start = raw.rfind(b'{"v":')
    if start > 0:
        entry = _parse_entry(raw[start:])
        if entry is not None:
            return start, entry
    return None


def _parse_entry(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if (
        not isinstance(entry, dict)
        or entry.get("v") != JOURNAL_VERSION
        or not isinstance(entry.get("key"), str)
        or not isinstance(entry.get("output_name"), str)
        or not isinstance(entry.get("record"), dict)
    ):
        return None
    record = entry["record"]
    try:
        # Names read back from the state are checked like a task's: a hand-edited
        # "../secret.txt" must not be listed, hashed or zipped.
        check_output_name(entry["output_name"])
        if record.get("output_name") != entry["output_name"] or not isinstance(record.get("wav"), str):
            return None
        check_output_name(record["wav"])
    except InvalidTaskError:
        return None
    return entry


# summary.json ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Running totals over the records written so far."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    resumed: int = 0
    audio_seconds: float = 0.0  # every file in the manifest

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
    resumed: int  # of the ok tasks, those whose file an earlier run wrote
    audio_seconds: float  # all files in the manifest
    wall_seconds: float
    out_dir: Path
    manifest: Path
    summary: Path
    zip: Path | None
    exit_code: int
    interrupted: str | None = None  # "SIGINT" / "SIGTERM"
    stopped_early: bool = False  # max_failures reached
    # Physical lines after the last line with a record, when the run stopped reading
    # (a signal, a task source error): 0 when the input was read to its end, None when
    # unknown (a pipe or device, an iterable without len(), a file too large to count).
    unread_lines: int | None = 0
    error: dict[str, str] | None = None  # the run-level error that stopped it: type, message

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
    batch_size: int = 1  # runnable tasks per engine call (not part of the resume key)


def make_summary(
    tally: Tally,
    *,
    out_dir: Path,
    wall_seconds: float,
    zip_path: Path | None,
    exit_code: int,
    interrupted: str | None,
    stopped_early: bool,
    unread_lines: int | None = 0,
    error: dict[str, str] | None = None,
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
        unread_lines=unread_lines,
        error=error,
    )


def summary_document(summary: Summary, facts: RunFacts) -> dict[str, Any]:
    """summary.json's content; README documents the keys."""
    return {
        "counts": summary.counts,
        "total": summary.total,
        "resumed": summary.resumed,
        "not_run": summary.skipped,
        "audio_seconds": summary.audio_seconds,
        "wall_seconds": summary.wall_seconds,
        "engine": engine_info_dict(facts.engine),
        "engine_stats": dict(facts.engine_stats),
        "seed": facts.seed,
        "resume": facts.resume,
        "max_failures": facts.max_failures,
        "batch_size": facts.batch_size,
        "stopped_early": summary.stopped_early,
        "interrupted": summary.interrupted,
        "unread_lines": summary.unread_lines,
        "error": summary.error,
        "task_source": facts.task_source,
        "out_dir": str(summary.out_dir),
        "manifest": summary.manifest.name,
        "zip": summary.zip.name if summary.zip else None,
        "started_at": facts.started_at,
        "finished_at": facts.finished_at,
        "exit_code": summary.exit_code,
        "generator": f"{TOOL_NAME} {__version__}",  # how a later run knows the file is its own
    }


def summary_bytes(summary: Summary, facts: RunFacts) -> bytes:
    return (dumps(summary_document(summary, facts), indent=2, separators=None) + "\n").encode("utf-8")


def write_summary(summary: Summary, facts: RunFacts, *, fsync: bool = True) -> Path:
    write_bytes_atomic(summary.summary, summary_bytes(summary, facts), fsync=fsync)
    return summary.summary


def engine_info_dict(info: EngineInfo) -> dict[str, Any]:
    # Not asdict(): `settings` may be any Mapping (e.g. a read-only proxy), written as a dict.
    return {f.name: getattr(info, f.name) for f in fields(info)} | {"settings": dict(info.settings)}
