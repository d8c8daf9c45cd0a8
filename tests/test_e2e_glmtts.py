"""`glmtts-batch run --engine glmtts` and `glmtts-batch check` end to end on a tiny random
checkpoint: statuses, WAV format and length, summary, zip, resume, 32 kHz, folder checks.

Random weights never emit the stop token, so a long text would run to the LM's max_len
(20 tokens per text token) on every piece. The 24 kHz runs therefore cap each piece at
`CAPPED` tokens by passing `force_tokens` through `GlmTtsEngine.load`; everything else is
the real command. The 32 kHz run has short texts only and runs uncapped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from voices import write_voice

from glmtts_batch.cli import main
from glmtts_batch.glmtts.engine import CROSSFADE_MS, GlmTtsEngine

CAPPED = 5
PROMPT_TOKENS = 50  # 2.0 s prompts: 25 speech tokens per second
PROMPT_FRAMES = 100  # and 50 mel frames per second at either output rate
HOP = {24000: 480, 32000: 640}
LONG_TEXT = (
    "今天早上天气很好，我们一起去公园散步。公园里有很多人在锻炼身体，有的跑步，有的打太极拳。"
    "湖边的柳树发出了新芽，小鸟在树上唱歌。我们走了一个小时，然后在长椅上休息了一会儿。"
)


pytestmark = pytest.mark.usefixtures("single_thread")


def expected_samples(speech_tokens: list[int], sample_rate: int) -> int:
    """WAV length from the manifest's token counts: per piece the flow makes
    int((prompt + piece tokens) / 25 * 50) - prompt frames mel frames, the vocoder `hop`
    samples per frame, and neighbouring pieces overlap by min(fade, left // 2, right // 2)."""
    lengths = [(int((PROMPT_TOKENS + n) / 25 * 50) - PROMPT_FRAMES) * HOP[sample_rate] for n in speech_tokens]
    fade = int(round(sample_rate * CROSSFADE_MS / 1000))
    return sum(lengths) - sum(min(fade, a // 2, b // 2) for a, b in zip(lengths, lengths[1:]))


def task(name: str, text: str, voice: str, prompt_text: str | None) -> str:
    fields = {"input_text": text, "prompt_audio": voice, "output_name": name}
    if prompt_text is not None:
        fields["prompt_text"] = prompt_text
    return json.dumps(fields, ensure_ascii=False)


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(args: list[str]):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    write_voice(root / "voices" / "narrator.wav")
    write_voice(root / "voices" / "guest.wav", pitch=140.0, seed=1)
    write_voice(root / "voices" / "clip.wav", seconds=0.4)  # below the 1 s minimum
    lines = [
        "# narrator twice, a guest with a long text, and a prompt that is too short",
        task("greeting", "Hello there world.", "voices/narrator.wav", "a calm narrator voice"),
        task("morning", "Good morning to you.", "voices/narrator.wav", "a calm narrator voice"),
        task("chapter", LONG_TEXT, "voices/guest.wav", "你好，我是客人。"),
        task("broken", "This line cannot be spoken.", "voices/clip.wav", "too short"),
    ]
    (root / "tasks.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@dataclass
class Run:
    exit_code: int
    output: str
    records: list[dict]
    summary: dict
    wav_hashes: dict[str, str]


def capture(out: Path, exit_code: int, output: str) -> Run:
    records = read_manifest(out)
    hashes = {r["output_name"]: sha256(out / r["wav"]) for r in records if r["wav"]}
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return Run(exit_code, output, records, summary, hashes)


@pytest.fixture(scope="module")
def runs_24k(workspace, tiny_checkpoint) -> tuple[Path, Run, Run]:
    """The same command twice: a first run, then a re-run that resumes."""
    out = workspace / "out24"
    args = [
        "run",
        workspace / "tasks.jsonl",
        "--engine",
        "glmtts",
        "--model-dir",
        tiny_checkpoint,
        "--device",
        "cpu",
        "--out",
        out,
        "--no-progress",
    ]
    real_load = GlmTtsEngine.load.__func__

    def capped_load(cls, options, *, log=print, force_tokens=None):
        return real_load(cls, options, log=log, force_tokens=CAPPED)

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GLMTTS_MODEL_DIR", raising=False)
        mp.setattr(GlmTtsEngine, "load", classmethod(capped_load))
        first = invoke(args)
        first_run = capture(out, first.exit_code, first.output)
        second = invoke(args)
        second_run = capture(out, second.exit_code, second.output)
    return out, first_run, second_run


def test_run_writes_one_record_per_task_line_and_exits_1_for_the_failure(runs_24k):
    _, run, _ = runs_24k
    assert run.exit_code == 1, run.output
    assert [(r["line"], r["output_name"], r["status"]) for r in run.records] == [
        (2, "greeting", "ok"),
        (3, "morning", "ok"),
        (4, "chapter", "ok"),
        (5, "broken", "failed"),
    ]
    broken = run.records[3]
    assert broken["error"]["type"] == "PromptAudioError"
    assert broken["error"]["field"] == "prompt_audio"
    assert "clip.wav" in broken["error"]["message"]
    assert broken["wav"] is None


def test_ok_wavs_are_16_bit_mono_at_24k_with_the_length_the_tokens_imply(runs_24k):
    out, run, _ = runs_24k
    for record in run.records[:3]:
        info = sf.info(out / record["wav"])
        assert (info.channels, info.samplerate, info.subtype) == (1, 24000, "PCM_16")
        tokens = record["details"]["speech_tokens"]
        assert tokens == [CAPPED] * len(record["details"]["text_pieces"])
        assert info.frames == expected_samples(tokens, 24000)
        assert record["sample_rate"] == 24000
        assert record["duration_s"] == pytest.approx(info.frames / 24000, abs=1e-3)
        assert record["details"]["prompt_speech_tokens"] == PROMPT_TOKENS
        assert record["engine"] == "glmtts"
    assert len(run.records[2]["details"]["speech_tokens"]) >= 2  # the long text came in pieces


def test_summary_reports_the_prompt_cache_and_the_zip_holds_everything(runs_24k):
    out, run, _ = runs_24k
    stats = run.summary["engine_stats"]
    # narrator: computed once, reused once; guest: once; the short clip: a miss that failed.
    assert stats["prompt_cache_hits"] == 1
    assert stats["prompt_cache_hit_rate"] > 0
    assert run.summary["counts"] == {"ok": 3, "failed": 1, "invalid": 0, "skipped": 0}
    assert run.summary["engine"]["name"] == "glmtts"
    assert run.summary["engine"]["sample_rate"] == 24000

    with zipfile.ZipFile(out / "tasks.zip") as zf:
        names = set(zf.namelist())
        wavs = {r["wav"] for r in run.records if r["wav"]}
        assert names == wavs | {"manifest.jsonl", "summary.json"}
        for record in run.records[:3]:
            assert hashlib.sha256(zf.read(record["wav"])).hexdigest() == record["sha256"]


def test_rerunning_the_command_resumes_the_finished_tasks(runs_24k):
    _, first, second = runs_24k
    assert second.exit_code == 1, second.output  # the broken line still fails
    assert [(r["output_name"], r["status"], r["resumed"]) for r in second.records] == [
        ("greeting", "ok", True),
        ("morning", "ok", True),
        ("chapter", "ok", True),
        ("broken", "failed", False),
    ]
    assert second.wav_hashes == first.wav_hashes
    for before, after in zip(first.records[:3], second.records[:3]):
        assert after["reason"] is None
        assert (after["sha256"], after["details"]) == (before["sha256"], before["details"])
    assert second.summary["resumed"] == 3


def test_32k_run_uncapped(workspace, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("GLMTTS_MODEL_DIR", raising=False)
    tasks = workspace / "short.jsonl"
    tasks.write_text(
        task("a", "Hi there.", "voices/narrator.wav", "a calm narrator voice")
        + "\n"
        + task("b", "Good night.", "voices/narrator.wav", "a calm narrator voice")
        + "\n",
        encoding="utf-8",
    )
    out = workspace / "out32"
    result = invoke(
        [
            "run",
            tasks,
            "--engine",
            "glmtts",
            "--model-dir",
            tiny_checkpoint,
            "--device",
            "cpu",
            "--sample-rate",
            "32000",
            "--out",
            out,
            "--no-progress",
        ]
    )
    assert result.exit_code == 0, result.output
    records = read_manifest(out)
    assert [r["status"] for r in records] == ["ok", "ok"]
    for record in records:
        info = sf.info(out / record["wav"])
        assert (info.channels, info.samplerate, info.subtype) == (1, 32000, "PCM_16")
        (n,) = record["details"]["speech_tokens"]
        assert n > 0 and record["details"]["stop_reasons"] in (["eoa"], ["max_len"])
        assert info.frames == expected_samples([n], 32000)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["engine"]["sample_rate"] == 32000
    assert summary["engine_stats"]["prompt_cache_hit_rate"] == 0.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_run_with_cuda_on_a_cpu_only_machine_exits_2(workspace, tiny_checkpoint):
    out = workspace / "out-cuda"
    result = invoke(
        [
            "run",
            workspace / "tasks.jsonl",
            "--engine",
            "glmtts",
            "--model-dir",
            tiny_checkpoint,
            "--device",
            "cuda",
            "--out",
            out,
            "--no-progress",
        ]
    )
    assert result.exit_code == 2
    assert "cuda" in result.output.lower()
    assert not (out / "manifest.jsonl").exists()


def test_check_validates_the_task_file_and_the_checkpoint_folder(workspace, tiny_checkpoint):
    result = invoke(["check", workspace / "tasks.jsonl", "--model-dir", tiny_checkpoint])
    assert f"checkpoint {tiny_checkpoint}: ok" in result.output
    # The 0.4 s prompt is one `run` fails (see the run tests above): with a model folder,
    # check holds every task to the engine's input rules and says so before any model loads.
    assert "line 5: invalid [prompt_audio] PromptAudioError" in result.output and "too short" in result.output
    assert "3 valid, 1 invalid" in result.output
    assert result.exit_code == 1, result.output


def test_check_lists_every_problem_of_a_broken_checkpoint(workspace, tiny_checkpoint, tmp_path):
    broken = Path(shutil.copytree(tiny_checkpoint, tmp_path / "broken"))
    (broken / "llm" / "model-00002-of-00002.safetensors").unlink()
    (broken / "flow" / "config.yaml").unlink()
    (broken / "speech_tokenizer" / "config.json").write_text("{not json", encoding="utf-8")
    result = invoke(["check", workspace / "tasks.jsonl", "--model-dir", broken])
    assert result.exit_code != 0
    assert "model-00002-of-00002.safetensors" in result.output
    assert "flow/config.yaml" in result.output
    assert "speech_tokenizer/config.json" in result.output
    assert "3 valid, 1 invalid" in result.output  # the lines are held to the engine's rules all the same
