"""Journal compaction: each output name's latest entry survives, byte for byte, and a crash at
any point leaves a complete journal."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from glmtts_batch import journal_compact
from glmtts_batch.journal_compact import COMPACT_SUFFIX, compact_journal
from glmtts_batch.manifest import JOURNAL_NAME, Journal, Record
from glmtts_batch.outputs import STATE_DIR
from glmtts_batch.tasks import Task


def journal_in(out: Path) -> Journal:
    return Journal(out, fsync=False)


def write_wav_and_journal(journal: Journal, out: Path, name: str, content: bytes, key: str) -> None:
    (out / f"{name}.wav").write_bytes(content)
    record = Record(
        line=1, output_name=name, status="ok", wav=f"{name}.wav", sha256=hashlib.sha256(content).hexdigest()
    )
    journal.append(key, record)


def make_history(out: Path, rounds: int, names: list[str]) -> None:
    """`rounds` runs that each re-synthesised every name (new key, new WAV)."""
    out.mkdir(exist_ok=True)
    journal = journal_in(out)
    for r in range(rounds):
        for name in names:
            write_wav_and_journal(journal, out, name, f"{name} round {r}".encode(), key=f"{name}-{r}")
    journal.close()


def journal_lines(out: Path) -> list[bytes]:
    return (out / STATE_DIR / JOURNAL_NAME).read_bytes().splitlines(keepends=True)


def test_only_the_latest_entry_of_each_name_is_kept_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = ["a", "A", "b", "\u00e9", "e\u0301"]  # case and NFC/NFD variants are different names
    make_history(out, 3, names)
    before = journal_lines(out)

    result = compact_journal(out / STATE_DIR / JOURNAL_NAME, min_stale=0, fsync=False)

    assert (result.lines, result.live, result.stale, result.rewritten) == (15, 5, 10, True)
    assert journal_lines(out) == before[-5:]  # the last round, bytes unchanged


def test_a_compacted_journal_resumes_exactly_as_the_long_one_did(tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = [f"utt{i}" for i in range(20)]
    make_history(out, 4, names)
    journal = journal_in(out)
    write_wav_and_journal(journal, out, "utt3", b"redone once more", key="utt3-late")
    journal.close()

    def resume_view() -> list:
        j = journal_in(out)
        try:
            view = [(j.knows(n), j.lookup(Task(line=1, text="x", output_name=n), f"{n}-3", f"{n}.wav")) for n in names]
            view.append(j.lookup(Task(line=1, text="x", output_name="utt3"), "utt3-late", "utt3.wav"))
        finally:
            j.close()
        return view

    expected = resume_view()
    assert compact_journal(out / STATE_DIR / JOURNAL_NAME, fsync=False, min_stale=10).rewritten
    assert len(journal_lines(out)) == 20
    assert resume_view() == expected
    assert expected[3][1] is None and expected[-1]["sha256"] == hashlib.sha256(b"redone once more").hexdigest()


def test_torn_and_garbage_lines_are_dropped(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_history(out, 2, ["a"])
    path = out / STATE_DIR / JOURNAL_NAME
    with open(path, "ab") as f:
        f.write(b'not json\n[1, 2]\n{"v": 1, "output_name": 7}\n{"v": 1, "key": "k", "outp')

    result = compact_journal(path, min_stale=0, fsync=False)

    assert (result.lines, result.live) == (5, 1)
    assert [json.loads(x)["key"] for x in journal_lines(out)] == ["a-1"]


def test_a_journal_with_entries_of_another_version_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_history(out, 3, ["a"])
    path = out / STATE_DIR / JOURNAL_NAME
    with open(path, "ab") as f:
        f.write(b'{"v": 2, "output_name": "a", "future": true}\n')
    before = path.read_bytes()

    result = compact_journal(path, min_stale=0, fsync=False)

    assert not result.rewritten and "version" in result.reason
    assert path.read_bytes() == before


def test_it_waits_until_stale_lines_are_many_and_outnumber_live_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_history(out, 2, [f"n{i}" for i in range(30)])  # 30 live, 30 stale
    path = out / STATE_DIR / JOURNAL_NAME
    inode = path.stat().st_ino

    assert not compact_journal(path, min_stale=31, fsync=False).rewritten
    assert path.stat().st_ino == inode

    make_history(out, 1, [f"m{i}" for i in range(5)])  # 35 live, 30 stale: stale < live
    assert not compact_journal(path, min_stale=10, fsync=False).rewritten
    assert compact_journal(path, min_stale=10, fsync=False).live == 35

    make_history(out, 1, [f"n{i}" for i in range(30)])  # 35 live, 60 stale
    result = compact_journal(path, min_stale=10, fsync=False)
    assert result.rewritten and len(journal_lines(out)) == 35


def test_a_crash_before_the_rename_leaves_the_old_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    make_history(out, 3, ["a", "b"])
    path = out / STATE_DIR / JOURNAL_NAME
    before = path.read_bytes()

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_compact.os, "replace", crash)
    with pytest.raises(OSError):
        compact_journal(path, min_stale=0, fsync=True)
    assert path.read_bytes() == before
    assert not path.with_name(path.name + COMPACT_SUFFIX).exists()


def test_a_leftover_temp_file_or_planted_link_is_replaced_not_followed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_history(out, 2, ["a"])
    path = out / STATE_DIR / JOURNAL_NAME
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, path.with_name(path.name + COMPACT_SUFFIX))

    assert compact_journal(path, min_stale=0, fsync=True).rewritten
    assert victim.read_text() == "precious"
    assert len(journal_lines(out)) == 1
    assert not path.with_name(path.name + COMPACT_SUFFIX).exists()


def test_an_empty_or_missing_journal_needs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    journal_in(out).close()
    path = out / STATE_DIR / JOURNAL_NAME
    result = compact_journal(path, min_stale=0, fsync=False)
    assert (result.lines, result.live) == (0, 0)
    assert path.read_bytes() == b""


def test_an_entry_glued_after_torn_bytes_is_kept_by_compaction(tmp_path: Path) -> None:
    # An older version appended after a failed write: its entry is glued onto the torn bytes.
    # The Journal reads such an entry, so compaction must not drop it as garbage.
    out = tmp_path / "out"
    make_history(out, 3, ["a", "b"])
    path = out / STATE_DIR / JOURNAL_NAME
    lines = journal_lines(out)
    glued = b'{"v": 1, "key": "torn' + lines[-1]  # b's latest entry, after torn bytes
    path.write_bytes(b"".join(lines[:-1]) + glued)

    result = compact_journal(path, min_stale=0, fsync=False)

    assert result.rewritten and journal_lines(out) == [lines[-2], glued]
    j = journal_in(out)
    try:
        found = j.lookup(Task(line=1, text="x", output_name="b"), "b-2", "b.wav")
    finally:
        j.close()
    assert found is not None and found["sha256"] == hashlib.sha256(b"b round 2").hexdigest()
