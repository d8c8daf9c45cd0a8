"""The click CLI: `glmtts-batch run` and `glmtts-batch check` exit codes and output."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner
from fake_engines import FakeEngine, RaisingEngine
from voices import write_voice

import glmtts_batch.api as api
from glmtts_batch.cli import main
from glmtts_batch.engines.select import configured_model_dir
from glmtts_batch.errors import CheckpointError, EngineLoadError
from glmtts_batch.lock import OutputLock


def write_tasks(path: Path, tasks: list[dict | str]) -> Path:
    lines = [t if isinstance(t, str) else json.dumps(t) for t in tasks]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class FakeLoader:
    """Stands in for engine loading: hands out queued engines (else a FakeEngine), records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.queue: list[FakeEngine] = []

    def __call__(self, name, options, log):
        log(f"ENGINE {name}")
        self.calls.append((name, options))
        return self.queue.pop(0) if self.queue else FakeEngine()


@pytest.fixture
def loader(monkeypatch) -> FakeLoader:
    fake = FakeLoader()
    monkeypatch.setattr(api, "_load_engine", fake)
    return fake


def invoke(args: list[str], **kw):
    return CliRunner().invoke(main, args, catch_exceptions=False, **kw)


def test_run_ok_exit_0_and_engine_options_mapping(tmp_path: Path, loader, monkeypatch) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}, {"input_text": "b"}])
    words = tmp_path / "words.jsonl"
    words.write_text("")
    camp = tmp_path / "campplus.onnx"
    camp.write_bytes(b"onnx")
    monkeypatch.setenv("GLMTTS_MODEL_DIR", str(tmp_path / "from-env"))
    out = tmp_path / "out"
    r = invoke(
        [
            "run",
            str(f),
            "--out",
            str(out),
            "--engine",
            "glmtts",
            "--campplus",
            str(camp),
            "--device",
            "cpu",
            "--sample-rate",
            "32000",
            "--dtype",
            "bf16",
            "--flow-dtype",
            "fp16",
            "--no-kv-cache",
            "--no-prompt-cache",
            "--phoneme-dict",
            str(words),
            "--seed",
            "9",
            "--no-progress",
        ]
    )
    assert r.exit_code == 0, r.output
    name, options = loader.calls[0]
    assert name == "glmtts"
    # GLMTTS_MODEL_DIR is the default of --model-dir, and the engine banner names it as the source
    assert configured_model_dir(options) == (tmp_path / "from-env", "GLMTTS_MODEL_DIR")
    assert (options.campplus, options.device, options.sample_rate, options.dtype) == (camp, "cpu", 32000, "bf16")
    assert options.flow_dtype == "fp16"
    assert (options.kv_cache, options.prompt_cache, options.phoneme_dict) == (False, False, words)
    assert options.sampling_rng == "fast"
    assert "ENGINE glmtts" in r.output and "engine: fake" in r.output
    assert f"manifest: {out / 'manifest.jsonl'}" in r.output and f"zip: {out / 't.zip'}" in r.output
    assert "2 ok (0 resumed), 0 failed, 0 invalid, 0 skipped" in r.output
    assert {rec["seed"] for rec in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())} == {9}

    # same seed, dtypes and phoneme dictionary: every task resumes
    r = invoke(
        [
            "run",
            str(f),
            "--out",
            str(out),
            "--model-dir",
            str(tmp_path / "explicit"),
            "--seed",
            "9",
            "--dtype",
            "bf16",
            "--flow-dtype",
            "fp16",
            "--phoneme-dict",
            str(words),
            "--no-progress",
        ]
    )
    assert r.exit_code == 0
    assert loader.calls[1][0] == "auto" and loader.calls[1][1].model_dir == tmp_path / "explicit"
    assert "2 ok (2 resumed), 0 failed, 0 invalid, 0 skipped" in r.output

    r = invoke(["run", str(f), "--out", str(out), "--no-resume", "--no-zip", "--no-progress"])
    assert r.exit_code == 0 and "2 ok" in r.output and "zip:" not in r.output


