"""The batch loop through the Python API, with fake engines."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fake_engines import FakeEngine, NoOpEngine, OomEngine, RaisingEngine, WarningEngine
from run_files import manifest, write_tasks

from glmtts_batch import RunError, Summary, run_batch
from glmtts_batch.engines.base import Synthesis
from glmtts_batch.manifest import RUN_DEPENDENT_KEYS
from glmtts_batch.outputs import TEMP_PREFIX


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in RUN_DEPENDENT_KEYS} for r in records]


def run(tasks, out: Path, engine=None, **kw) -> Summary:
    kw.setdefault("progress", False)
    kw.setdefault("fsync", False)
    return run_batch(tasks, out, engine=engine or FakeEngine(), **kw)


def test_ok_run_writes_valid_wavs_manifest_summary_and_zip(tmp_path: Path) -> None:
    tasks = write_tasks(
        tmp_path / "book.jsonl",
        [
            {"input_text": "one", "output_name": "ch1"},
            "# comment",
            {"input_text": "two", "seed": 5},
            "",
            {"input_text": "three", "output_name": "ch3", "phoneme": True},
        ],
    )
    out = tmp_path / "out"
    s = run(tasks, out, seed=11)
    assert (s.ok, s.failed, s.invalid, s.skipped, s.exit_code) == (3, 0, 0, 0, 0)
    assert s.zip == out / "book.zip" and s.manifest == out / "manifest.jsonl"

    records = manifest(out)
    assert [(r["line"], r["output_name"], r["status"], r["seed"]) for r in records] == [
        (1, "ch1", "ok", 11),
        (3, "3", "ok", 5),
        (5, "ch3", "ok", 11),
    ]
    for r in records:
        wav = out / r["wav"]
        assert r["wav"] == f"{r['output_name']}.wav"
        info = sf.info(wav)
        assert (info.subtype, info.channels, info.samplerate, info.frames) == ("PCM_16", 1, 16000, 1600)
        assert r["sha256"] == hashlib.sha256(wav.read_bytes()).hexdigest()
        assert r["duration_s"] == pytest.approx(0.1) and r["sample_rate"] == 16000
        assert (r["engine"], r["model"], r["error"], r["resumed"]) == ("fake", "fake-v1", None, False)
        assert r["elapsed_s"] >= 0
        audio, _ = sf.read(wav, dtype="int16")
        assert audio.max() == 32767 and audio.min() == -32767  # amplitude 1.2 was clipped, not wrapped
    assert records[2]["phoneme"] is True and records[2]["details"] == {"chars": 5, "phoneme": True}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 3, "failed": 0, "invalid": 0, "skipped": 0}
    assert summary["audio_seconds"] == pytest.approx(0.3)
    assert summary["engine"] == {
        "name": "fake",
        "model": "fake-v1",
        "sample_rate": 16000,
        "device": "cpu",
        "clones_voice": True,
        "settings": {},
    }
    assert summary["engine_stats"] == {"calls": 3}
    assert summary["exit_code"] == 0 and summary["wall_seconds"] >= 0

    with zipfile.ZipFile(out / "book.zip") as zf:
        members = {i.filename: i for i in zf.infolist()}
        assert set(members) == {"ch1.wav", "3.wav", "ch3.wav", "manifest.jsonl", "summary.json"}
        for r in records:
            assert members[r["wav"]].compress_type == zipfile.ZIP_STORED
            assert hashlib.sha256(zf.read(r["wav"])).hexdigest() == r["sha256"]
        assert zf.read("manifest.jsonl") == (out / "manifest.jsonl").read_bytes()
        assert zf.read("summary.json") == (out / "summary.json").read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_invalid_lines_get_records_and_exit_1(tmp_path: Path) -> None:
    tasks = write_tasks(
        tmp_path / "t.jsonl",
        [
            {"input_text": "fine", "output_name": "a"},
            "{oops",
            {"input_text": "x", "output_name": "../etc/passwd"},
            {"input_text": "again", "output_name": "A"},
            {"input_text": "fine too"},
        ],
    )
    out = tmp_path / "out"
    s = run(tasks, out)
    assert (s.ok, s.invalid, s.exit_code) == (2, 3, 1)
    records = manifest(out)
    assert [(r["line"], r["status"]) for r in records] == [
        (1, "ok"),
        (2, "invalid"),
        (3, "invalid"),
        (4, "invalid"),
        (5, "ok"),
    ]
    assert records[1]["error"]["type"] == "InvalidTaskError" and records[1]["error"]["field"] is None
    assert records[2]["error"]["field"] == "output_name" and records[2]["output_name"] == "../etc/passwd"
    assert "duplicate" in records[3]["error"]["message"]
    assert all(r["wav"] is None for r in records if r["status"] == "invalid")
    assert not (tmp_path / "etc").exists()
    with zipfile.ZipFile(out / "t.zip") as zf:
        assert sorted(zf.namelist()) == ["5.wav", "a.wav", "manifest.jsonl", "summary.json"]


def test_failing_tasks_are_isolated(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in ["a", "bad", "c", "worse", "e"]])
    engine = RaisingEngine({"bad"})
    engine.fail_texts.add("worse")
    out = tmp_path / "out"
    s = run(tasks, out, engine=engine)
    assert (s.ok, s.failed, s.exit_code) == (3, 2, 1)
    records = manifest(out)
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "failed", "ok"]
    assert records[1]["error"] == {"type": "TaskError", "message": "boom", "field": "input_text"}
    assert not (out / "2.wav").exists() and (out / "3.wav").exists()
    assert engine.free_memory_calls == 0


def test_unexpected_exception_type_is_recorded(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}, {"input_text": "b"}])
    engine = RaisingEngine({"a"}, lambda: ZeroDivisionError("division by zero"))
    s = run(tasks, tmp_path / "out", engine=engine)
    assert (s.ok, s.failed) == (1, 1)
    assert manifest(tmp_path / "out")[0]["error"] == {
        "type": "ZeroDivisionError",
        "message": "division by zero",
        "field": None,
    }


@pytest.mark.parametrize("style", ["torch", "runtime"])
def test_out_of_memory_frees_memory_and_next_task_runs(tmp_path: Path, style: str) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in ["a", "huge", "c", "huge2", "e"]])
    engine = OomEngine({"huge", "huge2"}, style=style)
    out = tmp_path / "out"
    s = run(tasks, out, engine=engine)
    assert engine.free_memory_calls == 2
    assert (s.ok, s.failed) == (3, 2)
    records = manifest(out)
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "failed", "ok"]
    assert records[1]["error"]["type"] == "OutOfMemoryError"
    assert "2.00 GiB" in records[1]["error"]["message"]


def test_non_finite_or_empty_audio_fails_that_task(tmp_path: Path) -> None:
    class BadAudio(FakeEngine):
        def synthesize(self, request):
            if request.text == "nan":
                return Synthesis(np.array([0.0, np.nan], dtype=np.float32), self.info.sample_rate)
            if request.text == "empty":
                return Synthesis(np.zeros(0, dtype=np.float32), self.info.sample_rate)
            return super().synthesize(request)

    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in ["nan", "empty", "ok"]])
    s = run(tasks, tmp_path / "out", engine=BadAudio())
    records = manifest(tmp_path / "out")
    assert [r["status"] for r in records] == ["failed", "failed", "ok"]
    assert "non-finite" in records[0]["error"]["message"] and "no audio" in records[1]["error"]["message"]
    assert s.exit_code == 1


def test_max_failures_stops_and_records_the_rest(tmp_path: Path) -> None:
    texts = ["a", "f1", "b", "f2", "c", "f3", "d"]
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in texts] + ["{bad json"])
    engine = RaisingEngine({"f1", "f2", "f3"})
    out = tmp_path / "out"
    s = run(tasks, out, engine=engine, max_failures=2)
    records = manifest(out)
    assert [r["status"] for r in records] == [
        "ok",
        "failed",
        "ok",
        "failed",
        "skipped",
        "skipped",
        "skipped",
        "invalid",
    ]
    assert [r["reason"] for r in records[4:7]] == ["max_failures"] * 3
    assert all(r["wav"] is None for r in records[4:])
    assert [r.text for r in engine.requests] == ["a", "f1", "b", "f2"]  # nothing ran after the stop
    assert (s.failed, s.skipped, s.resumed, s.stopped_early, s.exit_code) == (2, 3, 0, True, 1)
    assert s.counts == {"ok": 2, "failed": 2, "invalid": 1, "skipped": 3} and s.total == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["not_run"] == 3


def test_engine_warnings_and_details_reach_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "voice.wav").write_bytes(b"prompt")
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a", "prompt_audio": "voice.wav"}, {"input_text": "b"}])
    log: list[str] = []
    run(tasks, tmp_path / "out", engine=WarningEngine(), log=log.append)
    records = manifest(tmp_path / "out")
    assert records[0]["warnings"] == ["prompt audio ignored"] and records[1]["warnings"] == []
    assert records[0]["prompt_audio"] == str(tmp_path / "voice.wav")
    assert any("does not clone voices" in line for line in log)
    assert any("engine: fake" in line for line in log)


def test_prompt_audio_ignored_is_logged_only_when_a_task_has_a_prompt(tmp_path: Path) -> None:
    (tmp_path / "voice.wav").write_bytes(b"prompt")
    plain = write_tasks(tmp_path / "plain.jsonl", [{"input_text": "a"}, {"input_text": "b"}])
    log: list[str] = []
    run(plain, tmp_path / "out1", engine=WarningEngine(), log=log.append)
    assert not any("ignored" in line for line in log) and any("engine: fake" in line for line in log)
    with_prompt = write_tasks(
        tmp_path / "p.jsonl",
        [
            {"input_text": "a"},
            {"input_text": "b", "prompt_audio": "voice.wav"},
            {"input_text": "c", "prompt_audio": "voice.wav"},
        ],
    )
    log.clear()
    run(with_prompt, tmp_path / "out2", engine=WarningEngine(), log=log.append)
    assert [line for line in log if "ignored" in line] == [
        "WARNING: engine 'fake' does not clone voices; prompt audio will be ignored (first on line 2)"
    ]


def test_resume_skips_done_tasks_and_redoes_changed_ones(tmp_path: Path) -> None:
    (tmp_path / "voice.wav").write_bytes(b"prompt v1")
    tasks = [
        {"input_text": "alpha", "output_name": "a"},
        {"input_text": "beta", "output_name": "b", "prompt_audio": "voice.wav"},
        {"input_text": "gamma", "output_name": "c"},
        {"input_text": "delta", "output_name": "d"},
    ]
    f = write_tasks(tmp_path / "t.jsonl", tasks)
    out = tmp_path / "out"
    first = run(f, out)
    assert first.ok == 4
    before = manifest(out)

    engine = FakeEngine()
    again = run(f, out, engine=engine)
    # The manifest describes the outputs: a resumed task is ok (resumed: true), not skipped.
    assert (again.ok, again.skipped, again.resumed, again.exit_code) == (4, 0, 4, 0)
    assert engine.requests == []
    after = manifest(out)
    assert all(r["status"] == "ok" and r["resumed"] is True and r["reason"] is None for r in after)
    assert stable(after) == stable(before)
    with zipfile.ZipFile(out / "t.zip") as zf:
        assert sorted(zf.namelist()) == ["a.wav", "b.wav", "c.wav", "d.wav", "manifest.jsonl", "summary.json"]

    # changed text, changed prompt CONTENT (same path), tampered WAV: redone (same run seed)
    tasks[0]["input_text"] = "ALPHA"
    (tmp_path / "voice.wav").write_bytes(b"prompt v2 (longer)")
    (out / "c.wav").write_bytes(b"corrupted")
    f = write_tasks(tmp_path / "t.jsonl", tasks)
    engine = FakeEngine()
    third = run(f, out, engine=engine, seed=0)
    assert sorted(r.text for r in engine.requests) == ["ALPHA", "beta", "gamma"]
    assert (third.ok, third.resumed) == (4, 1)
    assert sf.info(out / "c.wav").subtype == "PCM_16"

    engine = FakeEngine()
    fourth = run(f, out, engine=engine, seed=1)  # the run seed is part of every key
    assert (fourth.ok, fourth.resumed) == (4, 0)

    engine = FakeEngine(model="fake-v2")
    assert run(f, out, engine=engine, seed=1).ok == 4  # a different model redoes everything

    engine = FakeEngine(model="fake-v2")
    assert run(f, out, engine=engine, seed=1, resume=False).ok == 4
    assert len(engine.requests) == 4


def test_phoneme_flag_reaches_engine_and_manifest(tmp_path: Path) -> None:
    f = write_tasks(
        tmp_path / "t.jsonl",
        [{"input_text": "a"}, {"input_text": "b", "phoneme": False}, {"input_text": "c", "phoneme": True}],
    )
    out = tmp_path / "out"
    engine = FakeEngine()
    run(f, out, engine=engine)
    assert [r.phoneme for r in engine.requests] == [None, False, True]  # None: the run default
    assert [r["phoneme"] for r in manifest(out)] == [None, False, True]
    assert run(f, out).resumed == 3


def test_engine_settings_are_part_of_the_resume_key_and_engine_options_are_not(tmp_path: Path) -> None:
    from glmtts_batch.engines.base import EngineOptions

    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}, {"input_text": "b"}])
    out = tmp_path / "out"
    fp32 = {"dtype": "fp32", "phoneme_dict_sha256": "aa"}
    assert run(f, out, engine=FakeEngine(settings=fp32)).ok == 2
    assert run(f, out, engine=FakeEngine(settings=dict(fp32))).resumed == 2
    # A setting the engine declares as shaping its audio (dtype, dictionary content): redo.
    assert run(f, out, engine=FakeEngine(settings={**fp32, "dtype": "bf16"})).ok == 2
    assert run(f, out, engine=FakeEngine(settings={**fp32, "dtype": "bf16", "phoneme_dict_sha256": "bb"})).ok == 2
    # Options the engine does not declare (espeak has no dtype) leave its key alone.
    assert (
        run(
            f,
            out,
            engine=FakeEngine(settings={**fp32, "dtype": "bf16", "phoneme_dict_sha256": "bb"}),
            options=EngineOptions(dtype="fp16", flow_dtype="fp16"),
        ).resumed
        == 2
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"]["settings"] == {"dtype": "bf16", "phoneme_dict_sha256": "bb"}


def test_resume_tolerates_torn_journal_and_cleans_stale_temp_files(tmp_path: Path) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": t} for t in ["a", "b", "c"]])
    out = tmp_path / "out"
    run(f, out)
    journal = out / ".glmtts-batch" / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    # a run killed mid-append leaves half a line (and, as the entry is written before the
    # rename, no WAV under the final name); a killed WAV write leaves a temp file
    journal.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    (out / "3.wav").unlink()
    (out / f"{TEMP_PREFIX}999-3.wav").write_bytes(b"half a wav")
    engine = FakeEngine()
    s = run(f, out, engine=engine)
    assert [r.text for r in engine.requests] == ["c"]
    assert (s.ok, s.resumed) == (3, 2)
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert journal.read_bytes().count(b"\n") == 3
    assert all(json.loads(line)["v"] == 1 for line in journal.read_bytes().splitlines())
    # and the repaired journal resumes everything next time
    assert run(f, out).resumed == 3


def test_iterable_tasks_base_dir_and_engine_ownership(tmp_path: Path) -> None:
    (tmp_path / "v.wav").write_bytes(b"x")
    engine = FakeEngine()
    s = run(
        iter([{"input_text": "a", "prompt_audio": "v.wav"}, {"input_text": "b", "uttid": "two"}]),
        tmp_path / "batch",
        engine=engine,
        base_dir=tmp_path,
    )
    assert (s.ok, s.zip) == (2, tmp_path / "batch" / "batch.zip")
    assert engine.requests[0].prompt_audio == tmp_path / "v.wav"
    assert not engine.closed  # the caller owns an engine instance


def test_engine_by_name_is_loaded_and_closed(tmp_path: Path, monkeypatch) -> None:
    import glmtts_batch.api as api

    loaded: list[FakeEngine] = []

    def fake_load(name, options, log):
        log(f"picked {name} with {options.sample_rate}")
        loaded.append(FakeEngine())
        return loaded[-1]

    monkeypatch.setattr(api, "_load_engine", fake_load)
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    messages: list[str] = []
    s = run(f, tmp_path / "out", engine="espeak", log=messages.append)
    assert s.ok == 1 and loaded[0].closed
    assert messages[0] == "picked espeak with 24000"


def test_default_output_folder_is_outputs_stem_under_cwd(tmp_path: Path, monkeypatch) -> None:
    f = write_tasks(tmp_path / "jobs.jsonl", [{"input_text": "a"}])
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    s = run_batch(f, engine=FakeEngine(), progress=False, fsync=False)
    assert s.out_dir == Path("outputs") / "jobs"
    assert (work / "outputs" / "jobs" / "1.wav").is_file()
    assert (work / "outputs" / "jobs" / "jobs.zip").is_file()


def test_no_zip(tmp_path: Path) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    s = run(f, tmp_path / "out", make_zip=False)
    assert s.zip is None and not (tmp_path / "out" / "t.zip").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["zip"] is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_failures": 0}, "max_failures"),
        ({"seed": -1}, "seed"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_bad_arguments_raise_run_error(tmp_path: Path, kwargs: dict, words: str) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    kwargs.setdefault("engine", FakeEngine())
    with pytest.raises(RunError, match=words):
        run_batch(f, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_engine_names_are_checked_case_insensitively_when_loading(tmp_path: Path, monkeypatch) -> None:
    from glmtts_batch.engines import select

    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    with pytest.raises(RunError, match="unknown engine 'nope'"):
        run_batch(f, tmp_path / "out", engine="nope", progress=False)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()

    picked: list[str] = []
    monkeypatch.setattr(select, "_load_espeak", lambda options, log: picked.append("espeak") or FakeEngine())
    assert run(f, tmp_path / "out", engine="ESPEAK").ok == 1  # select lower-cases; the API does not refuse it
    assert picked == ["espeak"]


def test_unreadable_task_file_and_missing_out_dir_are_run_errors(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="cannot read task file"):
        run(tmp_path / "missing.jsonl", tmp_path / "out")
    with pytest.raises(RunError, match="is a folder"):
        run(tmp_path, tmp_path / "out")
    with pytest.raises(RunError, match="out_dir is required"):
        run_batch([{"input_text": "a"}], engine=FakeEngine(), progress=False)
    with pytest.raises(RunError, match="iterable of task mappings"):
        run_batch({"input_text": "a"}, tmp_path / "out", engine=FakeEngine(), progress=False)


def test_progress_log_lines_when_not_a_tty(tmp_path: Path, monkeypatch) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": str(i)} for i in range(250)])
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    run_batch(f, tmp_path / "out", engine=NoOpEngine(), progress=None, fsync=False, make_zip=False, log=lambda m: None)
    lines = [line for line in err.getvalue().splitlines() if "lines," in line]
    assert [line.split()[1] for line in lines] == ["100/250", "200/250", "250/250"]
    assert "ok=250" in lines[-1] and "audio s/s" in lines[-1]

    err.truncate(0)
    run_batch(f, tmp_path / "out2", engine=NoOpEngine(), progress=False, fsync=False, log=lambda m: None)
    assert err.getvalue() == ""


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    from glmtts_batch.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    p = Progress(10, enabled=None, stream=term)
    p.update("ok", 2.0, line=2)
    p.update("failed", line=5)
    p.close()
    shown = term.getvalue()
    assert "5/10" in shown and "ok=1 failed=1" in shown and "audio s/s" in shown
    assert "lines," not in shown  # the bar, not the log-line style
    assert (p.counts["ok"], p.counts["failed"], p.audio_s) == (1, 1, 2.0)


def test_second_signal_abandons_the_task_even_if_the_engine_swallows_it(tmp_path: Path) -> None:
    """An engine that catches BaseException (or espeak's ctypes callback, which drops it) must not
    turn an abandoned call into a journaled WAV with a gap: the guard's flag decides."""
    import signal

    class Swallowing(FakeEngine):
        def synthesize(self, request):
            if request.text == "long":
                for _ in range(2):  # first signal: finish up; second: abandon this call
                    try:
                        signal.raise_signal(signal.SIGTERM)
                    except BaseException:  # noqa: BLE001, S110 - the behaviour under test
                        pass
            return super().synthesize(request)  # returns audio as if nothing happened

    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}, {"input_text": "long"}, {"input_text": "c"}])
    out = tmp_path / "out"
    s = run(f, out, engine=Swallowing())
    assert (s.ok, s.skipped, s.interrupted, s.exit_code, s.unread_lines) == (1, 1, "SIGTERM", 143, 1)
    records = manifest(out)
    # line 3 is not read after the signal: no record, counted in unread_lines
    assert [(r["status"], r["reason"], r["wav"]) for r in records] == [
        ("ok", None, "1.wav"),
        ("skipped", "interrupted", None),
    ]
    assert sorted(p.name for p in out.glob("*.wav")) == ["1.wav"]
    journal = (out / ".glmtts-batch" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["output_name"] for x in journal] == ["1"]  # the abandoned task is not journaled
    again = run(f, out)
    assert (again.ok, again.resumed) == (3, 1)  # and it is redone on resume


