"""Text normalisation: upstream `text_normalize` (WeTextProcessing 1.0.3) parity, known differences, robustness."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmtts_batch.glmtts.text import tn_graphs
from glmtts_batch.glmtts.text.frontend import MAX_PIECE_LEN, MIN_PIECE_LEN
from glmtts_batch.glmtts.text.normalize import (
    _CHUNK_BOUNDARIES,
    GRAMMAR_CHUNK_MAX,
    GRAMMARS_UPSTREAM,
    GRAMMARS_WETEXT,
    KNOWN_DIFFERENCES,
    TextNormalizer,
    _cut,
    grammar_chunks,
)
from glmtts_batch.glmtts.text.split import split_by_len

try:
    tn_graphs.graph_dir()
    NO_UPSTREAM_GRAPHS = ""
except tn_graphs.GraphsUnavailable as exc:
    NO_UPSTREAM_GRAPHS = f"WeTextProcessing 1.0.3's graphs are not installed ({exc})"

needs_upstream_graphs = pytest.mark.skipif(bool(NO_UPSTREAM_GRAPHS), reason=NO_UPSTREAM_GRAPHS)


@pytest.fixture(scope="module")
def norm() -> TextNormalizer:
    if NO_UPSTREAM_GRAPHS:
        pytest.skip(NO_UPSTREAM_GRAPHS)
    return TextNormalizer(grammars=GRAMMARS_UPSTREAM)


@pytest.fixture(scope="module")
def wetext_norm() -> TextNormalizer:
    return TextNormalizer(grammars=GRAMMARS_WETEXT)


def _golden_cases(golden_dir: Path) -> list[dict]:
    return json.loads((golden_dir / "text" / "text_golden.json").read_text())["cases"]


def _corpus_cases(golden_dir: Path) -> list[dict]:
    return json.loads((golden_dir / "text" / "text_corpus.json").read_text(encoding="utf-8"))["cases"]


def _explained_by(text: str) -> list[str]:
    return [d.name for d in KNOWN_DIFFERENCES if re.search(d.affects, text)]


# --- parity with upstream ---


def test_corpus_matches_upstream_except_known_differences(golden_dir: Path, norm: TextNormalizer) -> None:
    """Every corpus case reads as upstream (normalised text and every piece), unless a
    listed known difference applies to its text."""
    unexplained, differing = [], []
    for case in _corpus_cases(golden_dir):
        assert case["normalized"]["ok"] and case["pieces"]["ok"], case["id"]
        normalized = norm.normalize(case["text"])
        pieces = [norm.normalize(p) for p in split_by_len(normalized, MIN_PIECE_LEN, MAX_PIECE_LEN)]
        if normalized == case["normalized"]["value"] and pieces == case["pieces"]["value"]:
            continue
        differing.append(case["id"])
        if not _explained_by(case["text"]):
            unexplained.append((case["id"], case["text"], case["normalized"]["value"], normalized))
    assert unexplained == []
    # The differences are the exception, not the rule.
    assert len(differing) * 20 < len(_corpus_cases(golden_dir))


def test_known_difference_examples_found_in_the_corpus_record_upstreams_reading(golden_dir: Path) -> None:
    by_text = {case["text"]: case for case in _corpus_cases(golden_dir)}
    found = [d for d in KNOWN_DIFFERENCES if d.example in by_text]
    assert found, "no known-difference example is a corpus text; the upstream readings would be unchecked"
    for difference in found:
        assert by_text[difference.example]["normalized"]["value"] == difference.upstream, difference.name


@needs_upstream_graphs
@pytest.mark.parametrize("difference", KNOWN_DIFFERENCES, ids=lambda d: d.name)
def test_known_difference_reads_as_we_claim(difference, norm: TextNormalizer) -> None:
    assert re.search(difference.affects, difference.example)
    assert difference.ours != difference.upstream
    assert norm.normalize(difference.example) == difference.ours


def test_text_golden_normalize_matches(golden_dir: Path, norm: TextNormalizer) -> None:
    for case in _golden_cases(golden_dir):
        assert case["text_normalize"]["ok"]
        assert norm.normalize(case["text"]) == case["text_normalize"]["value"], case["id"]


def test_text_golden_normalizing_split_pieces_matches(golden_dir: Path, norm: TextNormalizer) -> None:
    checked = 0
    for case in _golden_cases(golden_dir):
        split = case["pipeline_split_of_normalized"]
        if not split["ok"]:
            continue
        for piece, expected in zip(split["value"], case["pipeline_normalized_pieces"], strict=True):
            assert norm.normalize(piece) == expected["value"], (case["id"], piece)
            checked += 1
    assert checked > 0


def test_python_chinese_verbalizer_matches_the_compiled_one(golden_dir: Path, norm: TextNormalizer) -> None:
    """We verbalize Chinese tokens in Python because 1.0.3's compiled verbalizer was built with
    erhua and interjection removal on, which upstream turns off. Apart from those, both agree."""
    folder = tn_graphs.graph_dir()
    grammar = tn_graphs.ChineseGrammar(folder)
    compiled = tn_graphs._Graph(folder / "zh_tn_verbalizer.fst")
    texts = [c["text"] for c in _corpus_cases(golden_dir) if c["path"] == "zh"]
    texts = [t for t in texts if not set(t) & set("呃啊儿")]
    for text in texts:
        tokens = tn_graphs._reorder(grammar.tag(text), tn_graphs._ZH_ORDERS)
        assert grammar.normalize(text) == compiled(tn_graphs._serialize(tokens)), text
    # ... and the compiled one would drop what upstream keeps:
    for text, upstream in [("啊，好的", "啊,好的"), ("一会儿", "一会儿")]:
        tokens = tn_graphs._reorder(grammar.tag(text), tn_graphs._ZH_ORDERS)
        assert grammar.normalize(text) == upstream
        assert compiled(tn_graphs._serialize(tokens)) != upstream


# --- behaviour ---


def test_replacement_rules(norm: TextNormalizer) -> None:
    assert norm.normalize("噢，我知道了。欸，你好") == "哦，我知道了。诶，你好。"


def test_replacements_are_per_instance(norm: TextNormalizer) -> None:
    plain = TextNormalizer(replacements={})
    assert plain.normalize("噢，我知道了。") == "噢，我知道了。"
    assert norm.normalize("噢，我知道了。") == "哦，我知道了。"


def test_readings_that_were_wrong_on_wetext_graphs(norm: TextNormalizer) -> None:
    assert norm.normalize("The tower is 8.5m tall.") == "the tower is eight point five m tall."
    assert (
        norm.normalize("Music from the 1990s is back in fashion.")
        == "music from the nineteen nineties is back in fashion."
    )
    assert norm.normalize("今天的汇率是1,234.56。") == "今天的汇率是一千两百三十四点五六。"
    assert norm.normalize("iOS 17.2.1 fixes the bug.") == "ios seventeen point two point one fixes the bug."
    assert norm.normalize("The server now supports IPv6 and HTTP/2.") == "the server now supports ipv six and http two."


def test_chinese_digit_strings_read_digit_by_digit(norm: TextNormalizer) -> None:
    assert norm.normalize("您的订单号是202417480414。") == "您的订单号是二零二四幺七四八零四幺四。"
    assert norm.normalize("办公室电话是010-25351282。") == "办公室电话是零幺零减二五三五幺二八二。"


def test_two_read_as_liang_inside_numbers(norm: TextNormalizer) -> None:
    assert norm.normalize("原价1299元") == "原价一千两百九十九元。"
    assert norm.normalize("花了1200元和222元") == "花了一千两百元和两百二十二元。"
    # Chinese numerals already in the text are not touched.
    assert norm.normalize("他是个二百五，花了12元") == "他是个二百五，花了十二元。"
    assert (
        norm.normalize("十两银子，花了120000元") == "十两银子，花了十两万元。"
    )  # 十两 in the text: left as 1.0.3 reads


def test_operators_spelled_out(norm: TextNormalizer) -> None:
    assert norm.normalize("已知α+β>γ") == "已知阿尔法加贝塔大于伽玛。"
    assert norm.normalize("计算3×4") == "计算三乘四。"


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
    assert norm.normalize("好啊，一会儿见") == "好啊，一会儿见。"  # interjections and erhua kept, as upstream


def test_wetext_fallback_still_reads_both_scripts(wetext_norm: TextNormalizer) -> None:
    assert wetext_norm.grammars == GRAMMARS_WETEXT
    assert wetext_norm.normalize("原价1299元") == "原价一千两百九十九元。"
    assert wetext_norm.normalize("I have 2 cats") == "i have two cats."


def test_auto_picks_upstream_graphs_when_installed() -> None:
    expected = GRAMMARS_WETEXT if NO_UPSTREAM_GRAPHS else GRAMMARS_UPSTREAM
    chosen = TextNormalizer()
    assert chosen.grammars == expected
    assert (chosen.fallback_reason is None) == (not NO_UPSTREAM_GRAPHS)


@needs_upstream_graphs
def test_upstream_graphs_are_named_without_a_warning(norm: TextNormalizer) -> None:
    assert norm.fallback_reason is None
    assert "WARNING" not in norm.describe() and "WeTextProcessing 1.0.3" in norm.describe()


def test_falling_back_to_wetext_is_announced_not_silent(monkeypatch) -> None:
    def unavailable():
        raise tn_graphs.GraphsUnavailable("WeTextProcessing is not installed")

    monkeypatch.setattr(tn_graphs, "graph_dir", unavailable)
    fallback = TextNormalizer()
    assert fallback.grammars == GRAMMARS_WETEXT
    assert fallback.fallback_reason == "WeTextProcessing is not installed"
    notice = fallback.describe()
    assert notice.startswith("WARNING: text normalisation falls back to the wetext graphs")
    assert "pip install --no-deps WeTextProcessing==1.0.3" in notice
    with pytest.raises(tn_graphs.GraphsUnavailable):  # asked for by name: no fallback at all
        TextNormalizer(grammars=GRAMMARS_UPSTREAM)

    from click.testing import CliRunner

    from glmtts_batch.cli import main

    result = CliRunner().invoke(main, ["normalize", "-"], input="I have 2 cats\n")
    assert result.exit_code == 0
    assert result.stderr.startswith("glmtts-batch: WARNING: text normalisation falls back")
    assert "i have two cats." in result.stdout and "WARNING" not in result.stdout


def test_the_upstream_graphs_need_no_pynini(norm: TextNormalizer) -> None:
    """The graphs are read from the installed distribution's files and nothing of it is
    imported, so `pip install --no-deps WeTextProcessing==1.0.3` is enough: in a fresh
    interpreter where pynini and WeTextProcessing's packages cannot be imported, the
    readings are the same."""
    import subprocess
    import sys

    text = "电话13812345678，共100册。I paid $5 on 3/4/2021."
    script = (
        "import sys\n"
        "for name in ('pynini', '_pynini', 'pywrapfst', 'tn', 'itn'): sys.modules[name] = None\n"
        "from glmtts_batch.glmtts.text.normalize import GRAMMARS_UPSTREAM, TextNormalizer\n"
        f"print(TextNormalizer(grammars=GRAMMARS_UPSTREAM).normalize({text!r}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == norm.normalize(text)


# --- never raises ---

_CRASHERS = [
    "Let's go 🚀 now!",
    "Done ✅ see you tomorrow.",
    "The result was −3.2 after correction.",
    "Dial +1 202 555 0134 for reservations.",
    "Your order #54324 has shipped.",
    "See the notes [1] and {appendix}.",
    "Avogadro's number is 6.02×10^23.",
    "x\ud800y 1\x002",  # a lone surrogate and a NUL
    "9" * 80,  # past inflect's range
    "𝟘𝟙 ٣ ²³ ① ⅷ",
    "",
    "   ",
]


@pytest.mark.parametrize("text", _CRASHERS)
def test_former_crashes_read(text: str, norm: TextNormalizer, wetext_norm: TextNormalizer) -> None:
    for normalizer in (norm, wetext_norm):
        assert isinstance(normalizer.normalize(text), str)


_ALPHABET = st.one_of(
    st.sampled_from(list("0123456789")),
    st.sampled_from(list("abcXYZ")),
    st.sampled_from(list("你好中文年月日元个点号")),
    st.sampled_from(list(" .,!?;:-+−×÷=^~*/#%$€£¥￥℃°²³@_()[]{}<>\"'“”‘’…—、，。！？；：\\\n\t")),
    st.sampled_from(list("🚀✅😀👍🏽ＡＢ１２＃％αβπ①ⅷ٣𝟙")),
    st.characters(codec="utf-8"),
)


@given(st.text(_ALPHABET, max_size=60))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_normalize_never_raises(norm: TextNormalizer, text: str) -> None:
    out = norm.normalize(text)
    assert isinstance(out, str) and out.endswith(("。", ".", "?", "？"))
    for piece in split_by_len(out, MIN_PIECE_LEN, MAX_PIECE_LEN):
        assert isinstance(norm.normalize(piece), str)


@given(st.text(_ALPHABET, max_size=60))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_wetext_fallback_never_raises(wetext_norm: TextNormalizer, text: str) -> None:
    assert isinstance(wetext_norm.normalize(text), str)


# --- long texts ---


class _RecordingGrammar:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def normalize(self, text: str) -> str:
        self.calls.append(len(text))
        return text


@pytest.mark.parametrize(
    "text",
    [
        "那封信是1987年4月10日寄出的，邮编200031。" * 5000,
        "The train left at 9:45 a.m. with 6 people. " * 5000,
        "好" * 100_000,  # no punctuation at all
        "word " * 40_000,
    ],
    ids=["zh", "en", "zh-no-punctuation", "en-no-punctuation"],
)
def test_long_text_reaches_the_grammar_in_bounded_chunks(text: str) -> None:
    """Grammar time grows faster than its input, so a long text must never reach it in one
    call: every character goes through once, in calls of at most GRAMMAR_CHUNK_MAX."""
    normalizer = TextNormalizer()
    normalizer._zh = normalizer._en = recorder = _RecordingGrammar()
    normalizer.normalize(text)
    assert max(recorder.calls) <= GRAMMAR_CHUNK_MAX
    assert len(text) * 0.9 <= sum(recorder.calls) <= len(text) + 2  # + the line's added full stop


def test_chinese_sentence_boundaries_do_not_change_grammar_readings(golden_dir: Path, norm: TextNormalizer) -> None:
    """The grammar reads every Chinese corpus text cut at each sentence mark as it reads it
    in one call, so chunking a long Chinese text keeps upstream's readings."""
    sentence_boundary = _CHUNK_BOUNDARIES["zh"][0]
    grammar = norm._zh
    cut_somewhere = 0
    for case in _corpus_cases(golden_dir):
        if case["path"] != "zh":
            continue
        chunks = _cut(case["text"], sentence_boundary, 1)
        cut_somewhere += len(chunks) > 1
        assert "".join(grammar.normalize(c) for c in chunks) == grammar.normalize(case["text"]), case["id"]
    assert cut_somewhere > 0
    assert grammar_chunks("a" * 10, "en") == ["a" * 10]


@pytest.mark.slow
def test_a_100k_character_text_normalises_and_splits(norm: TextNormalizer) -> None:
    text = "他在2023年5月8日花了1,234.56元买了3本书，心情很好！" * 3100
    pieces = split_by_len(norm.normalize(text), MIN_PIECE_LEN, MAX_PIECE_LEN)
    assert len(text) >= 100_000 and pieces[0].startswith("他在二零二三年五月八日")
