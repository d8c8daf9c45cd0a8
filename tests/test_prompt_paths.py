"""Where a relative prompt_audio is looked up: upstream's own task files run where they are.

Upstream GLM-TTS's `examples/example_zh.jsonl` names its prompts from upstream's folder
(`"prompt_speech": "examples/prompt/jiayan_zh.wav"`), where its script runs. A relative
path is looked up in the task file's folder first, then in the working directory; the
manifest's `prompt_base` says which; `--base-dir DIR` replaces the search.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from glmtts_batch.api import check_tasks, run_batch
from glmtts_batch.cli import main
from glmtts_batch.errors import PromptAudioError, RunError
from glmtts_batch.tasks import BASE_DIR, TASK_FILE_DIR, WORKING_DIR, InvalidLine, Task, iter_task_file

# Two lines in upstream's own format and field names (uttid, prompt_text, prompt_speech, syn_text).
UPSTREAM_LINES = [
    {"uttid": "0", "prompt_text": "他当时还跟线下其他的站姐吵架。", "prompt_speech": "examples/prompt/jiayan_zh.wav",
     "syn_text": "我看了《疯狂元素城》，里边水火元素谈恋爱的设定很妙！"},
    {"uttid": "1", "prompt_text": "I wonder if you'd like to have a burger with me.",
     "prompt_speech": "examples/prompt/jiayan_en.wav", "syn_text": "If you need anything, you can always come to Joey."},
]  # fmt: skip


@pytest.fixture
def upstream(tmp_path: Path, monkeypatch) -> Path:
    """A copy of upstream's layout, with the working directory at its root (as upstream runs)."""
    root = tmp_path / "GLM-TTS"
    prompts = root / "examples" / "prompt"
    prompts.mkdir(parents=True)
    for name in ("jiayan_zh.wav", "jiayan_en.wav"):
        sf.write(prompts / name, np.zeros(1600, np.float32), 16000)
    task_file = root / "examples" / "example_zh.jsonl"
    task_file.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in UPSTREAM_LINES), encoding="utf-8")
    monkeypatch.chdir(root)
    return root


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_upstream_task_file_checks_from_upstreams_folder(upstream: Path) -> None:
    r = invoke(["check", "examples/example_zh.jsonl"])
    assert r.exit_code == 0, r.output
    assert "2 valid, 0 invalid" in r.output
    assert "line 1: ok -> 0.wav (prompt_audio found from the working directory)" in r.output

    report = check_tasks("examples/example_zh.jsonl")
    assert (report.valid, report.invalid) == (2, 0)
    first, second = iter_task_file("examples/example_zh.jsonl")
    assert isinstance(first, Task) and first.prompt_base == WORKING_DIR
    assert first.prompt_audio == upstream / "examples" / "prompt" / "jiayan_zh.wav"
    assert (first.output_name, first.text, second.output_name) == ("0", UPSTREAM_LINES[0]["syn_text"], "1")
    assert first.prompt_text == UPSTREAM_LINES[0]["prompt_text"]


def test_upstream_task_file_runs_from_upstreams_folder_and_the_manifest_says_which_base(upstream: Path) -> None:
    r = invoke(["run", "examples/example_zh.jsonl", "--engine", "espeak", "--no-progress", "--no-zip"])
    assert r.exit_code == 0, r.output
    records = [json.loads(x) for x in (upstream / "outputs" / "example_zh" / "manifest.jsonl").read_text().splitlines()]
    assert [(x["output_name"], x["status"]) for x in records] == [("0", "ok"), ("1", "ok")]
    assert [x["prompt_base"] for x in records] == [WORKING_DIR, WORKING_DIR]
    assert records[0]["prompt_audio"] == str(upstream / "examples" / "prompt" / "jiayan_zh.wav")
    assert list(records[0])[15:17] == ["prompt_audio", "prompt_base"]  # beside the path it explains


def test_the_task_files_folder_comes_before_the_working_directory(upstream: Path) -> None:
    local = upstream / "examples" / "examples" / "prompt"
    local.mkdir(parents=True)
    sf.write(local / "jiayan_zh.wav", np.zeros(800, np.float32), 16000)
    first, second = iter_task_file("examples/example_zh.jsonl")
    assert first.prompt_base == TASK_FILE_DIR and first.prompt_audio == local / "jiayan_zh.wav"
    assert second.prompt_base == WORKING_DIR  # only the working directory has this one