def test_sampling_rng_upstream_reaches_the_engine_options(tmp_path: Path, loader) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    r = invoke(
        [
            "run",
            str(f),
            "--out",
            str(tmp_path / "out"),
            "--engine",
            "glmtts",
            "--model-dir",
            str(tmp_path),
            "--sampling-rng",
            "upstream",
            "--no-progress",
        ]
    )
    assert r.exit_code == 0, r.output
    assert loader.calls[0][1].sampling_rng == "upstream"
    r = invoke(["run", str(f), "--sampling-rng", "numpy"])
    assert r.exit_code == 2 and "--sampling-rng" in r.output


def test_run_failures_exit_1_and_max_failures(tmp_path: Path, loader) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in ["a", "x", "y", "b"]] + ["{bad"])
    loader.queue.append(RaisingEngine({"x", "y"}))
    r = invoke(["run", str(f), "--out", str(tmp_path / "o1"), "--no-progress"])
    assert r.exit_code == 1
    assert "2 ok (0 resumed), 2 failed, 1 invalid" in r.output

    loader.queue.append(RaisingEngine({"x", "y"}))
    r = invoke(["run", str(f), "--out", str(tmp_path / "o2"), "--max-failures", "1", "--no-progress"])
    assert r.exit_code == 1
    assert "1 ok (0 resumed), 1 failed, 1 invalid, 2 skipped" in r.output
    assert "--max-failures" in r.output


