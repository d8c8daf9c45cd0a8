"""Character classes shared by the text front end and the espeak engine.

One definition of "a Chinese character" and of the sentence punctuation that pieces end
at, so the splitter, the phoneme front end and the espeak script detection agree.
"""

from __future__ import annotations

# Upstream's split set: a piece may end after any of these (full- and half-width).
SENTENCE_PUNCTUATION = "。？！；：、.?!;:，,"

_HAN_RANGES = (
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0x3400, 0x4DBF),  # Extension A
    (0x20000, 0x323AF),  # Extensions B..H
    (0xF900, 0xFAFF),  # Compatibility Ideographs
    (0x2F800, 0x2FA1F),  # Compatibility Ideographs Supplement
    (0x2E80, 0x2EFF),  # CJK Radicals Supplement
)


def is_han(char: str) -> bool:
    """A Han ideograph (unified, extensions A..H, compatibility, radicals): one character."""
    code = ord(char)
    return any(low <= code <= high for low, high in _HAN_RANGES)
