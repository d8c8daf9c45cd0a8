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
    f = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps(
                {
                    "input_text": "hello",
                    "prompt_audio": "voice.wav",
                    "prompt_text": "hi",
                    "output_name": "a",
                    "seed": 7,
                    "phoneme": True,
                }
            ),
            json.dumps({"syn_text": "world", "prompt_speech": "prompts/p.wav", "uttid": "b"}),
            json.dumps({"input_text": "no name"}),
            json.dumps({"input_text": "numeric id", "uttid": 42, "phoneme": False}),
        ],
    )
    a, b, c, d = read(f)
    assert a == Task(
        line=1,
        text="hello",
        output_name="a",
        prompt_audio=prompt,
        prompt_text="hi",
        seed=7,
        phoneme=True,
        prompt_base="task_file_dir",
    )
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
    f = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"input_text": "first", "output_name": "one"}),
            "",
            "   ",
            "# a comment",
            "  # indented comment",
            json.dumps({"input_text": "second"}),
        ],
        newline="\r\n",
        bom=True,
    )
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
    (
        '{"prompt_speech": "a.wav", "prompt_audio": "a.wav", "input_text": "x"}',
        "prompt_audio",
        InvalidTaskError,
        "both 'prompt_speech'",
    ),
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


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "..",
        ".",
        "/abs",
        "a/b",
        "a\\b",
        "",
        "x\x00y",
        "x\ny",
        "tab\there",
        "\x7f",
        ".hidden",
        "trailing.",
        "trailing ",
        " leading",
        "CON",
        "con.txt",
        "Lpt1",
        "a:b",
        "what?",
        "a*b",
        "<x>",
        "x" * 201,
    ],
)
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
    f = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"input_text": "a", "output_name": "Intro"}),
            json.dumps({"input_text": "b", "output_name": "intro"}),
            json.dumps({"input_text": "c", "uttid": "INTRO"}),
            json.dumps({"input_text": "d", "output_name": "Stra\u00dfe"}),
            json.dumps({"input_text": "e", "output_name": "STRASSE"}),  # casefold: ß == ss
            json.dumps({"input_text": "f", "output_name": "e\u0301"}),
            json.dumps({"input_text": "g", "output_name": "\u00e9"}),  # NFC-equal to the previous one
            json.dumps({"input_text": "h", "output_name": "9"}),
            json.dumps({"input_text": "i"}),  # default name "9" is taken by line 8
        ],
    )
    items = read(f)
    assert [type(i).__name__ for i in items] == [
        "Task",
        "InvalidLine",
        "InvalidLine",
        "Task",
        "InvalidLine",
        "Task",
        "InvalidLine",
        "Task",
        "InvalidLine",
    ]
    for bad, first in zip([items[1], items[2], items[4], items[6], items[8]], [1, 1, 4, 6, 8]):
        assert bad.error.field == "output_name"
        assert "duplicate output_name" in str(bad.error) and f"line {first}" in str(bad.error)


def test_iterable_of_dicts(tmp_path: Path) -> None:
    (tmp_path / "p.wav").write_bytes(b"x")
    items = list(
        iter_task_dicts(
            [{"input_text": "a", "prompt_audio": "p.wav"}, "not a mapping", {"syn_text": "b", "uttid": "x"}],
            base_dir=tmp_path,
        )
    )
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
    f = write_lines(
        tmp_path / "t.jsonl",
        [
            '{"input_text": "a\\tb\\nc\\r\\n", "prompt_text": "p\\tq"}',
            '{"input_text": "smile \\ud83d\\ude00", "output_name": "\\ud83d\\ude00"}',  # a pair is one character
        ],
    )
    a, b = read(f)
    assert isinstance(a, Task) and a.text == "a\tb\nc\r\n" and a.prompt_text == "p\tq"
    assert isinstance(b, Task) and b.text == "smile \U0001f600" and b.output_name == "\U0001f600"


