"""The GLM-TTS checkpoint folder: where each file lives, and validating it up front.

The layout is what `huggingface-cli download zai-org/GLM-TTS --local-dir DIR` produces,
plus `frontend/campplus.onnx` from the GitHub repository (which can also be given
separately). Validation reads only small files and the headers of large ones, and
reports every problem in one message, so a user with a half-finished download learns
everything that is wrong before gigabytes are read.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.vocoder import VOCODERS, vocoder_spec

# The one place that says how to get a checkpoint (engine selection appends how to use it).
DOWNLOAD_HINT = (
    "Download the checkpoint with `huggingface-cli download zai-org/GLM-TTS --local-dir DIR` "
    "and copy `frontend/campplus.onnx` from the GitHub repository zai-org/GLM-TTS "
    "(https://github.com/zai-org/GLM-TTS) to DIR/frontend/ (or pass --campplus FILE)."
)


@dataclass(frozen=True)
class CheckpointLayout:
    """Resolved paths of every file the engine reads."""

    root: Path
    llm_dir: Path  # config.json, model.safetensors.index.json + shards (or model.safetensors)
    flow_config: Path
    flow_weights: Path
    speech_tokenizer_dir: Path  # config.json, preprocessor_config.json, model.safetensors
    text_tokenizer_dir: Path  # tokenizer.model, tokenizer_config.json
    campplus: Path

    def vocoder_weights(self, sample_rate: int) -> Path:
        """The vocoder file for `sample_rate` (see `glmtts.vocoder.VOCODERS`)."""
        return self.root / vocoder_spec(sample_rate).checkpoint_file

    def fingerprint(self) -> str:
        """A short identity for the manifest and resume keys.

        Config files by content; weight files by size and modification time (hashing 9 GB
        per run would cost a minute). A fine-tune or re-download with the same shapes
        therefore changes the identity, and so does copying the folder elsewhere, which
        redoes work rather than reuse audio from other weights. The folder's own name and
        location are not part of it.
        """
        digest = hashlib.sha256()
        for path in sorted(_identity_files(self)):
            digest.update(str(path.relative_to(self.root) if path.is_relative_to(self.root) else path.name).encode())
            if path.suffix in {".json", ".yaml", ".model"}:
                digest.update(path.read_bytes())
            else:
                stat = path.stat()
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]


def _identity_files(layout: CheckpointLayout) -> list[Path]:
    files = [
        layout.llm_dir / "config.json",
        layout.flow_config,
        layout.flow_weights,
        layout.speech_tokenizer_dir / "config.json",
        layout.speech_tokenizer_dir / "model.safetensors",
        layout.text_tokenizer_dir / "tokenizer.model",
        layout.text_tokenizer_dir / "tokenizer_config.json",
        layout.campplus,
    ]
    files += sorted(layout.llm_dir.glob("*.safetensors"))
    files += [layout.vocoder_weights(rate) for rate in VOCODERS]
    return [p for p in files if p.exists()]


def resolve_layout(model_dir: str | Path, campplus: str | Path | None = None) -> CheckpointLayout:
    root = Path(model_dir).expanduser()
    return CheckpointLayout(
        root=root,
        llm_dir=root / "llm",
        flow_config=root / "flow" / "config.yaml",
        flow_weights=root / "flow" / "flow.pt",
        speech_tokenizer_dir=root / "speech_tokenizer",
        text_tokenizer_dir=root / "vq32k-phoneme-tokenizer",
        campplus=Path(campplus).expanduser() if campplus else root / "frontend" / "campplus.onnx",
    )


def validate_checkpoint_dir(
    model_dir: str | Path,
    *,
    campplus: str | Path | None = None,
    sample_rate: int = 24000,
) -> CheckpointLayout:
    """Check every file the engine will need; raise one `CheckpointError` listing all problems."""
    try:
        vocoder = vocoder_spec(sample_rate)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    layout = resolve_layout(model_dir, campplus)
    if not layout.root.is_dir():
        raise CheckpointError(f"checkpoint folder {layout.root} does not exist. {DOWNLOAD_HINT}")

    problems: list[str] = []
    _check_json(layout.llm_dir / "config.json", problems, required_keys=("hidden_size", "vocab_size"))
    _check_llm_weights(layout.llm_dir, problems)
    _check_file(layout.flow_config, problems)
    _check_torch_file(layout.flow_weights, problems)
    _check_json(layout.speech_tokenizer_dir / "config.json", problems, required_keys=("d_model", "quantize_position"))
    _check_json(layout.speech_tokenizer_dir / "preprocessor_config.json", problems, required_keys=("feature_size",))
    _check_safetensors(layout.speech_tokenizer_dir / "model.safetensors", problems)
    _check_file(layout.text_tokenizer_dir / "tokenizer.model", problems)
    _check_json(layout.text_tokenizer_dir / "tokenizer_config.json", problems, required_keys=("added_tokens_decoder",))
    _check_torch_file(layout.vocoder_weights(sample_rate), problems, what=f"{vocoder.name} vocoder")
    _check_file(layout.campplus, problems, what="CAM++ speaker encoder")

    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise CheckpointError(f"checkpoint folder {layout.root} is not usable:\n{listing}\n{DOWNLOAD_HINT}")
    return layout


def _check_file(path: Path, problems: list[str], *, what: str = "file") -> bool:
    if not path.exists():
        problems.append(f"missing {what}: {path}")
        return False
    if not path.is_file():
        problems.append(f"not a file: {path}")
        return False
    if path.stat().st_size == 0:
        problems.append(f"empty file: {path}")
        return False
    return True


def _check_json(path: Path, problems: list[str], *, required_keys: tuple[str, ...] = ()) -> dict | None:
    if not _check_file(path, problems):
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        problems.append(f"malformed JSON in {path}: {exc}")
        return None
    if not isinstance(data, dict):
        problems.append(f"malformed {path}: expected a JSON object")
        return None
    absent = [k for k in required_keys if k not in data]
    if absent:
        problems.append(f"malformed {path}: missing {', '.join(absent)}")
    return data


def _check_torch_file(path: Path, problems: list[str], *, what: str = "file") -> None:
    # torch.save and torch.jit.save both write zip archives; anything else is a broken download.
    if _check_file(path, problems, what=what) and not zipfile.is_zipfile(path):
        problems.append(f"malformed {path}: not a torch archive (truncated download?)")


def _check_safetensors(path: Path, problems: list[str]) -> set[str]:
    """Read only the header; check the declared data fits inside the file."""
    if not _check_file(path, problems):
        return set()
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(header_len))
        data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        problems.append(f"malformed safetensors file {path}: {exc}")
        return set()
    if 8 + header_len + data_end > path.stat().st_size:
        problems.append(f"truncated safetensors file {path}: header declares more data than the file holds")
    return {k for k in header if k != "__metadata__"}


def _check_llm_weights(llm_dir: Path, problems: list[str]) -> None:
    index_path = llm_dir / "model.safetensors.index.json"
    single = llm_dir / "model.safetensors"
    if not index_path.exists() and single.exists():
        _check_safetensors(single, problems)
        return
    index = _check_json(index_path, problems, required_keys=("weight_map",))
    if index is None or not isinstance(index.get("weight_map"), dict):
        return
    weight_map: dict[str, str] = index["weight_map"]
    for shard in sorted(set(weight_map.values())):
        keys = _check_safetensors(llm_dir / shard, problems)
        if keys:
            absent = sorted(k for k, s in weight_map.items() if s == shard and k not in keys)
            if absent:
                problems.append(f"{llm_dir / shard} lacks keys its index lists: {', '.join(absent[:5])}")
