"""One definition of a Chinese character, checked against the Unicode character names."""

from __future__ import annotations

import sys
import unicodedata

from glmtts_batch.glmtts.text.chars import SENTENCE_PUNCTUATION, is_han


def test_is_han_is_exactly_the_cjk_ideographs_and_radicals_by_name():
    wrong = []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        name = unicodedata.name(char, "")
        named_han = name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")) or (
            name.startswith("CJK RADICAL") and 0x2E80 <= code <= 0x2EFF
        )
        # Unassigned code points inside the blocks have no name; they count as Han too.
        if name and is_han(char) != named_han:
            wrong.append(f"U+{code:04X} {name}")
    assert wrong == []


def test_kana_hangul_latin_digits_and_punctuation_are_not_han():
    assert not any(is_han(c) for c in "あア한aZ9。，、〇々")


def test_sentence_punctuation_has_both_widths():
    assert set("。？！；：，、") <= set(SENTENCE_PUNCTUATION) and set(".?!;:,") <= set(SENTENCE_PUNCTUATION)