def test_overlong_line_is_one_invalid_line_read_in_bounded_chunks(tmp_path: Path) -> None:
    from glmtts_batch.tasks import MAX_LINE_BYTES, iter_open_task_file

    longest_ok = '{"input_text": "y"' + " " * (MAX_LINE_BYTES - 19) + "}"  # exactly the limit, with a CRLF ending
    assert len(longest_ok) == MAX_LINE_BYTES
    f = tmp_path / "t.jsonl"
    f.write_bytes(
        b'{"input_text": "first"}\n'
        + json.dumps({"input_text": "x" * (2 << 20)}).encode()
        + b"\n"
        + b'{"input_text": "third"}\n'
        + longest_ok.encode()
        + b"\r\n"
        + b"z" * (MAX_LINE_BYTES + 1)
    )  # one byte too many, and no final newline

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
        ("Task", 1),
        ("InvalidLine", 2),
        ("Task", 3),
        ("Task", 4),
        ("InvalidLine", 5),
    ]
    assert str(items[1].error) == "line 2: line longer than 1 MiB" and items[1].error.field is None
    assert str(items[4].error) == "line 5: line longer than 1 MiB"
    assert (items[1].output_name, items[4].output_name) == ("2", "5")  # the line-number default name
    assert items[2].text == "third"
    assert source.largest <= MAX_LINE_BYTES + 2  # never a whole 2 MiB line in memory
    assert [i.line for i in read(f)] == [1, 2, 3, 4, 5]


# Encodings and line endings that are not UTF-8 JSONL: each line says what is wrong -------------


@pytest.mark.parametrize("bom", [True, False])
@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_a_utf16_file_is_reported_as_utf16_on_every_line(tmp_path: Path, codec: str, bom: bool) -> None:
    text = '{"input_text": "one"}\r\n{"input_text": "two"}\r\n'
    data = text.encode(codec)
    if bom:
        data = ("\ufeff".encode(codec)) + data
    f = tmp_path / "t.jsonl"
    f.write_bytes(data)
    items = read(f)
    assert items and all(isinstance(i, InvalidLine) for i in items)
    for item in items:
        assert "UTF-16" in str(item.error) and "save it as UTF-8" in str(item.error)
        assert str(item.error).startswith(f"line {item.line}: ")


def test_cr_only_line_endings_are_named(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'{"input_text": "one"}\r{"input_text": "two"}\r{"input_text": "three"}\r')
    (bad,) = read(f)
    assert bad.line == 1 and "CR-only" in str(bad.error) and "LF or CRLF" in str(bad.error)


def test_cr_only_line_endings_in_a_file_over_the_line_limit_are_named(tmp_path: Path) -> None:
    from glmtts_batch.tasks import MAX_LINE_BYTES

    line = b'{"input_text": "' + b"x" * 1000 + b'"}\r'
    f = tmp_path / "t.jsonl"
    f.write_bytes(line * (MAX_LINE_BYTES // len(line) + 2))
    (bad,) = read(f)
    assert "longer than 1 MiB" in str(bad.error) and "CR-only" in str(bad.error)


def test_a_carriage_return_inside_a_string_is_not_blamed_on_line_endings(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'{"input_text": "a\rb"}\n')
    (bad,) = read(f)
    assert "invalid JSON" in str(bad.error) and "CR-only" not in str(bad.error)


def test_a_bom_in_mid_file_is_named_not_python_advice(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"input_text": "one"}\n\xef\xbb\xbf{"input_text": "two"}\n{"input_text": "three"}\n')
    one, two, three = read(f)
    assert isinstance(one, Task) and isinstance(three, Task)
    assert isinstance(two, InvalidLine) and two.line == 2
    message = str(two.error)
    assert "byte order mark" in message and "utf-8-sig" not in message


def test_a_stray_bom_between_tokens_is_named(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "t.jsonl", ['{"input_text": "x",\ufeff "seed": 1}'])
    (bad,) = read(f)
    assert "byte order mark (U+FEFF) at character 19" in str(bad.error)


@pytest.mark.parametrize("digits", ["9" * 5000, "-" + "9" * 5000, "9" * 200])
def test_a_huge_seed_names_the_field_not_the_int_limit(tmp_path: Path, digits: str) -> None:
    f = write_lines(tmp_path / "t.jsonl", ['{"input_text": "x", "seed": ' + digits + "}", '{"input_text": "y"}'])
    bad, ok = read(f)
    assert isinstance(bad, InvalidLine) and isinstance(ok, Task)
    assert bad.error.field == "seed" and bad.seed is None and bad.output_name == "1"
    message = str(bad.error)
    assert message.startswith("line 1: seed ") and "0..2**63-1" in message
    assert "digits" in message and "set_int_max_str_digits" not in message and len(message) < 200


def test_huge_numbers_in_other_fields_and_from_the_python_api(tmp_path: Path) -> None:
    f = write_lines(
        tmp_path / "t.jsonl",
        [
            '{"input_text": ' + "7" * 5000 + "}",
            '{"input_text": "x", "output_name": ' + "7" * 5000 + "}",
        ],
    )
    text, name = read(f)
    assert text.error.field == "input_text" and "must be a string, got a number" in str(text.error)
    assert name.error.field == "output_name" and "longer than 200 bytes" in str(name.error)
    huge = 10**5000
    seed, named = iter_task_dicts([{"input_text": "x", "seed": huge}, {"input_text": "x", "output_name": huge}])
    assert seed.error.field == "seed" and "digits" in str(seed.error) and seed.seed is None
    assert named.error.field == "output_name" and named.output_name is None


# Names that cannot be spoofed or land on a device ---------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "COM¹",
        "com²",
        "LPT³",
        "COM0",
        "lpt0",
        "COM0.wav",
        "com¹.txt",
        "Lpt¹.tar.gz",
        "CONIN$",
        "conout$.x",
        "NUL .txt",
        "ＣＯＭ1",
        "aux",
    ],
)
def test_windows_device_names_in_every_spelling_are_rejected(tmp_path: Path, name: str) -> None:
    f = write_lines(tmp_path / "t.jsonl", [json.dumps({"input_text": "x", "output_name": name})])
    (bad,) = read(f)
    assert bad.error.field == "output_name" and "reserved Windows device name" in str(bad.error)


