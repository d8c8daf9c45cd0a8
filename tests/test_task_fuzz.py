"""Property: whatever bytes a task file holds, a run never crashes and accounts for every line.

One manifest record per non-blank, non-comment physical line, in order, each with a
known status; bad lines carry an error naming their line. Lines are generated as bytes:
valid JSON with escaped lone surrogates and control characters, and raw invalid UTF-8.
"""

from __future__ import annotations

import json
import tempfile
import unicodedata
from pathlib import Path

from fake_engines import FakeEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmtts_batch import check_tasks, run_batch

KEYS = [
    "input_text",
    "syn_text",
    "prompt_audio",
    "prompt_speech",
    "prompt_text",
    "output_name",
    "uttid",
    "seed",
    "phoneme",
    "bogus",
]

# Text without newlines (a line) and without lone surrogates (not encodable as UTF-8).
line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=30)
# Any code point, lone surrogates and control characters included: JSON-escaped (json.dumps'
# default ensure_ascii), a line can carry them although the file itself is valid UTF-8.
any_text = st.text(st.characters(), max_size=12)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    line_text,
    any_text,
    st.sampled_from(["\ud800", "a\udc80b", "nul\x00", "esc\x1b", "\x7f", "tab\tnl\ncr\r", "\ud83d\ude00"]),
    st.sampled_from(["p.wav", "missing.wav", "../x", "a", "A", "con", "1", ".", "", " "]),
)
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3), max_leaves=5
)
task_object = st.dictionaries(st.sampled_from(KEYS), json_value, max_size=5).map(
    lambda d: d if "input_text" in d or "syn_text" in d else {**d, "input_text": "hello"}
)
valid_task = st.fixed_dictionaries(
    {"input_text": st.sampled_from(["hi", "你好", "x y"])},
    optional={
        "output_name": st.sampled_from(["a", "b", "A", "c1", "../c", "d"]),
        "seed": st.integers(0, 5),
        "phoneme": st.booleans(),
        "prompt_audio": st.sampled_from(["p.wav", "missing.wav"]),
    },
)
# One string field set to text a UTF-8 writer or espeak-ng would choke on, the rest valid.
nasty_text = st.one_of(
    any_text,
    st.sampled_from(["\ud800", "hello \ud800 there", "\udc80", "a\udfffb", "nul\x00", "esc\x1b", "\x7f", "\x85"]),
)
nasty_task = st.builds(
    lambda key, value: {"input_text": "hi", key: value},
    st.sampled_from(["input_text", "prompt_text", "output_name", "prompt_audio"]),
    nasty_text,
)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")


line = st.one_of(
    line_text.map(_utf8),  # garbage, blanks, comments
    st.sampled_from(["", "   ", "# comment", "\t# indented", "{}", "[]", "null", "{", '"x"', "\r"]).map(_utf8),
    task_object.filter(lambda d: not any("\ud800" <= c <= "\udfff" for c in json.dumps(d, ensure_ascii=False))).map(
        lambda d: _utf8(json.dumps(d, ensure_ascii=False))
    ),
    task_object.map(lambda d: _utf8(json.dumps(d))),  # \uXXXX escapes: surrogates, controls
    nasty_task.map(lambda d: _utf8(json.dumps(d))),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),  # raw bytes, often not UTF-8
    task_object.map(lambda d: _utf8(json.dumps(d)).replace(b'"input_text": "', b'"input_text": "\xff\xc3', 1)),
    valid_task.map(lambda d: _utf8(json.dumps(d))),
    valid_task.map(lambda d: _utf8(json.dumps(d))),
)


def expected_lines(data: bytes) -> list[int]:
    """Physical line numbers that must get a record: not blank, not a comment."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file ends with a newline
    numbers = []
    for n, raw in enumerate(lines, start=1):
        content = raw.removesuffix(b"\r").decode("utf-8", "replace")
        if content.strip() and not content.strip().startswith("#"):
            numbers.append(n)
    return numbers


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(line, max_size=12), crlf=st.booleans(), bom=st.booleans())
def test_run_accounts_for_every_line(lines: list[bytes], crlf: bool, bom: bool) -> None:
    newline = b"\r\n" if crlf else b"\n"
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(x + newline for x in lines)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "p.wav").write_bytes(b"prompt")
        tasks = root / "tasks.jsonl"
        tasks.write_bytes(data)

        summary = run_batch(
            tasks,
            root / "out",
            engine=FakeEngine(samples=8),
            progress=False,
            fsync=False,
            make_zip=False,
            log=lambda m: None,
        )
        # strict UTF-8: every record is encodable, whatever the line held
        records = [
            json.loads(x) for x in (root / "out" / "manifest.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
        ]

        assert [r["line"] for r in records] == expected_lines(data)
        statuses = [r["status"] for r in records]
        assert set(statuses) <= {"ok", "invalid"}
        assert (summary.ok, summary.invalid) == (statuses.count("ok"), statuses.count("invalid"))
        assert summary.exit_code == (1 if "invalid" in statuses else 0)
        names = set()
        for r in records:
            if r["status"] == "ok":
                assert (root / "out" / r["wav"]).is_file()
                assert r["wav"] == r["output_name"] + ".wav"
                names.add(r["output_name"].casefold())
            else:
                assert r["error"]["message"].startswith(f"line {r['line']}: ")
                assert r["error"]["type"] in {"InvalidTaskError", "PromptAudioError"}
        assert len(names) == statuses.count("ok")  # no two WAVs collide, even case-insensitively
        # nothing was written outside the output folder
        assert sorted(p.name for p in root.iterdir()) == ["out", "p.wav", "tasks.jsonl"]

        for r in records:  # what reached the engine and the manifest is valid, writable Unicode
            for key in ("output_name", "text", "prompt_text"):
                if r[key] is not None:
                    r[key].encode("utf-8")
            if r["status"] == "ok":  # and texts carry no control characters but tab, CR, LF
                spoken = r["text"] + (r["prompt_text"] or "")
                assert all(unicodedata.category(c) != "Cc" or c in "\t\n\r" for c in spoken), r

        report = check_tasks(tasks)
        assert (report.valid, report.invalid) == (summary.ok, summary.invalid)
        assert [p.line for p in report.problems] == [r["line"] for r in records if r["status"] == "invalid"]
