"""Prompt audio: loading, validation, resampling, and the flow's prompt mel.

GLM-TTS reads one prompt recording three ways: at 16 kHz for the speech tokenizer and
for CAM++, and at the output rate (24 or 32 kHz) for the flow's log-mel condition.
`load_prompt_audio` decodes and checks the file once; `resample` derives each rate.

Every problem with the file becomes a `PromptAudioError` (a `TaskError` with field
"prompt_audio"), so one bad prompt fails its task and the batch moves on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from glmtts_batch.errors import PromptAudioError
from glmtts_batch.glmtts.vocoder import vocoder_spec

MIN_DURATION_S = 1.0
MAX_DURATION_S = 30.0
# -60 dBFS RMS. Quiet but usable speech sits around -40..-20 dBFS; below this there is
# nothing for the speaker encoder or the speech tokenizer to work with.
SILENCE_RMS = 1e-3
# A sample at or beyond this magnitude counts as sitting at full scale (int16 full
# scale reads back as 32767/32768, and lossy codecs overshoot a little around it).
CLIP_LEVEL = 0.99
# More than this fraction of the audible samples at full scale means the waveform has
# been clipped into a square wave: the voice is gone, only the clipping remains.
MAX_CLIPPED_FRACTION = 0.5


@dataclass(frozen=True, eq=False)  # numpy arrays have no single truth value for ==
class PromptAudio:
    """A decoded prompt: float32 mono samples in [-1, 1] (nominally) at `sample_rate`."""

    samples: np.ndarray  # (N,) float32
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    def at_rate(self, sample_rate: int) -> np.ndarray:
        """The samples resampled to `sample_rate` (the samples themselves when equal)."""
        return resample(self.samples, self.sample_rate, sample_rate)


def load_prompt_audio(path: str | Path) -> PromptAudio:
    """Decode a prompt file to mono float32 and check that it can serve as a voice prompt.

    Reads anything libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3 with libsndfile >= 1.1,
    ...), any sample rate and channel count. Channels are averaged to mono, as upstream
    does for the speaker embedding and the prompt mel. Integer PCM is scaled to [-1, 1)
    the way `torchaudio.load` does (int16 / 32768).

    Raises `PromptAudioError` naming the file when it
    - cannot be read as audio (missing, not audio, corrupt);
    - holds no samples, or non-finite samples;
    - is shorter than `MIN_DURATION_S` or longer than `MAX_DURATION_S`;
    - is silent: RMS below `SILENCE_RMS` (-60 dBFS), which includes all zeros;
    - is clipped to nothing: more than `MAX_CLIPPED_FRACTION` of the audible samples
      (|x| >= `SILENCE_RMS`) sit at full scale (|x| >= `CLIP_LEVEL`), as in a
      full-scale square wave or a recording driven far into the limiter.

    A prompt longer than 30 s is an error rather than being trimmed: the prompt text
    is the transcript of the whole recording, and the LLM and the flow rely on the text,
    the speech tokens and the mel describing the same utterance. Cutting the audio at
    30 s would leave text without audio, and the model would speak it at the start of
    every output. The user has to cut the file and its transcript together.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise PromptAudioError(f"prompt audio {name}: file not found (or not a regular file)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise PromptAudioError(f"prompt audio {name}: cannot be read as audio ({_reason(exc)})") from exc
    # Reject long files from the header before decoding them (a stray 2-hour WAV would
    # otherwise be read whole). Some formats report no frame count; they are checked below.
    if info.samplerate > 0 and info.frames > 0 and info.frames / info.samplerate > MAX_DURATION_S + 0.5:
        raise PromptAudioError(_too_long(name, info.frames / info.samplerate))
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise PromptAudioError(f"prompt audio {name}: cannot be decoded ({_reason(exc)})") from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise PromptAudioError(f"prompt audio {name}: the file contains no audio samples")
    samples = data.mean(axis=1, dtype=np.float64).astype(np.float32) if data.shape[1] > 1 else data[:, 0]
    samples = np.ascontiguousarray(samples)
    audio = PromptAudio(samples=samples, sample_rate=int(sample_rate))
    check_prompt_audio(audio, name)
    return audio


def check_prompt_audio(audio: PromptAudio, name: str) -> None:
    """The content checks of `load_prompt_audio`, for audio that did not come from a file."""
    x = audio.samples
    if x.size == 0:
        raise PromptAudioError(f"prompt audio {name}: the file contains no audio samples")
    if not np.all(np.isfinite(x)):
        raise PromptAudioError(f"prompt audio {name}: contains NaN or infinite sample values")
    duration = audio.duration_s
    if duration < MIN_DURATION_S:
        raise PromptAudioError(
            f"prompt audio {name}: too short ({duration:.2f} s); a prompt must be at least {MIN_DURATION_S:g} s"
        )
    if duration > MAX_DURATION_S:
        raise PromptAudioError(_too_long(name, duration))
    rms = math.sqrt(float(np.mean(np.square(x, dtype=np.float64))))
    if rms < SILENCE_RMS:
        level = "all zeros" if not np.any(x) else f"RMS {20 * math.log10(rms):.1f} dBFS"
        raise PromptAudioError(
            f"prompt audio {name}: silent ({level}); it must contain audible speech "
            f"(RMS above {20 * math.log10(SILENCE_RMS):.0f} dBFS)"
        )
    magnitude = np.abs(x)
    audible = np.count_nonzero(magnitude >= SILENCE_RMS)
    clipped = np.count_nonzero(magnitude >= CLIP_LEVEL)
    if audible and clipped / audible > MAX_CLIPPED_FRACTION:
        raise PromptAudioError(
            f"prompt audio {name}: clipped to nothing ({100 * clipped / audible:.0f}% of the audible samples "
            f"are at or beyond full scale); record it again at a lower level"
        )


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono float32 audio with soxr (HQ). Returns the input itself when the rates match."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"resample expects mono samples of shape (N,), got {samples.shape}")
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return samples
    out = soxr.resample(samples, from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def _too_long(name: str, duration: float) -> str:
    return (
        f"prompt audio {name}: too long ({duration:.1f} s); a prompt must be at most {MAX_DURATION_S:g} s. "
        "Cut the recording and its prompt_text together (they must stay a matching pair)"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


# --- prompt mel (flow conditioning) -------------------------------------------------


class MelExtractor:
    """Log-mel spectrogram at one output rate (24 kHz or 32 kHz), 50 frames per second.

    The mel basis and window are cached on the instance per (device, dtype). Upstream
    keys its module-level cache by fmax and device only, so a process that used both
    rates got the first rate's basis for the second; one extractor per rate avoids that.
    """

    def __init__(self, sample_rate: int) -> None:
        self.settings = vocoder_spec(sample_rate).mel
        self._basis_np = slaney_mel_basis(
            self.settings.sample_rate, self.settings.n_fft, self.settings.n_mels, self.settings.fmin, self.settings.fmax
        )
        self._cache: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def sample_rate(self) -> int:
        return self.settings.sample_rate

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cache:
            basis = torch.from_numpy(self._basis_np).to(device=device, dtype=dtype)  # (n_mels, n_fft//2+1)
            window = torch.hann_window(self.settings.win, periodic=True, dtype=dtype, device=device)
            self._cache[key] = (basis, window)
        return self._cache[key]

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, N) waveform at `sample_rate` -> (B, n_mels, T) log-mel, T = N // hop for N a multiple of hop."""
        if wav.dim() != 2:
            raise ValueError(f"expected a (B, N) waveform, got shape {tuple(wav.shape)}")
        if not wav.is_floating_point():
            raise ValueError(f"expected a floating-point waveform, got {wav.dtype}")
        settings = self.settings
        pad = (settings.n_fft - settings.hop) // 2
        if wav.shape[1] <= pad:
            raise ValueError(
                f"waveform of {wav.shape[1]} samples is too short for a {settings.sample_rate} Hz mel frame"
            )
        basis, window = self._tensors(wav.device, wav.dtype)
        # Reflect padding with center=False keeps frames aligned to hop boundaries: frame t
        # is centred on sample t*hop + hop/2.
        x = torch.nn.functional.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)  # (B, N + 2*pad)
        spec = torch.stft(
            x,
            settings.n_fft,
            hop_length=settings.hop,
            win_length=settings.win,
            window=window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # (B, n_fft//2+1, T)
        magnitude = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-9)
        mel = torch.matmul(basis, magnitude)  # (B, n_mels, T)
        return torch.log(torch.clamp(mel, min=1e-5))

    def prompt_mel(self, samples: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """Mono samples at `sample_rate` -> (T, n_mels) float32, the flow's prompt layout."""
        wav = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(device).unsqueeze(0)
        return self(wav)[0].transpose(0, 1).contiguous()


def slaney_mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, (n_mels, n_fft//2+1) float32.

    Same construction as librosa's default `filters.mel` (htk=False, norm="slaney"):
    filter edges equally spaced on the Slaney mel scale (linear below 1 kHz, logarithmic
    above), triangles in Hz, each scaled by 2 / (its width in Hz) for constant energy.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_mel = np.linspace(_hz_to_slaney_mel(fmin), _hz_to_slaney_mel(fmax), n_mels + 2)
    edges_hz = _slaney_mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)  # (n_mels + 1,)
    offsets = edges_hz[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_freqs)
    basis = np.empty((n_mels, fft_freqs.shape[0]), dtype=np.float64)
    for m in range(n_mels):
        rising = -offsets[m] / widths[m]
        falling = offsets[m + 2] / widths[m + 1]
        basis[m] = np.maximum(0.0, np.minimum(rising, falling))
    basis *= (2.0 / (edges_hz[2 : n_mels + 2] - edges_hz[:n_mels]))[:, None]
    return basis.astype(np.float32)


_SLANEY_F_SP = 200.0 / 3  # Hz per mel below the break
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: float) -> float:
    if hz < _SLANEY_MIN_LOG_HZ:
        return hz / _SLANEY_F_SP
    return _SLANEY_MIN_LOG_MEL + math.log(hz / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOG_STEP


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * _SLANEY_F_SP
    log = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_MIN_LOG_MEL))
    return np.where(mel >= _SLANEY_MIN_LOG_MEL, log, linear)