def test_lone_surrogates_are_invalid_lines_and_the_run_completes(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text(
        '{"input_text": "hello \\ud800 there"}\n'
        '{"input_text": "x", "output_name": "\\udc80"}\n'
        '{"input_text": "x", "\\udfff": 1}\n'
        '{"input_text": "fine"}\n',
        encoding="ascii",
    )
    out = tmp_path / "out"
    s = run(f, out)
    assert (s.ok, s.invalid, s.exit_code) == (1, 3, 1)
    records = manifest(out)
    assert [(r["line"], r["status"], r["error"] and r["error"]["field"]) for r in records] == [
        (1, "invalid", "input_text"),
        (2, "invalid", "output_name"),
        (3, "invalid", "\\udfff"),
        (4, "ok", None),
    ]
    assert "lone surrogate" in records[0]["error"]["message"]
    assert records[1]["output_name"] == "\\udc80"  # kept, as printable backslash text
    assert json.loads((out / "summary.json").read_text())["counts"]["invalid"] == 3
    with zipfile.ZipFile(out / "t.zip") as zf:
        assert sorted(zf.namelist()) == ["4.wav", "manifest.jsonl", "summary.json"]


def test_manifest_writer_escapes_what_utf8_cannot_encode() -> None:
    from glmtts_batch.manifest import dumps

    text = dumps({"prompt_audio": "/data/caf\udce9.wav", "ok": "café"})
    assert json.loads(text) == {"prompt_audio": "/data/caf\udce9.wav", "ok": "café"}
    text.encode("utf-8")  # no UnicodeEncodeError
    assert dumps({"ok": "café"}) == '{"ok":"café"}'  # readable UTF-8 whenever possible


def test_invalid_line_with_the_default_name_keeps_it(tmp_path: Path) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": ""}, "{bad", {"input_text": 3, "uttid": "u"}])
    run(f, tmp_path / "out")
    assert [(r["status"], r["output_name"]) for r in manifest(tmp_path / "out")] == [
        ("invalid", "1"),
        ("invalid", None),
        ("invalid", "u"),
    ]


def test_task_file_from_a_pipe_is_read_once(tmp_path: Path) -> None:
    """`glmtts-batch run /dev/stdin`: counting lines for the progress total would drain the pipe
    (and a FIFO's second open would wait for a writer forever), so only regular files are counted."""
    import os
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    data = "".join(json.dumps({"input_text": t}) + "\n" for t in ["a", "b", "c"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    fifo = tmp_path / "tasks.fifo"
    os.mkfifo(fifo)
    for source, stdin in [("/dev/stdin", data), (str(fifo), None)]:
        out = tmp_path / f"out-{Path(source).name}"
        cmd = [sys.executable, str(tests / "fake_engines.py"), source, str(out), "--progress"]
        if stdin is None:  # a FIFO fed by another process
            cmd = ["sh", "-c", f'printf %s "$0" > {fifo} & exec "$@"', data, *cmd]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"] == 3
        assert [r["output_name"] for r in manifest(out)] == ["1", "2", "3"]
        assert "glmtts-batch: 3 lines," in done.stderr  # progress still reports, without a total


def test_a_file_this_tool_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    """`--out .` beside narrator.wav with output_name "narrator" must not overwrite the prompt."""
    narrator = tmp_path / "narrator.wav"
    narrator.write_bytes(b"the user's recording")
    f = write_tasks(
        tmp_path / "t.jsonl",
        [
            {"input_text": "a", "output_name": "narrator", "prompt_audio": "narrator.wav"},
            {"input_text": "b", "output_name": "mine"},
        ],
    )
    engine = FakeEngine()
    s = run(f, tmp_path, engine=engine)
    assert (s.ok, s.failed, s.exit_code) == (1, 1, 1)
    assert narrator.read_bytes() == b"the user's recording"
    record = manifest(tmp_path)[0]
    assert (record["status"], record["wav"], record["error"]["field"]) == ("failed", None, "output_name")
    assert "is the task file or a prompt file" in record["error"]["message"]
    assert "narrator.wav" in record["error"]["message"]
    assert [r.text for r in engine.requests] == ["b"]  # refused before synthesis
    assert run(f, tmp_path, resume=False).failed == 1  # --no-resume does not change that
    assert narrator.read_bytes() == b"the user's recording"


def test_own_wavs_are_replaced_on_redo_and_no_resume(tmp_path: Path) -> None:
    tasks = [{"input_text": "a", "output_name": "x"}]
    f = write_tasks(tmp_path / "t.jsonl", tasks)
    out = tmp_path / "out"
    first = run(f, out)
    assert first.ok == 1
    old = (out / "x.wav").read_bytes()
    assert run(f, out, resume=False).ok == 1  # --no-resume rewrites our own WAV
    tasks[0]["input_text"] = "changed text"
    f = write_tasks(tmp_path / "t.jsonl", tasks)
    assert run(f, out).ok == 1  # a changed task rewrites it too
    assert (out / "x.wav").read_bytes() != old
    assert run(f, out).resumed == 1


def test_start_up_os_errors_are_run_errors_naming_the_path(tmp_path: Path) -> None:
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".glmtts-batch").write_text("a file where the state folder belongs")
    with pytest.raises(RunError, match=r"\.glmtts-batch"):
        run(f, out)

    out2 = tmp_path / "out2"
    (out2 / ".glmtts-batch" / "journal.jsonl").mkdir(parents=True)
    with pytest.raises(RunError, match="journal.jsonl"):
        run(f, out2)


def test_the_engine_gets_each_prompts_hash_so_it_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "voice.wav").write_bytes(b"prompt bytes")
    tasks = write_tasks(
        tmp_path / "t.jsonl", [{"input_text": t, "prompt_audio": "voice.wav"} for t in "abc"] + [{"input_text": "d"}]
    )
    engine = FakeEngine()
    run(tasks, tmp_path / "out", engine=engine)
    expected = hashlib.sha256(b"prompt bytes").hexdigest()
    assert [r.prompt_audio_sha256 for r in engine.requests] == [expected, expected, expected, None]


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_drops_the_total_when_the_file_outgrows_it(terminal: bool) -> None:
    from glmtts_batch.progress import Progress

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return terminal

    stream = Stream()
    p = Progress(16, enabled=True, stream=stream, every_lines=1)
    p.update("ok", line=16)
    if not terminal:  # (the bar redraws at most every 0.1 s)
        assert "16/16" in stream.getvalue()
    for line in range(17, 26):  # the producer kept appending
        p.update("ok", line=line)
    p.close()
    shown = stream.getvalue()
    assert "25" in shown and not any(f"{n}/16" in shown for n in range(17, 26))
    assert p.total is None
