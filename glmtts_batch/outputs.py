"""Output files: atomic 16-bit WAV writes, content hashes, and the zip package.

Every file the worker creates in the output folder is first written under a
temporary name starting with `TEMP_PREFIX` in the same folder, flushed, and
then renamed over the final name, so a crash never leaves a truncated file
under a final name. Temporary files left by a killed run are removed by
`clean_stale_temp_files` at the start of the next run (under the folder lock).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TaskError

TEMP_PREFIX = ".glmtts-tmp-"


@dataclass(frozen=True)
class WavInfo:
    sha256: str
    duration_s: float
    samples: int
    sample_rate: int


def pcm16_wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float samples to a complete 16-bit PCM WAV file image."""
    samples = np.asarray(audio)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise TaskError(f"engine returned audio of shape {samples.shape}, expected mono (samples,)")
    if samples.size == 0:
        raise TaskError("engine returned no audio")
    samples = samples.astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise TaskError("engine returned non-finite audio samples (NaN or inf)")
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    data = pcm.tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(data), b"WAVE",
        b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16,
        b"data", len(data),
    )
    return header + data


def write_wav(path: Path, audio: np.ndarray, sample_rate: int, *, fsync: bool = True) -> WavInfo:
    """Atomically write `audio` as 16-bit PCM mono WAV at `path`; return its hash and length."""
    image = pcm16_wav_bytes(audio, sample_rate)
    write_bytes_atomic(path, image, fsync=fsync)
    samples = (len(image) - 44) // 2
    return WavInfo(
        sha256=hashlib.sha256(image).hexdigest(),
        duration_s=round(samples / sample_rate, 6),
        samples=samples,
        sample_rate=sample_rate,
    )


def temp_path(final: Path) -> Path:
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{final.name}")


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def wav_names_from_manifest(manifest: Path) -> Iterable[str]:
    """Relative WAV paths of ok and resumed records, streamed in manifest order."""
    with open(manifest, encoding="utf-8") as f:
        for text in f:
            record = json.loads(text)
            if record.get("wav"):
                yield record["wav"]


def write_zip(zip_path: Path, out_dir: Path, manifest: Path, summary: Path, *, fsync: bool = True) -> int:
    """Package the run: every WAV the manifest lists (stored), then manifest and summary.

    Streams the manifest, so memory stays flat apart from zipfile's central
    directory. Returns the number of WAVs packed.
    """
    tmp = temp_path(zip_path)
    count = 0
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for rel in wav_names_from_manifest(manifest):
                zf.write(out_dir / rel, arcname=rel, compress_type=zipfile.ZIP_STORED)
                count += 1
            zf.write(manifest, arcname=manifest.name, compress_type=zipfile.ZIP_DEFLATED)
            zf.write(summary, arcname=summary.name, compress_type=zipfile.ZIP_DEFLATED)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, zip_path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if fsync:
        fsync_dir(zip_path.parent)
    return count
