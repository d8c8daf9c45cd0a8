"""Task file reading and per-line validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmtts_batch.errors import InvalidTaskError, PromptAudioError
from glmtts_batch.tasks import (
    InvalidLine,
    Task,
    count_lines,
    iter_task_dicts,
    iter_task_file,
)


def write_lines(path: Path, lines: list[str], *, newline: str = "\n", bom: bool = False) -> Path:
    data = newline.join(lines) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


def read(path: Path) -> list[Task | InvalidLine]:
    return list(iter_task_file(path))


@pytest.fixture
def prompt(tmp_path: Path) -> Path:
    p = tmp_path / "voice.wav"
    p.write_bytes(b"RIFF not really audio")  # existence is all the reader checks
    return p


def test_fields_aliases_defaults_and_relative_paths(tmp_path: Path, prompt: Path) -> None:
    sub = tmp_path / "prompts"
    sub.mkdir()
    (sub / "p.wav").write_bytes(b"x")
    f = write_lines(tmp_path / "t.jsonl", [
        json.dumps({"input_text": "hello", "prompt_audio": "voice.wav", "prompt_text": "hi", "output_name": "a",
                    "seed": 7, "phoneme": True}),
        json.dumps({"syn_text": "world", "prompt_speech": "prompts/p.wav", "uttid": "b"}),
        json.dumps({"input_text": "no name"}),
        json.dumps({"input_text": "numeric id", "uttid": 42, "phoneme": False}),
    ])
    a, b, c, d = read(f)
    assert a == Task(line=1, text="hello", output_name="a", prompt_audio=prompt, prompt_text="hi", seed=7, phoneme=True)
    assert (b.text, b.output_name, b.prompt_audio, b.seed, b.phoneme) == ("world", "b", sub / "p.wav", None, None)
    assert c.output_name == "3"  # default name: the line number
    assert d.output_name == "42"
    assert d.phoneme is False  # an explicit opt-out, distinct from None (the run default)


def test_relative_prompt_resolves_against_task_file_folder_not_cwd(tmp_path: Path, monkeypatch) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "v.wav").write_bytes(b"x")
    f = write_lines(jobs / "t.jsonl", [json.dumps({"input_text": "x", "prompt_audio": "v.wav"})])
    monkeypatch.chdir(tmp_path)
    (task,) = read(f)
    assert isinstance(task, Task) and task.prompt_audio.resolve() == (jobs / "v.wav").resolve()


def test_bom_crlf_blank_and_comment_lines_keep_physical_line_numbers(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "t.jsonl", [
        json.dumps({"input_text": "first", "output_name": "one"}),
        "",
        "   ",
        "# a comment",
        "  # indented comment",
        json.dumps({"input_text": "second"}),
    ], newline="\r\n", bom=True)
    items = read(f)
    assert [(i.line, i.output_name, i.text) for i in items] == [(1, "one", "first"), (6, "6", "second")]
    assert all("\r" not in i.text for i in items)
    assert count_lines(f) == 6


def test_last_line_without_newline(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'{"input_text": "a"}\n{"input_text": "b"}')
    assert [i.line for i in read(f)] == [1, 2]
    assert count_lines(f) == 2


# Every kind of bad line: (line content, field, error type, words the message must contain).
BAD_LINES = [
    ('{"input_text": "x",', None, InvalidTaskError, "invalid JSON"),
    ('["input_text", "x"]', None, InvalidTaskError, "JSON object"),
    ('"just a string"', None, InvalidTaskError, "JSON object"),
    ('{"input_text": NaN}', None, InvalidTaskError, "invalid JSON"),
    ('{"prompt_text": "x"}', "input_text", InvalidTaskError, "missing required field"),
    ('{"input_text": 5}', "input_text", InvalidTaskError, "must be a string"),
    ('{"input_text": null}', "input_text", InvalidTaskError, "must be a string"),
    ('{"input_text": ""}', "input_text", InvalidTaskError, "empty"),
    ('{"input_text": " \\t\\n "}', "input_text", InvalidTaskError, "empty"),
    ('{"input_text": "x", "prompt_text": 3}', "prompt_text", InvalidTaskError, "must be a string"),
    ('{"input_text": "x", "prompt_audio": 3}', "prompt_audio", InvalidTaskError, "must be a string"),
    ('{"input_text": "x", "prompt_audio": "missing.wav"}', "prompt_audio", PromptAudioError, "not found"),
    ('{"input_text": "x", "prompt_audio": "."}', "prompt_audio", PromptAudioError, "not a file"),
    ('{"input_text": "x", "prompt_audio": ""}', "prompt_audio", InvalidTaskError, "not a usable path"),
    ('{"input_text": "x", "seed": "1"}', "seed", InvalidTaskError, "must be an integer"),
    ('{"input_text": "x", "seed": 1.5}', "seed", InvalidTaskError, "must be an integer"),
    ('{"input_text": "x", "seed": true}', "seed", InvalidTaskError, "must be an integer"),
    ('{"input_text": "x", "seed": -1}', "seed", InvalidTaskError, "outside"),
    ('{"input_text": "x", "phoneme": "yes"}', "phoneme", InvalidTaskError, "true or false"),
    ('{"input_text": "x", "phoneme": 1}', "phoneme", InvalidTaskError, "true or false"),
    ('{"input_text": "x", "output_name": ["a"]}', "output_name", InvalidTaskError, "must be a string"),
    ('{"input_text": "x", "output_name": true}', "output_name", InvalidTaskError, "must be a string"),
    ('{"input_text": "x", "speaker": "bob"}', "speaker", InvalidTaskError, "unknown field 'speaker'"),
    ('{"input_txt": "x"}', "input_txt", InvalidTaskError, "unknown field 'input_txt'"),
    ('{"input_text": "x", "syn_text": "y"}', "input_text", InvalidTaskError, "both 'syn_text'"),
    ('{"prompt_speech": "a.wav", "prompt_audio": "a.wav", "input_text": "x"}', "prompt_audio", InvalidTaskError,
     "both 'prompt_speech'"),
    ('{"input_text": "x", "output_name": "n", "uttid": "n"}', "output_name", InvalidTaskError, "both 'uttid'"),
    # JSON can spell lone surrogates, which nothing downstream can encode as UTF-8
    ('{"input_text": "hello \\ud800 there"}', "input_text", InvalidTaskError, "lone surrogate U+D800"),
    ('{"input_text": "x", "prompt_text": "\\udc80"}', "prompt_text", InvalidTaskError, "lone surrogate U+DC80"),
    ('{"input_text": "x", "prompt_audio": "v\\udfff.wav"}', "prompt_audio", InvalidTaskError, "lone surrogate"),
    ('{"input_text": "x", "output_name": "\\udc80"}', "output_name", InvalidTaskError, "lone surrogate"),
    ('{"input_text": "x", "output_name": "a\\ud83d"}', "output_name", InvalidTaskError, "lone surrogate"),
    # control characters in text (espeak-ng stops reading at a NUL)
    ('{"input_text": "before\\u0000after"}', "input_text", InvalidTaskError, "control character U+0000"),
    ('{"input_text": "a\\u001bb"}', "input_text", InvalidTaskError, "control character U+001B"),
    ('{"input_text": "a\\u007f"}', "input_text", InvalidTaskError, "control character U+007F"),
    ('{"input_text": "x", "prompt_text": "a\\u0085"}', "prompt_text", InvalidTaskError, "control character U+0085"),
]


@pytest.mark.parametrize(("content", "field", "error_type", "words"), BAD_LINES)
def test_bad_line_catalogue(tmp_path: Path, content: str, field: str | None, error_type: type, words: str) -> None:
    good = json.dumps({"input_text": "fine", "output_name": "good"})
    f = write_lines(tmp_path / "t.jsonl", ["# header", content, good])
    bad, ok = read(f)
    assert isinstance(bad, InvalidLine)
    assert bad.line == 2
    assert type(bad.error) is error_type
    assert bad.error.field == field
    assert str(bad.error).startswith("line 2: ")
    assert words in str(bad.error)
    # the run goes on with the next line
    assert isinstance(ok, Task) and ok.line == 3


def test_invalid_utf8_is_one_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'{"input_text": "caf\xe9"}\n{"input_text": "ok"}\n')
    bad, ok = read(f)
    assert isinstance(bad, InvalidLine) and bad.line == 1 and "UTF-8" in str(bad.error)
    assert isinstance(ok, Task) and ok.line == 2


@pytest.mark.parametrize("name", [
    "../x", "..", ".", "/abs", "a/b", "a\\b", "", "x\x00y", "x\ny", "tab\there", "\x7f", ".hidden",
    "trailing.", "trailing ", " leading", "CON", "con.txt", "Lpt1", "a:b", "what?", "a*b", "<x>", "x" * 201,
])
def test_unsafe_output_names_are_rejected(tmp_path: Path, name: str) -> None:
    f = write_lines(tmp_path / "t.jsonl", [json.dumps({"input_text": "x", "output_name": name})])
    (bad,) = read(f)
    assert isinstance(bad, InvalidLine)
    assert bad.error.field == "output_name"
    assert "unsafe output_name" in str(bad.error)


@pytest.mark.parametrize("name", ["chapter-01", "a.b", "日本語", "Ünïcode name", "x" * 200, "con2", "console"])
def test_safe_output_names_are_accepted(tmp_path: Path, name: str) -> None:
    f = write_lines(tmp_path / "t.jsonl", [json.dumps({"input_text": "x", "output_name": name})])
    (task,) = read(f)
    assert isinstance(task, Task) and task.output_name == name


def test_duplicate_names_case_insensitive_and_against_defaults(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "t.jsonl", [
        json.dumps({"input_text": "a", "output_name": "Intro"}),
        json.dumps({"input_text": "b", "output_name": "intro"}),
        json.dumps({"input_text": "c", "uttid": "INTRO"}),
        json.dumps({"input_text": "d", "output_name": "Stra\u00dfe"}),
        json.dumps({"input_text": "e", "output_name": "STRASSE"}),  # casefold: ß == ss
        json.dumps({"input_text": "f", "output_name": "e\u0301"}),
        json.dumps({"input_text": "g", "output_name": "\u00e9"}),  # NFC-equal to the previous one
        json.dumps({"input_text": "h", "output_name": "9"}),
        json.dumps({"input_text": "i"}),  # default name "9" is taken by line 8
    ])
    items = read(f)
    assert [type(i).__name__ for i in items] == [
        "Task", "InvalidLine", "InvalidLine", "Task", "InvalidLine", "Task", "InvalidLine", "Task", "InvalidLine"]
    for bad, first in zip([items[1], items[2], items[4], items[6], items[8]], [1, 1, 4, 6, 8]):
        assert bad.error.field == "output_name"
        assert "duplicate output_name" in str(bad.error) and f"line {first}" in str(bad.error)


def test_iterable_of_dicts(tmp_path: Path) -> None:
    (tmp_path / "p.wav").write_bytes(b"x")
    items = list(iter_task_dicts(
        [{"input_text": "a", "prompt_audio": "p.wav"}, "not a mapping", {"syn_text": "b", "uttid": "x"}],
        base_dir=tmp_path,
    ))
    assert isinstance(items[0], Task) and items[0].line == 1 and items[0].prompt_audio == tmp_path / "p.wav"
    assert items[0].output_name == "1"
    assert isinstance(items[1], InvalidLine) and items[1].line == 2 and "JSON object" in str(items[1].error)
    assert isinstance(items[2], Task) and items[2].output_name == "x"


def test_iterable_reader_is_lazy() -> None:
    """Tasks are validated as they are consumed, so an endless generator can feed a run."""

    def endless():
        n = 0
        while True:
            n += 1
            yield {"input_text": f"task {n}"}

    it = iter_task_dicts(endless())
    assert [next(it).output_name for _ in range(3)] == ["1", "2", "3"]


def test_text_may_hold_tabs_newlines_and_escaped_surrogate_pairs(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "t.jsonl", [
        '{"input_text": "a\\tb\\nc\\r\\n", "prompt_text": "p\\tq"}',
        '{"input_text": "smile \\ud83d\\ude00", "output_name": "\\ud83d\\ude00"}',  # a pair is one character
    ])
    a, b = read(f)
    assert isinstance(a, Task) and a.text == "a\tb\nc\r\n" and a.prompt_text == "p\tq"
    assert isinstance(b, Task) and b.text == "smile \U0001f600" and b.output_name == "\U0001f600"


def test_overlong_line_is_one_invalid_line_read_in_bounded_chunks(tmp_path: Path) -> None:
    from glmtts_batch.tasks import MAX_LINE_BYTES, iter_open_task_file

    longest_ok = json.dumps({"input_text": "y" * (MAX_LINE_BYTES - 20)})
    longest_ok += " " * (MAX_LINE_BYTES - len(longest_ok))  # exactly the limit, with a CRLF ending
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'{"input_text": "first"}\n'
                  + json.dumps({"input_text": "x" * (2 << 20)}).encode() + b"\n"
                  + b'{"input_text": "third"}\n'
                  + longest_ok.encode() + b"\r\n"
                  + b"z" * (MAX_LINE_BYTES + 1))  # one byte too many, and no final newline

    class Recording:
        """The task file, remembering the largest piece a single read returned."""

        def __init__(self, raw) -> None:
            self.raw, self.largest = raw, 0

        def readline(self, limit: int = -1) -> bytes:
            data = self.raw.readline(limit)
            self.largest = max(self.largest, len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.raw.close()

    source = Recording(open(f, "rb"))  # noqa: SIM115 - iter_open_task_file closes it
    items = list(iter_open_task_file(source, tmp_path))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Task", 1), ("InvalidLine", 2), ("Task", 3), ("Task", 4), ("InvalidLine", 5)]
    assert str(items[1].error) == "line 2: line longer than 1 MiB" and items[1].error.field is None
    assert str(items[4].error) == "line 5: line longer than 1 MiB"
    assert items[2].text == "third"
    assert source.largest <= MAX_LINE_BYTES + 2  # never a whole 2 MiB line in memory
    assert [i.line for i in read(f)] == [1, 2, 3, 4, 5]
