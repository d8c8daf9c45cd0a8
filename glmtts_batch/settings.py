"""Which configuration fields shape the audio: the material of the resume key.

A resume reuses an earlier WAV only when everything that determines its samples is
unchanged. Rather than a hand-kept list of "settings that matter" (which silently
goes stale when a field is added), every field of a configuration dataclass counts,
unless its declaration says otherwise through field metadata:

    device: str = run_only("auto")          # left out: does not change the samples
    phoneme_dict: Path | None = by_content() # the file's sha256 stands for the path
    model_dir: Path | None = run_only(None)  # when the engine's model identity covers it

A new option is therefore part of the resume key by default: forgetting the marker
redoes work on resume, it never reuses audio that a changed option would have changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .digests import sha256_file

T = TypeVar("T")

AUDIO = "audio"  # the metadata key
_RUN_ONLY = "run_only"  # the field does not change the samples: not in the resume key
_BY_CONTENT = "by_content"  # a file path: its content hash goes in the resume key


def run_only(default: T) -> T:
    """A field that does not shape the audio (device, caches of work, progress, paths whose
    identity the engine reports elsewhere)."""
    return dataclasses.field(default=default, metadata={AUDIO: _RUN_ONLY})


def by_content(default: T = None) -> T:  # type: ignore[assignment]
    """A file path whose content (not its name) shapes the audio."""
    return dataclasses.field(default=default, metadata={AUDIO: _BY_CONTENT})


def shapes_audio(f: dataclasses.Field[Any]) -> bool:
    return f.metadata.get(AUDIO) != _RUN_ONLY


def audio_settings(config: Any, *, digest: Callable[[Path], str] = sha256_file) -> dict[str, Any]:
    """The audio-shaping fields of a dataclass instance as plain JSON values.

    Nested dataclasses are expanded the same way; `by_content` paths become
    `<name>_sha256` (None stays None).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"audio_settings needs a dataclass instance, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if not shapes_audio(f):
            continue
        value = getattr(config, f.name)
        if f.metadata.get(AUDIO) == _BY_CONTENT:
            out[f"{f.name}_sha256"] = digest(Path(value)) if value is not None else None
        else:
            out[f.name] = _plain(value, digest)
    return out


def _plain(value: Any, digest: Callable[[Path], str]) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return audio_settings(value, digest=digest)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, digest) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, digest) for k, v in value.items()}
    return value
