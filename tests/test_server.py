"""`glmtts-batch serve`, tested as its users see it: a real uvicorn server in a subprocess on
127.0.0.1 and a free port, the espeak engine, and httpx as the client.

Every loop is bounded by a deadline and every server is killed in teardown.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (test extra)")
pytest.importorskip("fastapi", reason="the server tests need the server extra")

from glmtts_batch import run_batch  # noqa: E402 - after the skips: the server extra may be absent
from glmtts_batch.engines.base import SynthesisRequest  # noqa: E402 - after the skips: the server extra may be absent
from glmtts_batch.engines.espeak import EspeakEngine  # noqa: E402 - after the skips: the server extra may be absent
from glmtts_batch.manifest import RUN_DEPENDENT_KEYS  # noqa: E402 - after the skips: the server extra may be absent
from glmtts_batch.writers import WavWriter  # noqa: E402 - after the skips: the server extra may be absent

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Timing fields: they differ between any two runs.
RUN_HISTORY_KEYS = set(RUN_DEPENDENT_KEYS) | {"elapsed_s"}
TIMING_DETAILS = {"synth_s", "rtf"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`glmtts-batch serve --engine espeak` in a subprocess; `start` waits for /healthz."""

    def __init__(self, jobs_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.jobs_dir = jobs_dir
        self.env = {**ENV, **(env or {})}
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = jobs_dir.parent / f"server-{self.port}.log"

    def start(self) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "glmtts_batch",
            "serve",
            "--engine",
            "espeak",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--jobs-dir",
            str(self.jobs_dir),
            *self.args,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not come up in 60 s: {self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Server]:
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    srv = Server(workdir / "jobs", "--token-file", str(token_file), "--max-file-mb", "0.25", "--max-job-mb", "1")
    try:
        yield srv.start()
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def prompt_wav(path: Path, seconds: float = 1.0) -> Path:
    t = np.arange(int(24000 * seconds), dtype=np.float32) / 24000
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), 24000, subtype="PCM_16")
    return path


def write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks), encoding="utf-8")
    return path


def long_job(n: int) -> list[dict]:
    return [{"input_text": f"Sentence number {i} of the long chapter.", "output_name": f"s{i:03d}"} for i in range(n)]


def submit(client: httpx.Client, task_file: Path, *prompts: Path, **form: str) -> httpx.Response:
    files = [("tasks", (task_file.name, task_file.read_bytes(), "application/x-ndjson"))]
    files += [("files", (p.name, p.read_bytes(), "audio/wav")) for p in prompts]
    return client.post("/v1/jobs", files=files, data=form)


