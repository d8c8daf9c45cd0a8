"""Flow-matching decoder: speech tokens + prompt mel + speaker embedding -> mel.

Native version of upstream `flow/flow.py: Flow.inference_with_cache` (zai-org/GLM-TTS c5dc7ae):
10 Euler steps on a cosine time schedule from Gaussian noise, classifier-free guidance
`v = (1 + cfg) v_cond - cfg v_uncond` (cfg 0.7), the unconditional pass having a zero mel
condition and a zero speaker embedding but the same tokens. Both passes run as one batch.

Files (`flow/` in the released checkpoint): `flow.pt`, a state dict (raw or `{"model": sd}`)
whose keys all start with `estimator.`, and `config.yaml` (hyperpyyaml, `!new:flow.flow.Flow`)
holding the `Flow` arguments. The DiT dims are not stored anywhere, so they are inferred
from the tensor shapes (`DiTConfig.from_state_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.dit import DiT, DiTConfig, block_attention_mask
from glmtts_batch.glmtts.weights import load_module, read_state_dict


@dataclass(frozen=True)
class FlowSettings:
    """`Flow` constructor arguments that matter at inference. Defaults are upstream's defaults."""

    mel_dim: int = 80
    mel_framerate: float = 86
    input_frame_rate: float = 12.5
    spkr_emb_adaLN: bool = False
    speech_token_cfg: bool = True  # unconditional pass uses zero tokens
    remove_spkr_concat_condition: bool = False
    use_wavlm_emb: bool = False
    t_scheduler: str = "cosine"
    inference_cfg_rate: float = 0.7  # upstream hard-codes it; not a constructor argument

    @classmethod
    def released(cls) -> FlowSettings:
        return cls(
            mel_dim=80,
            mel_framerate=50,
            input_frame_rate=25,
            spkr_emb_adaLN=True,
            speech_token_cfg=False,
            remove_spkr_concat_condition=True,
        )


# Flow arguments that only shape the training loss or the (inferred) DiT dims.
_IGNORED_FLOW_ARGS = {
    "speech_token_dim",
    "vocab_size",
    "spk_embed_dim",
    "big_model",
    "calc_prompt_mel_loss",
    "loss_type",
    "use_mdt",
}


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads hyperpyyaml files: any `!tag` node is read as its plain mapping/sequence/scalar."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TagTolerantLoader.add_multi_constructor("!", _construct_tagged)


def read_flow_settings(path: str | Path) -> FlowSettings:
    """Parse `flow/config.yaml` (never imports upstream). Raises CheckpointError naming the problem."""
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_TagTolerantLoader)  # noqa: S506 - safe loader subclass
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: cannot read flow config ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("flow"), dict):
        raise CheckpointError(f"{path}: expected a top-level `flow:` mapping")
    args = dict(doc["flow"])
    known = {f.name for f in fields(FlowSettings)} - {"inference_cfg_rate"}
    unknown = sorted(set(args) - known - _IGNORED_FLOW_ARGS)
    if unknown:
        raise CheckpointError(f"{path}: unknown flow options: {', '.join(unknown)}")
    settings = FlowSettings(**{k: v for k, v in args.items() if k in known})
    problems = []
    if not settings.remove_spkr_concat_condition:
        problems.append("remove_spkr_concat_condition: False (speaker concat condition) is not supported")
    if settings.use_wavlm_emb:
        problems.append("use_wavlm_emb: True is not supported")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return settings


def cosine_t_span(n_timesteps: int, device: torch.device | str | None = None) -> Tensor:
    """(n + 1,) flow times `1 - cos(linspace(0, 1, n + 1) * pi / 2)`: small steps near the noise."""
    t = torch.linspace(0, 1, n_timesteps + 1, device=device)
    return 1 - torch.cos(t * 0.5 * torch.pi)


def mel_length(n_tokens: int, settings: FlowSettings) -> int:
    """Upstream `int(token_len / input_frame_rate * mel_framerate)`, same float expression."""
    return int(n_tokens / settings.input_frame_rate * settings.mel_framerate)


@dataclass
class _Conditioning:
    """Everything but x that the estimator sees, already doubled into [cond; uncond] (2B, ...)."""

    text: Tensor  # (2B, N)
    text_lengths: Tensor  # (2B,)
    cond: Tensor  # (2B, T, mel_dim)
    spk: Tensor | None  # (2B, spk_dim)
    padding_mask: Tensor | None  # (2B, T) bool, None when nothing is padded
    block_mask: Tensor | None  # (T, T) bool


