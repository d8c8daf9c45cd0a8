"""HiFT vocoder (24 kHz): neural source-filter excitation + iSTFT-Net decoder.

Mel (B, 80, T) at 50 frames/s -> waveform (B, T * 480) at 24 kHz. Three parts:

* an F0 predictor (5 weight-normed convs + ELU, a linear head, `abs`) giving F0 per frame;
* a harmonic-plus-noise source: 9 harmonics of F0 whose phase is integrated at frame rate
  and linearly upsampled to sample rate (upstream's `SineGen2`), zeroed where unvoiced,
  plus Gaussian noise, merged by `tanh(Linear(9 -> 1))`;
* a HiFi-GAN-style decoder (transposed-conv upsampling, Snake residual blocks, the source's
  STFT fused in at every scale) predicting a 16-point log-magnitude / phase spectrum that an
  inverse STFT (hop 4) turns into samples.

State-dict keys equal the released `hift/hift.pt` (upstream `HiFTGenerator` with its
`ConvRNNF0Predictor` as `f0_predictor`), weight norm included
(`<conv>.parametrizations.weight.original0/1`). After loading, `fold_weight_norm()` replaces
each parametrization by its plain weight so inference does not recompute g * v / |v|.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from glmtts_batch.glmtts.weights import load_module, read_state_dict

SAMPLE_RATE = 24000


@dataclass(frozen=True)
class HiFTConfig:
    in_channels: int = 80
    base_channels: int = 512
    cond_channels: int = 512  # F0 predictor width
    nb_harmonics: int = 8  # overtones above F0; the source has nb_harmonics + 1 sines
    sampling_rate: int = SAMPLE_RATE
    nsf_alpha: float = 0.1  # sine amplitude
    nsf_sigma: float = 0.003  # noise std in voiced samples
    nsf_voiced_threshold: float = 10.0  # Hz
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99

    @classmethod
    def full(cls) -> HiFTConfig:
        """The released 24 kHz HiFT (about 83 MB of fp32 weights)."""
        return cls()

    @classmethod
    def tiny(cls) -> HiFTConfig:
        """Same topology, 16x narrower: the golden vectors' model size."""
        return cls(base_channels=32, cond_channels=32)

    @property
    def upsample_scale(self) -> int:
        """Output samples per mel frame (8 * 5 * 3 * 4 = 480)."""
        return math.prod(self.upsample_rates) * self.hop_len

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], base: HiFTConfig | None = None) -> HiFTConfig:
        """Widths from the tensor shapes (hift.pt stores no config); the rest from `base`.

        Everything not inferred here is still verified: the strict shape check in the loader
        rejects a file whose kernels, harmonics or FFT size differ from the config.
        A key that is absent leaves the default, so the loader can name it as missing.
        """
        cfg = base or cls.full()
        conv_pre = state_dict.get("conv_pre.parametrizations.weight.original1")
        if conv_pre is not None and conv_pre.dim() == 3:
            cfg = replace(cfg, base_channels=int(conv_pre.shape[0]), in_channels=int(conv_pre.shape[1]))
        cond = state_dict.get("f0_predictor.condnet.0.parametrizations.weight.original1")
        if cond is not None and cond.dim() == 3:
            cfg = replace(cfg, cond_channels=int(cond.shape[0]))
        linear = state_dict.get("m_source.l_linear.weight")
        if linear is not None and linear.dim() == 2:
            cfg = replace(cfg, nb_harmonics=int(linear.shape[1]) - 1)
        return cfg


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, per channel; alpha stored on a linear scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        alpha = self.alpha[None, :, None]
        return x + torch.sin(x * alpha).pow(2) / (alpha + 1e-9)


class ResBlock(nn.Module):
    """Snake -> dilated conv -> Snake -> conv, residual, once per dilation."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size))) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class F0Predictor(nn.Module):
    """Mel (B, 80, T) -> F0 in Hz (B, T). Upstream's `ConvRNNF0Predictor` (it has no RNN)."""

    def __init__(self, in_channels: int, cond_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            conv = nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1)
            layers += [weight_norm(conv), nn.ELU()]
        self.condnet = nn.Sequential(*layers)  # convs at indices 0, 2, 4, 6, 8 (checkpoint keys)
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: Tensor) -> Tensor:
        h = self.condnet(mel).transpose(1, 2)  # (B, T, C)
        return self.classifier(h).squeeze(-1).abs()


class SourceModule(nn.Module):
    """Holds the harmonic merge layer; the sines themselves are computed in `HiFT.excitation`."""

    def __init__(self, nb_harmonics: int) -> None:
        super().__init__()
        self.l_linear = nn.Linear(nb_harmonics + 1, 1)


