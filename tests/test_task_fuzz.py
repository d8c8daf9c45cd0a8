"""Property: whatever bytes a task file holds, a run never crashes and accounts for every line.

One manifest record per non-blank, non-comment physical line, in order, each with a
known status; bad lines carry an error naming their line.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fake_engines import FakeEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmtts_batch import check_tasks, run_batch

KEYS = ["input_text", "syn_text", "prompt_audio", "prompt_speech", "prompt_text", "output_name", "uttid",
        "seed", "phoneme", "bogus"]

# Text without newlines (a line) and without lone surrogates (not encodable as UTF-8).
line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=30)
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), line_text,
    st.sampled_from(["p.wav", "missing.wav", "../x", "a", "A", "con", "1", ".", "", " "]),
)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(line_text, inner, max_size=3), max_leaves=5)
task_object = st.dictionaries(st.sampled_from(KEYS), json_value, max_size=5).map(
    lambda d: d if "input_text" in d or "syn_text" in d else {**d, "input_text": "hello"})
valid_task = st.fixed_dictionaries(
    {"input_text": st.sampled_from(["hi", "你好", "x y"])},
    optional={"output_name": st.sampled_from(["a", "b", "A", "c1", "../c", "d"]), "seed": st.integers(0, 5),
              "phoneme": st.booleans(), "prompt_audio": st.sampled_from(["p.wav", "missing.wav"])},
)
line = st.one_of(
    line_text,  # garbage, blanks, comments
    st.sampled_from(["", "   ", "# comment", "\t# indented", "{}", "[]", "null", "{", '"x"', "\r"]),
    task_object.map(lambda d: json.dumps(d, ensure_ascii=False)),
    valid_task.map(json.dumps),
    valid_task.map(json.dumps),
)


def expected_lines(text: str) -> list[int]:
    """Physical line numbers that must get a record: not blank, not a comment."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    numbers = []
    for n, content in enumerate(lines, start=1):
        content = content.removesuffix("\r")
        if content.strip() and not content.strip().startswith("#"):
            numbers.append(n)
    return numbers


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(line, max_size=12), crlf=st.booleans(), bom=st.booleans())
def test_run_accounts_for_every_line(lines: list[str], crlf: bool, bom: bool) -> None:
    newline = "\r\n" if crlf else "\n"
    text = ("\ufeff" if bom else "") + "".join(x + newline for x in lines)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "p.wav").write_bytes(b"prompt")
        tasks = root / "tasks.jsonl"
        tasks.write_bytes(text.encode("utf-8"))

        summary = run_batch(tasks, root / "out", engine=FakeEngine(samples=8), progress=False, fsync=False,
                            make_zip=False, log=lambda m: None)
        records = [json.loads(x) for x in (root / "out" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]

        assert [r["line"] for r in records] == expected_lines(text)
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

        report = check_tasks(tasks)
        assert (report.valid, report.invalid) == (summary.ok, summary.invalid)
