"""Prompt audio: decoding, downmixing, resampling, and the per-task validation errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from glmtts_batch.errors import PromptAudioError, TaskError
from glmtts_batch.glmtts.audio import (
    MAX_DURATION_S,
    MIN_DURATION_S,
    PromptAudio,
    check_prompt_audio,
    load_prompt_audio,
    resample,
)


def voice(seconds: float, rate: int, seed: int = 0, peak: float = 0.5) -> np.ndarray:
    """A speech-ish test signal: a few harmonics of 150 Hz under a 4 Hz envelope, plus noise."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = sum(np.sin(2 * np.pi * 150 * k * t + k) / k for k in range(1, 6))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    x = x + 0.05 * np.random.default_rng(seed).standard_normal(t.shape)
    return (peak * x / np.max(np.abs(x))).astype(np.float32)


def write(path: Path, data: np.ndarray, rate: int, **kwargs) -> Path:
    sf.write(str(path), data, rate, **kwargs)
    return path


def assert_prompt_error(path: Path, *needles: str) -> PromptAudioError:
    with pytest.raises(PromptAudioError) as info:
        load_prompt_audio(path)
    err = info.value
    assert isinstance(err, TaskError)
    assert err.field == "prompt_audio"
    message = str(err)
    assert str(path) in message
    for needle in needles:
        assert needle in message
    return err


# --- formats, rates, channels ---------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "rate", "kwargs", "atol"),
    [
        (".wav", 8000, {"subtype": "PCM_16"}, 1 / 32768),
        (".wav", 44100, {"subtype": "FLOAT"}, 0.0),
        (".flac", 48000, {}, 1 / 32768),
        (".ogg", 44100, {"subtype": "VORBIS"}, None),  # lossy: only levels are compared
    ],
)
def test_reads_common_formats_and_rates(tmp_path, suffix, rate, kwargs, atol):
    x = voice(2.0, rate)
    path = write(tmp_path / f"prompt{suffix}", x, rate, **kwargs)
    audio = load_prompt_audio(path)
    assert isinstance(audio, PromptAudio)
    assert audio.sample_rate == rate
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    if atol is None:
        assert abs(audio.duration_s - 2.0) < 0.05
        assert abs(np.sqrt(np.mean(audio.samples**2)) - np.sqrt(np.mean(x**2))) < 0.02
    else:
        assert audio.duration_s == pytest.approx(2.0)
        np.testing.assert_allclose(audio.samples, x, atol=atol, rtol=0)


def test_pcm16_is_scaled_like_torchaudio(tmp_path):
    ints = (voice(1.5, 16000) * 32767).astype(np.int16)
    path = write(tmp_path / "pcm.wav", ints, 16000, subtype="PCM_16")
    audio = load_prompt_audio(path)
    np.testing.assert_array_equal(audio.samples, ints.astype(np.float32) / 32768)


def test_stereo_is_averaged_to_mono(tmp_path):
    x = voice(1.5, 48000)
    stereo = np.stack([x, -0.5 * x], axis=1)
    path = write(tmp_path / "stereo.flac", stereo, 48000, subtype="PCM_24")
    audio = load_prompt_audio(path)
    assert audio.samples.shape == (x.shape[0],)
    np.testing.assert_allclose(audio.samples, 0.25 * x, atol=2 / 2**23)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MP3 support")
def test_reads_mp3_when_libsndfile_supports_it(tmp_path):
    path = tmp_path / "prompt.mp3"
    try:
        write(path, voice(2.0, 44100), 44100, format="MP3", subtype="MPEG_LAYER_III")
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        pytest.skip(f"libsndfile cannot write MP3 here: {exc}")
    audio = load_prompt_audio(path)
    assert audio.sample_rate == 44100
    assert 1.9 < audio.duration_s < 2.2


# --- errors ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_prompt_error(tmp_path / "nope.wav", "not found")


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is a transcript, not a recording\n" * 20)
    assert_prompt_error(path, "cannot be read as audio")


def test_truncated_header(tmp_path):
    good = write(tmp_path / "good.wav", voice(2.0, 16000), 16000)
    bad = tmp_path / "cut.wav"
    bad.write_bytes(good.read_bytes()[:20])
    assert_prompt_error(bad, "cannot be")


def test_empty(tmp_path):
    path = write(tmp_path / "empty.wav", np.zeros((0,), dtype=np.float32), 16000)
    assert_prompt_error(path, "no audio samples")


