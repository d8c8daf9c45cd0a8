"""The embedded offline engine: espeak-ng, driven through ctypes.

The shared library and its voice data come from the `espeakng-loader` wheel, so the
engine works on any machine that can `pip install` the package: no system packages,
no checkpoint, no network. It does not clone voices; it exists so that a fresh
checkout can run a whole batch (`make demo`) and so the worker can be exercised
end to end without GLM-TTS weights.

Mixed Chinese/English text is split into runs by script (Han vs Latin), each run is
spoken with its own voice (`cmn` / `en`), and the runs are joined with a short pause.

espeak-ng keeps its state in process globals (one output mode, one callback, one
current voice), so the library is initialised once per process and every synthesis
holds a process-wide lock.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glmtts_batch.engines.base import (
    EngineInfo,
    EngineOptions,
    Synthesis,
    SynthesisRequest,
    synthesize_each,
)
from glmtts_batch.errors import EngineLoadError, TaskError
from glmtts_batch.glmtts.text.chars import is_han
from glmtts_batch.settings import audio_settings

HAN_VOICE = "cmn"
LATIN_VOICE = "en"
RUN_PAUSE_S = 0.15  # silence between two script runs of one task
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 96000
# Bump when the audio for the same text and voices changes (resumed runs then redo their tasks).
AUDIO_VERSION = 1

# espeak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # samples go to the callback, espeak_Synth returns when done
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_CHARS_UTF8 = 0x1
_POS_CHARACTER = 1
_EE_OK = 0

# espeak-ng's pitch flutter and roughness come from counters that live in C function
# statics and keep running from one synthesis to the next, so the same text would give
# slightly different samples depending on what was spoken before. A voice variant that
# turns both off makes every synthesis independent of history (tests hold us to it).
STEADY_VARIANT = "glmtts_steady"
_STEADY_VARIANT_TEXT = "language variant\nname glmtts_steady\nflutter 0\nroughness 0\n"

# int callback(short *wav, int numsamples, espeak_EVENT *events); return 1 to abort
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


# --------------------------------------------------------------------------- text runs


@dataclass(frozen=True)
class TextRun:
    """A stretch of text spoken with one voice."""

    voice: str
    text: str


def _script(ch: str) -> str | None:
    """'han', 'latin', or None for characters that belong to no script (digits, punctuation, spaces)."""
    if not ch.isalpha():
        return None
    if is_han(ch):
        return "han"
    if "LATIN" in unicodedata.name(ch, ""):
        return "latin"
    return None


def split_runs(text: str, *, han_voice: str = HAN_VOICE, latin_voice: str = LATIN_VOICE) -> list[TextRun]:
    """Split text into runs of one script each, in order.

    Characters with no script (digits, punctuation, spaces, other scripts) join the
    run before them, so a sentence's final punctuation stays with its words; at the
    very start they join the first run. Text with no Han or Latin letter at all is one
    Latin run (espeak's English voice reads digits and symbols). Runs are stripped of
    surrounding whitespace; runs left empty are dropped.
    """
    # Where each run starts; a run ends where the next begins. Slicing once per run keeps
    # this linear (appending to a string held in a list copies it every time).
    starts: list[tuple[str, int]] = []
    for i, ch in enumerate(text):
        script = _script(ch)
        if script is not None and (not starts or starts[-1][0] != script):
            starts.append((script, i))
    if not starts:
        starts = [("latin", 0)]
    bounds = [0] + [i for _, i in starts[1:]] + [len(text)]  # the first run takes the leading characters
    voices = {"han": han_voice, "latin": latin_voice}
    runs = (TextRun(voices[script], text[bounds[k] : bounds[k + 1]].strip()) for k, (script, _) in enumerate(starts))
    return [run for run in runs if run.text]


# --------------------------------------------------------------------------- the C library


DATA_DIR_PREFIX = "glmtts-espeak-"
_OWNER_LOCK = ".owner"  # flock-ed by the process using the folder, for as long as it lives
_UNMARKED_STALE_S = 24 * 3600  # folders without an owner lock (older versions, or being set up)


def remove_stale_data_dirs(parent: str | Path | None = None) -> list[Path]:
    """Remove data folders (see `steady_data_dir`) whose process is gone; the ones removed.

    A killed run cannot remove its folder at exit. Its owner lock is released by the
    kernel when the process dies, so a folder whose lock can be taken is stale; unlike a
    pid check this holds across pid namespaces and pid reuse. Only this user's own real
    folders are touched; one without a lock file is removed once it is a day old.
    """
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(parent.glob(DATA_DIR_PREFIX + "*"))
    except OSError:
        return removed
    for folder in entries:
        try:
            st = os.lstat(folder)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            try:
                fd = os.open(folder / _OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                if time.time() - st.st_mtime < _UNMARKED_STALE_S:
                    continue
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                finally:
                    os.close(fd)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except OSError:
            continue  # someone else's business, or gone already
    return removed


def steady_data_dir(data_path: str, parent: str | Path | None = None) -> str:
    """A private copy of espeak-ng's data folder (symlinks) that adds the steady voice variant.

    The wheel's folder is left untouched; the copy is removed when the process exits, and
    one left by a killed process is removed by the next process that makes one.
    """
    source = Path(data_path)
    if not (source / "phontab").is_file():
        raise EngineLoadError(f"espeak-ng data folder {data_path} is missing or incomplete (no phontab)")
    remove_stale_data_dirs(parent)
    try:
        root = Path(tempfile.mkdtemp(prefix=DATA_DIR_PREFIX, dir=parent))
    except OSError as exc:
        raise EngineLoadError(f"cannot create a folder for espeak-ng data: {exc}") from exc
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    try:
        owner = os.open(root / _OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        fcntl.flock(owner, fcntl.LOCK_EX)
        _OWNER_FDS.append(owner)  # held (never closed) until the process exits

        for entry in source.iterdir():
            if entry.name != "voices":
                os.symlink(entry, root / entry.name)
        variants = root / "voices" / "!v"
        variants.mkdir(parents=True)
        source_variants = source / "voices" / "!v"
        if source_variants.is_dir():
            for entry in source_variants.iterdir():
                os.symlink(entry, variants / entry.name)
        (variants / STEADY_VARIANT).write_text(_STEADY_VARIANT_TEXT)
    except OSError as exc:
        raise EngineLoadError(f"cannot prepare espeak-ng data in {root}: {exc}") from exc
    return str(root)


_OWNER_FDS: list[int] = []


class _Espeak:
    """One initialised espeak-ng library. Use `_shared_espeak()`; never build two."""

    def __init__(self, library_path: str, data_path: str) -> None:
        self.library_path = library_path
        self.data_path = data_path
        self.lib = open_library(library_path)
        steady = steady_data_dir(data_path)
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, steady.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EngineLoadError(f"espeak-ng failed to initialise with data folder {data_path} (returned {rate})")
        self.sample_rate = int(rate)
        self.version = (self.lib.espeak_Info(None) or b"unknown").decode("utf-8", "replace")
        self._chunks: list[np.ndarray] = []
        # An exception raised in the sample callback (e.g. by a signal handler, which Python
        # runs there: it is the only Python code running during espeak_Synth). ctypes would
        # print and discard it and the synthesis would go on with a gap, so it is kept here,
        # the synthesis is aborted, and it is re-raised once espeak_Synth returns.
        self._pending: BaseException | None = None
        # The C library keeps this pointer for the life of the process: keep the object alive.
        self._callback = _SynthCallback(self._on_samples)
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()
        atexit.register(self.lib.espeak_Terminate)

    def _on_samples(self, wav: Any, count: int, _events: Any) -> int:
        if self._pending is not None:
            return 1
        try:
            if wav and count > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        except BaseException as exc:  # noqa: BLE001 - re-raised by speak(); ctypes would drop it
            self._pending = exc
            return 1  # abort this synthesis: carrying on would leave a gap in the audio
        return 0

    def _keep_unraisable(self, previous: Callable[[Any], Any]) -> Callable[[Any], None]:
        """An unraisablehook that keeps the callback's own exceptions in `_pending`.

        A pending signal's handler runs at the callback's first instruction, before its
        `try` can catch anything; ctypes then hands the exception to sys.unraisablehook
        (and espeak goes on, until the next callback returns 1 because of `_pending`).
        """

        def hook(args: Any) -> None:
            if args.object == self._on_samples and self._pending is None:
                self._pending = args.exc_value if args.exc_value is not None else args.exc_type()
            else:
                previous(args)

        return hook

    def set_voice(self, voice: str) -> int:
        """Select `voice` with the steady variant; espeak's status code (0 = ok)."""
        return self.lib.espeak_SetVoiceByName(f"{voice}+{STEADY_VARIANT}".encode())

    def speak_into(self, chunks: list[np.ndarray], text: str, voice: str) -> None:
        """Append int16 chunks at `self.sample_rate` to `chunks`. Caller holds `self.lock`."""
        status = self.set_voice(voice)
        if status != _EE_OK:
            raise TaskError(f"espeak-ng has no voice {voice!r} (error {status})")
        data = text.encode("utf-8") + b"\0"
        self._chunks = chunks
        self._pending = None
        previous_hook = sys.unraisablehook
        sys.unraisablehook = self._keep_unraisable(previous_hook)
        try:
            status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if self._pending is None and status == _EE_OK:
                self.lib.espeak_Synchronize()
        finally:
            sys.unraisablehook = previous_hook
            self._chunks = []
            pending, self._pending = self._pending, None
        if pending is not None:
            raise pending
        if status != _EE_OK:
            raise TaskError(f"espeak-ng failed to synthesise a {voice!r} run (error {status})")


def open_library(library_path: str) -> ctypes.CDLL:
    """Load libespeak-ng and declare the signatures used here. Does not initialise it."""
    if not Path(library_path).is_file():
        raise EngineLoadError(f"espeak-ng library not found at {library_path}")
    try:
        lib = ctypes.CDLL(library_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size
            ctypes.c_uint,  # position
            ctypes.c_int,  # position_type
            ctypes.c_uint,  # end_position
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique_identifier
            ctypes.c_void_p,  # user_data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.restype = ctypes.c_int
    except (OSError, AttributeError) as exc:
        raise EngineLoadError(f"cannot load the espeak-ng library {library_path}: {exc}") from exc
    return lib


class _Process:
    """The process-wide espeak-ng instance (the C library allows exactly one)."""

    lock = threading.Lock()
    espeak: _Espeak | None = None


def _default_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as exc:
        raise EngineLoadError(
            "the espeak engine needs the espeakng-loader package (pip install espeakng-loader)"
        ) from exc
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except Exception as exc:  # noqa: BLE001 - the wheel raises RuntimeError for missing data
        raise EngineLoadError(f"espeakng-loader is installed but incomplete: {exc}") from exc


def _shared_espeak(library_path: str | None, data_path: str | None) -> _Espeak:
    with _Process.lock:
        if _Process.espeak is None:
            if library_path and data_path:
                _Process.espeak = _Espeak(library_path, data_path)
            else:
                default_lib, default_data = _default_paths()
                _Process.espeak = _Espeak(library_path or default_lib, data_path or default_data)
            return _Process.espeak
        espeak = _Process.espeak
        wanted = (library_path or espeak.library_path, data_path or espeak.data_path)
        if wanted != (espeak.library_path, espeak.data_path):
            raise EngineLoadError(
                f"espeak-ng is already initialised in this process from {espeak.library_path} "
                f"with data {espeak.data_path}; it cannot be re-initialised from {wanted[0]} / {wanted[1]}"
            )
        return espeak


# --------------------------------------------------------------------------- audio


def assemble(chunks: list[np.ndarray], rate: int, target_rate: int) -> np.ndarray:
    """int16 chunks at `rate` to one float32 array in [-1, 1] at `target_rate`; empties `chunks`.

    Each chunk is converted (and resampled, streaming) straight into the one output array
    and then dropped, so a long text's audio exists about once, not once per step.
    """
    total = sum(len(chunk) for chunk in chunks)
    chunks.reverse()  # pop() from the end is O(1)
    if target_rate == rate:
        audio = np.empty(total, dtype=np.float32)
        pos = 0
        while chunks:
            chunk = chunks.pop()
            audio[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        audio *= 1.0 / 32768.0  # exact: a power of two
        return audio
    import soxr

    stream = soxr.ResampleStream(rate, target_rate, 1, dtype="float32")
    audio = np.empty(-(-total * target_rate // rate) + 64, dtype=np.float32)  # ceil
    pos = 0

    def put(piece: np.ndarray) -> None:
        nonlocal audio, pos
        if pos + len(piece) > len(audio):  # soxr's flush may differ by a few samples
            audio = np.concatenate([audio[:pos], np.empty(len(piece) + 64, dtype=np.float32)])
        audio[pos : pos + len(piece)] = piece
        pos += len(piece)

    while chunks:
        chunk = chunks.pop()
        put(stream.resample_chunk(chunk.astype(np.float32) * (1.0 / 32768.0), last=not chunks))
    audio = audio[:pos]
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class EspeakVoices:
    """The engine's configuration besides the sample rate; all of it shapes the audio."""

    han_voice: str = HAN_VOICE
    latin_voice: str = LATIN_VOICE


class EspeakEngine:
    """Offline formant synthesis with espeak-ng; Chinese, English and mixed text.

    The prompt audio and prompt text of a task are ignored (no voice cloning); every
    synthesis carries a warning saying so when a prompt was given. The task seed is
    ignored too: espeak-ng is deterministic, the same text always gives the same samples.
    """

    name = "espeak"
    default_batch_size = 1  # nothing to gain from larger windows: tasks run one by one

    def __init__(
        self,
        *,
        sample_rate: int = 24000,
        library_path: str | Path | None = None,
        data_path: str | Path | None = None,
        han_voice: str = HAN_VOICE,
        latin_voice: str = LATIN_VOICE,
    ) -> None:
        if not isinstance(sample_rate, int) or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise EngineLoadError(
                f"espeak engine: sample rate must be an integer in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}], got {sample_rate!r}"
            )
        self._espeak = _shared_espeak(
            str(library_path) if library_path else None, str(data_path) if data_path else None
        )
        with self._espeak.lock:
            for voice in (han_voice, latin_voice):
                if self._espeak.set_voice(voice) != _EE_OK:
                    raise EngineLoadError(f"espeak-ng data at {self._espeak.data_path} has no voice {voice!r}")
        self.sample_rate = sample_rate
        self.han_voice = han_voice
        self.latin_voice = latin_voice
        self.info = EngineInfo(
            name=self.name,
            model=f"espeak-ng {self._espeak.version}",
            sample_rate=sample_rate,
            device="cpu",
            clones_voice=False,
            # Only the voices and the sample rate shape espeak's audio (dtypes and the like do not apply).
            settings={**audio_settings(EspeakVoices(han_voice, latin_voice)), "audio_version": AUDIO_VERSION},
        )
        self._tasks = 0
        self._characters = 0
        self._audio_s = 0.0
        self._synth_s = 0.0
        self._closed = False

    @classmethod
    def load(cls, options: EngineOptions, *, log: Callable[[str], None] | None = None) -> EspeakEngine:
        engine = cls(sample_rate=options.sample_rate)
        if log is not None:
            log(
                f"espeak engine: {engine.info.model}, {engine.sample_rate} Hz, voices {engine.han_voice}/{engine.latin_voice}"
            )
        return engine

    def synthesize(self, request: SynthesisRequest) -> Synthesis:
        if self._closed:
            raise RuntimeError("EspeakEngine.synthesize called after close()")
        runs = split_runs(request.text, han_voice=self.han_voice, latin_voice=self.latin_voice)
        if not runs:
            raise TaskError("input_text has nothing to speak", field="input_text")
        start = time.perf_counter()
        native = self._espeak.sample_rate
        pause = np.zeros(int(round(RUN_PAUSE_S * native)), dtype=np.int16)
        chunks: list[np.ndarray] = []  # int16 at the native rate, every run and pause in order
        with self._espeak.lock:
            for i, run in enumerate(runs):
                if i:
                    chunks.append(pause)
                self._espeak.speak_into(chunks, run.text, run.voice)
        if not any(np.any(chunk) for chunk in chunks):
            raise TaskError("espeak-ng produced no speech for this text", field="input_text")
        audio = assemble(chunks, native, self.sample_rate)
        elapsed = time.perf_counter() - start
        duration = len(audio) / self.sample_rate

        warnings = []
        if request.prompt_audio is not None:
            warnings.append(
                f"prompt audio ignored: the espeak engine does not clone voices ({request.prompt_audio.name})"
            )
        self._tasks += 1
        self._characters += sum(len(run.text) for run in runs)
        self._audio_s += duration
        self._synth_s += elapsed
        details = {
            "runs": [{"voice": run.voice, "text": run.text} for run in runs],
            "synth_s": round(elapsed, 4),
            "rtf": round(elapsed / duration, 4) if duration else None,
        }
        return Synthesis(audio=audio, sample_rate=self.sample_rate, details=details, warnings=warnings)

    def synthesize_many(self, requests: Sequence[SynthesisRequest]) -> list[Synthesis | Exception]:
        """One by one: espeak-ng speaks one text at a time (hence `default_batch_size` 1)."""
        return synthesize_each(self, requests)

    def free_memory(self) -> None:
        """Nothing to free: espeak-ng holds no accelerator memory."""

    def stats(self) -> dict[str, Any]:
        return {
            "tasks": self._tasks,
            "characters_spoken": self._characters,
            "audio_s": round(self._audio_s, 3),
            "synth_s": round(self._synth_s, 3),
        }

    def close(self) -> None:
        # The library stays initialised: espeak-ng allows one initialisation per process,
        # and another engine in this process may still use it. It is terminated at exit.
        self._closed = True