def test_a_prompt_found_nowhere_names_every_place_looked(upstream: Path, tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = invoke(["check", str(upstream / "examples" / "example_zh.jsonl")])
    assert r.exit_code == 1
    bad = next(iter_task_file(upstream / "examples" / "example_zh.jsonl"))
    assert isinstance(bad, InvalidLine) and isinstance(bad.error, PromptAudioError)
    assert bad.error.field == "prompt_audio"
    message = str(bad.error)
    assert message.startswith("line 1: prompt_audio 'examples/prompt/jiayan_zh.wav' not found")
    assert (
        repr(str(upstream / "examples" / "examples" / "prompt" / "jiayan_zh.wav")) + " (the task file's folder)"
        in message
    )
    assert repr(str(elsewhere / "examples" / "prompt" / "jiayan_zh.wav")) + " (the working directory)" in message
    assert message in r.output


def test_a_prompt_that_is_there_but_unusable_is_not_replaced_by_another(upstream: Path) -> None:
    """Only "not found" moves the search on: a folder in the first place is that line's error."""
    (upstream / "examples" / "examples" / "prompt" / "jiayan_zh.wav").mkdir(parents=True)
    bad, ok = iter_task_file("examples/example_zh.jsonl")
    assert isinstance(bad, InvalidLine) and "is not a file" in str(bad.error)
    assert isinstance(ok, Task)


def test_base_dir_replaces_the_search(upstream: Path, tmp_path: Path) -> None:
    # From the folder above the checkout, --base-dir names the checkout.
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    task_file = str(upstream / "examples" / "example_zh.jsonl")
    r = invoke(["check", task_file, "--base-dir", str(upstream)])
    assert r.exit_code == 0, r.output
    assert "(prompt_audio found" not in r.output

    r = invoke(
        [
            "run",
            task_file,
            "--base-dir",
            str(upstream),
            "--engine",
            "espeak",
            "--no-progress",
            "--no-zip",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert r.exit_code == 0, r.output
    records = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [x["prompt_base"] for x in records] == [BASE_DIR, BASE_DIR]
    assert records[1]["prompt_audio"] == str(upstream / "examples" / "prompt" / "jiayan_en.wav")

    # No search with --base-dir: the working directory (which has the prompts) is not tried.
    (bad, _) = iter_task_file(task_file, base_dir=elsewhere)
    assert isinstance(bad, InvalidLine)
    assert str(bad.error) == f"line 1: prompt_audio {str(elsewhere / 'examples/prompt/jiayan_zh.wav')!r} not found"
    r = invoke(["check", task_file, "--base-dir", str(elsewhere)])
    assert r.exit_code == 1 and "2 invalid" in r.output


def test_base_dir_must_be_a_folder(upstream: Path) -> None:
    r = CliRunner().invoke(main, ["check", "examples/example_zh.jsonl", "--base-dir", "nope"])
    assert r.exit_code == 2 and "--base-dir" in r.output
    with pytest.raises(RunError, match="base_dir 'nope' is not a folder"):
        check_tasks("examples/example_zh.jsonl", base_dir="nope")
    with pytest.raises(RunError, match="is not a folder"):
        run_batch("examples/example_zh.jsonl", upstream / "out", engine="espeak", base_dir="examples/example_zh.jsonl")
    assert not (upstream / "out").exists()  # refused before anything was written


def test_a_task_file_in_the_working_directory_is_looked_up_once(upstream: Path, monkeypatch) -> None:
    monkeypatch.chdir(upstream / "examples")
    bad, _ = iter_task_file("example_zh.jsonl")
    assert str(bad.error).endswith("not found")  # one place, so the plain message
    assert "looked for" not in str(bad.error)


def test_absolute_prompt_paths_have_no_base(upstream: Path, tmp_path: Path) -> None:
    f = tmp_path / "abs.jsonl"
    f.write_text(
        json.dumps({"input_text": "x", "prompt_audio": str(upstream / "examples/prompt/jiayan_en.wav")}) + "\n"
    )
    (task,) = iter_task_file(f)
    assert isinstance(task, Task) and task.prompt_base is None