@dataclass(frozen=True)
class _ItemLengths:
    """Per-item lengths of a padded batch, as host lists (each of length B)."""

    tokens: list[int]
    prompt_tokens: list[int]
    prompt_mel: list[int]
    total_tokens: list[int]  # prompt + target tokens
    frames: list[int]  # mel frames of prompt + target: `mel_length(total_tokens)`

    @classmethod
    def of(
        cls,
        batch: int,
        token_lengths: Tensor,
        prompt_token_lengths: Tensor,
        prompt_mel_lengths: Tensor,
        settings: FlowSettings,
        *batched: Tensor,
    ) -> _ItemLengths:
        lengths = [
            torch.as_tensor(x, dtype=torch.long).cpu().tolist()
            for x in (token_lengths, prompt_token_lengths, prompt_mel_lengths)
        ]
        if any(len(x) != batch for x in lengths) or any(t.shape[0] != batch for t in batched):
            raise ValueError("tokens, prompt tokens, prompt mel, embedding and their lengths must share the batch size")
        n_tokens, n_prompt, n_mel = lengths
        total = [p + n for p, n in zip(n_prompt, n_tokens)]
        frames = [mel_length(n, settings) for n in total]
        if min(total) <= 0 or min(frames) <= 0:
            raise ValueError("every item needs at least one token (prompt + target) and one mel frame")
        return cls(n_tokens, n_prompt, n_mel, total, frames)


def _after_prompt(x: Tensor, lengths: _ItemLengths) -> tuple[Tensor, Tensor]:
    """Final state (B, Tmax, mel) -> the frames after each prompt, (B, mel, Tout_max) zero-padded, and Tout (B,)."""
    out_lengths = [max(0, f - p) for f, p in zip(lengths.frames, lengths.prompt_mel)]
    mel = torch.zeros(x.shape[0], max(out_lengths), x.shape[2], dtype=x.dtype, device=x.device)
    for i, (start, end) in enumerate(zip(lengths.prompt_mel, lengths.frames)):
        mel[i, : out_lengths[i]] = x[i, start:end]
    return mel.transpose(1, 2), torch.tensor(out_lengths)


