"""The embedded espeak-ng engine: speaks Chinese, English and mixed text offline."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from glmtts_batch.engines.base import Engine, EngineOptions, SynthesisRequest
from glmtts_batch.engines.espeak import (
    AUDIO_VERSION,
    RUN_PAUSE_S,
    EspeakEngine,
    TextRun,
    open_library,
    split_runs,
)
from glmtts_batch.errors import EngineLoadError, TaskError

ENGLISH = "Hello world, this is a short test of the offline engine."
CHINESE = "今天天气很好，我们一起去公园散步吧。"
MIXED = "我们用 GLM-TTS 合成 speech，效果 very good。"


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine.load(EngineOptions())


def request(text: str, *, prompt_audio: Path | None = None, seed: int = 0) -> SynthesisRequest:
    return SynthesisRequest(text=text, prompt_audio=prompt_audio, prompt_text=None, seed=seed)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def test_engine_info_describes_espeak(engine: EspeakEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.info.name == "espeak"
    assert engine.info.clones_voice is False
    assert engine.info.device == "cpu"
    assert engine.info.sample_rate == 24000
    assert engine.info.settings == {"han_voice": "cmn", "latin_voice": "en", "audio_version": AUDIO_VERSION}
    version = engine.info.model.removeprefix("espeak-ng ")
    assert version != engine.info.model and version[0].isdigit(), engine.info.model


def test_english_is_speech_at_the_requested_rate(engine: EspeakEngine) -> None:
    out = engine.synthesize(request(ENGLISH))
    assert out.sample_rate == 24000
    assert out.audio.dtype == np.float32 and out.audio.ndim == 1
    assert np.abs(out.audio).max() <= 1.0
    duration = len(out.audio) / out.sample_rate
    assert 1.5 < duration < 8.0, duration
    assert rms(out.audio) > 0.02
    assert out.details["runs"] == [{"voice": "en", "text": ENGLISH}]
    assert out.warnings == []


def test_chinese_is_spoken_with_the_mandarin_voice(engine: EspeakEngine) -> None:
    zh = engine.synthesize(request(CHINESE))
    en = engine.synthesize(request(ENGLISH))
    assert zh.details["runs"] == [{"voice": "cmn", "text": CHINESE}]
    han_chars = 16
    duration = len(zh.audio) / zh.sample_rate
    # A syllable per character; the English voice would spell "Chinese letter" for each.
    assert 0.1 * han_chars < duration < 0.6 * han_chars, duration
    assert rms(zh.audio) > 0.02
    assert len(zh.audio) != len(en.audio) or not np.array_equal(zh.audio, en.audio)


def test_mixed_text_is_runs_joined_by_pauses(engine: EspeakEngine) -> None:
    out = engine.synthesize(request(MIXED))
    voices = [run["voice"] for run in out.details["runs"]]
    assert voices == ["cmn", "en", "cmn", "en", "cmn", "en"]
    assert rms(out.audio) > 0.02
    # Each run spoken alone, plus one pause between neighbours, is the whole task.
    alone = sum(len(engine.synthesize(request(run["text"])).audio) for run in out.details["runs"])
    pauses = (len(voices) - 1) * RUN_PAUSE_S * out.sample_rate
    assert abs(len(out.audio) - (alone + pauses)) < 0.01 * out.sample_rate


def test_same_text_gives_the_same_samples_whatever_the_seed_or_history(engine: EspeakEngine) -> None:
    first = engine.synthesize(request(MIXED, seed=1))
    # espeak-ng keeps synthesis state between calls; speaking other text in between must not matter.
    engine.synthesize(request(CHINESE))
    engine.synthesize(request("Shh! Fresh fish, she sells seashells by the sea shore."))
    second = engine.synthesize(request(MIXED, seed=99))
    assert np.array_equal(first.audio, second.audio)


def test_same_text_gives_the_same_samples_in_a_fresh_process(engine: EspeakEngine) -> None:
    code = (
        "import hashlib\n"
        "from glmtts_batch.engines.base import SynthesisRequest\n"
        "from glmtts_batch.engines.espeak import EspeakEngine\n"
        f"out = EspeakEngine().synthesize(SynthesisRequest({MIXED!r}, None, None, 0))\n"
        "print(hashlib.sha256(out.audio.tobytes()).hexdigest())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    engine.synthesize(request(ENGLISH))  # this process has spoken before; the other has not
    here = hashlib.sha256(engine.synthesize(request(MIXED)).audio.tobytes()).hexdigest()
    assert done.stdout.strip() == here


def test_32khz_output_has_the_same_duration() -> None:
    fast = EspeakEngine.load(EngineOptions(sample_rate=32000))
    slow = EspeakEngine.load(EngineOptions(sample_rate=24000))
    hi = fast.synthesize(request(ENGLISH))
    lo = slow.synthesize(request(ENGLISH))
    assert hi.sample_rate == 32000 and fast.info.sample_rate == 32000
    assert abs(len(hi.audio) / 32000 - len(lo.audio) / 24000) < 0.002
    assert rms(hi.audio) == pytest.approx(rms(lo.audio), rel=0.05)


def test_prompt_audio_is_ignored_with_a_warning(engine: EspeakEngine, tmp_path: Path) -> None:
    prompt = tmp_path / "speaker.wav"
    with_prompt = engine.synthesize(request(ENGLISH, prompt_audio=prompt))
    without = engine.synthesize(request(ENGLISH))
    assert len(with_prompt.warnings) == 1
    assert "prompt audio ignored" in with_prompt.warnings[0]
    assert "speaker.wav" in with_prompt.warnings[0]
    assert np.array_equal(with_prompt.audio, without.audio)


@pytest.mark.parametrize("text", ["", "   ", "...", "，。"])
def test_text_with_nothing_to_speak_is_a_task_error(engine: EspeakEngine, text: str) -> None:
    with pytest.raises(TaskError) as info:
        engine.synthesize(request(text))
    assert info.value.field == "input_text"


def test_stats_count_tasks_and_characters() -> None:
    fresh = EspeakEngine.load(EngineOptions())
    fresh.synthesize(request("Hello there."))
    fresh.synthesize(request("你好。"))
    stats = fresh.stats()
    assert stats["tasks"] == 2
    assert stats["characters_spoken"] == len("Hello there.") + len("你好。")
    assert stats["audio_s"] > 0.5


def test_concurrent_synthesis_matches_serial(engine: EspeakEngine) -> None:
    texts = [ENGLISH, CHINESE, MIXED, "Second English sentence."]
    serial = [engine.synthesize(request(t)).audio for t in texts]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = engine.synthesize(request(texts[i])).audio

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, audio in enumerate(serial):
        assert np.array_equal(results[i], audio)


@pytest.mark.parametrize("rate", [0, 4000, 500000])
def test_unusable_sample_rate_is_a_load_error(rate: int) -> None:
    with pytest.raises(EngineLoadError, match="sample rate"):
        EspeakEngine(sample_rate=rate)


def test_missing_library_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="not found"):
        open_library(str(tmp_path / "libespeak-ng.so"))
    not_a_library = tmp_path / "libfake.so"
    not_a_library.write_text("not an ELF file")
    with pytest.raises(EngineLoadError, match="cannot load"):
        open_library(str(not_a_library))


def test_bad_data_folder_is_a_load_error_in_a_fresh_process(tmp_path: Path) -> None:
    # espeak-ng initialises once per process, so this runs in its own interpreter.
    code = (
        "import sys\n"
        "from glmtts_batch.engines.espeak import EspeakEngine\n"
        "from glmtts_batch.errors import EngineLoadError\n"
        "import espeakng_loader\n"
        "try:\n"
        f"    EspeakEngine(library_path=espeakng_loader.get_library_path(), data_path={str(tmp_path)!r})\n"
        "except EngineLoadError as exc:\n"
        "    print('LOAD-ERROR', exc)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "LOAD-ERROR" in done.stdout and str(tmp_path) in done.stdout


def test_reinitialising_from_other_files_is_refused(engine: EspeakEngine, tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="already initialised"):
        EspeakEngine(data_path=tmp_path)


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        ("Hello.", [TextRun("en", "Hello.")]),
        ("你好。", [TextRun("cmn", "你好。")]),
        (
            "2024年我们去了London，看了Big Ben!",
            [
                TextRun("cmn", "2024年我们去了"),
                TextRun("en", "London，"),
                TextRun("cmn", "看了"),
                TextRun("en", "Big Ben!"),
            ],
        ),
        ("我有3个apple, GPT-4模型", [TextRun("cmn", "我有3个"), TextRun("en", "apple, GPT-4"), TextRun("cmn", "模型")]),
        ("  你好 world  ", [TextRun("cmn", "你好"), TextRun("en", "world")]),
        ("Café naïve", [TextRun("en", "Café naïve")]),
        ("123", [TextRun("en", "123")]),
        ("   ", []),
    ],
)
def test_split_runs_by_script(text: str, runs: list[TextRun]) -> None:
    assert split_runs(text) == runs


# --------------------------------------------------------------------------- the demo job

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _make_prompt_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_prompt", JOBS / "make_prompt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_prompt_is_a_short_24khz_pcm16_wav_that_make_prompt_reproduces(tmp_path: Path) -> None:
    import soundfile as sf

    committed = JOBS / "prompt_narrator.wav"
    info = sf.info(committed)
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert 3.0 <= info.duration <= 6.0
    regenerated = tmp_path / "prompt.wav"
    _make_prompt_module().make_prompt(regenerated)
    assert regenerated.read_bytes() == committed.read_bytes(), (
        "jobs/prompt_narrator.wav is stale: run jobs/make_prompt.py"
    )


def test_demo_job_is_valid_and_uses_the_prompt_transcript() -> None:
    from glmtts_batch.tasks import Task, iter_task_file

    items = list(iter_task_file(JOBS / "demo.jsonl"))
    assert items and all(isinstance(item, Task) for item in items), items
    assert 5 <= len(items) <= 8
    prompt_text = _make_prompt_module().PROMPT_TEXT
    scripts = set()
    for task in items:
        assert task.prompt_audio == JOBS / "prompt_narrator.wav"
        assert task.prompt_text == prompt_text
        scripts.add(frozenset(run.voice for run in split_runs(task.text)))
    assert scripts == {frozenset({"cmn"}), frozenset({"en"}), frozenset({"cmn", "en"})}


class _Interrupt(BaseException):
    """Stands in for the batch loop's abandon exception, raised by a signal handler."""


