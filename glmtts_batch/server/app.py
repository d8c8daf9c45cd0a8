"""The HTTP routes. Handlers are thin: intake validates, the queue stores, the worker runs.

Blocking work (file copies, `check`, synthesis) runs in sync handlers, which FastAPI
runs on its thread pool, so the event loop keeps answering polls while the engine works.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from glmtts_batch import __version__
from glmtts_batch.engines.base import SynthesisRequest, is_out_of_memory
from glmtts_batch.errors import BodyTooLarge, RequestRejected, TaskError
from glmtts_batch.manifest import MANIFEST_NAME, SUMMARY_NAME
from glmtts_batch.server.config import ServeConfig
from glmtts_batch.server.engine_host import EngineHost, gpu_memory
from glmtts_batch.server.intake import (
    check_upload_name,
    limit_error,
    save_upload,
    validate_job_input,
    write_json_tasks,
)
from glmtts_batch.server.metrics import ServerMetrics
from glmtts_batch.server.queue import FINISHED, RUNNING, JobQueue, JobRow
from glmtts_batch.server.store import ZIP_NAME, Store, is_id, new_id
from glmtts_batch.server.voices import VoiceStore
from glmtts_batch.server.worker import Worker
from glmtts_batch.tasks import MAX_SEED, check_output_name, check_string
from glmtts_batch.writers import WavWriter

Log = Callable[[str], None]
SPEECH_MEDIA = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm"}


class SpeechBody(BaseModel):
    """OpenAI's /v1/audio/speech fields, plus `seed`. Unknown fields are an error, as in task files."""

    model_config = ConfigDict(extra="forbid")
    input: str
    voice: str
    model: str | None = None  # accepted for client compatibility; the server has one model
    response_format: Literal["wav", "flac", "pcm"] = "wav"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    speed: float = Field(1.0, ge=1.0, le=1.0)  # only 1.0: the engines have no speed control


class JobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[Any]
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_failures: int | None = Field(None, ge=1)