def wait_for(client: httpx.Client, job_id: str, until, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if until(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached the expected state: {job}")


def finished(job: dict) -> bool:
    return job["state"] in ("done", "failed", "cancelled")


def comparable(manifest_text: str) -> list[dict]:
    """Manifest records without run-history and timing fields; prompt paths by file name, and
    without prompt_base (the server names a job's upload folder as its base_dir; `run` finds
    the same file in the task file's folder)."""
    records = []
    for line in manifest_text.splitlines():
        r = {k: v for k, v in json.loads(line).items() if k not in RUN_HISTORY_KEYS}
        r["details"] = {k: v for k, v in (r["details"] or {}).items() if k not in TIMING_DETAILS}
        r["prompt_audio"] = Path(r["prompt_audio"]).name if r["prompt_audio"] else None
        r.pop("prompt_base")
        records.append(r)
    return records


def wav_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.wav"))}


# --------------------------------------------------------------------------- jobs


def test_submit_poll_download_equals_what_run_writes(client: httpx.Client, tmp_path: Path) -> None:
    voice = prompt_wav(tmp_path / "narrator.wav")
    tasks = write_tasks(
        tmp_path / "chapter.jsonl",
        [
            {
                "input_text": "Chapter one.",
                "prompt_audio": "narrator.wav",
                "prompt_text": "Hello.",
                "output_name": "c1",
            },
            {"input_text": "It was a bright cold day in April.", "seed": 7},
            {"input_text": "中文和 English 混合。", "output_name": "mixed"},
        ],
    )
    answer = submit(client, tasks, voice)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert answer.headers["location"] == f"/v1/jobs/{job_id}"
    assert job_id in [j["id"] for j in client.get("/v1/jobs").json()["jobs"]]

    job = wait_for(client, job_id, finished)
    assert job["state"] == "done" and job["exit_code"] == 0
    assert job["counts"] == {"ok": 3, "failed": 0, "invalid": 0, "skipped": 0}
    assert job["progress"] == 1.0 and job["audio_seconds"] > 0

    reference = tmp_path / "reference"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmtts_batch",
            "run",
            str(tasks),
            "--engine",
            "espeak",
            "--out",
            str(reference),
            "--no-progress",
        ],
        check=False,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr

    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job_id}/zip").raise_for_status().content))
    wavs = sorted(n for n in archive.namelist() if n.endswith(".wav"))
    assert wavs == sorted(wav_digests(reference)) == ["2.wav", "c1.wav", "mixed.wav"]
    for name in wavs:
        assert archive.read(name) == (reference / name).read_bytes(), name
    manifest = archive.read("manifest.jsonl").decode()
    assert comparable(manifest) == comparable((reference / "manifest.jsonl").read_text())
    # a job's prompts are looked up in its own upload folder only, never the server's working directory
    assert [json.loads(x)["prompt_base"] for x in manifest.splitlines()] == ["base_dir", None, None]
    assert client.get(f"/v1/jobs/{job_id}/manifest").text == manifest
    assert client.get(f"/v1/jobs/{job_id}/summary").json()["counts"]["ok"] == 3
    assert client.get(f"/v1/jobs/{job_id}/audio/c1").content == (reference / "c1.wav").read_bytes()
    assert client.get(f"/v1/jobs/{job_id}/audio/nope").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/audio/..%2Fqueue.sqlite3").status_code in (400, 404)


def test_a_json_body_job_runs_like_a_file(client: httpx.Client) -> None:
    answer = client.post("/v1/jobs", json={"tasks": [{"input_text": "One."}, {"input_text": "Two."}], "seed": 3})
    assert answer.status_code == 202, answer.text
    job = wait_for(client, answer.json()["id"], finished)
    assert (job["state"], job["counts"]["ok"], job["seed"]) == ("done", 2, 3)


def test_json_body_limits_and_bad_lines_get_400(client: httpx.Client) -> None:
    too_many = client.post("/v1/jobs", json={"tasks": [{"input_text": "x"}] * 10_001})
    assert too_many.status_code == 400 and "--max-lines" in too_many.json()["error"]
    surrogate = client.post(
        "/v1/jobs",
        content='{"tasks": [{"input_text": "ok"}, {"input_text": "\\ud800"}]}',
        headers={"content-type": "application/json"},
    )
    assert surrogate.status_code == 400, surrogate.text
    assert [(p["line"], p["field"]) for p in surrogate.json()["problems"]] == [(2, "input_text")]
    assert client.post("/v1/jobs", json={"tasks": [], "bogus": 1}).status_code == 400


