"""The `glmtts` engine: GLM-TTS zero-shot voice cloning, natively, one task at a time.

Per task: prompt features (cached by prompt content) → text pieces → speech tokens from the
Llama LM (pieces in order, with the prompt-history cache) → mel from the DiT flow (always
conditioned on the original prompt only) → waveform from the vocoder of the output rate
(`glmtts.vocoder.VOCODERS`: HiFT at 24 kHz, Vocos2D at 32 kHz) → pieces joined with a short
crossfade.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
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
from glmtts_batch.glmtts.inputs import checked_prompt
from glmtts_batch.glmtts.llm import (
    GenerationOptions,
    GenerationStats,
    SpeechLM,
    resolve_dtype,
)
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


def engine_settings(options: EngineOptions, generation: GenerationOptions, *, text_grammars: str) -> dict[str, Any]:
    """`EngineInfo.settings`: built from the configuration itself, so a new audio-shaping
    option is in the resume key without anyone remembering to add it (glmtts_batch.settings).
    `text_grammars` (`TextNormalizer.grammars`) is there too: upstream's TN graphs and the
    wetext fallback read the same text differently."""
    return {
        **audio_settings(options),
        "generation": audio_settings(generation),
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


@dataclass
class _Models:
    tokenizer: TextTokenizer
    special: SpecialTokens
    text: TextFrontend
    speech_tokenizer: SpeechTokenizer
    speaker: SpeakerEncoder
    mel: MelExtractor
    llm: SpeechLM
    flow: FlowDecoder
    vocoder: Vocoder


class GlmTtsEngine:
    """Implements `glmtts_batch.engines.base.Engine` for a GLM-TTS checkpoint folder."""

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
        self.prompts = PromptCache(sample_rate=options.sample_rate)
        self.info = EngineInfo(
            name="glmtts",
            model=f"glmtts:{layout.fingerprint()}",
            sample_rate=options.sample_rate,
            device=str(device),
            clones_voice=True,
            settings=engine_settings(options, generation, text_grammars=models.text.normalizer.grammars),
        )

    @classmethod
    def load(
        cls,
        options: EngineOptions,
        *,
        log: Log = log_to_stderr,
        force_tokens: int | None = None,
    ) -> GlmTtsEngine:
        """Validate the checkpoint folder, then load every model once.

        `force_tokens` makes the LM ignore its stop token and generate exactly that many
        tokens per piece: benchmarks need it, because random weights never stop.
        """
        model_dir = options.model_dir or os.environ.get("GLMTTS_MODEL_DIR")
        if not model_dir:
            raise EngineLoadError("the glmtts engine needs a checkpoint: pass --model-dir or set GLMTTS_MODEL_DIR")
        layout = validate_checkpoint_dir(model_dir, campplus=options.campplus, sample_rate=options.sample_rate)
        device = resolve_device(options.device)
        try:
            llm_dtype = resolve_dtype(options.dtype)
            flow_dtype = resolve_dtype(options.flow_dtype)
        except ValueError as exc:
            raise EngineLoadError(str(exc)) from exc
        started = time.perf_counter()
        log(
            f"glmtts: loading {layout.root} on {device} "
            f"(LLM {options.dtype}, flow {options.flow_dtype}, {options.sample_rate} Hz)"
        )

        tokenizer = TextTokenizer.from_checkpoint(layout.text_tokenizer_dir)
        phoneme_dict = PhonemeDict.load(options.phoneme_dict) if options.phoneme_dict else None
        vocoder = vocoder_spec(options.sample_rate)
        models = _Models(
            tokenizer=tokenizer,
            special=tokenizer.special,
            text=TextFrontend(tokenizer, phoneme_dict=phoneme_dict),
            speech_tokenizer=SpeechTokenizer.from_checkpoint(layout.speech_tokenizer_dir, device),
            speaker=SpeakerEncoder.from_checkpoint(layout.campplus, device),
            mel=MelExtractor(options.sample_rate),
            llm=SpeechLM.from_checkpoint(layout.llm_dir, device, llm_dtype),
            flow=FlowDecoder.from_checkpoint(layout.flow_weights, device, flow_dtype, config_path=layout.flow_config),
            vocoder=vocoder.load(layout.vocoder_weights(options.sample_rate), device),
        )
        try:
            generation = GenerationOptions(
                kv_cache=options.kv_cache, force_tokens=force_tokens, sampling_rng=options.sampling_rng
            )
        except ValueError as exc:
            raise EngineLoadError(str(exc)) from exc
        log(f"glmtts: {models.text.normalizer.describe()}")
        log(f"glmtts: loaded in {time.perf_counter() - started:.1f} s")
        return cls(layout, models, device=device, options=options, generation=generation)

    # ------------------------------------------------------------------ Engine protocol

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        prompt_audio, prompt_text = checked_prompt(request.prompt_audio, request.prompt_text)
        clock = _StageClock(self.device)
        prompt = self.prompts.get_or_compute(
            prompt_audio,
            prompt_text,
            lambda: self.prompt_features(prompt_audio, prompt_text),
            digest=request.prompt_audio_sha256,
        )
        phoneme = request.phoneme if request.phoneme is not None else self.options.phoneme_dict is not None
        pieces, piece_ids = self._text_pieces(request.text, phoneme)
        clock.lap("frontend")

        tokens_per_piece, llm_stats = self.models.llm.generate_long(
            piece_ids,
            prompt.prompt_text_ids,
            prompt.speech_tokens,
            self.models.special,
            seed=request.seed,
            prompt_cache=self.options.prompt_cache,
            options=self.generation,
        )
        clock.lap("llm")

        waves = self._render(tokens_per_piece, prompt, seed=request.seed, clock=clock)
        audio = join_with_crossfade(waves, self.sample_rate, CROSSFADE_MS)
        details = self._details(pieces, tokens_per_piece, llm_stats, prompt, clock, len(audio), phoneme)
        return Synthesis(audio=audio, sample_rate=self.sample_rate, details=details)

    def _text_pieces(self, text: str, phoneme: bool) -> tuple[list[str], list[list[int]]]:
        """The pieces the text is spoken in, and their token ids (pieces without any dropped)."""
        frontend = self.models.text
        spoken = [(piece, ids) for piece in frontend.pieces(text, phoneme=phoneme) if (ids := frontend.ids(piece))]
        if not spoken:
            raise TaskError("input_text has nothing to speak after text normalisation", field="input_text")
        return [piece for piece, _ in spoken], [ids for _, ids in spoken]

    def _render(
        self, tokens_per_piece: list[list[int]], prompt: PromptFeatures, *, seed: int, clock: _StageClock
    ) -> list[np.ndarray]:
        """Speech tokens of each piece -> mel (flow) -> waveform (vocoder), one piece at a time."""
        models = self.models
        prompt_tokens = torch.tensor([prompt.speech_tokens], dtype=torch.long, device=self.device)
        prompt_mel = prompt.prompt_mel.to(self.device)[None]  # (1, Tp, 80)
        embedding = prompt.embedding.to(self.device)[None]  # (1, 192)
        # One generator for the whole task: each piece draws fresh noise (as upstream's global
        # RNG does), and the task's seed still fixes every draw.
        generator = torch.Generator(device=self.device).manual_seed(seed)
        waves: list[np.ndarray] = []
        for tokens in tokens_per_piece:
            if not tokens:
                continue
            mel = models.flow.inference(
                torch.tensor([tokens], dtype=torch.long, device=self.device),
                prompt_tokens,
                prompt_mel,
                embedding,
                generator=generator,
            )
            clock.lap("flow")
            wav = models.vocoder.vocode(mel, generator)  # (1, samples)
            clock.lap("vocoder")
            waves.append(wav[0].float().cpu().numpy())
        if not waves:
            raise TaskError("the model produced no speech tokens for this text", field="input_text")
        return waves

    def _details(
        self,
        pieces: list[str],
        tokens_per_piece: list[list[int]],
        llm_stats: list[GenerationStats],
        prompt: PromptFeatures,
        clock: _StageClock,
        n_samples: int,
        phoneme: bool,
    ) -> dict[str, Any]:
        """What the manifest records about how this task was synthesised."""
        seconds = clock.total()
        duration = n_samples / self.sample_rate
        generated = sum(s.generated_tokens for s in llm_stats)
        llm_seconds = clock.stages.get("llm", 0.0)
        return {
            "text_pieces": pieces,
            "speech_tokens": [len(t) for t in tokens_per_piece],
            "prompt_speech_tokens": len(prompt.speech_tokens),
            "timings_s": {stage: round(v, 4) for stage, v in clock.stages.items()},
            "llm_tokens_per_s": round(generated / llm_seconds, 2) if llm_seconds > 0 else None,
            "rtf": round(seconds / duration, 4) if duration > 0 else None,
            "stop_reasons": [s.stop_reason for s in llm_stats],
            "device": str(self.device),
            "phoneme": phoneme,
        }

    def prompt_features(self, path: Path, prompt_text: str) -> PromptFeatures:
        """Everything the LM and the flow take from one prompt recording and its transcript."""
        models = self.models
        audio = load_prompt_audio(path)
        at_16k = audio.at_rate(SPEAKER_RATE)
        return PromptFeatures(
            prompt_text_ids=models.text.prompt_ids(prompt_text),
            speech_tokens=models.speech_tokenizer.tokenize(at_16k),
            embedding=torch.from_numpy(models.speaker.embed(at_16k)).float(),
            prompt_mel=models.mel.prompt_mel(audio.at_rate(self.sample_rate), self.device),
        )

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stats(self) -> dict[str, Any]:
        return self.prompts.stats()

    def close(self) -> None:
        self.prompts.clear()
        self.models = None  # type: ignore[assignment]
        self.free_memory()


class _StageClock:
    """Accumulates wall time per stage; synchronises CUDA so each stage owns its kernels."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stages: dict[str, float] = {}
        self._start = self._last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, stage: str) -> None:
        now = self._now()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        return self._last - self._start
