"""Phoneme mode: polyphones spelled as GLM-TTS phoneme tokens, user dictionary overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmtts_batch.glmtts.text.g2p import (
    PhonemeDict,
    PhonemeDictError,
    phoneme_inventory,
    syllable_phonemes,
    to_phoneme_text,
)


def test_syllables_use_strict_pinyin_spelling() -> None:
    assert syllable_phonemes("hang2") == ["H", "ANG2"]
    assert syllable_phonemes("yin2") == ["IN2"]  # y/w are not initials
    assert syllable_phonemes("zhi1") == ["ZH", "III1"]
    assert syllable_phonemes("si4") == ["S", "II4"]
    assert syllable_phonemes("lü4") == syllable_phonemes("lv4") == ["L", "V4"]
    assert syllable_phonemes("you3") == ["IOU3"]
    assert syllable_phonemes("gui4") == ["G", "UEI4"]
    assert syllable_phonemes("de5") == ["D", "E5"]
    inventory = set(phoneme_inventory())
    for syl in ["hang2", "yin2", "zhi1", "si4", "lv4", "you3", "gui4", "de5", "yuan2", "jun1", "er2"]:
        assert set(syllable_phonemes(syl)) <= inventory


@pytest.mark.parametrize("bad", ["hang", "xyz2", "hang9", "m2", ""])
def test_bad_syllable_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        syllable_phonemes(bad)


def test_yinhang_reads_hang2() -> None:
    assert to_phoneme_text("我去银行。") == "我去银<|H|><|ANG2|>。"


def test_usual_readings_are_left_as_characters() -> None:
    assert to_phoneme_text("我们的学校很大。") == "我们的学校很大。"
    assert to_phoneme_text("他在街上行走。") == "他在街上行走。"  # 行 read xing2, its usual reading


def test_context_reading_spelled_out() -> None:
    assert to_phoneme_text("重庆") == "<|CH|><|ONG2|>庆"
    assert to_phoneme_text("了解") == "<|L|><|IAO3|>解"


def test_dictionary_overrides_default_reading() -> None:
    d = PhonemeDict.from_mapping({"银行": "yin2 xing2"})
    assert to_phoneme_text("我去银行。", d) == "我去<|IN2|><|X|><|ING2|>。"


def test_dictionary_name() -> None:
    # 曾 as a surname is zeng1 (the default reading is ceng2); 乐 in a name yue4.
    d = PhonemeDict.from_mapping({"曾乐": "zeng1 yue4"})
    out = to_phoneme_text("我叫曾乐，你好。", d)
    assert out == "我叫<|Z|><|ENG1|><|VE4|>，你好。"


def test_longest_dictionary_word_wins() -> None:
    d = PhonemeDict.from_mapping({"行": "xing2", "银行": "yin2 hang2"})
    assert to_phoneme_text("银行行", d) == "<|IN2|><|H|><|ANG2|><|X|><|ING2|>"


def test_mixed_text_unaffected() -> None:
    text = "我在学习machine learning, 2024 年 <|SH|> ok."
    out = to_phoneme_text(text)
    assert out == text
    assert to_phoneme_text("hello world, 123.") == "hello world, 123."


def test_load_both_line_forms(tmp_path: Path) -> None:
    path = tmp_path / "dict.jsonl"
    path.write_text(
        json.dumps({"word": "银行", "pinyin": "yin2 hang2"}, ensure_ascii=False)
        + "\n\n"
        + json.dumps({"曾": "zeng1"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    d = PhonemeDict.load(path)
    assert d.entries == {"银行": ("yin2", "hang2"), "曾": ("zeng1",)}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["银行", "yin2 hang2"]', "expected"),
        ('{"word": "银行"}', "expected"),
        ('{"银行": "yin2"}', "2 characters but 1 pinyin"),
        ('{"银行": "yin2 hang"}', "tone number"),
        ('{"银行": 5}', "must be a string"),
    ],
)
def test_bad_dictionary_line_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "dict.jsonl"
    path.write_text('{"好": "hao3"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(PhonemeDictError, match=f"dict.jsonl:2: .*{message}"):
        PhonemeDict.load(path)


def test_missing_dictionary_file(tmp_path: Path) -> None:
    with pytest.raises(PhonemeDictError, match="cannot read"):
        PhonemeDict.load(tmp_path / "absent.jsonl")
