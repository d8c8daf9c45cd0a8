"""Output files: atomic audio writes (in a `writers.AudioWriter` format), content hashes, the zip.

Every file the worker creates in the output folder is first written under a
temporary name starting with `TEMP_PREFIX` in the same folder, flushed, and
then renamed over the final name, so a crash never leaves a truncated file
under a final name. Temporary files left by a killed run are removed by
`clean_stale_temp_files` at the start of the next run (under the folder lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .writers import DEFAULT_WRITER, AudioWriter
from .zipout import DEFLATED, STORED, StreamingZipWriter

TEMP_PREFIX = ".glmtts-tmp-"
STATE_DIR = ".glmtts-batch"  # the run's own files in the output folder: journal, lock


@dataclass(frozen=True)
class AudioInfo:
    """What the manifest records about a written audio file."""

    sha256: str
    duration_s: float
    samples: int
    sample_rate: int


def write_audio(
    path: Path,
    audio: np.ndarray,
    sample_rate: int,
    *,
    writer: AudioWriter = DEFAULT_WRITER,
    fsync: bool = True,
    before_replace: Callable[[AudioInfo], None] | None = None,
) -> AudioInfo:
    """Atomically write `audio` at `path` in the writer's format; return its hash and length.

    `before_replace(info)` runs once the temp file is complete, just before the rename
    (the batch loop journals the file there); if it raises, `path` is left untouched.
    """
    image, samples = writer.encode(audio, sample_rate)
    info = AudioInfo(
        sha256=hashlib.sha256(image).hexdigest(),
        duration_s=round(samples / sample_rate, 6),
        samples=samples,
        sample_rate=sample_rate,
    )
    with atomic_target(path, fsync=fsync) as tmp:
        tmp.write_bytes(image)
        if before_replace is not None:
            before_replace(info)
    return info


def temp_path(final: Path) -> Path:
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{final.name}")


@contextlib.contextmanager
def atomic_target(path: Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block succeeds, rename it over `path`.

    With `fsync`, the file's data and then the rename are made durable. If the block
    fails, the temporary file is removed and the final name is untouched.
    """
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    with atomic_target(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_stale_temp_files(out_dir: Path) -> list[Path]:
    """Remove temp files a killed run left behind. Call only while holding the folder lock."""
    removed = []
    for entry in os.scandir(out_dir):
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            _unlink_quietly(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def audio_names_from_manifest(manifest: Path) -> Iterable[str]:
    """Relative audio file paths (the `wav` key) of ok and resumed records, in manifest order."""
    with open(manifest, encoding="utf-8") as f:
        for text in f:
            record = json.loads(text)
            if record.get("wav"):
                yield record["wav"]


def write_zip(zip_path: Path, out_dir: Path, manifest: Path, summary: Path, *, fsync: bool = True) -> int:
    """Package the run: every audio file the manifest lists (stored), then manifest and summary (deflated).

    Streams the manifest, and the zip writer spills its central directory to an
    anonymous file in the state folder, so memory stays flat however many WAVs
    there are (see `zipout`). Returns the number of audio files packed.
    """
    from .manifest import STATE_DIR  # here, not at the top: manifest imports this module

    state = out_dir / STATE_DIR
    spill_dir = state if state.is_dir() and not state.is_symlink() else out_dir
    count = 0
    with atomic_target(zip_path, fsync=fsync) as tmp:
        # O_NOFOLLOW: a link planted at the temp name must not redirect the write.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
        with open(fd, "wb") as f, StreamingZipWriter(f, spill_dir=spill_dir) as zf:
            for rel in audio_names_from_manifest(manifest):
                zf.write_file(out_dir / rel, rel, compress=STORED)
                count += 1
            zf.write_file(manifest, manifest.name, compress=DEFLATED)
            zf.write_file(summary, summary.name, compress=DEFLATED)
    return count