def test_run_that_cannot_start_exits_2(tmp_path: Path, loader, monkeypatch) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    r = invoke(["run", str(tmp_path / "nope.jsonl"), "--no-progress"])
    assert r.exit_code == 2 and "cannot read task file" in r.output

    r = invoke(["run", str(f), "--sample-rate", "16000"])
    assert r.exit_code == 2 and "16000" in r.output
    r = invoke(["run", str(f), "--max-failures", "0"])
    assert r.exit_code == 2
    # the phoneme dictionary is hashed by the engine (EngineInfo.settings); its absence is caught here
    r = invoke(["run", str(f), "--phoneme-dict", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "missing.jsonl" in r.output and "does not exist" in r.output

    def broken(name, options, log):
        raise EngineLoadError("the glmtts engine needs a GLM-TTS checkpoint and none is configured")

    monkeypatch.setattr(api, "_load_engine", broken)
    r = invoke(["run", str(f), "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2
    assert "error: the glmtts engine needs a GLM-TTS checkpoint" in r.output
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_run_on_a_locked_folder_exits_2(tmp_path: Path, loader) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    out = tmp_path / "out"
    with OutputLock(out):
        r = invoke(["run", str(f), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2
    assert "in use by another glmtts-batch run" in r.output and "pid" in r.output
    assert loader.calls == []  # refused before loading a model


def test_check_reports_every_line_and_exit_codes(tmp_path: Path) -> None:
    good = write_tasks(
        tmp_path / "good.jsonl", ["# c", {"input_text": "a", "output_name": "intro"}, {"input_text": "b"}]
    )
    r = invoke(["check", str(good)])
    assert r.exit_code == 0
    assert "line 2: ok -> intro.wav" in r.output and "line 3: ok -> 3.wav" in r.output
    assert "2 valid, 0 invalid" in r.output

    bad = write_tasks(
        tmp_path / "bad.jsonl",
        [
            {"input_text": "a"},
            {"input_text": "b", "spekaer": "x"},
            {"input_text": "c", "output_name": "/etc/x"},
            {"input_text": "d", "prompt_audio": "missing.wav"},
        ],
    )
    r = invoke(["check", str(bad)])
    assert r.exit_code == 1
    assert "line 1: ok -> 1.wav" in r.output
    assert "line 2: invalid [spekaer] InvalidTaskError: line 2: unknown field 'spekaer'" in r.output
    assert "line 3: invalid [output_name] InvalidTaskError" in r.output
    assert "line 4: invalid [prompt_audio] PromptAudioError" in r.output
    assert "1 valid, 3 invalid" in r.output

    r = invoke(["check", str(bad), "--errors-only"])
    assert r.exit_code == 1 and "line 1:" not in r.output and "line 2: invalid" in r.output

    r = invoke(["check", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and "cannot read task file" in r.output


def test_run_with_a_state_path_that_is_a_file_exits_2(tmp_path: Path, loader) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".glmtts-batch").write_text("not a folder")
    r = CliRunner().invoke(main, ["run", str(f), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback
    assert f"error: {str(out / '.glmtts-batch')!r} is a file, not a folder" in r.output
    assert loader.calls == []


def test_check_reports_lone_surrogates_and_control_characters(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text(
        '{"input_text": "hello \\ud800 there"}\n{"input_text": "x", "output_name": "\\udc80"}\n'
        '{"input_text": "x", "\\udfff": 1}\n{"input_text": "nul\\u0000"}\n{"input_text": "fine"}\n'
    )
    r = invoke(["check", str(f), "--errors-only"])
    assert r.exit_code == 1
    assert "line 1: invalid [input_text] InvalidTaskError: line 1: input_text is not valid Unicode text" in r.output
    assert "line 2: invalid [output_name]" in r.output and "lone surrogate" in r.output
    assert "line 3: invalid [\\udfff] InvalidTaskError: line 3: unknown field" in r.output
    assert (
        "line 4: invalid [input_text] InvalidTaskError: line 4: input_text contains control character U+0000"
        in r.output
    )
    assert "1 valid, 4 invalid" in r.output


def test_check_validates_a_checkpoint_folder(tmp_path: Path, monkeypatch) -> None:
    write_voice(tmp_path / "voice.wav")
    good = write_tasks(tmp_path / "good.jsonl", [{"input_text": "a", "prompt_audio": "voice.wav", "prompt_text": "hi"}])
    seen: list = []

    def validate(model_dir, *, campplus=None):
        seen.append((model_dir, campplus))
        if model_dir.name == "broken":
            raise CheckpointError("checkpoint is incomplete:\n- llm/model.safetensors missing\n- hift missing")

    fake = types.ModuleType("glmtts_batch.glmtts.checkpoint")
    fake.validate_checkpoint_dir = validate
    monkeypatch.setitem(sys.modules, "glmtts_batch.glmtts.checkpoint", fake)

    r = invoke(["check", str(good), "--model-dir", str(tmp_path / "broken"), "--campplus", str(tmp_path / "c.onnx")])
    assert r.exit_code == 1
    assert "llm/model.safetensors missing" in r.output and "hift missing" in r.output
    assert seen[-1] == (tmp_path / "broken", tmp_path / "c.onnx")

    r = invoke(["check", str(good), "--model-dir", str(tmp_path / "fine")])
    assert r.exit_code == 0 and "checkpoint" in r.output and ": ok" in r.output
    assert seen[-1] == (tmp_path / "fine", None)


def _fake_checkpoint_validation(monkeypatch) -> None:
    fake = types.ModuleType("glmtts_batch.glmtts.checkpoint")
    fake.validate_checkpoint_dir = lambda model_dir, *, campplus=None: None
    monkeypatch.setitem(sys.modules, "glmtts_batch.glmtts.checkpoint", fake)


def test_check_with_a_model_dir_applies_the_glmtts_input_rules(tmp_path: Path, monkeypatch) -> None:
    """Lines `run --engine glmtts` would fail for their inputs are invalid in `check --model-dir`."""
    import numpy as np

    _fake_checkpoint_validation(monkeypatch)
    write_voice(tmp_path / "voice.wav")
    write_voice(tmp_path / "short.wav", seconds=0.5)
    write_voice(tmp_path / "long.wav", seconds=31.0)
    sf.write(tmp_path / "silent.wav", np.zeros(32000, dtype=np.float32), 16000)
    (tmp_path / "text.wav").write_text("this is not audio")
    voice = {"prompt_audio": "voice.wav", "prompt_text": "a calm voice"}
    tasks = [
        {"input_text": "fine", **voice},
        {"input_text": "no transcript", "prompt_audio": "voice.wav"},
        {"input_text": "blank transcript", "prompt_audio": "voice.wav", "prompt_text": "  "},
        {"input_text": "no prompt"},
        {"input_text": "undecodable", "prompt_audio": "text.wav", "prompt_text": "x"},
        {"input_text": "silent", "prompt_audio": "silent.wav", "prompt_text": "x"},
        {"input_text": "short", "prompt_audio": "short.wav", "prompt_text": "x"},
        {"input_text": "long", "prompt_audio": "long.wav", "prompt_text": "x"},
        {"input_text": "fine again", **voice},
    ]
    f = write_tasks(tmp_path / "t.jsonl", tasks)
    r = invoke(["check", str(f), "--model-dir", str(tmp_path / "ckpt")])
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert "line 1: ok -> 1.wav" in lines and "line 9: ok -> 9.wav" in lines
    for line, field, text in [
        (2, "prompt_text", "needs prompt_text"),
        (3, "prompt_text", "needs prompt_text"),
        (4, "prompt_audio", "needs prompt_audio"),
        (5, "prompt_audio", "cannot be read as audio"),
        (6, "prompt_audio", "silent"),
        (7, "prompt_audio", "too short"),
        (8, "prompt_audio", "too long"),
    ]:
        (shown,) = [x for x in lines if x.startswith(f"line {line}: ")]
        assert shown.startswith(f"line {line}: invalid [{field}]") and text in shown, shown
    assert "2 valid, 7 invalid" in r.output

    # Without a model folder only the task file's own rules apply (any engine may run it).
    r = invoke(["check", str(f)])
    assert "9 valid, 0 invalid" in r.output and r.exit_code == 0


def test_check_decodes_each_prompt_once(tmp_path: Path, monkeypatch) -> None:
    import glmtts_batch.glmtts.inputs as inputs

    _fake_checkpoint_validation(monkeypatch)
    decoded: list[Path] = []
    real = inputs.load_prompt_audio

    def counting(path):
        decoded.append(path)
        return real(path)

    monkeypatch.setattr(inputs, "load_prompt_audio", counting)
    write_voice(tmp_path / "narrator.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF nonsense")
    tasks = [{"input_text": f"line {i}", "prompt_audio": "narrator.wav", "prompt_text": "hi"} for i in range(50)]
    tasks += [{"input_text": f"bad {i}", "prompt_audio": "bad.wav", "prompt_text": "hi"} for i in range(5)]
    report = api.check_tasks(write_tasks(tmp_path / "t.jsonl", tasks), model_dir=tmp_path / "ckpt")
    assert (report.valid, report.invalid) == (50, 5)
    assert sorted(p.name for p in decoded) == ["bad.wav", "narrator.wav"]  # once each, errors included


def test_check_loads_no_engine(tmp_path: Path, monkeypatch) -> None:
    def forbidden(*a, **k):
        raise AssertionError("check must not load an engine")

    monkeypatch.setattr(api, "_load_engine", forbidden)
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    assert invoke(["check", str(f)]).exit_code == 0


def test_espeak_engine_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GLMTTS_MODEL_DIR", raising=False)
    (tmp_path / "voice.wav").write_bytes(b"not used by espeak")
    f = write_tasks(
        tmp_path / "t.jsonl",
        [
            {"input_text": "Hello world.", "output_name": "hello"},
            {"input_text": "Second line.", "prompt_audio": "voice.wav"},
        ],
    )
    out = tmp_path / "out"
    r = invoke(["run", str(f), "--out", str(out), "--engine", "espeak", "--no-progress"])
    assert r.exit_code == 0, r.output
    info = sf.info(out / "hello.wav")
    assert (info.subtype, info.channels, info.samplerate) == ("PCM_16", 1, 24000)
    assert info.frames > 2400
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert records[0]["engine"] == "espeak"
    assert any("prompt" in w.lower() for w in records[1]["warnings"])


def test_batch_size_reaches_the_runner_and_serve_accepts_it(tmp_path: Path, loader) -> None:
    engine = FakeEngine()
    loader.queue.append(engine)
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": str(i)} for i in range(5)])
    r = invoke(["run", str(f), "--out", str(tmp_path / "out"), "--batch-size", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert [len(b) for b in engine.batches] == [2, 2, 1]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["batch_size"] == 2
    r = CliRunner().invoke(main, ["run", str(f), "--batch-size", "0"])
    assert r.exit_code == 2 and "--batch-size" in r.output
    assert "--batch-size" in invoke(["serve", "--help"]).output
