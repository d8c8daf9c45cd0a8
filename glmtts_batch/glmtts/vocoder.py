"""The vocoder seam: one interface, and one registry from output sample rate to vocoder.

Each supported `--sample-rate` is one `VocoderSpec`: the vocoder class that turns the
flow's mel into samples, the mel settings of the prompt features the flow is conditioned
on at that rate, and the checkpoint file it loads. The CLI's choices, checkpoint
validation, the prompt-mel extractor and the engine all read this table, so a new
vocoder is one new entry (and one class with `sample_rate` and `vocode`).

This module imports no torch at import time: the CLI builds its `--sample-rate` choices
from it, and `glmtts-batch check` validates a checkpoint without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class Vocoder(Protocol):
    """Mel (B, 80, T) at 50 frames/s -> waveform (B, samples) float32 at `sample_rate`."""

    @property
    def sample_rate(self) -> int: ...

    def vocode(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """`generator` feeds any noise the vocoder draws (one per task keeps it seeded)."""
        ...


@dataclass(frozen=True)
class MelSettings:
    """HiFi-GAN-style log-mel settings upstream uses for the flow's prompt features."""

    sample_rate: int
    n_fft: int
    hop: int
    win: int
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0


@dataclass(frozen=True)
class VocoderSpec:
    sample_rate: int
    name: str  # for messages
    checkpoint_file: str  # path inside the checkpoint folder
    mel: MelSettings  # prompt-mel settings at this rate (50 frames/s)
    load: Callable[[Path, torch.device], Vocoder]


def _load_hift(path: Path, device: torch.device) -> Vocoder:
    from glmtts_batch.glmtts.hift import HiFT

    return HiFT.from_checkpoint(path, device)


def _load_vocos2d(path: Path, device: torch.device) -> Vocoder:
    from glmtts_batch.glmtts.vocos import Vocos2D

    return Vocos2D.from_checkpoint(path, device)


VOCODERS: dict[int, VocoderSpec] = {
    spec.sample_rate: spec
    for spec in (
        VocoderSpec(
            sample_rate=24000,
            name="HiFT",
            checkpoint_file="hift/hift.pt",
            mel=MelSettings(sample_rate=24000, n_fft=1920, hop=480, win=1920),
            load=_load_hift,
        ),
        VocoderSpec(
            sample_rate=32000,
            name="Vocos2D",
            checkpoint_file="vocos2d/generator_jit.ckpt",
            mel=MelSettings(sample_rate=32000, n_fft=2560, hop=640, win=2560),
            load=_load_vocos2d,
        ),
    )
}

SAMPLE_RATES: tuple[int, ...] = tuple(sorted(VOCODERS))
DEFAULT_SAMPLE_RATE = 24000


def vocoder_spec(sample_rate: int) -> VocoderSpec:
    """The registry entry for `sample_rate`; ValueError naming the supported rates otherwise."""
    try:
        return VOCODERS[sample_rate]
    except KeyError:
        supported = ", ".join(str(rate) for rate in SAMPLE_RATES)
        raise ValueError(f"unsupported sample rate {sample_rate}; use one of {supported}") from None