@pytest.mark.parametrize(
    "char",
    [
        "\u202e",  # RIGHT-TO-LEFT OVERRIDE: "evil\u202evaw.exe" shows as "evilexe.wav"
        "\u202a",
        "\u202b",
        "\u202c",
        "\u202d",  # embeddings, pop, LTR override
        "\u2066",
        "\u2067",
        "\u2068",
        "\u2069",  # isolates
        "\u200e",
        "\u200f",
        "\u061c",  # directional marks
        "\u200b",
        "\u200c",
        "\u200d",
        "\u2060",  # zero-width space / non-joiner / joiner, word joiner
        "\ufeff",  # BOM / zero-width no-break space
        "\u00ad",
        "\u034f",
        "\u180e",
        "\u3164",
        "\ufe0f",
        "\U000e0041",  # other default-ignorables
        "\u2028",
        "\u2029",  # line and paragraph separators
    ],
)
def test_invisible_and_format_characters_are_rejected_in_names(tmp_path: Path, char: str) -> None:
    f = write_lines(tmp_path / "t.jsonl", [json.dumps({"input_text": "x", "output_name": f"chap{char}ter"})])
    (bad,) = read(f)
    assert bad.error.field == "output_name"
    assert f"invisible character U+{ord(char):04X}" in str(bad.error)


def test_visible_non_ascii_names_stay_accepted(tmp_path: Path) -> None:
    names = ["第一章", "naïve", "ﬁle", "שלום", "مرحبا", "emoji😀", "a b"]
    f = write_lines(tmp_path / "t.jsonl", [json.dumps({"input_text": "x", "output_name": n}) for n in names])
    assert [t.output_name for t in read(f)] == names


# Text size ------------------------------------------------------------------------------------


def test_text_over_the_character_limit_is_invalid_naming_input_text(tmp_path: Path) -> None:
    from glmtts_batch.tasks import MAX_TEXT_CHARS

    f = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"input_text": "字" * MAX_TEXT_CHARS, "output_name": "at-limit"}),
            json.dumps({"input_text": "字" * (MAX_TEXT_CHARS + 1), "output_name": "over"}),
        ],
    )
    ok, bad = read(f)
    assert isinstance(ok, Task) and len(ok.text) == MAX_TEXT_CHARS
    assert isinstance(bad, InvalidLine) and bad.error.field == "input_text" and bad.output_name == "over"
    assert f"more than the limit of {MAX_TEXT_CHARS}" in str(bad.error)


# Where relative prompt paths resolve ------------------------------------------------------------


def test_a_pipe_task_source_resolves_prompts_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    import os

    (tmp_path / "voice.wav").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    r, w = os.pipe()
    os.write(w, json.dumps({"input_text": "x", "prompt_audio": "voice.wav"}).encode() + b"\n")
    os.close(w)
    try:
        (task,) = list(iter_task_file(f"/dev/fd/{r}"))  # what `run /dev/stdin` opens: /proc/<pid>/fd/...
    finally:
        os.close(r)
    assert isinstance(task, Task), task.error
    assert task.prompt_audio == tmp_path / "voice.wav"


