"""The text side of GLM-TTS synthesis, in the order upstream `glmtts_inference.py` runs it.

* Prompt text: normalised, then a trailing space is added before tokenising.
* Text to speak: normalised, cut into pieces (`split_by_len`, 30..60), and each piece is
  normalised again (this fixes piece endings: a piece that ends at a comma gets a full
  stop). In phoneme mode, ambiguous Chinese characters of each piece are then spelled out
  as phoneme tokens.
"""

from __future__ import annotations

from glmtts_batch.glmtts.text.g2p import PhonemeDict, to_phoneme_text
from glmtts_batch.glmtts.text.normalize import TextNormalizer
from glmtts_batch.glmtts.text.split import LengthCounter, split_by_len
from glmtts_batch.glmtts.text.tokenizer import TextTokenizer

MIN_PIECE_LEN = 30
MAX_PIECE_LEN = 60


def normalize_and_split(
    text: str, normalizer: TextNormalizer, length: LengthCounter | None = None
) -> tuple[str, list[str]]:
    """The text as upstream normalises it, and the pieces it is spoken in (each normalised again)."""
    normalized = normalizer.normalize(text)
    pieces = [normalizer.normalize(p) for p in split_by_len(normalized, MIN_PIECE_LEN, MAX_PIECE_LEN, length=length)]
    return normalized, pieces


class TextFrontend:
    def __init__(
        self,
        tokenizer: TextTokenizer,
        *,
        phoneme_dict: PhonemeDict | None = None,
        normalizer: TextNormalizer | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.phoneme_dict = phoneme_dict
        self._normalizer = normalizer or TextNormalizer()
        self._length = LengthCounter()

    @property
    def normalizer(self) -> TextNormalizer:
        return self._normalizer

    def normalize(self, text: str) -> str:
        return self._normalizer.normalize(text)

    def prompt_ids(self, prompt_text: str) -> list[int]:
        return self.tokenizer.encode(self.normalize(prompt_text) + " ")

    def pieces(self, text: str, *, phoneme: bool = False) -> list[str]:
        _, pieces = normalize_and_split(text, self._normalizer, self._length)
        if phoneme:
            pieces = [to_phoneme_text(piece, self.phoneme_dict) for piece in pieces]
        return pieces

    def ids(self, piece: str) -> list[int]:
        return self.tokenizer.encode(piece)
