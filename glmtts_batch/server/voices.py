"""Voices: a prompt recording and its transcript, stored once, named by an id.

`POST /v1/voices` stores them under `voices/<id>/` and asks the engine to compute the
prompt features now (its prompt cache keys them by the audio's content), so the first
speech request in that voice does not pay for them and a bad recording is refused at once.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import soundfile as sf

from glmtts_batch.errors import RequestRejected, TaskError
from glmtts_batch.outputs import write_bytes_atomic
from glmtts_batch.server.config import ServerLimits
from glmtts_batch.server.engine_host import EngineHost
from glmtts_batch.server.intake import save_upload
from glmtts_batch.server.store import Store, is_id, new_id
from glmtts_batch.tasks import check_string

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
META_NAME = "voice.json"


@dataclass(frozen=True)
class Voice:
    id: str
    name: str | None
    transcript: str
    audio: str  # file name inside the voice folder
    duration_s: float
    created_at: float


class VoiceStore:
    def __init__(self, store: Store, host: EngineHost, limits: ServerLimits) -> None:
        self.store = store
        self.host = host
        self.limits = limits
        store.voices_root.mkdir(parents=True, exist_ok=True)

    def create(self, audio: BinaryIO, filename: str | None, transcript: str, name: str | None) -> Voice:
        transcript = transcript.strip()
        if not transcript:
            raise RequestRejected(400, "transcript is required: the words spoken in the audio")
        if len(transcript) > self.limits.max_text_chars:
            raise RequestRejected(
                400,
                f"transcript exceeds the limit of {self.limits.max_text_chars} characters (--max-text-chars)",
                limit="--max-text-chars",
            )
        try:
            check_string(0, "transcript", transcript, controls=False)
            if name is not None:
                check_string(0, "name", name, controls=False)
        except TaskError as e:
            raise RequestRejected(400, str(e).replace("line 0: ", "")) from None
        suffix = Path(filename or "").suffix.lower()
        suffix = suffix if suffix in AUDIO_SUFFIXES else ".wav"
        voice_id = new_id()
        folder = self.store.voice_dir(voice_id)
        folder.mkdir(parents=True)
        try:
            target = folder / f"prompt{suffix}"
            save_upload(audio, target, self.limits)
            try:
                info = sf.info(str(target))
            except Exception as e:  # noqa: BLE001 - libsndfile says why in its own words
                raise RequestRejected(400, f"audio: not a readable audio file ({e})") from None
            try:
                self.host.warm_prompt(target, transcript)
            except TaskError as e:
                raise RequestRejected(400, f"audio: {e}", field=e.field) from None
            voice = Voice(voice_id, name, transcript, target.name, round(info.duration, 3), time.time())
            write_bytes_atomic(folder / META_NAME, json.dumps(asdict(voice), ensure_ascii=False).encode())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return voice

    def get(self, voice_id: str) -> Voice | None:
        if not is_id(voice_id):
            return None
        try:
            meta = json.loads((self.store.voice_dir(voice_id) / META_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return Voice(**meta)

    def audio_path(self, voice: Voice) -> Path:
        return self.store.voice_dir(voice.id) / voice.audio

    def list(self) -> list[Voice]:
        voices = [self.get(p.name) for p in self.store.voices_root.iterdir() if p.is_dir()]
        return sorted((v for v in voices if v is not None), key=lambda v: v.created_at)

    def delete(self, voice_id: str) -> bool:
        if self.get(voice_id) is None:
            return False
        shutil.rmtree(self.store.voice_dir(voice_id))
        return True
