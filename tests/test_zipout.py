"""The run's zip: the same archive zipfile would write, ZIP64 past the classic limits, and
memory that does not grow with the number of members."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from glmtts_batch import zipout
from glmtts_batch.outputs import TEMP_PREFIX, ZIP_COMMENT, temp_path, write_zip
from glmtts_batch.zipout import DEFLATED, StreamingZipWriter

UNZIP = shutil.which("unzip")


def zipfile_reference(
    zip_path: Path, out_dir: Path, manifest: Path, summary: Path, summary_time: tuple[int, ...]
) -> None:
    """The same archive built with Python's zipfile, member by member (the summary from
    bytes, dated `summary_time`, as write_zip adds it before summary.json is on disk)."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.comment = ZIP_COMMENT
        for line in manifest.read_text(encoding="utf-8").splitlines():
            rel = json.loads(line)["wav"]
            if rel:
                zf.write(out_dir / rel, arcname=rel, compress_type=zipfile.ZIP_STORED)
        zf.write(manifest, arcname=manifest.name, compress_type=zipfile.ZIP_DEFLATED)
        member = zipfile.ZipInfo(summary.name, summary_time)
        member.external_attr = 0o100644 << 16
        zf.writestr(member, summary.read_bytes(), zipfile.ZIP_DEFLATED)


def make_job(out: Path, names: list[str]) -> tuple[Path, Path]:
    out.mkdir()
    records = []
    for i, name in enumerate(names):
        (out / f"{name}.wav").write_bytes(b"RIFF" + bytes(range(256)) * (i + 1))
        records.append({"line": i + 1, "status": "ok", "wav": f"{name}.wav", "text": "Chapter one. " * 50})
    records.insert(1, {"line": 99, "status": "failed", "wav": None})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    summary = out / "summary.json"
    summary.write_text(json.dumps({"counts": {"ok": len(names)}}, indent=2) + "\n")
    return manifest, summary


def member_view(path: Path) -> list[tuple]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        return [
            (i.filename, i.compress_type, i.date_time, i.external_attr, i.flag_bits, i.CRC, i.file_size, zf.read(i))
            for i in zf.infolist()
        ]