def test_check_dev_stdin_resolves_prompts_against_the_working_directory(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "voice.wav").write_bytes(b"x")
    line = json.dumps({"input_text": "x", "prompt_audio": "voice.wav"}) + "\n"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run(
        [sys.executable, "-m", "glmtts_batch", "check", "/dev/stdin"],
        check=False,
        input=line,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_linked_task_file_resolves_prompts_against_its_real_folder(tmp_path: Path) -> None:
    real = tmp_path / "jobs"
    real.mkdir()
    (real / "voice.wav").write_bytes(b"x")
    write_lines(real / "t.jsonl", [json.dumps({"input_text": "x", "prompt_audio": "voice.wav"})])
    (tmp_path / "link.jsonl").symlink_to(real / "t.jsonl")
    (task,) = read(tmp_path / "link.jsonl")
    assert task.prompt_audio == real / "voice.wav"


# OS errors on a task's own prompt path -------------------------------------------------------


def test_a_prompt_path_too_long_for_the_os_fails_only_that_task(tmp_path: Path) -> None:
    f = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"input_text": "x", "prompt_audio": "a" * 5000 + ".wav"}),
            json.dumps({"input_text": "y"}),
        ],
    )
    bad, ok = read(f)
    assert isinstance(ok, Task)
    assert isinstance(bad.error, PromptAudioError) and bad.error.field == "prompt_audio"
    assert "File name too long" in str(bad.error) and str(bad.error).startswith("line 1: prompt_audio ")


def test_a_prompt_the_os_refuses_to_stat_fails_only_that_task(tmp_path: Path, monkeypatch) -> None:
    import errno
    import os

    import glmtts_batch.tasks as tasks_module

    real_stat = os.stat

    def stat(path, *a, **kw):
        if str(path).endswith("locked.wav"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(tasks_module.os, "stat", stat)
    f = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"input_text": "x", "prompt_audio": "locked.wav"}),
            json.dumps({"input_text": "y"}),
        ],
    )
    bad, ok = read(f)
    assert isinstance(ok, Task)
    assert isinstance(bad.error, PromptAudioError) and bad.error.field == "prompt_audio"
    assert "Permission denied" in str(bad.error)


def test_run_and_check_record_a_prompt_os_error_as_that_task_invalid(tmp_path: Path) -> None:
    from fake_engines import FakeEngine

    from glmtts_batch.api import check_tasks, run_batch

    f = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"input_text": "x", "prompt_audio": "a" * 300 + ".wav", "output_name": "long"}),
            json.dumps({"input_text": "y", "output_name": "fine"}),
        ],
    )
    report = check_tasks(f)
    assert report.valid == 1 and [(p.line, p.field) for p in report.problems] == [(1, "prompt_audio")]

    summary = run_batch(f, tmp_path / "out", engine=FakeEngine(), progress=False, fsync=False)
    assert (summary.ok, summary.invalid, summary.exit_code) == (1, 1, 1)
    records = [json.loads(x) for x in summary.manifest.read_text().splitlines()]
    assert [(r["output_name"], r["status"]) for r in records] == [("long", "invalid"), ("fine", "ok")]
    assert records[0]["error"]["field"] == "prompt_audio"
    assert "File name too long" in records[0]["error"]["message"]


def test_a_run_of_nul_bytes_is_not_called_utf16(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_bytes(b'{"input_text": "one"}\n' + b"\x00" * 4096 + b"\n")  # what a crash can leave
    ok, bad = read(f)
    assert isinstance(ok, Task) and "all NUL bytes" in str(bad.error) and "UTF-16" not in str(bad.error)


def test_run_from_a_pipe_resolves_prompts_against_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    import os

    from fake_engines import FakeEngine

    from glmtts_batch.api import run_batch

    (tmp_path / "voice.wav").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    r, w = os.pipe()
    os.write(w, json.dumps({"input_text": "x", "prompt_audio": "voice.wav", "output_name": "a"}).encode() + b"\n")
    os.close(w)
    try:
        summary = run_batch(f"/dev/fd/{r}", tmp_path / "out", engine=FakeEngine(), progress=False, fsync=False)
    finally:
        os.close(r)
    (record,) = [json.loads(x) for x in summary.manifest.read_text().splitlines()]
    assert record["status"] == "ok" and record["prompt_audio"] == str(tmp_path / "voice.wav")
    assert record["prompt_base"] == "working_dir"  # a pipe has no folder: the working directory only
