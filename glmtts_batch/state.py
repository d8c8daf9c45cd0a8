"""Whose output folder this is, and which of its files the tool may replace.

`.glmtts-batch/owner.json` records the job that owns the folder (the task file's
resolved path and its (st_dev, st_ino), or `MAPPINGS_OWNER` for a Python-API run
from mappings) and the names of the run files (manifest, summary, zip) the tool
wrote there. A run of another task file is refused with exit 2 unless it is
started with `adopt` (`--adopt`), which makes it the owner; the same task file
moved or renamed (same identity) or rewritten in place (same path) is the same job.

A run file is written only where the tool wrote it before or nothing exists
(`check_run_file`): its name is in owner.json, or the file itself says the tool
wrote it (a manifest whose first line is a record, a summary with our `generator`,
a zip with our archive comment), so a folder whose state was lost still works.
The task file and the prompt files are never targets (compared by (st_dev, st_ino)).
Anything else at such a name is a user's file: the run stops with `RunError` naming it.

A folder written by a version without owner.json (its journal exists, the owner
file does not) is adopted as it is, run files included.

Audio files are the tool's when the journal knows exactly their name, or when they
carry the tool's tag (`writers.FileTag`): `replace_refusal` says why a file may not be
replaced (a user's file, a link, the task file or a prompt), and `tagged_audio` reads
back a tagged file whose resume key matches, which is how a lost journal is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from .errors import RunError
from .manifest import JOURNAL_NAME, RECORD_KEYS, dumps
from .outputs import ZIP_COMMENT, ensure_state_dir, fsync_dir, open_nofollow, write_bytes_atomic, zip_comment
from .writers import TOOL_NAME, AudioWriter

OWNER_NAME = "owner.json"
OWNER_VERSION = 1
MAPPINGS_OWNER = "<mappings>"  # the owner name of a run_batch call given task mappings
_MAX_HEAD = 4 << 20  # how much of a manifest's first line is read to recognise it

FileId = tuple[int, int]  # (st_dev, st_ino)


def file_id(path: str | os.PathLike[str], *, follow: bool = True) -> FileId | None:
    """The (st_dev, st_ino) of what `path` names, or None when it does not exist or cannot be read."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class JobId:
    """Which job a run is: its task file (resolved path + identity) or `MAPPINGS_OWNER`."""

    name: str
    dev: int | None = None
    ino: int | None = None

    @classmethod
    def of_task_file(cls, path: Path, st: os.stat_result) -> JobId:
        if not stat.S_ISREG(st.st_mode):  # a pipe: /dev/stdin resolves to a new name every run
            return cls(os.path.abspath(path))
        return cls(str(path.resolve()), st.st_dev, st.st_ino)

    @property
    def file(self) -> FileId | None:
        return (self.dev, self.ino) if self.dev is not None and self.ino is not None else None

    def same_job(self, other: JobId) -> bool:
        return self.name == other.name or (self.file is not None and self.file == other.file)

    def to_dict(self) -> dict[str, Any]:
        return {"task_source": self.name, "dev": self.dev, "ino": self.ino}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobId | None:
        name, dev, ino = d.get("task_source"), d.get("dev"), d.get("ino")
        if not isinstance(name, str) or not all(v is None or isinstance(v, int) for v in (dev, ino)):
            return None
        return cls(name, dev, ino)


