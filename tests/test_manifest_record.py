"""The manifest record: one typed builder per status, the keys README documents, and the writer seam."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fake_engines import FakeEngine

from glmtts_batch import run_batch
from glmtts_batch.engines.base import EngineInfo, Synthesis
from glmtts_batch.errors import InvalidTaskError, TaskError
from glmtts_batch.manifest import (
    RECORD_KEYS,
    failed_record,
    invalid_record,
    ok_record,
    resumed_record,
    skipped_record,
)
from glmtts_batch.outputs import AudioInfo
from glmtts_batch.tasks import InvalidLine, Task
from glmtts_batch.writers import DEFAULT_WRITER, WavWriter

# The keys and their order are an interface (README, external checks): spelled out here on purpose.
DOCUMENTED_KEYS = (
    "line", "output_name", "status", "wav", "duration_s", "sample_rate", "sha256",
    "engine", "model", "seed", "elapsed_s", "resumed", "reason", "error",
    "text", "prompt_audio", "prompt_base", "prompt_text", "phoneme", "warnings", "details",
)  # fmt: skip

INFO = EngineInfo(name="fake", model="fake-v1", sample_rate=16000, device="cpu", clones_voice=True)
TASK = Task(line=3, text="hello", output_name="ch1", prompt_audio=Path("/p/voice.wav"), prompt_text="hi", seed=None)
AUDIO = AudioInfo(sha256="ab" * 32, duration_s=0.5, samples=8000, sample_rate=16000)


def test_record_keys_are_the_documented_ones_in_order() -> None:
    assert RECORD_KEYS == DOCUMENTED_KEYS
    for record in (
        ok_record(TASK, INFO, 7, "ch1.wav", AUDIO, Synthesis(np.zeros(4, np.float32), 16000)),
        failed_record(TASK, INFO, 7, TaskError("boom", field="input_text")),
        skipped_record(TASK, INFO, 7, "max_failures"),
        resumed_record(TASK, INFO, 7, {"wav": "ch1.wav"}),
        invalid_record(InvalidLine(2, InvalidTaskError("bad")), INFO, 7),
    ):
        assert tuple(record.to_dict()) == DOCUMENTED_KEYS


def test_ok_record_holds_the_file_and_the_engine_notes() -> None:
    synthesis = Synthesis(np.zeros(4, np.float32), 16000, details={"rtf": 0.1}, warnings=["w"])
    record = ok_record(TASK, INFO, 7, "ch1.wav", AUDIO, synthesis).to_dict()
    assert record == {
        "line": 3, "output_name": "ch1", "status": "ok", "wav": "ch1.wav", "duration_s": 0.5,
        "sample_rate": 16000, "sha256": "ab" * 32, "engine": "fake", "model": "fake-v1", "seed": 7,
        "elapsed_s": None, "resumed": False, "reason": None, "error": None, "text": "hello",
        "prompt_audio": "/p/voice.wav", "prompt_base": None, "prompt_text": "hi", "phoneme": None, "warnings": ["w"],
        "details": {"rtf": 0.1},
    }  # fmt: skip
    synthesis.details["later"] = 1  # the record keeps its own copy
    assert "later" not in record["details"]


def test_status_builders_fill_what_their_status_has() -> None:
    failed = failed_record(TASK, INFO, 7, ValueError("no"), type_name="OutOfMemoryError")
    assert (failed.status, failed.error, failed.wav) == (
        "failed",
        {"type": "OutOfMemoryError", "message": "no", "field": None},
        None,
    )
    skipped = skipped_record(Task(1, "t", "n", seed=5), INFO, 7, "interrupted")
    assert (skipped.status, skipped.reason, skipped.resumed, skipped.seed, skipped.warnings) == (
        "skipped",
        "interrupted",
        False,
        5,
        [],
    )
    resumed = resumed_record(
        TASK,
        INFO,
        7,
        {
            "wav": "ch1.wav",
            "sha256": "cd",
            "duration_s": 1.0,
            "sample_rate": 16000,
            "warnings": ["old"],
            "details": {"a": 1},
        },
    )
    assert (resumed.status, resumed.reason, resumed.resumed, resumed.sha256, resumed.warnings) == (
        "ok",
        None,
        True,
        "cd",
        ["old"],
    )
    invalid = invalid_record(InvalidLine(2, InvalidTaskError("bad", field="seed"), output_name="2", seed=9), INFO, 7)
    assert (invalid.status, invalid.seed, invalid.text, invalid.warnings, invalid.details) == (
        "invalid",
        9,
        None,
        None,
        None,
    )
    assert invalid.error == {"type": "InvalidTaskError", "message": "bad", "field": "seed"}


class RawWriter:
    """A second format, to show the seam: headerless little-endian float32."""

    suffix = "f32"
    format = "raw-f32le"

    def encode(self, audio: np.ndarray, sample_rate: int, tag=None) -> tuple[bytes, int]:
        samples = np.asarray(audio, dtype="<f4").reshape(-1)
        return samples.tobytes(), samples.size  # no room for a tag: only the journal knows its files

    def read_tag(self, fd: int):
        return None


def _run(tmp_path: Path, writer):
    tasks = [{"input_text": "a", "output_name": "one"}, {"input_text": "b"}]
    return run_batch(tasks, tmp_path / "out", engine=FakeEngine(), progress=False, fsync=False, writer=writer)


def test_the_default_writer_is_16_bit_wav() -> None:
    assert isinstance(DEFAULT_WRITER, WavWriter) and DEFAULT_WRITER.suffix == "wav"
    image, samples = DEFAULT_WRITER.encode(np.array([0.0, 0.5, -2.0], np.float32), 8000)
    assert samples == 3
    pcm, rate = sf.read(io.BytesIO(image), dtype="int16")
    assert rate == 8000 and pcm.tolist() == [0, 16384, -32767]


def test_one_writer_class_changes_the_suffix_the_manifest_and_the_zip(tmp_path: Path) -> None:
    summary = _run(tmp_path, RawWriter())
    assert summary.ok == 2
    records = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    assert [r["wav"] for r in records] == ["one.f32", "2.f32"]  # the key stays `wav`
    data = np.fromfile(tmp_path / "out" / "one.f32", dtype="<f4")
    assert data.size == 1600 and records[0]["duration_s"] == pytest.approx(0.1)
    with zipfile.ZipFile(summary.zip) as zf:
        assert sorted(zf.namelist()) == ["2.f32", "manifest.jsonl", "one.f32", "summary.json"]


def test_a_different_output_format_redoes_the_tasks_on_resume(tmp_path: Path) -> None:
    assert _run(tmp_path, WavWriter()).ok == 2
    assert _run(tmp_path, WavWriter()).resumed == 2
    again = _run(tmp_path, RawWriter())
    assert (again.ok, again.resumed) == (2, 0)