class Server:
    """Everything one app instance holds (no module-level state)."""

    def __init__(self, config: ServeConfig, host: EngineHost, log: Log) -> None:
        self.config = config
        self.limits = config.limits
        self.host = host
        self.log = log
        config.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.jobs_dir)
        self.queue = JobQueue(config.jobs_dir)
        self.metrics = ServerMetrics(self.queue, host.stats)
        self.voices = VoiceStore(self.store, host, config.limits)
        self.worker = Worker(
            host, self.queue, self.store, log=log, on_record=self.metrics.task_record, batch_size=config.batch_size
        )
        self._remove_unqueued_uploads()

    def _remove_unqueued_uploads(self) -> None:
        """A server killed while accepting a job leaves a folder the queue never heard of."""
        root = self.config.jobs_dir / "jobs"
        if not root.is_dir():
            return
        known = {job.id for job in self.queue.list()}
        for folder in root.iterdir():
            if is_id(folder.name) and folder.name not in known and folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                self.log(f"removed the upload of a job that was never queued: {folder.name}")

    # jobs ---------------------------------------------------------------------------------

    def accept_job(
        self,
        uploads: list[UploadFile],
        task_upload: UploadFile | None,
        body: JobBody | None,
        seed: int,
        max_failures: int | None,
    ) -> JobRow:
        job_id = new_id()
        paths = self.store.job(job_id)
        paths.input.mkdir(parents=True)
        try:
            names: list[str] = []
            for upload in uploads:
                name = check_upload_name(upload.filename)
                if name in names:
                    raise RequestRejected(400, f"two uploaded files are both named {name!r}")
                save_upload(upload.file, paths.input / name, self.limits)
                names.append(name)
            if task_upload is not None:
                save_upload(task_upload.file, paths.task_file, self.limits)
            else:
                write_json_tasks(body.tasks, paths.task_file, self.limits)  # type: ignore[union-attr]
            tasks = validate_job_input(paths, names, self.limits)
            if tasks == 0:
                raise RequestRejected(400, "the task file has no tasks")
            paths.out.mkdir()
            job = self.queue.add(job_id, tasks=tasks, seed=seed, max_failures=max_failures)
        except BaseException:
            shutil.rmtree(paths.root, ignore_errors=True)
            raise
        self.log(f"job {job_id}: queued ({tasks} tasks)")
        self.worker.wake()
        return job

    def job_view(self, job: JobRow) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": job.id,
            "state": job.state,
            "tasks": job.tasks,
            "seed": job.seed,
            "max_failures": job.max_failures,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "runs": job.runs,
            "cancel_requested": job.cancel_requested,
            "exit_code": job.exit_code,
            "error": job.error,
        }
        progress: dict[str, Any] = {
            "counts": {"ok": 0, "failed": 0, "invalid": 0, "skipped": 0},
            "resumed": 0,
            "audio_seconds": 0.0,
        }
        summary = self.store.job(job.id).out / SUMMARY_NAME
        live = self.worker.live
        if job.state in FINISHED and summary.exists():
            doc = json.loads(summary.read_text(encoding="utf-8"))
            progress = {"counts": doc["counts"], "resumed": doc["resumed"], "audio_seconds": doc["audio_seconds"]}
        elif job.state == RUNNING and live is not None and live.job_id == job.id:
            progress = live.snapshot()
        done = sum(progress["counts"].values())
        view.update(progress, done=done, progress=round(done / job.tasks, 4) if job.tasks else 1.0)
        zipped = (self.store.job(job.id).out / ZIP_NAME).exists() and job.state in FINISHED
        base = f"/v1/jobs/{job.id}"
        view["links"] = {
            "self": base,
            "manifest": f"{base}/manifest",
            "summary": f"{base}/summary",
            "zip": f"{base}/zip" if zipped else None,
        }
        return view

    def finished_file(self, job_id: str, name: str) -> Path:
        job = self._job(job_id)
        path = self.store.job(job.id).out / name
        if job.state not in FINISHED or not path.is_file():
            raise RequestRejected(
                409,
                f"job {job.id} is {job.state}: {name} is written when it finishes"
                + (" (a cancelled job has no zip)" if name == ZIP_NAME else ""),
            )
        return path

    def _job(self, job_id: str) -> JobRow:
        job = self.queue.get(job_id) if is_id(job_id) else None
        if job is None:
            raise RequestRejected(404, f"no job {job_id!r}")
        return job

    # speech -------------------------------------------------------------------------------

    def speech(self, body: SpeechBody) -> tuple[bytes, str]:
        if not body.input.strip():
            raise RequestRejected(400, "input is empty", field="input")
        if len(body.input) > self.limits.max_text_chars:
            raise limit_error("input", self.limits.max_text_chars, "characters", "--max-text-chars")
        try:
            check_string(0, "input", body.input, controls=False)
        except TaskError as e:
            raise RequestRejected(400, str(e).replace("line 0: ", ""), field="input") from None
        voice = self.voices.get(body.voice)
        if voice is None:
            raise RequestRejected(400, f"unknown voice {body.voice!r}: create one with POST /v1/voices", field="voice")
        request = SynthesisRequest(
            text=body.input, prompt_audio=self.voices.audio_path(voice), prompt_text=voice.transcript, seed=body.seed
        )
        try:
            synthesis = self.host.synthesize(request)
            image, samples = WavWriter().encode(synthesis.audio, synthesis.sample_rate)
        except TaskError as e:
            self.metrics.speech_request(False)
            raise RequestRejected(400, str(e), field=e.field) from None
        except Exception as e:
            self.metrics.speech_request(False)
            if is_out_of_memory(e):
                self.host.free_memory()
                raise RequestRejected(503, "the engine ran out of memory; try again") from None
            raise
        self.metrics.speech_request(True, samples / synthesis.sample_rate)
        return _encode(image, body.response_format), SPEECH_MEDIA[body.response_format]


