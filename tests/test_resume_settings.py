"""The resume key is built from the real configuration dataclasses.

Every field of `EngineOptions` and `GenerationOptions` either shapes the audio (a change
redoes the task on resume) or is declared `run_only` (a change reuses the old WAV). The
tables below name an alternative value for every field; a new field without one fails
here, so nobody adds an option without deciding which kind it is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from fake_engines import FakeEngine

from glmtts_batch import run_batch
from glmtts_batch.engines.base import EngineOptions
from glmtts_batch.engines.espeak import EspeakEngine
from glmtts_batch.glmtts import engine as glmtts_engine
from glmtts_batch.glmtts.llm import GenerationOptions
from glmtts_batch.glmtts.sampling import RasParams
from glmtts_batch.glmtts.text.normalize import GRAMMARS_UPSTREAM, GRAMMARS_WETEXT
from glmtts_batch.settings import audio_settings, by_content, run_only


def glmtts_settings(
    options: EngineOptions, generation: GenerationOptions, text_grammars: str = GRAMMARS_UPSTREAM
) -> dict[str, Any]:
    # What GlmTtsEngine puts in EngineInfo.settings (test_glmtts_engine checks a loaded engine).
    return glmtts_engine.engine_settings(options, generation, text_grammars=text_grammars)


def _dict_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


# field -> (another value, shapes the audio?)
def option_changes(tmp_path: Path) -> dict[str, tuple[Any, bool]]:
    return {
        "model_dir": (tmp_path / "elsewhere", False),  # identity: the checkpoint fingerprint
        "campplus": (tmp_path / "campplus.onnx", False),  # likewise
        "device": ("cpu", False),
        "sample_rate": (32000, True),
        "dtype": ("bf16", True),
        "flow_dtype": ("fp16", True),
        "kv_cache": (False, False),
        "prompt_cache": (False, True),
        "phoneme_dict": (_dict_file(tmp_path, "words.jsonl", '{"word": "x", "pinyin": "x1"}\n'), True),
        "sampling_rng": ("upstream", True),
    }


GENERATION_CHANGES: dict[str, tuple[Any, bool]] = {
    "sample_method": ("topk", True),
    "ras": (RasParams(top_p=0.5), True),
    "top_k": (10, True),
    "min_token_text_ratio": (1.0, True),
    "max_token_text_ratio": (10.0, True),
    "kv_cache": (False, False),
    "force_tokens": (7, True),
    "sampling_rng": ("upstream", True),
}


def test_every_option_is_either_audio_shaping_or_declared_run_only(tmp_path: Path) -> None:
    assert set(option_changes(tmp_path)) == {f.name for f in dataclasses.fields(EngineOptions)}
    assert set(GENERATION_CHANGES) == {f.name for f in dataclasses.fields(GenerationOptions)}


def test_changing_an_audio_shaping_option_changes_the_engine_settings(tmp_path: Path) -> None:
    base = glmtts_settings(EngineOptions(), GenerationOptions())
    for name, (value, shapes) in option_changes(tmp_path).items():
        changed = glmtts_settings(EngineOptions(**{name: value}), GenerationOptions())
        assert (changed != base) is shapes, name
    for name, (value, shapes) in GENERATION_CHANGES.items():
        changed = glmtts_settings(EngineOptions(), GenerationOptions(**{name: value}))
        assert (changed != base) is shapes, name


def test_every_ras_parameter_shapes_the_audio() -> None:
    base = glmtts_settings(EngineOptions(), GenerationOptions())
    for f in dataclasses.fields(RasParams):
        value = getattr(RasParams(), f.name)
        ras = RasParams(**{f.name: value + 1 if isinstance(value, int) else value / 2})
        assert glmtts_settings(EngineOptions(), GenerationOptions(ras=ras)) != base, f.name


def test_the_phoneme_dictionary_counts_by_content_not_by_path(tmp_path: Path) -> None:
    a = _dict_file(tmp_path, "a.jsonl", '{"word": "x", "pinyin": "x1"}\n')
    b = _dict_file(tmp_path, "b.jsonl", '{"word": "x", "pinyin": "x1"}\n')
    c = _dict_file(tmp_path, "c.jsonl", '{"word": "x", "pinyin": "x2"}\n')
    settings = [glmtts_settings(EngineOptions(phoneme_dict=p), GenerationOptions()) for p in (a, b, c)]
    assert settings[0] == settings[1] != settings[2]
    assert "phoneme_dict" not in settings[0] and len(settings[0]["phoneme_dict_sha256"]) == 64


def test_settings_are_plain_json_and_carry_the_audio_version(tmp_path: Path) -> None:
    settings = glmtts_settings(
        EngineOptions(phoneme_dict=option_changes(tmp_path)["phoneme_dict"][0]), GenerationOptions()
    )
    assert json.loads(json.dumps(settings)) == settings
    assert settings["audio_version"] == glmtts_engine.AUDIO_VERSION
    assert settings["generation"]["ras"] == dataclasses.asdict(RasParams())
    for run_only_name in ("device", "kv_cache", "model_dir", "campplus"):
        assert run_only_name not in settings


def test_audio_settings_follows_the_field_markers(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Inner:
        gain: float = 1.0

    @dataclasses.dataclass(frozen=True)
    class Config:
        voice: str = "a"
        workers: int = run_only(4)
        table: Path | None = by_content()
        inner: Inner = dataclasses.field(default_factory=Inner)
        name: Path = Path("x")

    table = _dict_file(tmp_path, "t.txt", "abc")
    assert audio_settings(Config(table=table), digest=lambda p: f"hash of {p.name}") == {
        "voice": "a",
        "table_sha256": "hash of t.txt",
        "inner": {"gain": 1.0},
        "name": "x",
    }
    with pytest.raises(TypeError):
        audio_settings(Config)


def test_espeak_settings_are_its_voices_and_its_audio_version() -> None:
    engine = EspeakEngine(sample_rate=16000)
    try:
        from glmtts_batch.engines import espeak

        assert dict(engine.info.settings) == {
            "han_voice": "cmn",
            "latin_voice": "en",
            "audio_version": espeak.AUDIO_VERSION,
        }
    finally:
        engine.close()


# Through the batch loop: the WAV is redone or reused --------------------------------------


def _tasks(tmp_path: Path) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text('{"input_text": "a"}\n{"input_text": "b"}\n', encoding="utf-8")
    return path


def _run(tasks: Path, out: Path, settings: dict[str, Any], **kw: Any):
    engine = FakeEngine(settings=settings)
    return run_batch(tasks, out, engine=engine, progress=False, fsync=False, **kw), engine


@pytest.mark.parametrize(
    ("options", "generation"),
    [
        (EngineOptions(dtype="bf16"), GenerationOptions()),
        (EngineOptions(prompt_cache=False), GenerationOptions()),
        (EngineOptions(), GenerationOptions(sample_method="topk")),
        (EngineOptions(), GenerationOptions(ras=RasParams(top_p=0.9))),
        (EngineOptions(), GenerationOptions(ras=RasParams(win_size=5))),
        (EngineOptions(), GenerationOptions(max_token_text_ratio=12.0)),
    ],
)
def test_a_changed_audio_shaping_option_redoes_the_tasks(tmp_path: Path, options, generation) -> None:
    tasks, out = _tasks(tmp_path), tmp_path / "out"
    first, _ = _run(tasks, out, glmtts_settings(EngineOptions(), GenerationOptions()))
    assert first.ok == 2
    again, engine = _run(tasks, out, glmtts_settings(options, generation))
    assert (again.ok, again.resumed, len(engine.requests)) == (2, 0, 2)


@pytest.mark.parametrize(
    ("options", "generation", "run_kw"),
    [
        (EngineOptions(device="cpu"), GenerationOptions(), {}),
        (EngineOptions(kv_cache=False), GenerationOptions(kv_cache=False), {}),
        (EngineOptions(model_dir=Path("/elsewhere")), GenerationOptions(), {}),
        (EngineOptions(), GenerationOptions(), {"progress": None}),
    ],
)
def test_a_changed_run_only_option_reuses_the_wavs(tmp_path: Path, options, generation, run_kw) -> None:
    tasks, out = _tasks(tmp_path), tmp_path / "out"
    first, _ = _run(tasks, out, glmtts_settings(EngineOptions(), GenerationOptions()))
    assert first.ok == 2
    kw = {"progress": False, **run_kw}
    engine = FakeEngine(settings=glmtts_settings(options, generation))
    again = run_batch(tasks, out, engine=engine, fsync=False, **kw)
    assert (again.ok, again.resumed, engine.requests) == (2, 2, [])


def test_a_new_audio_version_redoes_the_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks, out = _tasks(tmp_path), tmp_path / "out"
    assert _run(tasks, out, glmtts_settings(EngineOptions(), GenerationOptions()))[0].ok == 2
    monkeypatch.setattr(glmtts_engine, "AUDIO_VERSION", glmtts_engine.AUDIO_VERSION + 1)
    assert _run(tasks, out, glmtts_settings(EngineOptions(), GenerationOptions()))[0].ok == 2


def test_the_text_normalisation_grammars_are_in_the_engine_settings() -> None:
    """Upstream's TN graphs and the wetext fallback read the same text differently: a run whose
    install lost (or gained) upstream's graphs redoes its tasks rather than mixing readings."""
    upstream = glmtts_settings(EngineOptions(), GenerationOptions())
    fallback = glmtts_settings(EngineOptions(), GenerationOptions(), text_grammars=GRAMMARS_WETEXT)
    assert upstream["text_grammars"] == GRAMMARS_UPSTREAM and fallback["text_grammars"] == GRAMMARS_WETEXT
    assert upstream != fallback
