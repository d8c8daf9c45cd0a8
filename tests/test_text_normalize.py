"""Text normalisation: parity with upstream `text_normalize` (WeTextProcessing 1.0.3) on wetext."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmtts_batch.glmtts.text.normalize import TextNormalizer


@pytest.fixture(scope="module")
def norm() -> TextNormalizer:
    return TextNormalizer()


def _cases(golden_dir: Path) -> list[dict]:
    return json.loads((golden_dir / "text" / "text_golden.json").read_text())["cases"]


def test_text_normalize_matches_golden(golden_dir: Path, norm: TextNormalizer) -> None:
    cases = _cases(golden_dir)
    assert len(cases) == 17
    for case in cases:
        assert case["text_normalize"]["ok"]
        assert norm.normalize(case["text"]) == case["text_normalize"]["value"], case["id"]


def test_normalizing_split_pieces_matches_golden(golden_dir: Path, norm: TextNormalizer) -> None:
    checked = 0
    for case in _cases(golden_dir):
        split = case["pipeline_split_of_normalized"]
        if not split["ok"]:
            continue
        for piece, expected in zip(split["value"], case["pipeline_normalized_pieces"], strict=True):
            assert norm.normalize(piece) == expected["value"], (case["id"], piece)
            checked += 1
    assert checked == 35


def test_replacement_rules(norm: TextNormalizer) -> None:
    assert norm.normalize("噢，我知道了。欸，你好") == "哦，我知道了。诶，你好。"


def test_replacements_are_per_instance() -> None:
    plain = TextNormalizer(replacements={})
    assert plain.normalize("噢，我知道了。") == "噢，我知道了。"
    assert TextNormalizer().normalize("噢，我知道了。") == "哦，我知道了。"


def test_two_read_as_liang_inside_numbers_like_wetextprocessing_1_0_3(norm: TextNormalizer) -> None:
    assert norm.normalize("原价1299元") == "原价一千两百九十九元。"
    assert norm.normalize("花了1200元和222元") == "花了一千两百元和两百二十二元。"
    # 1.0.3 would say 十两万 here; a 2 after 十 is not a leading digit.
    assert norm.normalize("花了120000元") == "花了十二万元。"
    # Chinese numerals already in the text are not touched.
    assert norm.normalize("他是个二百五，花了12元") == "他是个二百五，花了十二元。"


def test_operators_spelled_out_with_or_without_digits(norm: TextNormalizer) -> None:
    assert norm.normalize("已知α+β>γ") == "已知阿尔法加贝塔大于伽玛。"
    assert norm.normalize("C++很难，a=b") == "c加加很难，a等于b。"
    assert norm.normalize("计算3×4") == "计算三乘四。"


def test_known_difference_whitelist_without_digits(norm: TextNormalizer) -> None:
    # WeTextProcessing 1.0.3 rewrites `M.V.P` to `M V P` (-> "m v p很厉害。"); wetext skips its
    # grammar for Chinese text without digits, so the dots become Chinese full stops.
    assert norm.normalize("M.V.P很厉害") == "m。v。p很厉害。"


def test_english_details(norm: TextNormalizer) -> None:
    assert norm.normalize("It's fine, don't worry!") == "it's fine, don't worry."
    assert norm.normalize("I have 2 cats") == "i have two cats."
    assert norm.normalize("Is it?") == "is it?"


def test_chinese_details(norm: TextNormalizer) -> None:
    assert norm.normalize("這個東西很貴，1000元") == "这个东西很贵，一千元。"  # traditional -> simplified
    assert norm.normalize("我喝了2杯咖啡咯。") == "我喝了两杯咖啡喽。"
    assert norm.normalize("温度-5℃~10℃") == "温度五摄氏度到十摄氏度。"
    assert norm.normalize("计算3.5×10^8") == "计算三点五乘十的八次方。"
    assert norm.normalize("①【注意】《书名》") == "一注意书名。"