class FlowDecoder(nn.Module):
    """`estimator` (the DiT) plus the ODE sampler. State-dict keys equal the released flow.pt."""

    def __init__(self, config: DiTConfig, settings: FlowSettings | None = None) -> None:
        super().__init__()
        self.config = config
        self.settings = settings or FlowSettings.released()
        if self.settings.mel_dim != config.mel_dim or config.condition_dim != config.mel_dim:
            raise CheckpointError(
                f"flow config mel_dim {self.settings.mel_dim} does not fit the weights "
                f"(mel {config.mel_dim}, condition {config.condition_dim})"
            )
        if bool(self.settings.spkr_emb_adaLN) != bool(config.spk_dim):
            raise CheckpointError(
                f"flow config spkr_emb_adaLN={self.settings.spkr_emb_adaLN} does not fit the weights "
                f"(speaker dim {config.spk_dim})"
            )
        self.estimator = DiT(config)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        config_path: str | Path | None = None,
    ) -> FlowDecoder:
        """Load the released flow decoder unchanged.

        `path` is the `flow/` folder or its `flow.pt` (a raw state dict or `{"model": sd}`);
        `config.yaml` is read from beside it unless `config_path` is given. Keys must match
        exactly (CheckpointError names every missing, unexpected or mis-shaped key); tensors
        go straight to `device` and `dtype`.
        """
        ckpt, config = _flow_files(Path(path), config_path)
        if not ckpt.is_file():
            raise CheckpointError(f"{ckpt}: flow checkpoint not found")
        if not config.is_file():
            raise CheckpointError(f"{config}: flow config not found")
        settings = read_flow_settings(config)
        state = read_state_dict(ckpt, device=device)
        dit_config = DiTConfig.from_state_dict(state, prefix="estimator.", where=str(ckpt))
        return load_module(lambda: cls(dit_config, settings), state, where=str(ckpt), device=device, dtype=dtype)

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def inference(
        self,
        tokens: Tensor,
        prompt_tokens: Tensor,
        prompt_mel: Tensor,
        embedding: Tensor,
        *,
        n_timesteps: int = 10,
        cfg_rate: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        block_pattern: list[int] | None = None,
        on_step: Callable[[int, Tensor], None] | None = None,
    ) -> Tensor:
        """Mel for `tokens`, in the voice of the prompt. Every item has the same lengths.

        tokens (B, N) and prompt_tokens (B, P) speech token ids; prompt_mel (B, Tp, mel_dim);
        embedding (B, 192) raw speaker embedding (L2-normalised here). noise: (B, T, mel_dim)
        initial state with T = int((P + N) / input_rate * mel_rate); otherwise drawn from
        `generator` (see `inference_padded`). block_pattern: block-causal attention (upstream's
        streaming `is_causal=True`). Returns (B, mel_dim, T - Tp).
        """
        b = tokens.shape[0]
        mel, _ = self.inference_padded(
            tokens,
            torch.full((b,), tokens.shape[1], dtype=torch.long),
            prompt_tokens,
            torch.full((b,), prompt_tokens.shape[1], dtype=torch.long),
            prompt_mel,
            torch.full((b,), prompt_mel.shape[1], dtype=torch.long),
            embedding,
            n_timesteps=n_timesteps,
            cfg_rate=cfg_rate,
            noise=noise,
            generator=generator,
            block_pattern=block_pattern,
            on_step=on_step,
        )
        return mel

    @torch.inference_mode()
    def inference_padded(
        self,
        tokens: Tensor,
        token_lengths: Tensor,
        prompt_tokens: Tensor,
        prompt_token_lengths: Tensor,
        prompt_mel: Tensor,
        prompt_mel_lengths: Tensor,
        embedding: Tensor,
        *,
        n_timesteps: int = 10,
        cfg_rate: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        block_pattern: list[int] | None = None,
        on_step: Callable[[int, Tensor], None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Batched inference over items of different lengths (right-padded inputs).

        tokens (B, Nmax) with token_lengths (B,); prompt_tokens (B, Pmax) with
        prompt_token_lengths; prompt_mel (B, Tpmax, mel_dim) with prompt_mel_lengths;
        embedding (B, 192). The valid frames of each item equal a run of that item alone
        (up to float rounding) provided its noise is the same, which holds when `generator` is
        a list of one generator per item (each draws that item's (T_b, mel_dim) noise) or
        `noise` (B, Tmax, mel_dim) is given. A single generator draws (B, Tmax, mel_dim) at once,
        so then an item's noise depends on the batch. Noise is drawn on the generator's
        device, so a CPU generator gives the same noise whatever device the model is on.
        `on_step(step, x)` sees the state entering each Euler step (1-based).
        Returns mel (B, mel_dim, Tout_max) zero-padded, and mel_lengths (B,).
        """
        device = self.estimator.proj_out.weight.device
        batch = tokens.shape[0]
        lengths = _ItemLengths.of(
            batch,
            token_lengths,
            prompt_token_lengths,
            prompt_mel_lengths,
            self.settings,
            prompt_tokens,
            prompt_mel,
            embedding,
        )
        self._check_token_ids(tokens, prompt_tokens)
        conditioning, padding_mask = self._conditioning(
            tokens, prompt_tokens, prompt_mel, embedding, lengths, block_pattern, device
        )
        # The ODE state and the guidance mix stay float32 whatever the estimator's dtype: in
        # half precision, (1 + cfg) * v_cond - cfg * v_uncond amplifies rounding every step.
        x = self._initial_noise(batch, lengths.frames, noise, generator, device, torch.float32)
        cfg = self.settings.inference_cfg_rate if cfg_rate is None else cfg_rate
        x = self.solve(x, conditioning, n_timesteps=n_timesteps, cfg_rate=cfg, keep=padding_mask, on_step=on_step)
        return _after_prompt(x, lengths)

    def _check_token_ids(self, tokens: Tensor, prompt_tokens: Tensor) -> None:
        # Checked once here, not in the estimator: there it would sync the GPU at every step.
        vocab = self.config.text_vocab_size
        for ids in (tokens, prompt_tokens):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > vocab):
                raise ValueError(f"speech token ids must lie in [0, {vocab}]")

    def _conditioning(
        self,
        tokens: Tensor,
        prompt_tokens: Tensor,
        prompt_mel: Tensor,
        embedding: Tensor,
        lengths: _ItemLengths,
        block_pattern: list[int] | None,
        device: torch.device,
    ) -> tuple[_Conditioning, Tensor]:
        """The estimator's inputs besides x, doubled into [cond; uncond], and the (B, T) frame mask.

        Per item: tokens = prompt tokens + target tokens; condition = the last prompt frames,
        zeros after.
        """
        dtype = self.estimator.proj_out.weight.dtype
        batch, t_max = len(lengths.frames), max(lengths.frames)
        text = torch.zeros(batch, max(lengths.total_tokens), dtype=torch.long, device=device)
        cond = torch.zeros(batch, t_max, self.settings.mel_dim, dtype=dtype, device=device)
        for i in range(batch):
            n_prompt, n_total, n_mel = lengths.prompt_tokens[i], lengths.total_tokens[i], lengths.prompt_mel[i]
            text[i, :n_prompt] = prompt_tokens[i, :n_prompt]
            text[i, n_prompt:n_total] = tokens[i, : lengths.tokens[i]]
            copy = min(n_mel, lengths.frames[i])
            cond[i, :copy] = prompt_mel[i, n_mel - copy : n_mel].to(device=device, dtype=dtype)
        frame_lengths = torch.tensor(lengths.frames, device=device)
        padding_mask = torch.arange(t_max, device=device)[None, :] < frame_lengths[:, None]
        spk = (
            F.normalize(embedding.to(device=device, dtype=torch.float32), dim=1).to(dtype)
            if self.config.spk_dim
            else None
        )

        text_uncond = text if not self.settings.speech_token_cfg else torch.zeros_like(text)
        conditioning = _Conditioning(
            text=torch.cat([text, text_uncond]),
            text_lengths=torch.tensor(lengths.total_tokens * 2, device=device),
            cond=torch.cat([cond, torch.zeros_like(cond)]),
            spk=None if spk is None else torch.cat([spk, torch.zeros_like(spk)]),
            padding_mask=None if bool(padding_mask.all()) else padding_mask.repeat(2, 1),
            block_mask=None if block_pattern is None else block_attention_mask(block_pattern, t_max, device),
        )
        return conditioning, padding_mask

    def _initial_noise(
        self,
        b: int,
        feat_lengths: list[int],
        noise: Tensor | None,
        generator: torch.Generator | Sequence[torch.Generator] | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        t_max, mel_dim = max(feat_lengths), self.settings.mel_dim
        if noise is not None:
            if tuple(noise.shape) != (b, t_max, mel_dim):
                raise ValueError(f"noise must have shape {(b, t_max, mel_dim)}, got {tuple(noise.shape)}")
            return noise.to(device=device, dtype=dtype).clone()
        if generator is None or isinstance(generator, torch.Generator):
            gen_device = generator.device if generator is not None else torch.device("cpu")
            return torch.randn(b, t_max, mel_dim, generator=generator, device=gen_device).to(device=device, dtype=dtype)
        if len(generator) != b:
            raise ValueError(f"expected {b} generators (one per item), got {len(generator)}")
        x = torch.zeros(b, t_max, mel_dim, device=device, dtype=dtype)
        for i, g in enumerate(generator):
            x[i, : feat_lengths[i]] = torch.randn(feat_lengths[i], mel_dim, generator=g, device=g.device).to(
                device=device, dtype=dtype
            )
        return x

    def velocity(self, x: Tensor, t: Tensor, conditioning: _Conditioning, cfg_rate: float) -> Tensor:
        """Guided velocity at (x (B, T, mel), t scalar): conditional and unconditional as one batch of 2B.

        With cfg_rate <= 0 only the conditional half runs (upstream skips the second pass too).
        """
        n = 2 * x.shape[0] if cfg_rate > 0 else x.shape[0]
        out = self.estimator(
            torch.cat([x, x])[:n].to(conditioning.cond.dtype),
            conditioning.cond[:n],
            conditioning.text[:n],
            t.reshape(1),
            None if conditioning.spk is None else conditioning.spk[:n],
            padding_mask=None if conditioning.padding_mask is None else conditioning.padding_mask[:n],
            text_lengths=conditioning.text_lengths[:n],
            block_mask=conditioning.block_mask,
        ).float()
        if cfg_rate <= 0:
            return out
        v_cond, v_uncond = out.chunk(2)
        return (1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond

    def solve(
        self,
        x: Tensor,
        conditioning: _Conditioning,
        *,
        n_timesteps: int,
        cfg_rate: float,
        keep: Tensor | None = None,
        on_step: Callable[[int, Tensor], None] | None = None,
    ) -> Tensor:
        """Euler integration from t=0 (noise) to t=1, with upstream's step arithmetic.

        Upstream accumulates t += dt and takes the next dt as t_span[k + 1] - t, so the
        float rounding of the golden trajectory is reproduced by doing the same.
        """
        if n_timesteps < 1:
            raise ValueError("n_timesteps must be at least 1")
        if self.settings.t_scheduler == "cosine":
            t_span = cosine_t_span(n_timesteps, x.device)
        else:  # upstream falls back to uniform steps for any other scheduler name
            t_span = torch.linspace(0, 1, n_timesteps + 1, device=x.device)
        t = t_span[0]
        dt = t_span[1] - t_span[0]
        keep_f = None if keep is None or bool(keep.all()) else keep[..., None].to(x.dtype)
        for step in range(1, n_timesteps + 1):
            if on_step is not None:
                on_step(step, x)
            v = self.velocity(x, t, conditioning, cfg_rate)
            if keep_f is not None:
                v = v * keep_f  # padded frames stay at their noise
            x = x + dt.to(x.dtype) * v
            t = t + dt
            if step < n_timesteps:
                dt = t_span[step + 1] - t
        return x


def _flow_files(path: Path, config_path: str | Path | None) -> tuple[Path, Path]:
    ckpt = path / "flow.pt" if path.is_dir() else path
    config = Path(config_path) if config_path is not None else ckpt.parent / "config.yaml"
    return ckpt, config
