"""Output files: atomic audio writes (in a `writers.AudioWriter` format), content hashes, the zip.

Every file the worker creates in the output folder is first written under a
temporary name starting with `TEMP_PREFIX` in the same folder, flushed, and
then renamed over the final name, so a crash never leaves a truncated file
under a final name. Temporary files left by a killed run are removed by
`clean_stale_temp_files` at the start of the next run (under the folder lock).

Links are never followed for a file the tool writes: a temp file is created with
`O_CREAT | O_EXCL | O_NOFOLLOW` (an entry already at its name, such as a planted
symbolic link, is unlinked first: that removes the link, not its target), state files
are opened with `O_NOFOLLOW` (`open_nofollow`), and the state folder itself must be a
real folder (`ensure_state_dir`). The final rename replaces whatever entry has the
final name, never writing through it.

The zip carries `ZIP_COMMENT` as its archive comment: how a later run recognises a
zip this tool wrote (see `state.py`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import RunError
from .tasks import check_output_name
from .writers import DEFAULT_WRITER, TOOL_NAME, AudioWriter, FileTag
from .zipout import DEFLATED, STORED, StreamingZipWriter

TEMP_PREFIX = ".glmtts-tmp-"
STATE_DIR = ".glmtts-batch"  # the run's own files in the output folder: journal, lock, owner
ZIP_COMMENT = f"written by {TOOL_NAME}".encode()
_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


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
    tag: FileTag | None = None,
    fsync: bool = True,
    before_replace: Callable[[AudioInfo], None] | None = None,
) -> AudioInfo:
    """Atomically write `audio` at `path` in the writer's format (carrying `tag`); return its hash and length.

    `before_replace(info)` runs once the temp file is complete, just before the rename
    (the batch loop journals the file there); if it raises, `path` is left untouched.
    """
    image, samples = writer.encode(audio, sample_rate, tag)
    info = AudioInfo(
        sha256=hashlib.sha256(image).hexdigest(),
        duration_s=round(samples / sample_rate, 6),
        samples=samples,
        sample_rate=sample_rate,
    )
    with atomic_file(path, fsync=fsync) as f:
        f.write(image)
        if before_replace is not None:
            f.flush()
            before_replace(info)
    return info


def temp_path(final: Path) -> Path:
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{final.name}")


def create_exclusive(path: Path) -> int:
    """A new, empty file at `path` (never a link's target); an entry already there is removed first."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    for _ in range(_CREATE_ATTEMPTS - 1):
        try:
            return os.open(path, flags, 0o644)
        except FileExistsError:
            # A leftover or a planted link: unlink removes the entry, not a target. Another
            # one may be planted between the unlink and the open (the batch loop writes in a
            # writer thread while the engine runs), hence a few attempts.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return os.open(path, flags, 0o644)


_CREATE_ATTEMPTS = 8


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` that refuses a symbolic link at `path` with a `RunError` naming it."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise RunError(
                f"{str(path)!r} is a symbolic link; glmtts-batch does not follow links for its own "
                "files (a link there could make it write elsewhere): remove it"
            ) from None
        raise


def ensure_state_dir(out_dir: Path) -> Path:
    """`out_dir/.glmtts-batch`, created if absent; `RunError` if it is a link or not a folder."""
    state = Path(out_dir) / STATE_DIR
    try:
        st = os.lstat(state)
    except FileNotFoundError:
        try:
            os.mkdir(state)
        except FileExistsError:
            pass
        except OSError as e:
            raise RunError(f"cannot create the state folder {str(state)!r}: {e.strerror or e}") from None
        st = os.lstat(state)
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
        raise RunError(
            f"{str(state)!r} is {kind}: glmtts-batch keeps its state (lock, resume journal) "
            "in a real folder there; move or remove it, or choose another --out"
        )
    return state


@contextlib.contextmanager
def atomic_file(path: Path, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Yield a new temporary file beside `path`, open for writing; once the block succeeds,
    rename it over `path`.

    With `fsync`, the file's data and then the rename are made durable. If the block
    fails, the temporary file is removed and the final name is untouched.
    """
    tmp = temp_path(path)
    f = os.fdopen(create_exclusive(tmp), "w+b")
    try:
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    with atomic_file(path, fsync=fsync) as f:
        f.write(data)


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
        # A link at a temp name is removed too (unlink never touches its target).
        if entry.name.startswith(TEMP_PREFIX) and not entry.is_dir(follow_symlinks=False):
            _unlink_quietly(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def audio_names_from_manifest(manifest: Path) -> Iterable[str]:
    """Audio file names (the `wav` key) of ok records, in manifest order.

    Each is checked like an output_name (a plain name in the folder: no `..`, no
    separators), so nothing outside the folder is ever packed, whatever the file says.
    """
    with open(manifest, encoding="utf-8") as f:
        for text in f:
            record = json.loads(text)
            if record.get("wav"):
                check_output_name(record["wav"])
                yield record["wav"]


def write_zip(
    zip_path: Path, out_dir: Path, manifest: Path, summary: Path, summary_bytes: bytes, *, fsync: bool = True
) -> int:
    """Package the run: every audio file the manifest lists (stored), then manifest and the
    summary (`summary_bytes`, stored as `summary.name`: summary.json on disk is written once
    the zip exists, so it never names a zip that is not there).

    Streams the manifest, and the zip writer spills its central directory to an
    anonymous file in the state folder, so memory stays flat however many WAVs
    there are (see `zipout`). Returns the number of audio files packed.
    """

    state = out_dir / STATE_DIR
    spill_dir = state if state.is_dir() and not state.is_symlink() else out_dir
    count = 0
    with atomic_file(zip_path, fsync=fsync) as f:
        with StreamingZipWriter(f, spill_dir=spill_dir) as zf:
            zf.comment = ZIP_COMMENT
            for rel in audio_names_from_manifest(manifest):
                zf.write_file(out_dir / rel, rel, compress=STORED)
                count += 1
            zf.write_file(manifest, manifest.name, compress=DEFLATED)
            zf.write_bytes(summary_bytes, summary.name, compress=DEFLATED)
    return count


def zip_comment(path: Path) -> bytes | None:
    """The archive comment of the zip at `path` (read from its end record), or None if not a zip."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        tail_len = min(size, 22 + 0xFFFF)
        tail = os.pread(fd, tail_len, size - tail_len)
    finally:
        os.close(fd)
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 22:
        return None
    length = int.from_bytes(tail[end + 20 : end + 22], "little")
    return tail[end + 22 : end + 22 + length]