def test_exception_raised_during_synthesis_propagates_and_aborts_it(engine: EspeakEngine, capfd) -> None:
    """Python runs a signal handler only inside espeak's sample callback, where ctypes would print
    and drop its exception and the synthesis would go on with a gap; it must reach the caller."""
    import signal

    reference = engine.synthesize(request(ENGLISH)).audio
    long_text = " ".join([ENGLISH] * 40)  # seconds of synthesis: the timer fires mid-way

    def handler(signum, frame):
        raise _Interrupt()

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(_Interrupt):
            engine.synthesize(request(long_text))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert "Exception ignored" not in capfd.readouterr().err
    # the aborted synthesis left nothing behind: the next one is complete and unchanged
    assert np.array_equal(engine.synthesize(request(ENGLISH)).audio, reference)


def test_second_signal_during_espeak_synthesis_abandons_the_task(engine: EspeakEngine, tmp_path: Path) -> None:
    """The batch loop's abandon exception is raised inside espeak's callback; the task must be
    recorded skipped/interrupted, not written as a WAV with a gap and journaled as ok."""
    import json
    import os
    import signal
    import time

    from glmtts_batch import run_batch

    class SignalledTwice:
        """espeak, with SIGTERM sent twice shortly after synthesis starts (as a user would)."""

        def __init__(self) -> None:
            self.info = engine.info

        def synthesize(self, req: SynthesisRequest):
            def send() -> None:
                for delay in (0.05, 0.1):
                    time.sleep(delay)
                    os.kill(os.getpid(), signal.SIGTERM)

            threading.Thread(target=send, daemon=True).start()
            return engine.synthesize(req)

        def free_memory(self) -> None: ...

        def stats(self) -> dict:
            return {}

        def close(self) -> None: ...

    tasks = tmp_path / "t.jsonl"
    tasks.write_text(
        json.dumps({"input_text": " ".join([ENGLISH] * 150)}) + "\n"
    )  # about a second of work, under the text limit
    out = tmp_path / "out"
    summary = run_batch(tasks, out, engine=SignalledTwice(), progress=False, fsync=False, log=lambda m: None)
    assert (summary.ok, summary.skipped, summary.interrupted, summary.exit_code) == (0, 1, "SIGTERM", 143)
    (record,) = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert (record["status"], record["reason"], record["wav"]) == ("skipped", "interrupted", None)
    assert not list(out.glob("*.wav"))
    assert (out / ".glmtts-batch" / "journal.jsonl").read_bytes() == b""


