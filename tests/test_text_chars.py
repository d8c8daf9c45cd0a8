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


def test_upstreams_chinese_test_is_the_unified_ideographs_block_only():
    from glmtts_batch.glmtts.text.chars import UPSTREAM_CHINESE_BLOCK, contains_upstream_chinese

    low, high = UPSTREAM_CHINESE_BLOCK
    assert all(is_han(chr(code)) for code in range(low, high + 1))  # a part of is_han
    assert contains_upstream_chinese("abc 中 1") and contains_upstream_chinese("\u9fff")
    # Ideographs outside the block (Extension A and B, a compatibility ideograph, a radical) are Han, but
    # upstream's normaliser does not take a text the Chinese way for them.
    for char in ("\u3400", "\U00020bb7", "\uf900", "\u2e80"):
        assert is_han(char) and not contains_upstream_chinese(f"{char} 3 apples")


def test_the_normaliser_routes_a_text_as_upstream_does():
    """A text whose only ideograph lies outside the block is read the English way, as upstream reads it."""
    from glmtts_batch.glmtts.text.normalize import TextNormalizer

    norm = TextNormalizer()
    assert norm("\u2e80 3 apples") == "three apples."
    assert norm("\u4e2d 3 apples") == "中三apples。"
