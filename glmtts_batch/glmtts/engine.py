"""The `glmtts` engine: GLM-TTS zero-shot voice cloning, natively, many tasks per call.

`synthesize_many(requests)` runs a window of tasks through the stages together:

1. frontend, per task in order: prompt features (cached by prompt content) and the text
   pieces. On CUDA the text normalisation runs on one worker thread while the prompt
   features use the GPU; results are taken in request order, so nothing depends on timing.
2. LM, all tasks at once: `generate.generate_many` decodes every task's pieces in flight
   (rows are pieces of different tasks; a task's pieces in order, prompt-history cache).
   The kernel is chosen by device (`lm_kernel`), never by batch size: oneDNN-packed fp32
   on the CPU, CUDA graphs on CUDA. `--sampling-rng upstream` runs each task at batch 1
   through `generate.generate_upstream` instead (matrix-vector kernels on the CPU).
3. flow + vocoder, piece by piece in rounds: round k renders the k-th piece of every task.
   Each task has one generator (seeded with its seed) from which its pieces draw, in
   order, the flow noise and then the HiFT source noise, so its draws do not depend on
   its batch-mates. On the CPU each piece runs alone (padded batches round differently,
   see `render_in_batches`); on CUDA the flow runs padded batches of similar lengths.
4. the pieces of each task are joined with a short crossfade.

A task's own problem comes back as its exception; an out-of-memory error leaves the call
as a whole (after the call's memory is freed) so the caller can split the batch.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glmtts_batch.engines.base import (
    EngineInfo,
    EngineOptions,
    Synthesis,
    SynthesisRequest,
)
from glmtts_batch.errors import EngineLoadError, TaskError
from glmtts_batch.glmtts.audio import MelExtractor, load_prompt_audio
from glmtts_batch.glmtts.checkpoint import CheckpointLayout, validate_checkpoint_dir
from glmtts_batch.glmtts.crossfade import join_with_crossfade
from glmtts_batch.glmtts.flow import FlowDecoder
from glmtts_batch.glmtts.generate import LmRequest, LmResult, generate_many, generate_upstream
from glmtts_batch.glmtts.inputs import checked_prompt
from glmtts_batch.glmtts.llm import (
    GenerationOptions,
    GenerationStats,
    SpeechLM,
    resolve_dtype,
)
from glmtts_batch.glmtts.model import MIN_PACKED_ROWS, SpeechLlama
from glmtts_batch.glmtts.prompt import PromptCache, PromptFeatures
from glmtts_batch.glmtts.speaker import SpeakerEncoder
from glmtts_batch.glmtts.speech_tokenizer import SpeechTokenizer
from glmtts_batch.glmtts.text.frontend import TextFrontend
from glmtts_batch.glmtts.text.g2p import PhonemeDict
from glmtts_batch.glmtts.text.tokenizer import SpecialTokens, TextTokenizer
from glmtts_batch.glmtts.vocoder import Vocoder, vocoder_spec
from glmtts_batch.log import Log, log_to_stderr
from glmtts_batch.settings import audio_settings

SPEAKER_RATE = 16000  # CAM++ and the speech tokenizer both take 16 kHz audio
CROSSFADE_MS = 20.0
# Bump when the audio for the same inputs, checkpoint and options changes (a fix in the
# flow, the vocoder, text normalisation, ...): it is in the resume key, so resumed runs
# redo their tasks instead of mixing old and new audio.
AUDIO_VERSION = 1
# Tasks per call when the caller names none (the runner's --batch-size default). CPU: the
# packed LM's tokens/s flatten out around 16 rows on 2 cores (bench/RESULTS.md). CUDA: a
# window wide enough to fill an H100-class GPU with the bf16 LM; not measured here.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 64}
# Items per padded flow batch on CUDA (CFG doubles it); the CPU renders one piece at a time.
CUDA_FLOW_BATCH = 16


def engine_settings(
    options: EngineOptions, generation: GenerationOptions, lm_kernel: str | None = None, *, text_grammars: str
) -> dict[str, Any]:
    """`EngineInfo.settings`: built from the configuration itself, so a new audio-shaping
    option is in the resume key without anyone remembering to add it (glmtts_batch.settings).
    The LM kernel is in it too: kernels round differently, so tokens may differ by kernel.
    `text_grammars` (`TextNormalizer.grammars`) as well: upstream's TN graphs and the
    wetext fallback read the same text differently."""
    return {
        **audio_settings(options),
        "generation": audio_settings(generation),
        "lm_kernel": lm_kernel,
        "text_grammars": text_grammars,
        "audio_version": AUDIO_VERSION,
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EngineLoadError(f"--device {name}: this torch build or machine has no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise EngineLoadError(f"unknown device {name!r}; use auto, cuda or cpu")
    return torch.device(name)


def lm_kernel(device: torch.device, dtype: torch.dtype, sampling_rng: str) -> str:
    """The LM's kernels: a function of the device, dtype and RNG mode, never of the batch.

    - "cpu-packed": fp32 oneDNN with weights packed once (row-independent from 2 rows);
    - "cpu-rows-apart": each row a batch-1 step with matrix-vector products, as transformers'
      batch-1 path computes: `--sampling-rng upstream` then gives upstream's tokens;
    - "cpu-gemm": half precision on the CPU (no packed kernel), rows padded to 16;
    - "cuda-graphs" / "cuda-eager" (upstream RNG runs eager at batch 1).
    """
    if device.type == "cuda":
        return "cuda-eager" if sampling_rng == "upstream" else "cuda-graphs"
    if sampling_rng == "upstream":
        return "cpu-rows-apart"
    if dtype == torch.float32 and torch.backends.mkldnn.is_available():
        return "cpu-packed"
    return "cpu-gemm"


def kernel_of(lm: SpeechLlama | SpeechLM, sampling_rng: str) -> str:
    """What a loaded LM runs (`lm_kernel`'s names; "transformers" for the legacy LM)."""
    if isinstance(lm, SpeechLM):
        return "transformers"
    if lm.device.type == "cuda":
        return lm_kernel(lm.device, lm.dtype, sampling_rng)
    if lm.rows_apart:
        return "cpu-rows-apart"
    return "cpu-packed" if lm.min_rows == MIN_PACKED_ROWS else "cpu-gemm"


def load_lm(llm_dir: Path, device: torch.device, dtype: torch.dtype, kernel: str) -> SpeechLlama:
    lm = SpeechLlama.from_checkpoint(llm_dir, device, dtype)
    if kernel == "cpu-packed":
        lm.pack_for_cpu()
    lm.rows_apart = kernel == "cpu-rows-apart"
    return lm


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, MemoryError, or a RuntimeError saying so (older torch)."""
    if isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass
class _Models:
    tokenizer: TextTokenizer
    special: SpecialTokens
    text: TextFrontend
    speech_tokenizer: SpeechTokenizer
    speaker: SpeakerEncoder
    mel: MelExtractor
    llm: SpeechLlama | SpeechLM  # SpeechLM: the legacy one-task-at-a-time path (benchmarks)
    flow: FlowDecoder
    vocoder: Vocoder


@dataclass
class _Job:
    """One task inside a call: its frontend output, then its tokens, then its waves."""

    request: SynthesisRequest
    prompt: PromptFeatures
    phoneme: bool
    pieces: list[str]
    piece_ids: list[list[int]]
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    tokens: list[list[int]] = field(default_factory=list)  # per piece, offsets from ats
    lm_stats: list[GenerationStats] = field(default_factory=list)
    waves: list[np.ndarray] = field(default_factory=list)
    error: Exception | None = None

    def add_time(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


class GlmTtsEngine:
    """Implements `glmtts_batch.engines.base.Engine` for a GLM-TTS checkpoint folder."""

    default_batch_size: int  # tasks per call when the caller names none (DEFAULT_BATCH_SIZE)
    lm_kernel: str  # see `lm_kernel()`; in EngineInfo.settings

    def __init__(
        self,
        layout: CheckpointLayout,
        models: _Models,
        *,
        device: torch.device,
        options: EngineOptions,
        generation: GenerationOptions,
    ) -> None:
        self.layout = layout
        self.models = models
        self.device = device
        self.options = options
        self.generation = generation
        self.sample_rate = options.sample_rate
        self.default_batch_size = DEFAULT_BATCH_SIZE["cuda" if device.type == "cuda" else "cpu"]
        self.flow_batch = CUDA_FLOW_BATCH if device.type == "cuda" else 1
        self.lm_kernel = kernel_of(models.llm, generation.sampling_rng)
        self.prompts = PromptCache(sample_rate=options.sample_rate)
        # Text normalisation beside the GPU's prompt work; one worker, and a lock with the
        # prompt transcript's normalisation, keep the text frontend single-threaded.
        self._text_pool = ThreadPoolExecutor(1, "glmtts-text") if device.type == "cuda" else None
        self._text_lock = threading.Lock()
        self.info = EngineInfo(
            name="glmtts",
            model=f"glmtts:{layout.fingerprint()}",
            sample_rate=options.sample_rate,
            device=str(device),
            clones_voice=True,
            settings=engine_settings(
                options, generation, self.lm_kernel, text_grammars=models.text.normalizer.grammars
            ),
        )

    @classmethod
    def load(
        cls,
        options: EngineOptions,
        *,
        log: Log = log_to_stderr,
        force_tokens: int | None = None,
        legacy_lm: bool = False,
    ) -> GlmTtsEngine:
        """Validate the checkpoint folder, then load every model once.

        `force_tokens` makes the LM ignore its stop token and generate exactly that many
        tokens per piece: benchmarks need it, because random weights never stop.
        `legacy_lm` loads the LM the way the engine ran before batching (transformers'
        `LlamaModel`, one task and one row at a time): the benchmarks' sequential baseline.
        """
        model_dir = options.model_dir or os.environ.get("GLMTTS_MODEL_DIR")
        if not model_dir:
            raise EngineLoadError("the glmtts engine needs a checkpoint: pass --model-dir or set GLMTTS_MODEL_DIR")
        layout = validate_checkpoint_dir(model_dir, campplus=options.campplus, sample_rate=options.sample_rate)
        device = resolve_device(options.device)
        try:
            llm_dtype = resolve_dtype(options.dtype)
            flow_dtype = resolve_dtype(options.flow_dtype)
            generation = GenerationOptions(
                kv_cache=options.kv_cache, force_tokens=force_tokens, sampling_rng=options.sampling_rng
            )
        except ValueError as exc:
            raise EngineLoadError(str(exc)) from exc
        kernel = "transformers" if legacy_lm else lm_kernel(device, llm_dtype, generation.sampling_rng)
        started = time.perf_counter()
        log(
            f"glmtts: loading {layout.root} on {device} "
            f"(LLM {options.dtype} {kernel}, flow {options.flow_dtype}, {options.sample_rate} Hz)"
        )
        tokenizer = TextTokenizer.from_checkpoint(layout.text_tokenizer_dir)
        phoneme_dict = PhonemeDict.load(options.phoneme_dict) if options.phoneme_dict else None
        vocoder = vocoder_spec(options.sample_rate)
        if legacy_lm:
            llm: SpeechLlama | SpeechLM = SpeechLM.from_checkpoint(layout.llm_dir, device, llm_dtype)
        else:
            llm = load_lm(layout.llm_dir, device, llm_dtype, kernel)
        models = _Models(
            tokenizer=tokenizer,
            special=tokenizer.special,
            text=TextFrontend(tokenizer, phoneme_dict=phoneme_dict),
            speech_tokenizer=SpeechTokenizer.from_checkpoint(layout.speech_tokenizer_dir, device),
            speaker=SpeakerEncoder.from_checkpoint(layout.campplus, device),
            mel=MelExtractor(options.sample_rate),
            llm=llm,
            flow=FlowDecoder.from_checkpoint(layout.flow_weights, device, flow_dtype, config_path=layout.flow_config),
            vocoder=vocoder.load(layout.vocoder_weights(options.sample_rate), device),
        )
        log(f"glmtts: {models.text.normalizer.describe()}")
        log(f"glmtts: loaded in {time.perf_counter() - started:.1f} s")
        return cls(layout, models, device=device, options=options, generation=generation)

    # ------------------------------------------------------------------ Engine protocol

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        """One task: `synthesize_many([request])`, its exception raised."""
        (result,) = self.synthesize_many([request])
        if isinstance(result, BaseException):
            raise result
        return result

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        """One result per request, in order: its `Synthesis`, or the exception of its own
        problem (its batch-mates go on). Out of memory: frees the call's memory and raises."""
        jobs: list[_Job | Exception] = []
        try:
            jobs = self._frontends(requests)
            live = [job for job in jobs if isinstance(job, _Job)]
            self._speech_tokens(live)
            self._render([job for job in live if job.error is None])
            return [job if isinstance(job, Exception) else self._finish(job) for job in jobs]
        except BaseException as exc:
            if is_out_of_memory(exc):
                del jobs
                self._release_memory()
            raise

    # ------------------------------------------------------------------ 1. frontend

    def _frontends(self, requests: Sequence[SynthesisRequest]) -> list[_Job | Exception]:
        """Prompt features and text pieces of every request, in order; a failure is its own."""
        pool = self._text_pool
        futures = [pool.submit(self._text_of, r) for r in requests] if pool is not None else None
        jobs: list[_Job | Exception] = []
        for i, request in enumerate(requests):
            started = time.perf_counter()
            try:
                prompt = self._prompt(request)
                phoneme, pieces, piece_ids = futures[i].result() if futures else self._text_of(request)
            except Exception as exc:  # noqa: BLE001 - this task's problem, returned as its result
                if is_out_of_memory(exc):
                    raise
                jobs.append(exc)
                continue
            job = _Job(request, prompt, phoneme, pieces, piece_ids)
            job.add_time("frontend", time.perf_counter() - started)
            jobs.append(job)
        return jobs

    def _prompt(self, request: SynthesisRequest) -> PromptFeatures:
        prompt_audio, prompt_text = checked_prompt(request.prompt_audio, request.prompt_text)
        return self.prompts.get_or_compute(
            prompt_audio,
            prompt_text,
            lambda: self.prompt_features(prompt_audio, prompt_text),
            digest=request.prompt_audio_sha256,
        )

    def _text_of(self, request: SynthesisRequest) -> tuple[bool, list[str], list[list[int]]]:
        phoneme = request.phoneme if request.phoneme is not None else self.options.phoneme_dict is not None
        with self._text_lock:
            return (phoneme, *self._text_pieces(request.text, phoneme))

    def _text_pieces(self, text: str, phoneme: bool) -> tuple[list[str], list[list[int]]]:
        """The pieces the text is spoken in, and their token ids (pieces without any dropped)."""
        frontend = self.models.text
        spoken = [(piece, ids) for piece in frontend.pieces(text, phoneme=phoneme) if (ids := frontend.ids(piece))]
        if not spoken:
            raise TaskError("input_text has nothing to speak after text normalisation", field="input_text")
        return [piece for piece, _ in spoken], [ids for _, ids in spoken]

    # ------------------------------------------------------------------ 2. LM

    def _speech_tokens(self, jobs: list[_Job]) -> None:
        """Every job's speech tokens per piece; a job whose input the LM refuses gets `error`."""
        if not jobs:
            return
        lm, special, options = self.models.llm, self.models.special, self.generation
        started = _synced_now(self.device)
        requests = [self._lm_request(job) for job in jobs]
        if isinstance(lm, SpeechLM):
            results = [_legacy_generate(lm, r, special, options) for r in requests]
        elif options.sampling_rng == "upstream":
            results = [generate_upstream(lm, r, special, options) for r in requests]
        else:
            results = generate_many(lm, requests, special, options, max_batch=len(requests))
        wall = _synced_now(self.device) - started
        for job, result in zip(jobs, results):
            job.tokens, job.lm_stats, job.error = result.tokens, result.stats, result.error
            # In flight together, a job's LM time is the batch's wall time, split evenly.
            job.add_time("llm", wall / len(jobs))

    def _lm_request(self, job: _Job) -> LmRequest:
        return LmRequest(
            pieces_text_ids=job.piece_ids,
            prompt_text_ids=job.prompt.prompt_text_ids,
            prompt_speech_tokens=job.prompt.speech_tokens,
            seed=job.request.seed,
            prompt_cache=self.options.prompt_cache,
        )

    # ------------------------------------------------------------------ 3. flow + vocoder

    def _render(self, jobs: list[_Job]) -> None:
        """Every job's pieces -> waves, in rounds (piece k of every job), see the module doc."""
        generators = {id(job): torch.Generator(device=self.device).manual_seed(job.request.seed) for job in jobs}
        for k in range(max((len(job.tokens) for job in jobs), default=0)):
            round_jobs = [j for j in jobs if j.error is None and k < len(j.tokens) and j.tokens[k]]
            round_jobs.sort(key=lambda j: len(j.prompt.speech_tokens) + len(j.tokens[k]))  # length buckets
            for start in range(0, len(round_jobs), self.flow_batch):
                bucket = round_jobs[start : start + self.flow_batch]
                self._render_bucket(bucket, k, [generators[id(j)] for j in bucket])

    def _render_bucket(self, bucket: list[_Job], k: int, generators: list[torch.Generator]) -> None:
        """Piece k of each job: one padded flow batch, then the vocoder per item. A failure
        there is retried item by item from the same generator states, so only its job fails."""
        before = [(g.get_state(), len(job.waves), dict(job.stages)) for job, g in zip(bucket, generators)]
        try:
            started = _synced_now(self.device)
            mels = self._flow(bucket, k, generators)  # (1, 80, T_i) each
            flow_s = (_synced_now(self.device) - started) / len(bucket)
            for job, mel, generator in zip(bucket, mels, generators):
                job.add_time("flow", flow_s)
                self._vocode(job, mel, generator)
        except Exception as exc:  # noqa: BLE001 - sorted out per job below
            if is_out_of_memory(exc):
                raise
            if len(bucket) == 1:
                bucket[0].error = exc
                return
            for job, generator, (state, n_waves, stages) in zip(bucket, generators, before):
                generator.set_state(state)
                del job.waves[n_waves:]
                job.stages = stages
                self._render_bucket([job], k, [generator])

    def _flow(self, bucket: list[_Job], k: int, generators: list[torch.Generator]) -> list[torch.Tensor]:
        """Piece k of each job -> its mel (1, 80, T_i): one padded batch, CFG as 2B rows."""
        device = self.device
        tokens = [job.tokens[k] for job in bucket]
        prompts = [job.prompt for job in bucket]
        mel, lengths = self.models.flow.inference_padded(
            _padded([torch.tensor(t) for t in tokens], device),  # (B, Nmax)
            torch.tensor([len(t) for t in tokens]),
            _padded([torch.tensor(p.speech_tokens) for p in prompts], device),  # (B, Pmax)
            torch.tensor([len(p.speech_tokens) for p in prompts]),
            _padded([p.prompt_mel for p in prompts], device),  # (B, Tpmax, 80)
            torch.tensor([p.prompt_mel.shape[0] for p in prompts]),
            torch.stack([p.embedding for p in prompts]).to(device),  # (B, 192)
            generator=generators,
        )
        return [mel[i : i + 1, :, : int(n)] for i, n in enumerate(lengths)]

    def _vocode(self, job: _Job, mel: torch.Tensor, generator: torch.Generator) -> None:
        started = _synced_now(self.device)
        wav = self.models.vocoder.vocode(mel, generator)  # (1, samples)
        job.waves.append(wav[0].float().cpu().numpy())
        job.add_time("vocoder", _synced_now(self.device) - started)

    # ------------------------------------------------------------------ 4. result

    def _finish(self, job: _Job) -> Synthesis | Exception:
        if job.error is not None:
            return job.error
        if not job.waves:
            return TaskError("the model produced no speech tokens for this text", field="input_text")
        started = time.perf_counter()
        audio = join_with_crossfade(job.waves, self.sample_rate, CROSSFADE_MS)
        job.add_time("vocoder", time.perf_counter() - started)
        return Synthesis(audio=audio, sample_rate=self.sample_rate, details=self._details(job, len(audio)))

    def _details(self, job: _Job, n_samples: int) -> dict[str, Any]:
        """What the manifest records about how this task was synthesised."""
        seconds = sum(job.stages.values())
        duration = n_samples / self.sample_rate
        generated = sum(s.generated_tokens for s in job.lm_stats)
        llm_seconds = job.stages.get("llm", 0.0)
        return {
            "text_pieces": job.pieces,
            "speech_tokens": [len(t) for t in job.tokens],
            "prompt_speech_tokens": len(job.prompt.speech_tokens),
            "timings_s": {stage: round(v, 4) for stage, v in job.stages.items()},
            "llm_tokens_per_s": round(generated / llm_seconds, 2) if llm_seconds > 0 else None,
            "rtf": round(seconds / duration, 4) if duration > 0 else None,
            "stop_reasons": [s.stop_reason for s in job.lm_stats],
            "device": str(self.device),
            "phoneme": job.phoneme,
        }

    def prompt_features(self, path: Path, prompt_text: str) -> PromptFeatures:
        """Everything the LM and the flow take from one prompt recording and its transcript."""
        models = self.models
        audio = load_prompt_audio(path)
        at_16k = audio.at_rate(SPEAKER_RATE)
        with self._text_lock:
            prompt_text_ids = models.text.prompt_ids(prompt_text)
        return PromptFeatures(
            prompt_text_ids=prompt_text_ids,
            speech_tokens=models.speech_tokenizer.tokenize(at_16k),
            embedding=torch.from_numpy(models.speaker.embed(at_16k)).float(),
            prompt_mel=models.mel.prompt_mel(audio.at_rate(self.sample_rate), self.device),
        )

    def free_memory(self) -> None:
        """Release cached accelerator memory (the runner calls it after out of memory)."""
        self._release_memory()

    def _release_memory(self) -> None:
        """Drop the LM's KV cache and CUDA graphs (rebuilt at the next call's size) and the
        allocator's cached blocks."""
        llm = self.models.llm if self.models is not None else None
        if isinstance(llm, SpeechLlama):
            llm.release_cache()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stats(self) -> dict[str, Any]:
        return self.prompts.stats()

    def close(self) -> None:
        if self._text_pool is not None:
            self._text_pool.shutdown(wait=True)
        self.prompts.clear()
        self.models = None  # type: ignore[assignment]
        self._release_memory()


def _legacy_generate(lm: SpeechLM, request: LmRequest, special: SpecialTokens, options: GenerationOptions) -> LmResult:
    """The pre-batching LM stage for one task (transformers, batch 1)."""
    try:
        tokens, stats = lm.generate_long(
            request.pieces_text_ids,
            request.prompt_text_ids,
            request.prompt_speech_tokens,
            special,
            seed=request.seed,
            prompt_cache=request.prompt_cache,
            options=options,
        )
    except ValueError as exc:
        return LmResult(error=exc)
    return LmResult(tokens=tokens, stats=stats)


def _padded(rows: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Right-pad tensors (T_i, ...) with zeros into (B, Tmax, ...) on `device`."""
    return torch.nn.utils.rnn.pad_sequence([r.to(device) for r in rows], batch_first=True)


def _synced_now(device: torch.device) -> float:
    """perf_counter after the device's queued work: each stage owns its kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