def test_path_tricks_in_an_uploaded_task_file_get_400_naming_each_line(client: httpx.Client, tmp_path: Path) -> None:
    voice = prompt_wav(tmp_path / "voice.wav")
    tasks = write_tasks(
        tmp_path / "tricks.jsonl",
        [
            {"input_text": "fine", "prompt_audio": "voice.wav", "prompt_text": "x"},
            {"input_text": "up", "prompt_audio": "../../queue.sqlite3"},
            {"input_text": "abs", "prompt_audio": str(voice)},
            {"input_text": "home", "prompt_audio": "~/voice.wav"},
            {"input_text": "folder", "prompt_speech": "input/voice.wav"},
            {"input_text": "absent", "prompt_audio": "other.wav"},
            {"input_text": 5},
        ],
    )
    before = len(client.get("/v1/jobs").json()["jobs"])
    answer = submit(client, tasks, voice)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert [(p["line"], p["field"]) for p in body["problems"]] == [
        (2, "prompt_audio"),
        (3, "prompt_audio"),
        (4, "prompt_audio"),
        (5, "prompt_speech"),
        (6, "prompt_audio"),
        (7, "input_text"),
    ]
    assert (body["valid"], body["invalid"]) == (1, 6)
    assert (
        "line 2: invalid [prompt_audio] InvalidTaskError: line 2: prompt_audio '../../queue.sqlite3'" in body["report"]
    )
    assert "'..'" in body["report"] and "absolute path" in body["report"] and "folder" in body["report"]
    assert "line 7: invalid [input_text]" in body["report"]
    assert str(tmp_path.parent) not in answer.text.replace(str(voice), "")  # no server paths leak
    assert len(client.get("/v1/jobs").json()["jobs"]) == before  # nothing queued


