"""Per-prompt features and the cache that computes them once per distinct prompt.

A batch usually reuses a handful of voices (an audiobook: one prompt for 5,000 lines).
Extracting a prompt's features runs the text tokenizer, the Whisper-VQ speech
tokenizer, CAM++ and the mel front end, so the engine asks `PromptCache` first.

Entries are keyed by what the features depend on: the audio file's content (sha256 of
its bytes, so the same recording under two names shares an entry and an edited file
does not), the prompt text, and the output sample rate (the prompt mel depends on it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glmtts_batch.digests import FileDigests
from glmtts_batch.errors import PromptAudioError


@dataclass(frozen=True)
class PromptFeatures:
    """Everything the LLM and the flow take from one prompt (recording + transcript)."""

    prompt_text_ids: list[int]  # normalised prompt text + " ", tokenised
    speech_tokens: list[int]  # 25 Hz speech tokens of the prompt audio (0-based, before + ats)
    embedding: torch.Tensor  # (192,) CAM++ speaker embedding
    prompt_mel: torch.Tensor  # (T, 80) log-mel at the output sample rate, 50 frames/s


class PromptCache:
    """LRU cache of `PromptFeatures` keyed by (audio content hash, prompt text, sample rate).

    File digests are remembered per (resolved path, size, mtime_ns, ctime_ns), so a file
    that does not change is read once however many tasks use it. An edit that keeps the
    size and both timestamps (to the nanosecond) would go unnoticed; that is the same
    heuristic make and rsync rely on.
    """

    def __init__(self, max_entries: int = 64, *, sample_rate: int | None = None, max_digests: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self.sample_rate = sample_rate
        self._entries: OrderedDict[tuple[str, str, int | None], PromptFeatures] = OrderedDict()
        self._digests = FileDigests(max_digests)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before the first lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    @property
    def files_hashed(self) -> int:
        return self._digests.files_hashed

    def digest(self, path: str | Path) -> str:
        """sha256 hex digest of the file's bytes, recomputed only when the file changed."""
        try:
            return self._digests(path)
        except OSError as exc:
            raise PromptAudioError(f"prompt audio {path}: cannot be read ({exc.strerror or exc})") from exc

    def get_or_compute(
        self,
        path: str | Path,
        prompt_text: str,
        compute: Callable[[], PromptFeatures],
        *,
        digest: str | None = None,
    ) -> PromptFeatures:
        """The cached features for this prompt, or `compute()` stored as the newest entry.

        `digest` is the file's sha256 when the caller has it already (the batch loop
        hashes every prompt for its resume key), so the file is hashed once per run.
        An exception from `compute` propagates and nothing is stored (the miss still counts).
        """
        key = (digest or self.digest(path), prompt_text, self.sample_rate)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        features = compute()
        self._entries[key] = features
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return features

    def clear(self) -> None:
        """Drop every entry (e.g. to free accelerator memory); counters are kept."""
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        """Counters for summary.json."""
        return {
            "prompt_cache_hits": self.hits,
            "prompt_cache_misses": self.misses,
            "prompt_cache_hit_rate": round(self.hit_rate, 4),
            "prompt_cache_entries": len(self._entries),
        }