def test_all_zeros_is_silent(tmp_path):
    path = write(tmp_path / "zeros.flac", np.zeros(32000, dtype=np.float32), 16000)
    assert_prompt_error(path, "silent", "all zeros")


def test_near_silence_is_silent(tmp_path):
    hiss = 2e-4 * np.random.default_rng(3).standard_normal(48000)  # about -74 dBFS
    path = write(tmp_path / "hiss.wav", hiss.astype(np.float32), 24000, subtype="FLOAT")
    assert_prompt_error(path, "silent", "dBFS")


def test_quiet_speech_is_accepted(tmp_path):
    path = write(tmp_path / "quiet.wav", voice(2.0, 16000, peak=0.02), 16000)  # about -45 dBFS RMS
    assert load_prompt_audio(path).duration_s == pytest.approx(2.0)


def test_full_scale_square_wave_is_clipped_to_nothing(tmp_path):
    t = np.arange(2 * 16000) / 16000
    square = np.sign(np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    path = write(tmp_path / "square.wav", square, 16000, subtype="PCM_16")
    assert_prompt_error(path, "clipped")


def test_hard_clipped_speech_is_clipped_to_nothing(tmp_path):
    driven = np.clip(voice(2.0, 16000, peak=1.0) * 20, -1, 1)
    path = write(tmp_path / "driven.wav", driven, 16000)
    assert_prompt_error(path, "clipped")


def test_loud_speech_with_some_clipping_is_accepted(tmp_path):
    hot = np.clip(voice(2.0, 16000, peak=1.0) * 1.3, -1, 1)
    assert 0 < np.mean(np.abs(hot) >= 0.99) < 0.5
    path = write(tmp_path / "hot.wav", hot, 16000)
    load_prompt_audio(path)


def test_shorter_than_one_second(tmp_path):
    path = write(tmp_path / "short.ogg", voice(0.6, 22050), 22050)
    assert_prompt_error(path, "too short", "0.6")


def test_exactly_minimum_and_maximum_lengths_are_accepted(tmp_path):
    for seconds in (MIN_DURATION_S, MAX_DURATION_S):
        path = write(tmp_path / f"edge{seconds:g}.wav", voice(seconds, 8000), 8000)
        assert load_prompt_audio(path).duration_s == pytest.approx(seconds)


def test_longer_than_thirty_seconds_is_an_error_not_a_trim(tmp_path):
    path = write(tmp_path / "long.wav", voice(31.0, 8000), 8000)
    assert_prompt_error(path, "too long", "31.0", "prompt_text")


def test_non_finite_samples(tmp_path):
    x = voice(1.5, 16000)
    x[100] = np.nan
    path = write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    assert_prompt_error(path, "NaN")


def test_check_prompt_audio_names_the_given_source():
    audio = PromptAudio(samples=np.zeros(16000, dtype=np.float32), sample_rate=16000)
    with pytest.raises(PromptAudioError, match="task-7 prompt.*silent"):
        check_prompt_audio(audio, "task-7 prompt")


# --- resampling -----------------------------------------------------------------------


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spectrum) * rate / x.shape[0])


@pytest.mark.parametrize(("src", "dst"), [(44100, 16000), (48000, 24000), (8000, 32000), (16000, 24000)])
def test_resample_keeps_duration_and_pitch(src, dst):
    t = np.arange(src) / src
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = resample(tone, src, dst)
    assert out.dtype == np.float32
    assert abs(out.shape[0] - dst) <= 1
    assert _peak_hz(out, dst) == pytest.approx(440, abs=2)
    # HQ keeps the level of an in-band tone (away from the edges).
    mid = out[dst // 4 : 3 * dst // 4]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resample_removes_content_above_the_new_nyquist():
    src, dst = 48000, 16000
    t = np.arange(src) / src
    tone = (0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32)  # above 8 kHz
    out = resample(tone, src, dst)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 1e-3


def test_resample_same_rate_is_identity():
    x = voice(1.0, 16000)
    assert resample(x, 16000, 16000) is x


def test_prompt_audio_at_rate(tmp_path):
    audio = load_prompt_audio(write(tmp_path / "p.wav", voice(2.0, 44100), 44100))
    assert audio.at_rate(16000).shape[0] == pytest.approx(32000, abs=1)
    assert audio.at_rate(44100) is audio.samples


def test_resample_rejects_multichannel_and_bad_rates():
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((2, 100), dtype=np.float32), 16000, 8000)
    with pytest.raises(ValueError, match="positive"):
        resample(np.zeros(100, dtype=np.float32), 0, 8000)