def _encode(wav: bytes, fmt: str) -> bytes:
    """The WAV image the batch writer would write, or its samples as FLAC / raw 16-bit PCM."""
    if fmt == "wav":
        return wav
    pcm, rate = sf.read(io.BytesIO(wav), dtype="int16")
    if fmt == "pcm":
        return np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    out = io.BytesIO()
    sf.write(out, pcm, rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def create_app(config: ServeConfig, host: EngineHost, *, log: Log) -> FastAPI:
    server = Server(config, host, log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.worker.start()
        yield
        log("stopping: finishing the task in progress; the running job resumes on the next start")
        await run_in_threadpool(server.worker.stop)
        server.queue.close()

    app = FastAPI(title="glmtts-batch", version=__version__, lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(RequestRejected)
    async def rejected(_: Request, exc: RequestRejected) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": ".".join(str(p) for p in e["loc"][1:]), "message": e["msg"]} for e in exc.errors()]
        named = "; ".join(f"{p['field'] or 'body'}: {p['message']}" for p in problems)
        return JSONResponse({"error": f"invalid request: {named}", "problems": problems}, status_code=400)

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(exc.body, status_code=413)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ok = server.worker.alive
        return JSONResponse(
            {"ok": ok, "engine": host.info.name, "model": host.info.model, "device": host.info.device},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/admin/free-memory")
    def free_memory() -> dict[str, Any]:
        host.free_memory()
        return {"freed": True, "gpu_memory": gpu_memory()}

    # jobs
    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                # json.loads, not pydantic's parser: a lone surrogate in a task must reach `check`,
                # which names its line, instead of failing the whole body.
                body = JobBody.model_validate(json.loads(await request.body()))
            except ValueError as e:
                if not isinstance(e, ValidationError):
                    raise RequestRejected(400, f"the job body is not valid JSON: {e}") from None
                raise RequestRejected(400, "invalid job body", details=json.loads(e.json(include_url=False))) from None
            job = await run_in_threadpool(server.accept_job, [], None, body, body.seed, body.max_failures)
        elif kind.startswith("multipart/form-data"):
            async with request.form(max_files=config.limits.max_lines + 1, max_fields=16) as form:
                task_upload = form.get("tasks")
                if not isinstance(task_upload, UploadFile):
                    raise RequestRejected(400, "multipart job: the task file goes in the file field 'tasks'")
                uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
                seed = _int_field(form.get("seed"), "seed", 0, 0) or 0
                max_failures = _int_field(form.get("max_failures"), "max_failures", None, 1)
                job = await run_in_threadpool(server.accept_job, uploads, task_upload, None, seed, max_failures)
        else:
            raise RequestRejected(415, "send the job as multipart/form-data (tasks + files) or application/json")
        return JSONResponse(server.job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs")
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [server.job_view(job) for job in server.queue.list()]}

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return server.job_view(server._job(job_id))

    @app.delete("/v1/jobs/{job_id}", status_code=202)
    def cancel_job(job_id: str) -> JSONResponse:
        job = server._job(job_id)
        if job.state not in FINISHED:
            server.worker.cancel(job.id)
        return JSONResponse(server.job_view(server._job(job_id)), status_code=202)

    @app.get("/v1/jobs/{job_id}/manifest")
    def manifest(job_id: str) -> FileResponse:
        return FileResponse(server.finished_file(job_id, MANIFEST_NAME), media_type="application/x-ndjson")

    @app.get("/v1/jobs/{job_id}/summary")
    def summary(job_id: str) -> FileResponse:
        return FileResponse(server.finished_file(job_id, SUMMARY_NAME), media_type="application/json")

    @app.get("/v1/jobs/{job_id}/zip")
    def zip_file(job_id: str) -> FileResponse:
        return FileResponse(
            server.finished_file(job_id, ZIP_NAME), media_type="application/zip", filename=f"{job_id}.zip"
        )

    @app.get("/v1/jobs/{job_id}/audio/{output_name}")
    def audio(job_id: str, output_name: str) -> FileResponse:
        job = server._job(job_id)
        name = output_name.removesuffix(".wav")
        try:
            check_output_name(name)  # a name, never a path: the file stays inside the job folder
        except TaskError:
            raise RequestRejected(400, f"{output_name!r} is not an output name") from None
        path = server.store.job(job.id).out / f"{name}.wav"
        if not path.is_file():
            raise RequestRejected(404, f"job {job.id} has no WAV {name!r} (yet)")
        return FileResponse(path, media_type="audio/wav")

    # voices
    @app.post("/v1/voices", status_code=201)
    async def create_voice(request: Request) -> JSONResponse:
        async with request.form(max_files=1, max_fields=4) as form:
            audio = form.get("audio")
            if not isinstance(audio, UploadFile):
                raise RequestRejected(400, "a voice needs the prompt recording in the file field 'audio'")
            transcript = form.get("transcript")
            if not isinstance(transcript, str):
                raise RequestRejected(400, "a voice needs 'transcript', the words spoken in the recording")
            name = form.get("name")
            voice = await run_in_threadpool(
                server.voices.create, audio.file, audio.filename, transcript, name if isinstance(name, str) else None
            )
        return JSONResponse(voice.__dict__, status_code=201)

    @app.get("/v1/voices")
    def list_voices() -> dict[str, Any]:
        return {"voices": [v.__dict__ for v in server.voices.list()]}

    @app.delete("/v1/voices/{voice_id}")
    def delete_voice(voice_id: str) -> dict[str, Any]:
        if not server.voices.delete(voice_id):
            raise RequestRejected(404, f"no voice {voice_id!r}")
        return {"deleted": voice_id}

    @app.post("/v1/audio/speech")
    def speech(body: SpeechBody) -> Response:
        audio, media = server.speech(body)
        return Response(audio, media_type=media)

    return app


def _int_field(value: Any, name: str, default: int | None, minimum: int) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RequestRejected(400, f"{name} must be an integer, got {value!r}") from None
    if not minimum <= number <= MAX_SEED:
        raise RequestRejected(400, f"{name} must be between {minimum} and 2**63-1, got {number}")
    return number
