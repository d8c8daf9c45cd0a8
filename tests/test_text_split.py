"""Length splitting: upstream `split_by_len` parity, and a sane cut where upstream raises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmtts_batch.glmtts.text.split import (
    LengthCounter,
    count_syllables_rule,
    split_by_len,
    split_into_units,
)


def _cases(golden_dir: Path) -> list[dict]:
    return json.loads((golden_dir / "text" / "text_golden.json").read_text())["cases"]


def test_split_by_len_matches_golden(golden_dir: Path) -> None:
    checked = 0
    for case in _cases(golden_dir):
        for source, field in [
            (case["text"], "split_by_len"),
            (case["text_normalize"]["value"], "pipeline_split_of_normalized"),
        ]:
            expected = case[field]
            if not expected["ok"]:
                assert case["id"] == "en_run_on_no_punct" and expected["error"].startswith("IndexError")
                continue
            assert split_by_len(source, 30, 60) == expected["value"], (case["id"], field)
            checked += 1
    assert checked > 0


def test_split_matches_upstream_on_the_whole_corpus(golden_dir: Path) -> None:
    cases = json.loads((golden_dir / "text" / "text_corpus.json").read_text(encoding="utf-8"))["cases"]
    for case in cases:
        expected = case["split_of_normalized"]["value"]
        assert split_by_len(case["normalized"]["value"], 30, 60) == expected, case["id"]


def test_a_long_sentence_without_punctuation_splits_whole() -> None:
    text = "好" * 200_000
    pieces = split_by_len(text, 30, 60)
    assert "".join(pieces) == text and max(map(len, pieces)) == 60


def test_run_on_english_where_upstream_raises(golden_dir: Path) -> None:
    case = next(c for c in _cases(golden_dir) if c["id"] == "en_run_on_no_punct")
    length = LengthCounter()
    for text in (case["text"], case["text_normalize"]["value"]):
        pieces = split_by_len(text, 30, 60)
        assert len(pieces) >= 2
        assert "".join(pieces) == text  # nothing lost
        assert all(length(split_into_units(p)) <= 60 for p in pieces)  # nothing over the limit
        words = text.split()
        assert sum(len(p.split()) for p in pieces) == len(words)  # no word cut in half
        assert [w for p in pieces for w in p.split()] == words


def test_units_and_weights() -> None:
    units = split_into_units("我爱 deep-learning, it's 12!")
    assert units == ["我", "爱 ", "deep-learning", ", ", "it's ", "1", "2", "!"]
    length = LengthCounter()
    assert length(["我", "爱"]) == 2
    assert length(["hello "]) == pytest.approx(2 * 0.7)  # he-llo
    assert length(["it's "]) == 1  # not all letters: counts as one unit
    assert count_syllables_rule("the") == 1
    assert count_syllables_rule("make") == 1
    assert count_syllables_rule("internationalization") == 8


def test_short_text_is_one_piece() -> None:
    assert split_by_len("你好。") == ["你好。"]
    assert split_by_len("") == []


def test_hard_cut_moves_punctuation_to_previous_piece() -> None:
    text = "一" * 60 + "，" + "二" * 10
    pieces = split_by_len(text, 30, 60)
    assert pieces == ["一" * 60 + "，", "二" * 10]


def test_sentences_end_at_punctuation_after_min_len() -> None:
    text = "短句。" + "这是一个足够长的句子" * 3 + "。后面还有一些话。"
    pieces = split_by_len(text, 30, 60)
    assert pieces == ["短句。" + "这是一个足够长的句子" * 3 + "。", "后面还有一些话。"]


# --- the whole text pipeline the engine calls (normalise, split, normalise each piece) ---


@pytest.fixture(scope="module")
def frontend(tmp_path_factory: pytest.TempPathFactory):
    from glmtts_batch.glmtts.checkpoint_writers.text_tokenizer import (
        write_text_tokenizer,
    )
    from glmtts_batch.glmtts.text.frontend import TextFrontend
    from glmtts_batch.glmtts.text.g2p import PhonemeDict
    from glmtts_batch.glmtts.text.tokenizer import TextTokenizer

    path = tmp_path_factory.mktemp("tok")
    write_text_tokenizer(path)
    return TextFrontend(
        TextTokenizer.from_checkpoint(path), phoneme_dict=PhonemeDict.from_mapping({"曾乐": "zeng1 yue4"})
    )


def test_frontend_pieces_match_golden_pipeline(golden_dir: Path, frontend) -> None:
    for case in _cases(golden_dir):
        if case["pipeline_split_of_normalized"]["ok"]:
            expected = [p["value"] for p in case["pipeline_normalized_pieces"]]
            assert frontend.pieces(case["text"]) == expected, case["id"]
        else:
            pieces = frontend.pieces(case["text"])
            assert len(pieces) >= 2 and all(p.endswith(".") for p in pieces)


def test_frontend_prompt_ids_have_trailing_space(frontend) -> None:
    ids = frontend.prompt_ids("噢，你好！")
    assert frontend.tokenizer.decode(ids) == "哦，你好。 "
    assert frontend.ids("你好。") == frontend.tokenizer.encode("你好。")


def test_frontend_phoneme_mode(frontend) -> None:
    pieces = frontend.pieces("我叫曾乐，我去银行取1200元！", phoneme=True)
    assert pieces == ["我叫<|Z|><|ENG1|><|VE4|>，我去银<|H|><|ANG2|>取一千两百元。"]
    ids = frontend.ids(pieces[0])
    assert frontend.tokenizer.encode("<|ANG2|>")[0] in ids
    assert frontend.pieces("我去银行。") == ["我去银行。"]  # phoneme mode is opt-in


class CountingLength(LengthCounter):
    """Counts unit weighings and stops the test once they show quadratic work."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.calls, self.budget = 0, budget

    def unit(self, unit: str) -> float:
        self.calls += 1
        assert self.calls <= self.budget, "unit lengths are summed over and over: quadratic in the text"
        return super().unit(unit)


@pytest.mark.parametrize(
    "text",
    [
        "字" * 20_000,  # one run-on sentence of Chinese, no punctuation: cut every 60 units
        "word " * 10_000,  # run-on English
        ("字" * 10 + "，") * 2_000,  # short clauses
    ],
)
def test_splitting_work_is_linear_in_the_text(text: str) -> None:
    units = split_into_units(text)
    length = CountingLength(budget=6 * len(units))
    pieces = split_by_len(text, 30, 60, length=length)
    assert "".join(pieces) == text  # nothing dropped or repeated
    assert all(length(split_into_units(p)) <= 60 for p in pieces[:50])


def test_splitting_a_long_text_matches_splitting_its_sentences() -> None:
    """The index-based cut gives the pieces a sentence-by-sentence split gives."""
    sentence = "Supercalifragilistic expialidocious words keep going on and on without any stop " * 3 + "。"
    assert split_by_len(sentence * 200, 30, 60) == split_by_len(sentence, 30, 60) * 200