def assert_unzip_accepts(path: Path) -> None:
    if UNZIP is None:
        return  # zipfile's testzip above is the check then
    done = subprocess.run([UNZIP, "-tqq", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_zip_holds_what_zipfile_would_have_written(tmp_path: Path) -> None:
    out = tmp_path / "job"
    manifest, summary = make_job(out, ["utt001", "chapter 2", "é-nfc", "第一章"])

    assert write_zip(out / "job.zip", out, manifest, summary, summary.read_bytes(), fsync=False) == 4
    with zipfile.ZipFile(out / "job.zip") as zf:
        summary_time = zf.getinfo("summary.json").date_time
    zipfile_reference(tmp_path / "reference.zip", out, manifest, summary, summary_time)

    ours = member_view(out / "job.zip")
    assert ours == member_view(tmp_path / "reference.zip")
    assert [m[0] for m in ours] == [
        "utt001.wav",
        "chapter 2.wav",
        "é-nfc.wav",
        "第一章.wav",
        "manifest.jsonl",
        "summary.json",
    ]
    assert [m[1] for m in ours] == [zipfile.ZIP_STORED] * 4 + [zipfile.ZIP_DEFLATED] * 2
    # Same deflate settings as zipfile, so even the bytes on disk agree.
    assert (out / "job.zip").read_bytes() == (tmp_path / "reference.zip").read_bytes()
    assert_unzip_accepts(out / "job.zip")
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]


def test_more_than_65535_members_get_a_zip64_end_record(tmp_path: Path) -> None:
    src = tmp_path / "tiny.wav"
    src.write_bytes(b"RIFF....WAVE")
    n = zipout.ZIP_FILECOUNT_LIMIT + 10
    path = tmp_path / "many.zip"
    with open(path, "wb") as f, StreamingZipWriter(f, spill_dir=tmp_path) as zf:
        for i in range(n):
            zf.write_file(src, f"{i:06d}.wav")

    assert b"PK\x06\x06" in path.read_bytes()[-200:]
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert len(names) == n
        assert names[-1] == f"{n - 1:06d}.wav"
        assert zf.read(names[-1]) == b"RIFF....WAVE"
        assert zf.testzip() is None
    assert_unzip_accepts(path)


def test_sizes_and_offsets_past_the_limit_use_zip64_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 GiB of test data is too much, so the limit is lowered: the same code paths run."""
    monkeypatch.setattr(zipout, "ZIP64_LIMIT", 1000)
    big = tmp_path / "big.wav"
    big.write_bytes(os.urandom(3000))
    small = tmp_path / "small.json"
    small.write_text("x" * 5000)  # deflates below the limit; still a local ZIP64 record
    path = tmp_path / "big.zip"
    with open(path, "wb") as f, StreamingZipWriter(f, spill_dir=tmp_path) as zf:
        zf.write_file(big, "a.wav")
        zf.write_file(big, "b.wav")  # starts past the (lowered) offset limit
        zf.write_file(small, "c.json", compress=DEFLATED)

    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert [(i.filename, i.file_size) for i in infos] == [("a.wav", 3000), ("b.wav", 3000), ("c.json", 5000)]
        assert infos[1].header_offset > 1000
        assert zf.read("b.wav") == big.read_bytes()
        assert zf.read("c.json") == small.read_bytes()
        assert zf.testzip() is None
    assert_unzip_accepts(path)


def test_memory_does_not_grow_with_the_number_of_members(tmp_path: Path) -> None:
    per_member = measure_growth_per_member(tmp_path, streaming=True)
    assert per_member < 50, f"zip writer holds {per_member:.0f} bytes per member"


def test_the_memory_bound_would_catch_zipfiles_central_directory(tmp_path: Path) -> None:
    """The measurement above can fail: zipfile keeps ~0.5 KB per member until it closes."""
    assert measure_growth_per_member(tmp_path, streaming=False) > 200


def measure_growth_per_member(tmp_path: Path, *, streaming: bool, n: int = 20_000) -> float:
    src = tmp_path / "tiny.wav"
    src.write_bytes(b"RIFF" * 8)
    path = tmp_path / "mem.zip"
    tracemalloc.start()
    try:
        with open(path, "wb") as f:
            if streaming:
                zf = StreamingZipWriter(f, spill_dir=tmp_path)
                add = functools.partial(zf.write_file, src)
            else:
                zf = zipfile.ZipFile(f, "w")
                add = functools.partial(zf.write, src)
            for i in range(100):
                add(f"warmup{i:06d}.wav")
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                add(f"utt{i:06d}.wav")
            after = tracemalloc.get_traced_memory()[0]
            zf.close()
    finally:
        tracemalloc.stop()
    return (after - before) / n


def test_a_failed_zip_leaves_the_old_one_and_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "job"
    manifest, summary = make_job(out, ["a", "b"])
    (out / "job.zip").write_bytes(b"previous archive")
    (out / "b.wav").unlink()

    with pytest.raises(FileNotFoundError):
        write_zip(out / "job.zip", out, manifest, summary, summary.read_bytes(), fsync=False)
    assert (out / "job.zip").read_bytes() == b"previous archive"
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_a_link_planted_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    out = tmp_path / "job"
    manifest, summary = make_job(out, ["a"])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    temp_path(out / "job.zip").symlink_to(victim)

    write_zip(out / "job.zip", out, manifest, summary, summary.read_bytes(), fsync=False)
    assert victim.read_text() == "precious"  # the link itself was removed, not written through
    assert not temp_path(out / "job.zip").is_symlink()
    with zipfile.ZipFile(out / "job.zip") as zf:
        assert zf.namelist() == ["a.wav", "manifest.jsonl", "summary.json"]
