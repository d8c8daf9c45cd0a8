"""The tiny speech LLM the LM tests share: a small vocabulary and its special token ids."""

from __future__ import annotations

from dataclasses import dataclass

VOCAB = 600


@dataclass(frozen=True)
class Special:
    """Same fields as text.tokenizer.SpecialTokens; a small vocabulary keeps tests fast."""

    ats: int = 100
    ate: int = 355  # 256 audio tokens
    boa: int = 90
    eoa: int = 91
    pad: int = 92


SPECIAL = Special()