class FolderState:
    """owner.json: the folder's owner and the run files the tool wrote (call under the folder lock)."""

    def __init__(self, out_dir: Path, *, fsync: bool = True) -> None:
        self.out_dir = out_dir
        self.state_dir = ensure_state_dir(out_dir)
        self.path = self.state_dir / OWNER_NAME
        self._fsync = fsync
        self.owner: JobId | None = None
        self.files: set[str] = set()
        self._legacy = False
        self._load()

    def _load(self) -> None:
        try:
            fd = open_nofollow(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self._legacy = os.path.lexists(self.state_dir / JOURNAL_NAME)
            return
        except OSError as e:
            raise RunError(f"cannot read {str(self.path)!r}: {e.strerror or e}") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_MAX_HEAD)
        try:
            doc = json.loads(raw)
        except ValueError:
            return  # damaged: the next run claims the folder again and rewrites it
        if not isinstance(doc, dict):
            return
        self.owner = JobId.from_dict(doc.get("owner") or {}) if isinstance(doc.get("owner"), dict) else None
        files = doc.get("files")
        if isinstance(files, list):
            self.files = {name for name in files if isinstance(name, str) and "/" not in name}

    def claim(self, job: JobId, *, adopt: bool, run_files: Collection[str]) -> None:
        """Make `job` the owner, or raise `RunError` if another job owns the folder (unless `adopt`)."""
        if self.owner is not None and not self.owner.same_job(job) and not adopt:
            raise RunError(
                f"output folder {str(self.out_dir)!r} belongs to another job (task file {self.owner.name!r}); "
                f"this run's is {job.name!r}. Choose another --out, or pass --adopt (run_batch(adopt=True)) "
                "to let this job take the folder over, replacing that job's files of the same names"
            )
        if self._legacy:
            # Written by a version without owner.json: its run files are the tool's.
            self.files |= {name for name in run_files if os.path.lexists(self.out_dir / name)}
        if self.owner != job or self._legacy:
            self.owner = job
            self._legacy = False
            self._save()

    def register(self, name: str) -> None:
        """Record that the tool writes the run file `name` (called before it is renamed into place)."""
        if name not in self.files:
            self.files.add(name)
            self._save()

    def _save(self) -> None:
        doc = {
            "v": OWNER_VERSION,
            "tool": TOOL_NAME,
            "owner": self.owner.to_dict() if self.owner else None,
            "files": sorted(self.files),
        }
        write_bytes_atomic(self.path, (dumps(doc, indent=2, separators=None) + "\n").encode(), fsync=self._fsync)
        if self._fsync:
            fsync_dir(self.state_dir)

    def check_run_file(self, name: str, *, never: Collection[FileId] = ()) -> None:
        """Raise `RunError` unless the run file `name` may be written: nothing is there, or the
        tool wrote it; and in any case it is not one of the files `never` (task file, prompts)."""
        path = self.out_dir / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise RunError(f"cannot check {str(path)!r}: {e.strerror or e}") from None
        target = file_id(path)
        if target is not None and target in never:
            raise RunError(
                f"{str(path)!r} is this job's task file or a prompt file; glmtts-batch never writes over "
                "its inputs: choose another --out"
            )
        if stat.S_ISREG(st.st_mode) and (name in self.files or _says_ours(path, name)):
            return
        raise RunError(
            f"{str(path)!r} already exists and was not written by glmtts-batch; refusing to replace it "
            "(move it, or choose another --out)"
        )


def _says_ours(path: Path, name: str) -> bool:
    """Whether the file's content shows the tool wrote it (see the module docstring)."""
    try:
        if name.endswith(".zip"):
            comment = zip_comment(path)
            return comment is not None and comment.startswith(ZIP_COMMENT)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            head = f.readline(_MAX_HEAD) if name.endswith(".jsonl") else f.read(_MAX_HEAD)
        doc = json.loads(head)
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    if name.endswith(".jsonl"):
        return tuple(doc) == RECORD_KEYS
    generator = doc.get("generator")
    return isinstance(generator, str) and generator.startswith(TOOL_NAME)


def replace_refusal(path: Path, *, known: bool, writer: AudioWriter, inputs: Collection[FileId]) -> str | None:
    """None when the audio file at `path` may be written: nothing is there, or a regular file
    the tool wrote (`known` to the journal under exactly this name, or tagged by the tool)
    that is not one of `inputs` (the task file, prompts). Otherwise the reason, for the task's error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if (st.st_dev, st.st_ino) in inputs:
        return (
            f"{str(path)!r} is the task file or a prompt file; refusing to write the output over it "
            "(rename the task's output_name or choose another --out)"
        )
    if stat.S_ISREG(st.st_mode) and (known or _tagged_by_us(path, writer)):
        return None
    return (
        f"{str(path)!r} already exists and was not written by glmtts-batch; refusing to replace it "
        "(rename the task's output_name, move the file, or choose another --out)"
    )


def _tagged_by_us(path: Path, writer: AudioWriter) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        tag = writer.read_tag(fd)
    finally:
        os.close(fd)
    return tag is not None and tag.ours


def tagged_audio(path: Path, writer: AudioWriter, key: str, inputs: Collection[FileId]) -> dict[str, Any] | None:
    """The manifest's audio fields of the file at `path` when it is a regular file carrying
    the tool's tag with resume key `key`; else None. Engine details and warnings are not in
    the file, so they come back empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in inputs:
            return None
        tag = writer.read_tag(fd)
        if tag is None or not tag.ours or tag.key != key:
            return None
        digest = hashlib.sha256()
        offset = 0
        while block := os.pread(fd, 1 << 20, offset):
            digest.update(block)
            offset += len(block)
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as f:
            info = sf.info(f)
    except (OSError, RuntimeError, ValueError):
        return None
    finally:
        os.close(fd)
    return {
        "wav": path.name,
        "duration_s": round(info.frames / info.samplerate, 6),
        "sample_rate": info.samplerate,
        "sha256": digest.hexdigest(),
        "warnings": [],
        "details": {},
    }