class HiFT(nn.Module):
    def __init__(self, config: HiFTConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        base = cfg.base_channels
        spec_channels = cfg.n_fft + 2  # real + imaginary parts of n_fft // 2 + 1 bins

        self.m_source = SourceModule(cfg.nb_harmonics)
        self.conv_pre = weight_norm(nn.Conv1d(cfg.in_channels, base, 7, padding=3))
        self.ups = nn.ModuleList(
            weight_norm(nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        # The source STFT (hop_len frames) is brought down to each decoder scale: the last scale
        # matches it 1:1, earlier ones are coarser by the product of the later upsample rates.
        down_rates = [math.prod(cfg.upsample_rates[i + 1 :]) for i in range(len(cfg.upsample_rates))]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (rate, k, dils) in enumerate(
            zip(down_rates, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilations)
        ):
            ch = base // 2 ** (i + 1)
            if rate == 1:
                self.source_downs.append(nn.Conv1d(spec_channels, ch, 1))
            else:
                self.source_downs.append(nn.Conv1d(spec_channels, ch, rate * 2, rate, padding=rate // 2))
            self.source_resblocks.append(ResBlock(ch, k, dils))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, dils)
            for i in range(len(cfg.upsample_rates))
            for k, dils in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)
        )
        self.conv_post = weight_norm(nn.Conv1d(base // 2 ** len(cfg.upsample_rates), spec_channels, 7, padding=3))
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.cond_channels)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float32,
        fold_weight_norm: bool = True,
        where: str = "hift",
    ) -> HiFT:
        config = HiFTConfig.from_state_dict(state_dict)
        model = load_module(lambda: cls(config), state_dict, where=where, device=device, dtype=dtype)
        if fold_weight_norm:
            model.fold_weight_norm()
        return model

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float32,
        *,
        fold_weight_norm: bool = True,
    ) -> HiFT:
        """Load the released `hift/hift.pt` unchanged (any width: the config is inferred).

        Keep float32 (the default): in bfloat16 the F0 and the exp() of the log-magnitudes are
        too coarse (the golden waveform is off by ~0.35), and the vocoder is a small share of
        the run time.
        """
        state_dict = read_state_dict(path, device)
        return cls.from_state_dict(
            state_dict, device=device, dtype=dtype, fold_weight_norm=fold_weight_norm, where=str(path)
        )

    @torch.no_grad()
    def fold_weight_norm(self) -> None:
        """Replace every g * v / |v| parametrization by the plain weight it computes."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self.requires_grad_(False)

    # ------------------------------------------------------------------ inference

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    def vocode(self, mel: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The `Vocoder` interface: mel (B, 80, T) -> waveform (B, T * 480)."""
        return self.inference(mel, generator=generator)

    @torch.inference_mode()
    def inference(self, mel: Tensor, *, generator: torch.Generator | None = None, zero_noise: bool = False) -> Tensor:
        """Mel (B, 80, T) -> waveform (B, T * 480), float32 in [-audio_limit, audio_limit].

        Noise comes from `generator` (torch's default generator when None, as upstream).
        `zero_noise=True` is a test hook that sets every excitation random draw to zero.
        """
        if mel.dim() != 3 or mel.shape[1] != self.config.in_channels or mel.shape[2] == 0:
            expected = f"(B, {self.config.in_channels}, T > 0)"
            raise ValueError(f"HiFT expects a mel of shape {expected}, got {tuple(mel.shape)}")
        mel = mel.to(device=self.m_source.l_linear.weight.device, dtype=self._dtype)
        f0 = self.f0_predictor(mel)
        source = self.excitation(f0, generator=generator, zero_noise=zero_noise)
        return self.spec_to_wav(self.decode_spec(mel, source))

    def excitation(self, f0: Tensor, *, generator: torch.Generator | None = None, zero_noise: bool = False) -> Tensor:
        """F0 per frame (B, T) in Hz -> harmonic excitation (B, 1, T * 480), float32.

        Same computation as upstream `SourceModuleHnNSF2` at 24 kHz. Upstream draws, in this
        order: a random initial phase (B, 9), voiced/unvoiced noise (B, L, 9), and noise for a
        branch `inference` discards (not drawn here: nothing follows it). The initial phase is
        added to sample 0 only, which the 1/480 linear downsample that follows never reads, so
        it has no effect; it is still drawn to keep the generator stream in upstream's order.
        The noise is drawn exactly as upstream's `randn_like` fills its tensor (see
        `_draw_noise`), so a CPU generator seeded like upstream's global RNG reproduces
        upstream's noisy output.
        """
        cfg = self.config
        scale = cfg.upsample_scale
        batch, frames = f0.shape
        f0 = f0.float()
        harmonics = torch.arange(1, cfg.nb_harmonics + 2, device=f0.device, dtype=torch.float32)
        # Phase advance per sample, in cycles, constant within a frame: (B, T, H).
        cycles = (f0[:, :, None] * harmonics / cfg.sampling_rate) % 1
        # Integrate at frame rate (x scale samples per frame), then interpolate the phase
        # linearly to sample rate: smooth phase across frame boundaries.
        phase = torch.cumsum(cycles, dim=1) * (2 * math.pi) * scale
        phase = F.interpolate(phase.transpose(1, 2), scale_factor=float(scale), mode="linear").transpose(1, 2)
        sines = torch.sin(phase) * cfg.nsf_alpha  # (B, L, H)

        f0_samples = f0.repeat_interleave(scale, dim=1)[:, :, None]  # (B, L, 1), nearest upsampling
        voiced = (f0_samples > cfg.nsf_voiced_threshold).float()
        sines = sines * voiced
        if not zero_noise:
            _draw(torch.rand, (batch, cfg.nb_harmonics + 1), generator, f0.device)  # initial phase, unused
            noise_std = voiced * cfg.nsf_sigma + (1 - voiced) * (cfg.nsf_alpha / 3)
            sines = sines + noise_std * _draw_noise(batch, frames * scale, cfg.nb_harmonics + 1, generator, f0.device)
        linear = self.m_source.l_linear
        merged = torch.tanh(F.linear(sines, linear.weight.float(), linear.bias.float()))  # (B, L, 1)
        return merged.transpose(1, 2)

    def decode_spec(self, mel: Tensor, source: Tensor) -> Tensor:
        """Mel (B, 80, T) + excitation (B, 1, L) -> conv_post output (B, n_fft + 2, L / hop + 1)."""
        cfg = self.config
        window = torch.hann_window(cfg.n_fft, periodic=True, device=source.device, dtype=torch.float32)
        spec = torch.stft(
            source.squeeze(1).float(), cfg.n_fft, cfg.hop_len, cfg.n_fft, window=window, return_complex=True
        )
        spec = torch.view_as_real(spec)  # (B, n_fft/2 + 1, frames, 2)
        s = torch.cat([spec[..., 0], spec[..., 1]], dim=1).to(self._dtype)  # (B, n_fft + 2, frames)

        x = self.conv_pre(mel.to(self._dtype))
        n_kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")  # one more frame: the STFT is centred
            x = x + self.source_resblocks[i](self.source_downs[i](s))
            blocks = self.resblocks[i * n_kernels : (i + 1) * n_kernels]
            x = sum(block(x) for block in blocks) / n_kernels
        return self.conv_post(F.leaky_relu(x))  # upstream uses the default 0.01 slope here

    def spec_to_wav(self, spec: Tensor) -> Tensor:
        """conv_post output (B, n_fft + 2, frames) -> waveform (B, (frames - 1) * hop), float32."""
        cfg = self.config
        spec = spec.float()
        bins = cfg.n_fft // 2 + 1
        magnitude = torch.exp(spec[:, :bins]).clamp(max=1e2)
        phase = torch.sin(spec[:, bins:])  # upstream's (redundant) sin, kept for parity
        complex_spec = torch.polar(magnitude, phase)
        window = torch.hann_window(cfg.n_fft, periodic=True, device=spec.device, dtype=torch.float32)
        wav = torch.istft(complex_spec, cfg.n_fft, cfg.hop_len, cfg.n_fft, window=window)
        return wav.clamp(-cfg.audio_limit, cfg.audio_limit)

    @property
    def _dtype(self) -> torch.dtype:
        return self.m_source.l_linear.weight.dtype


def _draw(fn, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Draw on the generator's own device (a CPU generator can feed a CUDA model)."""
    where = generator.device if generator is not None else device
    return fn(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def _draw_noise(
    batch: int, samples: int, harmonics: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Standard normal noise (B, L, H), drawn the way upstream's `randn_like` draws it.

    Upstream's sine tensor is a transposed view with (B, H, L) memory order, and torch fills
    such a non-contiguous tensor with its element-by-element sampler in memory order (a
    contiguous tensor takes a vectorised sampler with different numbers). Filling the same
    kind of view keeps a seeded CPU generator's output identical to upstream's.
    """
    where = generator.device if generator is not None else device
    noise = torch.empty((batch, harmonics, samples), device=where, dtype=torch.float32).transpose(1, 2)
    return noise.normal_(generator=generator).to(device)
