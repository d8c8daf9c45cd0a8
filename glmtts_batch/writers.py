"""Audio file formats: how a task's samples become the bytes of its output file.

The batch loop writes every task through one `AudioWriter`, which decides both the
file suffix and the encoding, so a new format (FLAC, MP3) is one new class here:
give it a `suffix`, a `format` identity (part of the resume key: a run in another
format redoes its tasks), an `encode` and a `read_tag`.

The tag: every file this tool writes names the tool and the task's resume key inside
the file itself (`FileTag`), so the tool recognises its own files without the resume
journal (a lost `.glmtts-batch`, a folder copied without dot files): a file tagged with
the task's key is resumed, one tagged with another key is the tool's to replace, and an
untagged file is a user's, never replaced. WavWriter writes the tag as a RIFF
`LIST/INFO` chunk before the audio data (`ISFT` = "glmtts-batch <version>", `ICMT` =
"resume key <hex>"), which every WAV reader skips or shows as metadata; a FLAC writer
would use a Vorbis comment. The tag is part of the file, so the sha256 in the manifest
covers it.
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import soundfile as sf

from . import __version__
from .errors import TaskError

TOOL_NAME = "glmtts-batch"
_KEY_COMMENT = re.compile(r"resume key ([0-9a-f]{64})")


@dataclass(frozen=True)
class FileTag:
    """What a file says about its writer: `tool` is "glmtts-batch <version>" for ours."""

    tool: str
    key: str | None  # the task's resume key (manifest.resume_key)

    @property
    def ours(self) -> bool:
        return self.tool == TOOL_NAME or self.tool.startswith(TOOL_NAME + " ")


def our_tag(key: str | None) -> FileTag:
    return FileTag(tool=f"{TOOL_NAME} {__version__}", key=key)


class AudioWriter(Protocol):
    suffix: str  # file name suffix without the dot: "wav"
    format: str  # identity of the encoding, in the resume key: "wav-pcm16"

    def encode(self, audio: np.ndarray, sample_rate: int, tag: FileTag | None = None) -> tuple[bytes, int]:
        """Mono float samples in [-1, 1] to a complete file image (carrying `tag`) and its sample count.

        Raises `TaskError` for audio that cannot be written (wrong shape, empty, not finite).
        """
        ...

    def read_tag(self, fd: int) -> FileTag | None:
        """The tag in the open file `fd` (read from its start), or None when it has none of ours."""
        ...


def mono_float32(audio: np.ndarray) -> np.ndarray:
    """The engine's audio as checked (samples,) float32: what every writer encodes."""
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
    return samples


class WavWriter:
    """16-bit PCM mono WAV, tagged with a LIST/INFO chunk (see the module docstring)."""

    suffix = "wav"
    format = "wav-pcm16"

    def encode(self, audio: np.ndarray, sample_rate: int, tag: FileTag | None = None) -> tuple[bytes, int]:
        samples = mono_float32(audio)
        # Quantise here rather than in libsndfile so clipping and rounding are ours and exact.
        pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        buffer = io.BytesIO()
        sf.write(buffer, pcm, sample_rate, subtype="PCM_16", format="WAV")
        image = buffer.getvalue()
        # The chunk is inserted by hand: libsndfile would append its own version to ISFT,
        # making the bytes (and so the sha256) depend on the installed libsndfile.
        return (image if tag is None else _insert_info_chunk(image, tag)), pcm.size

    def read_tag(self, fd: int) -> FileTag | None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(fd), "rb") as f, sf.SoundFile(f) as snd:
                tool, comment = snd.software or "", snd.comment or ""
        except (RuntimeError, OSError, ValueError, TypeError):  # not a WAV soundfile can read
            return None
        if not tool:
            return None
        match = _KEY_COMMENT.fullmatch(comment.strip())
        return FileTag(tool=tool, key=match.group(1) if match else None)


def _info_subchunk(chunk_id: bytes, text: str) -> bytes:
    data = text.encode("utf-8") + b"\0"
    if len(data) % 2:
        data += b"\0"  # RIFF chunks are word-aligned
    return chunk_id + struct.pack("<I", len(data)) + data


def _insert_info_chunk(image: bytes, tag: FileTag) -> bytes:
    """`image` (a RIFF/WAVE file) with a LIST/INFO chunk inserted right after its fmt chunk."""
    if image[:4] != b"RIFF" or image[8:12] != b"WAVE" or image[12:16] != b"fmt ":
        raise ValueError("not a canonical RIFF/WAVE image")
    fmt_end = 20 + struct.unpack_from("<I", image, 16)[0]
    fmt_end += fmt_end % 2
    info = b"INFO" + _info_subchunk(b"ISFT", tag.tool)
    if tag.key is not None:
        info += _info_subchunk(b"ICMT", f"resume key {tag.key}")
    chunk = b"LIST" + struct.pack("<I", len(info)) + info
    body = image[12:fmt_end] + chunk + image[fmt_end:]
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


DEFAULT_WRITER: AudioWriter = WavWriter()