def test_a_long_text_holds_its_audio_about_once(engine: EspeakEngine) -> None:
    """Peak memory of one synthesis: the native int16 samples plus the float32 result, not a
    copy per step (concatenate, convert, scale, resample, clip each made one: ~2.3x this)."""
    import tracemalloc

    text = "The quick brown fox jumps over the lazy dog, and then it rests for a while. " * 40
    engine.synthesize(request("warm up."))
    tracemalloc.start()
    try:
        out = engine.synthesize(request(text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    native_int16 = len(out.audio) * engine._espeak.sample_rate / out.sample_rate * 2
    floor = out.audio.nbytes + native_int16
    assert peak < 1.3 * floor, f"peak {peak / 1e6:.1f} MB for {out.audio.nbytes / 1e6:.1f} MB of audio"


def test_resampled_assembly_equals_resampling_the_whole_signal() -> None:
    import soxr

    from glmtts_batch.engines.espeak import assemble

    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(50_000) * 8000).astype(np.int16)
    whole = np.clip(soxr.resample(samples.astype(np.float32) / 32768.0, 22050, 24000), -1.0, 1.0)
    chunks = [samples[i : i + 777] for i in range(0, len(samples), 777)]
    assert np.array_equal(assemble(chunks, 22050, 24000), whole) and chunks == []
    same_rate = [samples[:10], samples[10:]]
    assert np.array_equal(assemble(same_rate, 22050, 22050), samples.astype(np.float32) / 32768.0)


def test_split_runs_of_a_long_mixed_text_keep_every_character() -> None:
    text = "第一段 first part, 第二段 second part. " * 5_000
    runs = split_runs(text)
    assert len(runs) == 20_000 and [r.voice for r in runs[:4]] == ["cmn", "en", "cmn", "en"]
    assert "".join(r.text for r in runs).replace(" ", "") == text.replace(" ", "")


def test_stale_data_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import fcntl
    import os
    import time

    from glmtts_batch.engines.espeak import remove_stale_data_dirs

    def folder(name: str, *, lock: bool = True) -> Path:
        path = tmp_path / f"glmtts-espeak-{name}"
        path.mkdir()
        os.symlink("/nonexistent", path / "phontab")  # what the real folders hold: links
        if lock:
            (path / ".owner").touch()
        return path

    dead, live, fresh_unmarked = folder("dead"), folder("live"), folder("new", lock=False)
    old_unmarked = folder("old", lock=False)
    os.utime(old_unmarked, (time.time() - 3 * 86400,) * 2)
    (tmp_path / "glmtts-espeak-link").symlink_to(live)
    other = tmp_path / "unrelated"
    other.mkdir()
    held = os.open(live / ".owner", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the live process holds it
    try:
        removed = remove_stale_data_dirs(tmp_path)
    finally:
        os.close(held)
    assert sorted(removed) == sorted([dead, old_unmarked])
    assert not dead.exists() and not old_unmarked.exists()
    assert live.is_dir() and fresh_unmarked.is_dir() and other.is_dir()
    assert (tmp_path / "glmtts-espeak-link").is_symlink() and (live / "phontab").is_symlink()


def test_a_killed_process_leaves_a_folder_the_next_one_removes(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    start = "from glmtts_batch.engines.espeak import EspeakEngine\nEspeakEngine()\n"
    killed = subprocess.run(
        [sys.executable, "-c", start + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9
    (left,) = tmp_path.glob("glmtts-espeak-*")  # nothing could clean up after SIGKILL
    clean = subprocess.run(
        [sys.executable, "-c", start], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert clean.returncode == 0, clean.stderr
    assert not left.exists() and list(tmp_path.glob("glmtts-espeak-*")) == []


def test_synthesize_many_runs_one_by_one_and_isolates_a_bad_text(engine: EspeakEngine) -> None:
    results = engine.synthesize_many([request(ENGLISH), request("  "), request(CHINESE)])
    assert isinstance(results[1], TaskError) and results[1].field == "input_text"
    assert np.array_equal(results[0].audio, engine.synthesize(request(ENGLISH)).audio)
    assert np.array_equal(results[2].audio, engine.synthesize(request(CHINESE)).audio)
    assert engine.default_batch_size == 1
