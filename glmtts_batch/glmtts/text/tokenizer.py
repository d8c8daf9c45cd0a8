"""The GLM-TTS text tokenizer, read with tiktoken and nothing from the checkpoint executed.

The released `vq32k-phoneme-tokenizer/` folder holds:

* `tokenizer.model`: one `base64(token_bytes) rank` line per BPE token (tiktoken ranks);
* `tokenizer_config.json`: Hugging Face settings whose `added_tokens_decoder`
  (`{"id": {"content": "<|...|>", ...}}`) lists the special, phoneme and audio tokens;
* `tokenization_chatglm.py`: the remote code upstream runs through `trust_remote_code`.
  We never import it.

Upstream encodes with the Hugging Face slow tokenizer: the text is first cut at every
added token (the leftmost, then longest, match; each becomes its own id), and each
stretch between them is BPE-encoded on its own with the GLM-4 split pattern. No prefix
tokens are added. We do the same cut ourselves and BPE-encode the stretches with
tiktoken's `encode_ordinary` (tiktoken's own special-token path takes the set of ~40k
allowed tokens on every call, which costs tens of milliseconds).

The GLM-4 remote code also hard-codes 14 chat tokens (`<|endoftext|>`, `[MASK]`, ...,
`<|end_of_video|>`) right after the BPE ranks. They are used at those ids unless
`added_tokens_decoder` names them itself.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

import regex
import tiktoken

from glmtts_batch.errors import CheckpointError

GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Ids len(ranks) + i in the GLM-4 remote code, whatever tokenizer_config.json says.
GLM4_CHAT_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
)

N_AUDIO_TOKENS = 32768  # speech-token codebook size of the released model

SPECIAL_NAMES = {
    "ats": "<|audio_0|>",  # first speech token; speech token k has id ats + k
    "ate": f"<|audio_{N_AUDIO_TOKENS - 1}|>",
    "boa": "<|begin_of_audio|>",  # separates text from speech in the LLM input
    "eoa": "<|user|>",  # the LLM's stop token
    "pad": "<|endoftext|>",
}

_SHAPED = regex.compile(r"<\|[^|<>]*\|>")

MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"


@dataclass(frozen=True)
class SpecialTokens:
    """Special token ids, resolved by name through the text tokenizer (`SPECIAL_NAMES`)."""

    ats: int  # <|audio_0|>
    ate: int  # <|audio_32767|>
    boa: int  # <|begin_of_audio|>
    eoa: int  # <|user|>, the stop token
    pad: int  # <|endoftext|>


class TextTokenizer:
    """tiktoken BPE with the GLM-4 split pattern and Hugging Face-style added tokens."""

    def __init__(self, ranks: dict[bytes, int], added: dict[str, int], *, name: str = "glmtts") -> None:
        self._added = dict(added)
        self._where = name
        # Added tokens are handled here, not by tiktoken (see `encode`).
        self._encoding = tiktoken.Encoding(name=name, pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens={})
        self._added_by_id = {idx: tok.encode("utf-8") for tok, idx in self._added.items()}
        # Almost every added token looks like `<|...|>`: find those by shape and look them
        # up; the few others go into a small alternation.
        others = sorted((t for t in self._added if not _SHAPED.fullmatch(t)), key=len, reverse=True)
        self._others = regex.compile("|".join(regex.escape(t) for t in others)) if others else None
        self._special: SpecialTokens | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        ranks = _read_ranks(path / MODEL_FILE)
        added = _read_added_tokens(path / CONFIG_FILE)
        taken = set(added.values())
        merged = {
            tok: len(ranks) + i
            for i, tok in enumerate(GLM4_CHAT_TOKENS)
            if tok not in added and len(ranks) + i not in taken
        }
        merged.update(added)
        clash = sorted(set(merged.values()) & set(ranks.values()))
        if clash:
            raise CheckpointError(
                f"{path / CONFIG_FILE}: added token ids collide with BPE ranks in {MODEL_FILE}: {clash[:5]}"
            )
        by_id: dict[int, str] = {}
        for tok, idx in merged.items():
            if idx in by_id:
                raise CheckpointError(f"{path / CONFIG_FILE}: id {idx} is used by both {by_id[idx]!r} and {tok!r}")
            by_id[idx] = tok
        return cls(ranks, merged, name=str(path))

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (the LLM's embedding table must be at least this big)."""
        return max(self._encoding.max_token_value, max(self._added_by_id, default=0)) + 1

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        start = 0
        for match_start, match_end in self._added_spans(text):
            if match_start > start:
                ids.extend(self._encoding.encode_ordinary(text[start:match_start]))
            ids.append(self._added[text[match_start:match_end]])
            start = match_end
        if start < len(text):
            ids.extend(self._encoding.encode_ordinary(text[start:]))
        return ids

    def _added_spans(self, text: str) -> list[tuple[int, int]]:
        """Non-overlapping (start, end) of added tokens: leftmost first, then longest."""
        spans: list[tuple[int, int]] = []
        pos = 0
        while pos < len(text):
            best: tuple[int, int] | None = None
            shaped = _SHAPED.search(text, pos)
            # A `<|...|>` candidate that is not a token may hide one starting inside it.
            while shaped and shaped.group() not in self._added:
                shaped = _SHAPED.search(text, shaped.start() + 1)
            if shaped:
                best = shaped.span()
            other = self._others.search(text, pos) if self._others else None
            if other and (best is None or (other.start(), -other.end()) < (best[0], -best[1])):
                best = other.span()
            if best is None:
                break
            spans.append(best)
            pos = best[1]
        return spans

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        run: list[int] = []
        for idx in ids:
            added = self._added_by_id.get(idx)
            if added is None:
                run.append(idx)
                continue
            if run:
                out += self._decode_ordinary(run)
                run = []
            out += added
        if run:
            out += self._decode_ordinary(run)
        return out.decode("utf-8", errors="replace")

    def _decode_ordinary(self, ids: list[int]) -> bytes:
        try:
            return self._encoding.decode_bytes(ids)
        except KeyError as exc:
            raise ValueError(f"{self._where}: unknown token id in {ids[:8]}") from exc

    def token_id(self, token: str) -> int:
        """The id of `token`, which must encode to exactly one id."""
        ids = self.encode(token)
        if len(ids) != 1:
            raise CheckpointError(f"{self._where}: token {token!r} encodes to {len(ids)} ids {ids[:8]}, expected one")
        return ids[0]

    @property
    def special(self) -> SpecialTokens:
        if self._special is None:
            ids = {field: self.token_id(tok) for field, tok in SPECIAL_NAMES.items()}
            if ids["ate"] - ids["ats"] != N_AUDIO_TOKENS - 1:
                raise CheckpointError(
                    f"{self._where}: audio tokens are not contiguous: <|audio_0|> = {ids['ats']}, "
                    f"{SPECIAL_NAMES['ate']} = {ids['ate']}"
                )
            self._special = SpecialTokens(**ids)
        return self._special


def _read_ranks(path: Path) -> dict[bytes, int]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: tokenizer file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 'base64 rank'")
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error) as exc:
            raise CheckpointError(f"{path}: line {lineno} is not 'base64(token) rank' ({exc})") from None
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} of the 256 single bytes have no rank (e.g. {missing[:5]})")
    if len(set(ranks.values())) != len(ranks):
        raise CheckpointError(f"{path}: two tokens share a rank")
    return ranks


def _read_added_tokens(path: Path) -> dict[str, int]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: tokenizer config is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    if not isinstance(decoder, dict):
        raise CheckpointError(f"{path}: no 'added_tokens_decoder' object")
    added: dict[str, int] = {}
    for key, entry in decoder.items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(content, str) or not content or not key.isdigit():
            raise CheckpointError(f"{path}: added_tokens_decoder entry {key!r} is not {{id: {{'content': str}}}}")
        added[content] = int(key)
    return added
