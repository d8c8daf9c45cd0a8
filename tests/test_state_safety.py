"""Nothing lost, nothing written outside the output folder (issue 9, state and ownership).

The tool writes a file only where it wrote one before or nothing exists; it never follows a
link for a file it writes; an output folder belongs to one job; its own WAVs are recognised
without the journal; state read back is checked; the manifest describes the outputs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from fake_engines import FakeEngine
from run_files import manifest, write_tasks

from glmtts_batch import RunError, Summary, run_batch
from glmtts_batch.engines.base import Synthesis, SynthesisRequest
from glmtts_batch.errors import EXIT_OUTPUT_ERROR, EXIT_RUN_ERROR
from glmtts_batch.outputs import TEMP_PREFIX

STATE = ".glmtts-batch"


def run(tasks, out: Path, engine=None, **kw) -> Summary:
    kw.setdefault("progress", False)
    kw.setdefault("fsync", False)
    return run_batch(tasks, out, engine=engine or FakeEngine(), **kw)


def three_tasks(tmp_path: Path, name: str = "t.jsonl") -> Path:
    return write_tasks(tmp_path / name, [{"input_text": t, "output_name": t} for t in ("a", "b", "c")])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TaglessWriter:
    """A format with no room for a tag (only the journal knows its files)."""

    suffix = "f32"
    format = "raw-f32le"

    def encode(self, audio: np.ndarray, sample_rate: int, tag=None) -> tuple[bytes, int]:
        samples = np.asarray(audio, dtype="<f4").reshape(-1)
        return samples.tobytes(), samples.size

    def read_tag(self, fd: int):
        return None


# Files the tool did not write -----------------------------------------------------------


def test_the_task_file_is_never_the_manifest(tmp_path: Path) -> None:
    """`run dir/manifest.jsonl --out dir` once overwrote the task file with the manifest."""
    out = tmp_path / "dir"
    out.mkdir()
    tasks = three_tasks(out, "manifest.jsonl")
    before = tasks.read_bytes()
    with pytest.raises(RunError, match="manifest.jsonl.*task file") as exc:
        run(tasks, out)
    assert exc.value.exit_code == EXIT_RUN_ERROR
    assert tasks.read_bytes() == before
    assert not list(out.glob("*.wav"))  # refused before any task ran


@pytest.mark.parametrize("name", ["summary.json", "t.zip"])
def test_a_users_summary_or_zip_in_out_is_not_overwritten(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"the user's own file")
    with pytest.raises(RunError, match=f"{name}.*not written by glmtts-batch"):
        run(three_tasks(tmp_path), out)
    assert (out / name).read_bytes() == b"the user's own file"


def test_a_no_zip_run_leaves_a_zip_it_did_not_write(tmp_path: Path) -> None:
    """--no-zip used to delete <stem>.zip, e.g. the archive the job came in."""
    out = tmp_path / "out"
    out.mkdir()
    with zipfile.ZipFile(out / "t.zip", "w") as zf:
        zf.writestr("t.jsonl", "the job as it was delivered")
    delivered = (out / "t.zip").read_bytes()
    s = run(three_tasks(tmp_path), out, make_zip=False)
    assert (s.ok, s.zip, s.exit_code) == (3, None, 0)
    assert (out / "t.zip").read_bytes() == delivered

    # A run that would write the zip is refused before any task (and so never interrupted
    # with the zip deleted): the file is not the tool's.
    with pytest.raises(RunError, match="t.zip"):
        run(three_tasks(tmp_path), out)
    assert (out / "t.zip").read_bytes() == delivered


def test_a_stale_zip_of_ours_is_still_removed_by_a_no_zip_run(tmp_path: Path) -> None:
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    assert run(tasks, out).zip == out / "t.zip"
    assert run(tasks, out, make_zip=False).zip is None
    assert not (out / "t.zip").exists()  # it no longer matched the manifest


# Ownership by exact name ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "users"),
    [("A", "a"), (unicodedata.normalize("NFC", "caf\u00e9"), unicodedata.normalize("NFD", "caf\u00e9"))],
)
def test_ownership_is_by_exact_name(tmp_path: Path, written: str, users: str) -> None:
    out = tmp_path / "out"
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "x", "output_name": written}])
    assert run(f, out).ok == 1
    if (out / f"{users}.wav").exists():
        pytest.skip("case-insensitive or normalising file system: the two names are one file")
    (out / f"{users}.wav").write_bytes(b"the user's file")
    f = write_tasks(tmp_path / "t.jsonl", [{"input_text": "y", "output_name": users}])
    s = run(f, out)
    assert (s.ok, s.failed) == (0, 1)
    assert manifest(out)[0]["error"]["field"] == "output_name"
    assert (out / f"{users}.wav").read_bytes() == b"the user's file"


# Symbolic links -------------------------------------------------------------------------


class LinkPlantingEngine(FakeEngine):
    """Plants a link at the temp name the run is about to use (after the start-up cleanup)."""

    def __init__(self, out: Path, victim: Path, names: list[str]) -> None:
        super().__init__()
        self.out, self.victim, self.names = out, victim, names

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        for name in self.names:
            link = self.out / f"{TEMP_PREFIX}{os.getpid()}-{name}"
            if not os.path.lexists(link):
                link.symlink_to(self.victim)
        return super().synthesize(request)


def test_a_link_at_a_temp_name_is_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"{TEMP_PREFIX}1-a.wav"  # a stale temp name planted before the run
    stale.symlink_to(victim)
    engine = LinkPlantingEngine(out, victim, ["a.wav", "b.wav", "manifest.jsonl", "summary.json", "t.zip"])
    s = run(three_tasks(tmp_path), out, engine=engine)
    assert (s.ok, s.exit_code) == (3, 0)
    assert victim.read_bytes() == b"precious"
    assert not os.path.lexists(stale)  # the cleanup removes links without following them
    assert sf.info(out / "a.wav").frames == 1600
    assert len(manifest(out)) == 3


def test_a_link_at_the_journal_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "out"
    (out / STATE).mkdir(parents=True)
    (out / STATE / "journal.jsonl").symlink_to(victim)
    with pytest.raises(RunError, match="journal.jsonl.*symbolic link"):
        run(three_tasks(tmp_path), out)
    assert victim.read_bytes() == b"precious\n"


def test_a_link_at_the_state_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / STATE).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunError, match="symbolic link"):
        run(three_tasks(tmp_path), out)
    assert not (elsewhere / "journal.jsonl").exists() and not (elsewhere / "owner.json").exists()


# One job per output folder --------------------------------------------------------------


def test_another_task_file_is_refused_unless_adopted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job_a = write_tasks(tmp_path / "a.jsonl", [{"input_text": "from A", "output_name": "ch1"}])
    job_b = write_tasks(tmp_path / "b.jsonl", [{"input_text": "from B", "output_name": "ch1"}])
    assert run(job_a, out).ok == 1
    a_wav, a_manifest = (out / "ch1.wav").read_bytes(), (out / "manifest.jsonl").read_bytes()

    with pytest.raises(RunError, match="belongs to another job.*a.jsonl.*--adopt") as exc:
        run(job_b, out)
    assert exc.value.exit_code == EXIT_RUN_ERROR
    assert (out / "ch1.wav").read_bytes() == a_wav
    assert (out / "manifest.jsonl").read_bytes() == a_manifest

    s = run(job_b, out, adopt=True)
    assert (s.ok, s.resumed) == (1, 0)
    assert manifest(out)[0]["text"] == "from B"
    with pytest.raises(RunError, match="belongs to another job"):
        run(job_a, out)  # B owns it now


def test_the_same_job_moved_or_edited_still_owns_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tasks = three_tasks(tmp_path)
    assert run(tasks, out).ok == 3
    moved = tasks.rename(tmp_path / "renamed.jsonl")  # same file identity
    assert run(moved, out).resumed == 3
    moved.rename(tasks)
    assert run(tasks, out).resumed == 3
    write_tasks(tmp_path / "new.jsonl", [{"input_text": "a", "output_name": "a"}]).replace(tasks)  # new inode
    assert run(tasks, out).resumed == 1


def test_mappings_own_a_folder_under_their_own_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run([{"input_text": "a"}], out).ok == 1
    assert run([{"input_text": "a"}], out).resumed == 1
    owner = json.loads((out / STATE / "owner.json").read_text())
    assert owner["owner"]["task_source"] == "<mappings>"
    with pytest.raises(RunError, match="belongs to another job.*<mappings>"):
        run(three_tasks(tmp_path), out)


def test_cli_adopt_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from glmtts_batch import cli

    monkeypatch.setattr("glmtts_batch.api._load_engine", lambda name, options, log: FakeEngine())
    out = tmp_path / "out"
    args = ["--out", str(out), "--no-progress", "--no-zip"]
    runner = CliRunner()
    assert runner.invoke(cli.main, ["run", str(three_tasks(tmp_path, "a.jsonl")), *args]).exit_code == 0
    b = three_tasks(tmp_path, "b.jsonl")
    refused = runner.invoke(cli.main, ["run", str(b), *args])
    assert refused.exit_code == 2 and "--adopt" in refused.output
    assert runner.invoke(cli.main, ["run", str(b), *args, "--adopt"]).exit_code == 0


# The journal -----------------------------------------------------------------------------


def test_an_entry_glued_onto_a_torn_line_is_recovered(tmp_path: Path) -> None:
    """A full disk tore an append and the next entry was written right after the torn bytes."""
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    assert run(tasks, out, writer=TaglessWriter()).ok == 3
    journal = out / STATE / "journal.jsonl"
    a, b, c = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(a + b[: len(b) // 2] + c)  # b's append tore; c was glued onto it
    (out / "b.f32").unlink()  # b's rename never happened
    engine = FakeEngine()
    s = run(tasks, out, engine=engine, writer=TaglessWriter())
    assert [r.text for r in engine.requests] == ["b"]
    assert (s.ok, s.resumed, s.failed) == (3, 2, 0)
    assert json.loads(journal.read_bytes().splitlines()[-1])["output_name"] == "b"  # on a line of its own
    assert run(tasks, out, writer=TaglessWriter()).resumed == 3


def test_an_append_torn_by_a_full_disk_is_cut_and_the_next_starts_a_fresh_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import glmtts_batch.manifest as manifest_module

    real_write = os.write
    calls = {"n": 0}

    def write_half_then_fail(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the second journal append: half of it reaches the disk
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(manifest_module.os, "write", write_half_then_fail, raising=True)
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    s = run(tasks, out, writer=TaglessWriter())
    monkeypatch.undo()
    assert (s.ok, s.failed) == (2, 1)
    assert [r["status"] for r in manifest(out)] == ["ok", "failed", "ok"]
    lines = (out / STATE / "journal.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["output_name"] for line in lines] == ["a", "c"]
    again = run(tasks, out, writer=TaglessWriter())
    assert (again.ok, again.resumed, again.failed) == (3, 2, 0)


def test_a_journal_entry_pointing_outside_the_folder_is_ignored(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not for the zip")
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    assert run(tasks, out).ok == 3
    journal = out / STATE / "journal.jsonl"
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    entries[0]["record"]["wav"] = "../secret.txt"
    entries[0]["record"]["sha256"] = sha(secret)
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries))
    s = run(tasks, out)
    assert all(not r["wav"].startswith("..") for r in manifest(out))
    with zipfile.ZipFile(s.zip) as zf:
        assert not [n for n in zf.namelist() if ".." in n]
    assert [(r["wav"], r["resumed"]) for r in manifest(out)] == [("a.wav", True), ("b.wav", True), ("c.wav", True)]


# Recognising our own WAVs without the journal -------------------------------------------


def test_wavs_carry_a_riff_info_tag_naming_the_tool_and_the_resume_key(tmp_path: Path) -> None:
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    run(tasks, out)
    record = manifest(out)[0]
    with sf.SoundFile(out / "a.wav") as f:
        software, comment = f.software, f.comment
        assert (f.frames, f.samplerate, f.subtype) == (1600, 16000, "PCM_16")
    assert software.startswith("glmtts-batch ")
    assert record["sha256"] == sha(out / "a.wav")  # of the final file, tag included
    journal = [json.loads(line) for line in (out / STATE / "journal.jsonl").read_text().splitlines()]
    assert comment == f"resume key {journal[0]['key']}"


@pytest.mark.parametrize("how", ["state deleted", "copied without dot files"])
def test_a_lost_journal_still_resumes_the_tools_own_wavs(tmp_path: Path, how: str) -> None:
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    first = run(tasks, out)
    reference = manifest(out)
    if how == "state deleted":
        shutil.rmtree(out / STATE)
    else:
        copy = tmp_path / "copy"
        copy.mkdir()
        for p in out.iterdir():
            if not p.name.startswith("."):
                shutil.copy2(p, copy / p.name)
        out = copy
    engine = FakeEngine()
    s = run(tasks, out, engine=engine)
    assert (s.ok, s.resumed, s.failed, s.exit_code, engine.requests) == (3, 3, 0, 0, [])
    for before, after in zip(reference, manifest(out), strict=True):
        assert (after["status"], after["resumed"], after["sha256"], after["wav"]) == (
            "ok",
            True,
            before["sha256"],
            before["wav"],
        )
    assert s.zip is not None and s.zip.exists() and first.zip is not None
    # the journal was rebuilt: the next run resumes from it
    assert run(tasks, out).resumed == 3 and len((out / STATE / "journal.jsonl").read_bytes().splitlines()) == 3


def test_no_resume_without_a_journal_redoes_every_wav_the_tool_wrote_and_no_other(tmp_path: Path) -> None:
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    run(tasks, out)
    shutil.rmtree(out / STATE)
    (out / "c.wav").write_bytes(b"the user's own c.wav")
    engine = FakeEngine()
    s = run(tasks, out, engine=engine, resume=False)
    assert [r.text for r in engine.requests] == ["a", "b"]
    assert (s.ok, s.resumed, s.failed) == (2, 0, 1)
    assert (out / "c.wav").read_bytes() == b"the user's own c.wav"


def test_a_tagged_wav_with_another_key_is_replaced_without_the_journal(tmp_path: Path) -> None:
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    run(tasks, out)
    shutil.rmtree(out / STATE)
    tasks = write_tasks(tasks, [{"input_text": t.upper(), "output_name": t} for t in ("a", "b", "c")])
    engine = FakeEngine()
    s = run(tasks, out, engine=engine)
    assert (s.ok, s.resumed, s.failed, len(engine.requests)) == (3, 0, 0, 3)


# The manifest describes the outputs ---------------------------------------------------------


def test_a_resumed_run_reports_every_finished_task_as_ok(tmp_path: Path) -> None:
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    run(tasks, out)
    s = run(tasks, out)
    assert (s.ok, s.resumed, s.skipped, s.exit_code) == (3, 3, 0, 0)
    assert [(r["status"], r["resumed"], r["reason"]) for r in manifest(out)] == [("ok", True, None)] * 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 3, "failed": 0, "invalid": 0, "skipped": 0}
    assert (summary["resumed"], summary["not_run"], summary["exit_code"]) == (3, 0, 0)


# The zip and summary.json ----------------------------------------------------------------


def disk_fills_while_zipping(monkeypatch: pytest.MonkeyPatch) -> None:
    """The zip writer gets part-way through its temp file, then the disk is full."""
    import glmtts_batch.runner as runner_module
    from glmtts_batch.outputs import atomic_file

    def write_zip(zip_path: Path, *args, fsync: bool = True, **kw) -> int:
        with atomic_file(zip_path, fsync=fsync) as f:
            f.write(b"PK\x03\x04 the first members")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner_module, "write_zip", write_zip)


def test_a_zip_that_cannot_be_written_is_a_clear_error_and_summary_names_no_zip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks, out = three_tasks(tmp_path), tmp_path / "out"
    disk_fills_while_zipping(monkeypatch)
    with pytest.raises(RunError, match="t.zip.*No space left on device.*run the same command again") as exc:
        run(tasks, out)
    monkeypatch.undo()
    assert exc.value.exit_code == EXIT_OUTPUT_ERROR
    assert not (out / "t.zip").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["zip"] is None and "No space left" in summary["error"]["message"]
    assert summary["exit_code"] == EXIT_OUTPUT_ERROR
    assert len(manifest(out)) == 3

    s = run(tasks, out)  # a re-run completes
    assert (s.ok, s.resumed, s.exit_code) == (3, 3, 0)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["zip"], summary["error"]) == ("t.zip", None)
    with zipfile.ZipFile(out / "t.zip") as zf:
        assert json.loads(zf.read("summary.json"))["zip"] == "t.zip"
        assert sorted(zf.namelist()) == ["a.wav", "b.wav", "c.wav", "manifest.jsonl", "summary.json"]


def test_a_zip_failure_exits_3_from_the_cli_with_the_zip_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from glmtts_batch import cli

    monkeypatch.setattr("glmtts_batch.api._load_engine", lambda name, options, log: FakeEngine())
    disk_fills_while_zipping(monkeypatch)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli.main, ["run", str(three_tasks(tmp_path)), "--out", str(out), "--no-progress"])
    assert r.exit_code == EXIT_OUTPUT_ERROR, r.output
    assert "error: cannot write" in r.output and "t.zip" in r.output and "No space left" in r.output


def test_the_wav_tag_keeps_the_audio_and_reads_back() -> None:
    from glmtts_batch.writers import WavWriter, our_tag

    writer, key = WavWriter(), "ab" * 32
    audio = np.sin(np.arange(999, dtype=np.float32) / 7)
    tagged, n = writer.encode(audio, 22050, our_tag(key))
    plain, m = writer.encode(audio, 22050)
    assert n == m == 999 and b"LIST" in tagged and b"LIST" not in plain
    pcm_tagged, rate = sf.read(io.BytesIO(tagged), dtype="int16")
    pcm_plain, _ = sf.read(io.BytesIO(plain), dtype="int16")
    assert rate == 22050 and np.array_equal(pcm_tagged, pcm_plain)
    r, w = os.pipe()
    os.close(w)
    try:
        assert writer.read_tag(r) is None  # not a WAV: no tag, no error
    finally:
        os.close(r)


def test_an_earlier_output_used_as_a_prompt_is_never_overwritten(tmp_path: Path) -> None:
    """Chaining jobs: line 1 clones the voice of a WAV the tool wrote; line 2 has that WAV's name."""
    out = tmp_path / "out"
    first = write_tasks(tmp_path / "t.jsonl", [{"input_text": "the narrator", "output_name": "voice"}])
    assert run(first, out).ok == 1
    voice = (out / "voice.wav").read_bytes()
    chained = write_tasks(
        tmp_path / "t.jsonl",
        [
            {"input_text": "in that voice", "output_name": "next", "prompt_audio": "out/voice.wav"},
            {"input_text": "something else", "output_name": "voice"},
        ],
    )
    s = run(chained, out)
    assert (s.ok, s.failed) == (1, 1)
    assert "prompt file" in manifest(out)[1]["error"]["message"]
    assert (out / "voice.wav").read_bytes() == voice
