"""`glmtts-batch normalize` and the preview API: how each text will be read, no model loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from glmtts_batch import PreviewError, TextPreview, TextPreviewer
from glmtts_batch.cli import main

REPO = Path(__file__).resolve().parents[1]


def _corpus(golden_dir: Path) -> list[dict]:
    cases = json.loads((golden_dir / "text" / "text_corpus.json").read_text(encoding="utf-8"))["cases"]
    return [c for c in cases if "\n" not in c["text"]]  # one input line per text


@pytest.fixture(scope="module")
def previewer() -> TextPreviewer:
    return TextPreviewer()


def _expected(previewer: TextPreviewer, text: str) -> tuple[str, list[str]]:
    preview = previewer.preview(text)
    return preview.normalized, preview.pieces


def test_json_over_the_whole_corpus(golden_dir: Path, tmp_path: Path, previewer: TextPreviewer) -> None:
    """One JSON object per input line, with what the run will speak (the same front end)."""
    cases = _corpus(golden_dir)
    text_file = tmp_path / "texts.txt"
    text_file.write_text("".join(c["text"] + "\n" for c in cases), encoding="utf-8")
    result = CliRunner().invoke(main, ["normalize", str(text_file), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == [c["text"] for c in cases]
    for case, record in zip(cases, records, strict=True):
        assert set(record) == {"input", "normalized", "pieces"}
        assert (record["normalized"], record["pieces"]) == _expected(previewer, case["text"]), case["id"]


def test_corpus_pieces_as_upstream_through_the_command(golden_dir: Path, tmp_path: Path) -> None:
    """Where the normaliser matches upstream, so does the command's output."""
    from glmtts_batch.glmtts.text.normalize import GRAMMARS_UPSTREAM

    if TextPreviewer()._normalizer.grammars != GRAMMARS_UPSTREAM:
        pytest.skip("WeTextProcessing 1.0.3's graphs are not installed")
    cases = [c for c in _corpus(golden_dir) if c["category"] == "audiobook"]
    text_file = tmp_path / "texts.txt"
    text_file.write_text("".join(c["text"] + "\n" for c in cases), encoding="utf-8")
    result = CliRunner().invoke(main, ["normalize", str(text_file), "--json"])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    same = sum(r["pieces"] == c["pieces"]["value"] for c, r in zip(cases, records, strict=True))
    assert same >= len(cases) - 1


def test_phoneme_mode_over_the_whole_corpus_from_a_task_file(golden_dir: Path, tmp_path: Path) -> None:
    cases = _corpus(golden_dir)
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text(
        "".join(
            json.dumps({"input_text": c["text"], "output_name": c["id"]}, ensure_ascii=False) + "\n" for c in cases
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["normalize", "--tasks", str(task_file), "--json", "--phoneme"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(cases)
    tokens = 0
    for record in records:
        assert len(record["phonemes"]) == len(record["pieces"])
        tokens += sum(p.count("<|") for p in record["phonemes"])
    assert tokens > 0  # some ambiguous characters were spelled as phonemes


def test_plain_output_names_the_line_and_each_piece(tmp_path: Path) -> None:
    text_file = tmp_path / "t.txt"
    text_file.write_text("图书馆新增藏书100册。\n\nGPT-4 was released in 2023.\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["normalize", str(text_file)])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "line 1: 图书馆新增藏书100册。",
        "  normalized: 图书馆新增藏书幺零零册。",
        "  piece 1: 图书馆新增藏书幺零零册。",
        "line 3: GPT-4 was released in 2023.",
        "  normalized: gpt four was released in twenty twenty three.",
        "  piece 1: gpt four was released in twenty twenty three.",
    ]


def test_reads_standard_input_by_default_and_with_dash() -> None:
    for args in (["normalize"], ["normalize", "-"]):
        result = CliRunner().invoke(main, [*args, "--json"], input="你好，世界\n")
        assert result.exit_code == 0
        assert json.loads(result.stdout) == {
            "input": "你好，世界",
            "normalized": "你好，世界。",
            "pieces": ["你好，世界。"],
        }


def test_phoneme_dict_is_used(tmp_path: Path) -> None:
    dictionary = tmp_path / "dict.jsonl"
    dictionary.write_text(json.dumps({"银行": "yin2 hang2"}, ensure_ascii=False) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["normalize", "--json", "--phoneme-dict", str(dictionary)], input="去银行\n")
    assert result.exit_code == 0, result.output
    phonemes = json.loads(result.stdout)["phonemes"][0]
    assert "银行" not in phonemes and phonemes.startswith("去")


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    for args in (["normalize", str(missing)], ["normalize", "--tasks", str(missing)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert str(missing) in result.stderr


def test_invalid_lines_are_named_and_the_rest_still_previewed(tmp_path: Path) -> None:
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text('{"input_text": "第一行"}\n{not json}\n{"input_text": ""}\n{"input_text": "第四行"}\n')
    result = CliRunner().invoke(main, ["normalize", "--tasks", str(task_file), "--json"])
    assert result.exit_code == 1
    assert [json.loads(line)["input"] for line in result.stdout.splitlines()] == ["第一行", "第四行"]
    assert "line 2:" in result.stderr and "invalid JSON" in result.stderr
    assert "line 3:" in result.stderr and "[input_text]" in result.stderr

    text_file = tmp_path / "t.txt"
    text_file.write_bytes("好\n".encode() + b"\xff\xfe\n" + "也好\n".encode())
    result = CliRunner().invoke(main, ["normalize", str(text_file), "--json"])
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 2
    assert "line 2: not UTF-8" in result.stderr


def test_text_file_and_tasks_together_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["normalize", "x.txt", "--tasks", "y.jsonl"])
    assert result.exit_code == 2 and "not both" in result.output


def test_python_api() -> None:
    preview = TextPreviewer(phoneme=True).preview("GPT-4很好", line=7)
    assert isinstance(preview, TextPreview) and preview.line == 7
    assert preview.to_json()["normalized"] == preview.normalized
    assert len(preview.to_json()["phonemes"]) == len(preview.pieces)
    assert PreviewError(1, "x").line == 1


def test_command_runs_as_a_process_without_importing_torch() -> None:
    """Start-up stays short because nothing on this path imports torch or loads a model
    (start-up time itself is measured in the README, not asserted here)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    probe = (
        "import sys; sys.argv = ['glmtts-batch', 'normalize', '--json']\n"
        "from glmtts_batch.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    assert 'torch' not in sys.modules, 'torch was imported'\n    raise\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        input="今天是2024年1月1日。\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["normalized"] == "今天是二零二四年一月一日。"
