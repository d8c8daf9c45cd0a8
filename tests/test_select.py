"""Engine selection: `--engine auto|glmtts|espeak` and the checkpoint it needs."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from glmtts_batch.engines.base import EngineOptions
from glmtts_batch.engines.espeak import EspeakEngine
from glmtts_batch.engines.select import ENGINE_NAMES, MODEL_DIR_ENV, load_engine
from glmtts_batch.errors import EngineLoadError, RunError

GLMTTS_MODULE = "glmtts_batch.glmtts.engine"


class FakeGlmTtsEngine:
    """Stands in for the real GlmTtsEngine so selection can be tested without weights."""

    loaded_with: list[EngineOptions] = []

    def __init__(self, options: EngineOptions) -> None:
        self.options = options

    @classmethod
    def load(cls, options: EngineOptions, *, log: Any) -> FakeGlmTtsEngine:
        cls.loaded_with.append(options)
        log("fake glmtts loaded")
        return cls(options)


@pytest.fixture
def fake_glmtts(monkeypatch: pytest.MonkeyPatch) -> type[FakeGlmTtsEngine]:
    module = types.ModuleType(GLMTTS_MODULE)
    module.GlmTtsEngine = FakeGlmTtsEngine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, GLMTTS_MODULE, module)
    FakeGlmTtsEngine.loaded_with = []
    return FakeGlmTtsEngine


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)


def test_unknown_engine_lists_the_valid_names(no_env: None) -> None:
    with pytest.raises(EngineLoadError) as info:
        load_engine("festival", EngineOptions(), log=lambda _: None)
    message = str(info.value)
    assert "festival" in message
    for name in ENGINE_NAMES:
        assert name in message
    assert isinstance(info.value, RunError)


def test_espeak_by_name(no_env: None) -> None:
    lines: list[str] = []
    engine = load_engine("espeak", EngineOptions(sample_rate=32000), log=lines.append)
    assert isinstance(engine, EspeakEngine)
    assert engine.info.sample_rate == 32000


def test_auto_without_checkpoint_takes_espeak_and_says_why(no_env: None) -> None:
    lines: list[str] = []
    engine = load_engine("auto", EngineOptions(), log=lines.append)
    assert isinstance(engine, EspeakEngine)
    banners = [line for line in lines if line.startswith("=====")]
    assert len(banners) == 1
    assert "espeak" in banners[0] and "no GLM-TTS checkpoint" in banners[0]
    assert MODEL_DIR_ENV in banners[0]


def test_auto_treats_an_empty_env_variable_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, "  ")
    engine = load_engine("auto", EngineOptions(), log=lambda _: None)
    assert isinstance(engine, EspeakEngine)


def test_auto_with_model_dir_option_loads_glmtts(
    no_env: None, fake_glmtts: type[FakeGlmTtsEngine], tmp_path: Path
) -> None:
    lines: list[str] = []
    engine = load_engine("auto", EngineOptions(model_dir=tmp_path, sample_rate=32000), log=lines.append)
    assert isinstance(engine, fake_glmtts)
    assert fake_glmtts.loaded_with == [EngineOptions(model_dir=tmp_path, sample_rate=32000)]
    assert any(line.startswith("=====") and "glmtts" in line and str(tmp_path) in line for line in lines)
    assert "fake glmtts loaded" in lines  # the engine got the caller's log


def test_auto_with_env_checkpoint_passes_the_folder_to_glmtts(
    monkeypatch: pytest.MonkeyPatch, fake_glmtts: type[FakeGlmTtsEngine], tmp_path: Path
) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    lines: list[str] = []
    engine = load_engine("auto", EngineOptions(), log=lines.append)
    assert isinstance(engine, fake_glmtts)
    assert fake_glmtts.loaded_with[0].model_dir == tmp_path
    assert any(MODEL_DIR_ENV in line and "glmtts" in line for line in lines)


def test_model_dir_option_wins_over_env(
    monkeypatch: pytest.MonkeyPatch, fake_glmtts: type[FakeGlmTtsEngine], tmp_path: Path
) -> None:
    option_dir = tmp_path / "option"
    option_dir.mkdir()
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "env"))
    load_engine("glmtts", EngineOptions(model_dir=option_dir), log=lambda _: None)
    assert fake_glmtts.loaded_with[0].model_dir == option_dir


def test_auto_with_missing_checkpoint_folder_fails_instead_of_falling_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-checkpoint"
    monkeypatch.setenv(MODEL_DIR_ENV, str(missing))
    with pytest.raises(EngineLoadError) as info:
        load_engine("auto", EngineOptions(), log=lambda _: None)
    assert str(missing) in str(info.value)
    assert MODEL_DIR_ENV in str(info.value)


def test_glmtts_without_checkpoint_explains_how_to_download_one(no_env: None) -> None:
    with pytest.raises(EngineLoadError) as info:
        load_engine("glmtts", EngineOptions(), log=lambda _: None)
    message = str(info.value)
    assert "huggingface-cli download zai-org/GLM-TTS --local-dir DIR" in message
    assert "frontend/campplus.onnx" in message and "zai-org/GLM-TTS" in message
    assert "--model-dir DIR" in message and MODEL_DIR_ENV in message


def test_glmtts_that_cannot_be_imported_is_a_load_error(
    no_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, GLMTTS_MODULE, None)  # makes the import raise ImportError
    with pytest.raises(EngineLoadError, match="cannot import glmtts_batch.glmtts.engine"):
        load_engine("glmtts", EngineOptions(model_dir=tmp_path), log=lambda _: None)


def test_unexpected_glmtts_load_failure_becomes_a_load_error(
    no_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Broken:
        @classmethod
        def load(cls, options: EngineOptions, *, log: Any) -> Broken:
            raise RuntimeError("CUDA out of memory")

    module = types.ModuleType(GLMTTS_MODULE)
    module.GlmTtsEngine = Broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, GLMTTS_MODULE, module)
    with pytest.raises(EngineLoadError) as info:
        load_engine("glmtts", EngineOptions(model_dir=tmp_path), log=lambda _: None)
    assert "CUDA out of memory" in str(info.value) and str(tmp_path) in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_engine_names_are_case_insensitive(no_env: None) -> None:
    assert isinstance(load_engine("ESPEAK", EngineOptions(), log=lambda _: None), EspeakEngine)


def test_default_log_goes_to_stderr(no_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    load_engine("auto", EngineOptions())
    captured = capsys.readouterr()
    assert "ENGINE auto -> espeak" in captured.err
    assert captured.out == ""