def test_upload_names_and_text_length_limits(client: httpx.Client, tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": "hi", "prompt_audio": "..wav"}])
    files = [("tasks", ("t.jsonl", tasks.read_bytes())), ("files", ("../evil.wav", b"RIFF"))]
    answer = client.post("/v1/jobs", files=files)
    assert answer.status_code == 400 and "not allowed" in answer.json()["error"]
    long = write_tasks(tmp_path / "long.jsonl", [{"input_text": "x" * 2001}])
    answer = submit(client, long)
    assert answer.status_code == 400
    assert answer.json()["problems"][0]["line"] == 1 and "--max-text-chars" in answer.json()["report"]


def test_requests_without_the_token_get_401(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/v1/jobs").status_code == 401
        assert anonymous.post("/v1/audio/speech", json={"input": "x", "voice": "v"}).status_code == 401
        assert anonymous.get("/metrics").status_code == 401
        wrong = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer not-the-token-at-all"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").status_code == 200  # the container health check has no token


def test_oversize_uploads_get_413_naming_the_limit(client: httpx.Client, tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", [{"input_text": "hi", "prompt_audio": "big.wav"}])
    big_file = ("files", ("big.wav", b"\0" * 300_000, "audio/wav"))  # over --max-file-mb 0.25
    answer = client.post("/v1/jobs", files=[("tasks", ("t.jsonl", tasks.read_bytes())), big_file])
    assert answer.status_code == 413 and "--max-file-mb" in answer.json()["error"]
    whole = [("tasks", ("t.jsonl", tasks.read_bytes()))] + [
        ("files", (f"p{i}.wav", b"\0" * 200_000, "audio/wav"))
        for i in range(6)  # 1.2 MB > --max-job-mb 1
    ]
    answer = client.post("/v1/jobs", files=whole)
    assert answer.status_code == 413 and "--max-job-mb" in answer.json()["error"]


def test_cancel_stops_a_running_job_like_sigterm_and_drops_a_queued_one(client: httpx.Client, tmp_path: Path) -> None:
    running = submit(client, write_tasks(tmp_path / "long.jsonl", long_job(400))).json()["id"]
    queued = submit(client, write_tasks(tmp_path / "next.jsonl", long_job(3))).json()["id"]
    wait_for(client, running, lambda j: j["done"] > 0)
    assert client.delete(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
    assert client.delete(f"/v1/jobs/{running}").status_code == 202
    job = wait_for(client, running, finished)
    assert job["state"] == "cancelled" and job["exit_code"] == 143
    # As after SIGTERM: the current task finishes and no further line is read.
    records = [json.loads(line) for line in client.get(f"/v1/jobs/{running}/manifest").text.splitlines()]
    assert 0 < len(records) < 400 and {r["reason"] for r in records if r["status"] == "skipped"} <= {"interrupted"}
    assert client.get(f"/v1/jobs/{running}/summary").json()["unread_lines"] == 400 - len(records)
    assert client.get(f"/v1/jobs/{running}/zip").status_code == 409
    assert client.get(f"/v1/jobs/{queued}").json()["counts"]["ok"] == 0
    after = client.post("/v1/jobs", json={"tasks": [{"input_text": "still working"}]}).json()["id"]
    assert wait_for(client, after, finished)["state"] == "done"  # the queue goes on


# --------------------------------------------------------------------------- voices, speech


def test_20_concurrent_speech_requests_each_get_their_own_audio(client: httpx.Client, tmp_path: Path) -> None:
    voice = prompt_wav(tmp_path / "v.wav")
    created = client.post(
        "/v1/voices",
        files={"audio": ("v.wav", voice.read_bytes(), "audio/wav")},
        data={"transcript": "A tone.", "name": "tone"},
    )
    assert created.status_code == 201, created.text
    voice_id = created.json()["id"]
    assert voice_id in [v["id"] for v in client.get("/v1/voices").json()["voices"]]
    # A job runs at the same time: speech goes between its tasks through the one engine.
    job = submit(client, write_tasks(tmp_path / "bg.jsonl", long_job(60))).json()["id"]

    texts = [f"Request number {i} says {i * 7} words." for i in range(20)]
    local = EspeakEngine()
    expected = [
        WavWriter().encode(local.synthesize(SynthesisRequest(t, None, None, seed=0)).audio, 24000)[0] for t in texts
    ]

    def ask(text: str) -> bytes:
        r = client.post("/v1/audio/speech", json={"input": text, "voice": voice_id, "model": "glm-tts", "seed": 1})
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
        return r.content

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, texts))
    assert answers == expected
    flac = client.post("/v1/audio/speech", json={"input": texts[0], "voice": voice_id, "response_format": "flac"})
    decoded, rate = sf.read(io.BytesIO(flac.content), dtype="int16")
    assert rate == 24000 and np.array_equal(decoded, sf.read(io.BytesIO(expected[0]), dtype="int16")[0])
    assert wait_for(client, job, finished)["counts"]["ok"] == 60

    bad = client.post("/v1/audio/speech", json={"input": "x", "voice": "no-such-voice"})
    assert bad.status_code == 400 and bad.json()["field"] == "voice"
    assert (
        client.post("/v1/audio/speech", json={"input": "x", "voice": voice_id, "response_format": "mp3"}).status_code
        == 400
    )
    assert client.delete(f"/v1/voices/{voice_id}").status_code == 200
    assert client.post("/v1/audio/speech", json={"input": "x", "voice": voice_id}).status_code == 400


def test_metrics_health_and_free_memory(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    assert 'glmtts_tasks_total{status="ok"}' in text and "glmtts_queue_depth" in text
    assert 'glmtts_jobs{state="done"}' in text
    assert client.post("/v1/admin/free-memory").json()["freed"] is True
    assert client.get("/healthz").json()["engine"] == "espeak"


# --------------------------------------------------------------------------- restart


def test_sigterm_then_sigkill_mid_job_then_restart_resumes_with_identical_wavs_and_keeps_the_queue(
    tmp_path: Path,
) -> None:
    tasks = write_tasks(tmp_path / "book.jsonl", long_job(150))
    second = write_tasks(tmp_path / "second.jsonl", long_job(5))
    reference = run_batch(tasks, tmp_path / "reference", engine="espeak", progress=False, fsync=False)
    assert reference.ok == 150

    srv = Server(tmp_path / "jobs")
    try:
        srv.start()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            job_id = submit(c, tasks).json()["id"]
            waiting = submit(c, second).json()["id"]
            wait_for(c, job_id, lambda j: j["done"] >= 5)
        srv.proc.send_signal(signal.SIGTERM)  # docker stop: the current task finishes, the job stays queued
        # After uvicorn's graceful shutdown the CLI exits as `run` does after SIGTERM
        assert srv.proc.wait(timeout=60) == 143
        assert "stopped by shutdown; it resumes on the next start" in srv.log.read_text()
        orphan = tmp_path / "jobs" / "jobs" / ("x" * 22) / "input"  # killed while accepting: never queued
        orphan.mkdir(parents=True)

        srv.start()
        assert not orphan.parent.exists()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.get(f"/v1/jobs/{waiting}").json()["state"] == "queued"
            at_kill = wait_for(c, job_id, lambda j: j["runs"] == 2 and j["done"] >= 5)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)
        assert at_kill["state"] == "running" and at_kill["done"] < 150, "the job finished before the kill"

        srv.start()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            job = wait_for(c, job_id, finished)
            assert job["state"] == "done" and job["runs"] == 3 and job["counts"]["ok"] == 150
            assert job["resumed"] >= 5
            archive = zipfile.ZipFile(io.BytesIO(c.get(f"/v1/jobs/{job_id}/zip").content))
            assert wait_for(c, waiting, finished)["state"] == "done"  # the queue survived too
    finally:
        srv.kill()
    expected = wav_digests(tmp_path / "reference")
    got = {n: hashlib.sha256(archive.read(n)).hexdigest() for n in archive.namelist() if n.endswith(".wav")}
    assert got == expected
    assert comparable(archive.read("manifest.jsonl").decode()) == comparable(reference.manifest.read_text())


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.org"])
def test_a_non_loopback_bind_without_a_token_file_is_refused(tmp_path: Path, host: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmtts_batch",
            "serve",
            "--engine",
            "espeak",
            "--host",
            host,
            "--jobs-dir",
            str(tmp_path / "jobs"),
        ],
        check=False,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert f"refusing to bind '{host}' without --token-file" in run.stderr
    assert not (tmp_path / "jobs").exists()  # refused before anything was created or loaded


def test_loopback_rule() -> None:
    from glmtts_batch.server.config import ServeConfigError, check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("my-host")
    check_bind("0.0.0.0", "a-token-of-some-length")
    with pytest.raises(ServeConfigError):
        check_bind("192.168.1.4", None)


# --------------------------------------------------------------------------- GLM-TTS


def engine_stat(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'glmtts_engine_stat{{stat="{name}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no engine stat {name}")


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_glmtts_voice_features_are_cached_and_speech_equals_the_engine(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from voices import write_voice

    from glmtts_batch.engines.base import EngineOptions
    from glmtts_batch.glmtts.engine import GlmTtsEngine

    voice = write_voice(tmp_path / "narrator.wav")
    srv = Server(
        tmp_path / "jobs",
        "--engine",
        "glmtts",
        "--model-dir",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        env={"OMP_NUM_THREADS": "1"},
    )  # tiny matrices: threads cost more than they give
    try:
        srv.start()
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            assert c.get("/healthz").json()["engine"] == "glmtts"
            created = c.post(
                "/v1/voices",
                files={"audio": ("narrator.wav", voice.read_bytes(), "audio/wav")},
                data={"transcript": "你好。"},
            )
            assert created.status_code == 201, created.text
            assert engine_stat(c, "prompt_cache_misses") == 1  # features computed when the voice was made
            answer = c.post("/v1/audio/speech", json={"input": "你好", "voice": created.json()["id"], "seed": 5})
            assert answer.status_code == 200, answer.text
            assert (engine_stat(c, "prompt_cache_hits"), engine_stat(c, "prompt_cache_misses")) == (1, 1)
    finally:
        srv.kill()
    engine = GlmTtsEngine.load(EngineOptions(model_dir=tiny_checkpoint, device="cpu"), log=lambda m: None)
    local = engine.synthesize(SynthesisRequest("你好", voice, "你好。", seed=5))
    assert answer.content == WavWriter().encode(local.audio, local.sample_rate)[0]
