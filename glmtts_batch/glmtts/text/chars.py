"""Character classes shared by the text front end and the espeak engine.

One definition of "a Chinese character" and of the sentence punctuation that pieces end
at, so the splitter, the phoneme front end and the espeak script detection agree.
"""

from __future__ import annotations

import re

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


# Upstream decides "this text is Chinese" by the CJK Unified Ideographs block alone
# (`[\u4e00-\u9fff]`), and the normaliser routes a text by that decision. It stays
# upstream's, not `is_han`: the wider test sends a text whose only ideographs lie outside the
# block the Chinese way, and `⺀ 3 apples` would read "⺀三apples。" where upstream reads
# "three apples.". No text of the shared corpus has such characters; the split and the
# phoneme front end, which only count and spell characters, use `is_han`.
UPSTREAM_CHINESE_BLOCK = (0x4E00, 0x9FFF)
UPSTREAM_CHINESE_CLASS = f"[{chr(UPSTREAM_CHINESE_BLOCK[0])}-{chr(UPSTREAM_CHINESE_BLOCK[1])}]"  # regex class
_UPSTREAM_CHINESE = re.compile(UPSTREAM_CHINESE_CLASS)


def contains_upstream_chinese(text: str) -> bool:
    """Whether upstream's normaliser takes `text` the Chinese way (a character of the block)."""
    return _UPSTREAM_CHINESE.search(text) is not None
