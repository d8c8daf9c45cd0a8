"""Text normalisation for Chinese, English and mixed text, as upstream `TextFrontEnd.text_normalize`.

Steps (same order as upstream):

1. Pre-processing: a leading `1. ` list number becomes `1。`, a literal `\\n` becomes a line
   break, lines are stripped, empty ones dropped, each line gets ending punctuation and the
   lines are joined; emoji are removed; a hyphen between two letters becomes a space.
2. Text with a Chinese character goes the Chinese way, else the English way:
   * Chinese: scientific notation (`3.5×10^8` -> 三点五乘十的八次方), `-` between digits ->
     减 and other `-` dropped, 咯 before punctuation -> 喽, the replacement rules
     (噢 -> 哦, 欸 -> 诶); the Chinese TN grammar; backslashes dropped, standalone 额 -> 呃,
     tildes -> 。, `*` -> 乘 between numbers; brackets and quotes dropped, Chinese clause
     punctuation unified to `，` and `。`, superscripts, `/`, `~`, circled numbers, Greek
     letters and maths symbols spelled out; lower-cased.
   * English: the English TN grammar, brackets dropped, `*` -> multiply, digits left over
     spelled out (inflect), punctuation other than `.,!?':;` dropped, lower-cased, runs of
     one mark collapsed, one space after each mark.
3. Runs of clause punctuation collapse to their last mark, `#` is dropped, `！`/`!` -> `。`/`.`.
4. The text ends with `。` (Chinese) or `.` (English) unless it ends with a question mark.

Grammars. Upstream runs WeTextProcessing 1.0.3. We run 1.0.3's own compiled graphs with
kaldifst (`tn_graphs`), which reproduces upstream's readings exactly, quirks included
(`100册` -> 幺零零册, phone numbers digit by digit). The graphs come from the
`WeTextProcessing==1.0.3` wheel, installed with `pip install --no-deps` (`make install` and
the Dockerfile do; it is not a declared dependency because it pins pynini 2.1.5, 670 MB
installed and without wheels past Python 3.11, which is never imported here). Where it is
not installed, the maintained `wetext` graphs are used instead (`grammars="wetext"`); they
read many inputs differently from upstream (two small rules, `_two_as_liang` and the
operator spelling, put the commonest differences back). That fallback is never silent:
`TextNormalizer.fallback_reason` says why, `describe()` is the warning the engine logs at
load, and the grammars in use are part of the engine's settings (the resume key).

Never raises. Lone surrogates and NUL characters are dropped first (no grammar can read
them); digits the grammar left are spelled out digit group by digit group, and a number too
large for inflect is read digit by digit.

Known differences from upstream (on purpose: upstream's reading is wrong, a narrator would
not say it). Each is listed in `KNOWN_DIFFERENCES` below with an example, and tested:

* Chinese numbers with two or more thousands separators (`1,400,000,000`): upstream reads
  the groups one by one (一千四百，零零零，零零零); we read the number (十四亿).
* Chinese runs of 9 or more digits before a unit (`123456789元`): upstream mixes a digit by
  digit prefix with a quantity (幺二三四十五万六千七百八十九元); we read the whole run digit
  by digit, as upstream reads every other run that long.
* Chinese 十两万/十两亿 (`120000元`): 1.0.3 says 两 for every 2 before 万; after 十 it is 二.
* English hyphen between a letter and a digit (`GPT-4`, `X-200`): upstream reads a minus
  sign ("gpt negative four"); we read "gpt four".
* English superscript ² and ³ the grammar left (`E = mc²`): upstream spells them through
  inflect as "zero" ("mczero"); we read "squared" and "cubed".
* English digit tilde digit (`1~6`): upstream glues "approximately" to the next number
  ("one approximatelysix"); we read "one to six".
* English words cut by the measure rule (`3*4 first` -> "four f irst", a piece's "per hour"
  -> "per h our"): the word is put back together (`tn_graphs.rejoin_split_words`).
* English numbers with four or more thousands separators (`9,007,199,254,740,991`): upstream
  glues digit words ("nine zero zero sevenone nine ninetwo..."); we read the number.
* Scientific notation in Chinese reads its numbers with a plain Chinese number reader;
  upstream's own reader garbles some (120000 -> 十万二万), ours says 十二万.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol

import emoji

from glmtts_batch.glmtts.text import tn_graphs
from glmtts_batch.glmtts.text.chars import SENTENCE_PUNCTUATION, UPSTREAM_CHINESE_CLASS, contains_upstream_chinese

GRAMMARS_UPSTREAM = f"wetextprocessing-{tn_graphs.WETEXTPROCESSING_VERSION}"
GRAMMARS_WETEXT = "wetext"
UPSTREAM_GRAPHS_INSTALL = f"pip install --no-deps WeTextProcessing=={tn_graphs.WETEXTPROCESSING_VERSION}"

GRAMMAR_CHUNK_MAX = 1000  # longer texts reach the grammar in chunks: see grammar_chunks
GRAMMAR_CHUNK_CHARS = 50

REPLACEMENTS = {"噢": "哦", "欸": "诶"}  # interjection spellings the model reads better


@dataclass(frozen=True)
class KnownDifference:
    """A reading where we deliberately differ from upstream."""

    name: str
    affects: str  # regex matching the inputs this rule can change
    example: str
    upstream: str  # upstream's normalised text for `example`
    ours: str  # ours
    why: str


KNOWN_DIFFERENCES: tuple[KnownDifference, ...] = (
    KnownDifference(
        "zh-grouped-number",
        r"\d{1,3}(?:,\d{3}){2,}",
        "全国人口约1,400,000,000人。",
        "全国人口约一千四百，零零零，零零零人。",
        "全国人口约十四亿人。",
        "upstream reads each thousands group on its own",
    ),
    KnownDifference(
        "zh-long-digit-run-before-unit",
        r"\d{9,}",
        "账户里有9698876728446元。",
        "账户里有九六九八八七千六百七十两万八千四百四十六元。",
        "账户里有九六九八八七六七二八四四六元。",
        "upstream mixes a digit-by-digit prefix with a quantity; every other run this long it reads digit by digit",
    ),
    KnownDifference(
        "zh-shi-liang",
        r"\d{6}",
        "花了120000元",
        "花了十两万元。",
        "花了十二万元。",
        "1.0.3 says 两 for every 2 before 万, also after 十",
    ),
    KnownDifference(
        "en-letter-hyphen-digit",
        r"[A-Za-z]-\d",
        "GPT-4 was released in 2023.",
        "gpt negative four was released in twenty twenty three.",
        "gpt four was released in twenty twenty three.",
        "a hyphen after a letter is not a minus sign",
    ),
    KnownDifference(
        "en-superscript",
        r"[²³]",
        "E = mc²",
        "e equals mczero.",
        "e equals mc squared.",
        "upstream spells ² through inflect as 'zero'",
    ),
    KnownDifference(
        "en-digit-tilde-digit",
        r"\d\s*[~～]\s*\d",
        "Work in groups of 1~6 people.",
        "work in groups of one approximatelysix people.",
        "work in groups of one to six people.",
        "upstream glues 'approximately' to the next number word",
    ),
    KnownDifference(
        "en-unit-letters-of-a-word",
        r"(?i)\d\s*\*\s*\d+\s+f|\bmph\b|\bper hour\b",
        "Compute 3*4 first.",
        "compute three times four f irst.",
        "compute three times four first.",
        "1.0.3's measure rule takes a word's first letters as a unit (also 'per h our' in a piece)",
    ),
    KnownDifference(
        "en-long-grouped-number",
        r"\d{1,3}(?:,\d{3}){4,}",
        "The maximum safe integer is 9,007,199,254,740,991.",
        "the maximum safe integer is nine zero zero sevenone nine ninetwo five fourseven four zeronine nine one.",
        "the maximum safe integer is nine quadrillion seven trillion one hundred and ninety nine billion two "
        "hundred and fifty four million seven hundred and forty thousand nine hundred and ninety one.",
        "upstream glues the digit words of numbers past the grammar's range",
    ),
)

_CN_DIGITS = "零一二三四五六七八九"
_LINE_ENDINGS = set(".!?;:：。！？；，")

_BRACKETS = "()（）【】「」``《》『』{}[]"

_GREEK = {
    "α": "阿尔法", "β": "贝塔", "γ": "伽玛", "Γ": "伽玛", "δ": "德尔塔", "Δ": "德尔塔", "△": "德尔塔",
    "ε": "艾普西龙", "ζ": "捷塔", "η": "依塔", "θ": "西塔", "Θ": "西塔", "ι": "艾欧塔", "κ": "喀帕",
    "λ": "拉姆达", "Λ": "拉姆达", "μ": "缪", "ν": "拗", "ξ": "克西", "Ξ": "克西", "ο": "欧米克伦",
    "π": "派", "Π": "派", "ρ": "肉", "ς": "西格玛", "Σ": "西格玛", "σ": "西格玛", "τ": "套",
    "υ": "宇普西龙", "φ": "服艾", "Φ": "服艾", "χ": "器", "ψ": "普赛", "Ψ": "普赛", "ω": "欧米伽",
    "Ω": "欧米伽", "□": "方框",
}  # fmt: skip
_MATH = {
    ">": "大于", "<": "小于", "∈": "属于", "∉": "不属于", "∪": "并", "∩": "交", "⊥": "垂直",
    "∥": "平行", "≠": "不等于", "∵": "因为", "∴": "所以", "∅": "空集", "⊂": "真包含于", "⊃": "包含",
    "⊆": "包含于", "⊇": "真包含", "⊄": "不属于", "⊅": "非超集", "⊈": "不属于", "⊉": "非超集",
}  # fmt: skip
_SYMBOLS = {"†": "，", "²": "平方", "³": "立方", "/": "每", "~": "到", "～": "到"}
_CIRCLED = {c: _CN_DIGITS[i + 1] if i < 9 else "十" for i, c in enumerate("①②③④⑤⑥⑦⑧⑨⑩")}
# Operators WeTextProcessing 1.0.3 spells out wherever they stand.
_OPERATORS = {"+": "加", "=": "等于", "×": "乘", "÷": "除", "≥": "大于等于", "≤": "小于等于"}

_NUMERAL_RUN = re.compile(r"[零一二两三四五六七八九十百千万亿点负]+")


_GROUPED_NUMBER = re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3}){2,}(?:\.\d+)?(?![\d,])")
_LONG_GROUPED_NUMBER = re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3}){4,}(?![\d,]|\.\d)")
_LONG_DIGIT_RUN = re.compile(r"(?<![\d.,])\d{9,}(?!\d|[.,]\d)")
_DIGIT_BY_DIGIT = str.maketrans("0123456789", "零幺二三四五六七八九")  # as the grammar reads codes
_PLAIN_DIGITS = str.maketrans("0123456789", "零一二三四五六七八九")
_LEADING_TWO = re.compile(r"(?<!十)二(?=[百千万亿])")


class TextNormalizer:
    """Upstream's text normalisation. Build once, reuse for every text.

    `grammars`: "auto" (WeTextProcessing 1.0.3's graphs when installed, else wetext's),
    `GRAMMARS_UPSTREAM` or `GRAMMARS_WETEXT`. The one in use is in `self.grammars`; when
    "auto" fell back to wetext's, `self.fallback_reason` says why (else None).
    `chunk_chars`: texts longer than this reach the grammar in sentence chunks
    (`grammar_chunks`), which keeps time linear in the text length.
    """

    def __init__(
        self,
        replacements: dict[str, str] | None = None,
        *,
        grammars: str = "auto",
        chunk_chars: int = GRAMMAR_CHUNK_MAX,
    ) -> None:
        if grammars not in ("auto", GRAMMARS_UPSTREAM, GRAMMARS_WETEXT):
            raise ValueError(f"unknown grammars {grammars!r}")
        self._zh: _Grammar
        self._en: _Grammar
        self.fallback_reason: str | None = None
        if grammars != GRAMMARS_WETEXT:
            try:
                folder = tn_graphs.graph_dir()
            except tn_graphs.GraphsUnavailable as exc:
                if grammars == GRAMMARS_UPSTREAM:
                    raise
                grammars = GRAMMARS_WETEXT
                self.fallback_reason = str(exc)
            else:
                self._zh = tn_graphs.ChineseGrammar(folder)
                self._en = tn_graphs.EnglishGrammar(folder)
                grammars = GRAMMARS_UPSTREAM
        if grammars == GRAMMARS_WETEXT:
            self._zh, self._en = _wetext_grammars()
        self.grammars = grammars
        self.chunk_chars = chunk_chars
        self._inflect_engine: Any = None  # built on first use: importing inflect takes about 2 s
        self._replacements = dict(REPLACEMENTS if replacements is None else replacements)

    def describe(self) -> str:
        """One line for the log: the grammars in use, and a warning when upstream's were not found."""
        if self.fallback_reason is not None:
            return (
                f"WARNING: text normalisation falls back to the wetext graphs ({self.fallback_reason}): "
                "some numbers, dates, codes and units will read differently from upstream GLM-TTS; "
                f"for upstream's readings: {UPSTREAM_GRAPHS_INSTALL}"
            )
        if self.grammars == GRAMMARS_UPSTREAM:
            return f"text normalisation: WeTextProcessing {tn_graphs.WETEXTPROCESSING_VERSION}'s graphs (upstream's)"
        return "text normalisation: the wetext graphs (asked for; readings differ from upstream's)"

    def normalize(self, text: str) -> str:
        text = _sanitize(text)
        text = _preprocess(text)
        if contains_upstream_chinese(text):
            text = self._normalize_chinese(text).lower()
        else:
            text = self._normalize_english(text)
        text = _normalize_punctuation(text)
        return _ensure_ending(text)

    __call__ = normalize

    # --- Chinese ---

    def _normalize_chinese(self, text: str) -> str:
        text = _scientific_notation(text)
        text = re.sub(r"(?<=\d)\s*-\s*(?=\d)", "减", text)
        text = text.replace("-", "")
        text = re.sub(f"咯([{re.escape(SENTENCE_PUNCTUATION)}])", r"喽\1", text)
        for old, new in self._replacements.items():
            text = text.replace(old, new)
        text = _GROUPED_NUMBER.sub(lambda m: _grouped_number_to_chinese(m.group()), text)
        text = _LONG_DIGIT_RUN.sub(lambda m: m.group().translate(_DIGIT_BY_DIGIT), text)
        before = text
        text = _apply(self._zh, text, "zh", self.chunk_chars)
        if "十两" not in before:  # 1.0.3 reads 120000 as 十两万
            text = re.sub("十两(?=[万亿])", "十二", text)
        if self.grammars == GRAMMARS_WETEXT:
            text = _two_as_liang(text, before)
            for op, word in _OPERATORS.items():
                text = text.replace(op, word)
        text = _special_replace(text)
        return _post_replace(text)

    # --- English ---

    def _normalize_english(self, text: str) -> str:
        text = text.replace("'", "’")
        text = re.sub(r"(?<=[A-Za-z])-(?=\d)", " ", text)
        text = re.sub(r"(?<=\d)\s*[~～]\s*(?=\d)", " to ", text)
        text = _LONG_GROUPED_NUMBER.sub(lambda m: self._quantity_words(m.group().replace(",", "")), text)
        text = _apply(self._en, text, "en", self.chunk_chars)
        text = _remove_brackets(text, english=True)
        text = _asterisk_to_multiply(text, english=True)
        text = text.replace("—", " ").replace("’", "'")
        text = text.replace("²", " squared").replace("³", " cubed")
        text = re.sub(r"\d+", lambda m: self._number_words(m.group()), text)
        text = re.sub(r"\s+", " ", text)
        text = re.sub(r"[^\w\s.,!?':;]", "", text).lower()
        text = re.sub(r"([.,!?':;])\1+", r"\1", text)
        text = re.sub(r"\s*([.,?!':;])\s*", r"\1 ", text)
        return text.strip()

    @property
    def _inflect(self):  # noqa: ANN202 (inflect.engine, imported lazily)
        if self._inflect_engine is None:
            import inflect

            self._inflect_engine = inflect.engine()
        return self._inflect_engine

    def _quantity_words(self, digits: str) -> str:
        from inflect import NumOutOfRangeError

        try:
            words = self._inflect.number_to_words(digits, comma="")
        except NumOutOfRangeError:
            return self._number_words(digits)
        return words.replace("-", " ")

    def _number_words(self, digits: str) -> str:
        """Digits the grammar left, spelled as upstream does (inflect's hyphens are dropped later)."""
        from inflect import NumOutOfRangeError

        digits = "".join(str(unicodedata.digit(d)) for d in digits)  # any script's decimal digits
        try:
            return self._inflect.number_to_words(digits)
        except NumOutOfRangeError:
            return " ".join(self._inflect.number_to_words(d) for d in digits)


class _Grammar(Protocol):  # what both grammar sets offer
    def normalize(self, text: str) -> str: ...


# Where a grammar call may be cut. Grammar time grows faster than the text (one call on 400
# English characters takes 8x one on 100; a 20k-character text took 20 s), so long texts
# reach the grammar in pieces. First choice: after a Chinese sentence mark (always its own
# token) or an English sentence end followed by a capital; in a long stretch without
# those, after a Chinese clause mark or an English comma before a word; in a stretch without
# either, at a space or anywhere (only text no narrator writes gets there).
_CHUNK_BOUNDARIES = {
    "zh": (re.compile(r"(?<=[。！？；])(?=\S)"), re.compile(f"(?<=[，、：])(?={UPSTREAM_CHINESE_CLASS})")),
    "en": (re.compile(r"(?<=[.!?]) +(?=[A-Z])"), re.compile(r"(?<=,) +(?=[A-Za-z])")),
}


def grammar_chunks(text: str, script: str, longest: int = GRAMMAR_CHUNK_MAX) -> list[str]:
    """A text of at most `longest` characters is one chunk (upstream's single call, so exact
    parity). A longer one is cut at sentence boundaries into chunks of at least
    `GRAMMAR_CHUNK_CHARS` characters, none over `longest`. The grammar breaks ties between
    equally weighted readings over the whole call, so a chunk can read a tie differently
    from one call over the whole text (`$327` with or without "and")."""
    if len(text) <= longest:
        return [text]
    sentence, clause = _CHUNK_BOUNDARIES[script]
    size = min(GRAMMAR_CHUNK_CHARS, longest)
    chunks: list[str] = []
    for chunk in _cut(text, sentence, size):
        if len(chunk) <= longest:
            chunks.append(chunk)
            continue
        for part in _cut(chunk, clause, size):
            chunks.extend(_cut_anywhere(part, longest) if len(part) > longest else [part])
    return chunks


def _cut(text: str, boundary: re.Pattern[str], size: int) -> list[str]:
    chunks, start = [], 0
    for match in boundary.finditer(text):
        if match.start() - start >= size:
            chunks.append(text[start : match.start()])
            start = match.end()
    chunks.append(text[start:])
    return chunks


def _cut_anywhere(text: str, size: int) -> list[str]:
    chunks = []
    while len(text) > size:
        cut = text.rfind(" ", size // 2, size)
        cut = cut if cut > 0 else size
        chunks.append(text[:cut])
        text = text[cut:]
    return [*chunks, text]


def _apply(grammar: _Grammar, text: str, script: str, chunk_chars: int) -> str:
    """Run a TN grammar chunk by chunk; text it cannot read passes through unchanged."""
    joiner = "" if script == "zh" else " "
    return joiner.join(_apply_one(grammar, chunk) for chunk in grammar_chunks(text, script, chunk_chars))


def _apply_one(grammar: _Grammar, text: str) -> str:
    try:
        return grammar.normalize(text)
    except (ValueError, AssertionError, RuntimeError, IndexError, KeyError):
        # Only wetext's token parser raises (on its own output for some texts); retry per
        # space-separated chunk so one bad chunk does not leave the whole text unread.
        chunks = []
        for chunk in re.split(r"( +)", text):
            try:
                chunks.append(grammar.normalize(chunk) if chunk.strip() else chunk)
            except (ValueError, AssertionError, RuntimeError, IndexError, KeyError):
                chunks.append(chunk)
        return "".join(chunks)


def _wetext_grammars() -> tuple[_Grammar, _Grammar]:
    from wetext import Normalizer

    zh = Normalizer(
        lang="zh",
        operator="tn",
        traditional_to_simple=True,
        full_to_half=True,
        remove_interjections=False,
        remove_erhua=False,
    )
    return zh, Normalizer(lang="en", operator="tn")


def _sanitize(text: str) -> str:
    """Drop what no grammar can read: lone surrogates (not encodable) and NUL."""
    return text.encode("utf-8", "ignore").decode("utf-8").replace("\x00", "")


def _grouped_number_to_chinese(number: str) -> str:
    integer, _, fraction = number.replace(",", "").partition(".")
    words = _LEADING_TWO.sub("两", _number_to_chinese(integer))
    if fraction:
        words += "点" + fraction.translate(_PLAIN_DIGITS)
    return words


def _preprocess(text: str) -> str:
    text = re.sub(r"^(\d+)\. ", r"\1。", text)  # a leading list number is not a decimal point
    text = text.replace("\\n", "\n")
    lines = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        if line[-1] not in _LINE_ENDINGS:
            line = line + "。" if contains_upstream_chinese(line) else line + ". "
        lines.append(line)
    joined = "".join(lines)
    text = joined if contains_upstream_chinese(joined) else " ".join(lines)
    text = emoji.replace_emoji(text, replace="")
    return re.sub(r"(?<=[a-zA-Z])-(?=[a-zA-Z])", " ", text)


def _two_as_liang(text: str, source: str) -> str:
    """两 for a leading 2 before 百/千/万 in number readings the grammar produced."""
    if not re.search(r"\d", source):
        return text

    def fix(match: re.Match[str]) -> str:
        run = match.group()
        if run in source:  # Chinese numerals that were already in the input: leave them
            return run
        return _LEADING_TWO.sub("两", run)

    return _NUMERAL_RUN.sub(fix, text)


def _number_to_chinese(number: str) -> str:
    """Plain Chinese reading of a decimal string (used for scientific notation only)."""
    value = float(number)
    negative = value < 0
    int_part, _, frac = number.lstrip("+-").partition(".")
    if frac.strip("0") == "":
        frac = ""
    n = int(int_part or "0")
    if n == 0:
        words = "零"
    else:
        units = ["", "十", "百", "千"]
        groups = []
        while n:
            groups.append(n % 10000)
            n //= 10000
        words = ""
        big = ["", "万", "亿", "万亿"]
        for gi in range(len(groups) - 1, -1, -1):
            g = groups[gi]
            if g == 0:
                if words and not words.endswith("零"):
                    words += "零"
                continue
            if words and g < 1000 and not words.endswith("零"):
                words += "零"
            part = ""
            zero = False
            for pos in range(3, -1, -1):
                d = g // 10**pos % 10
                if d == 0:
                    zero = bool(part)
                    continue
                if zero:
                    part += "零"
                    zero = False
                part += _CN_DIGITS[d] + units[pos]
            words += part + big[gi]
        words = words.rstrip("零")
        if words.startswith("一十"):
            words = words[1:]
    if frac:
        words += "点" + "".join(_CN_DIGITS[int(d)] for d in frac)
    return ("负" if negative else "") + words


def _scientific_notation(text: str) -> str:
    """The first `a×b^c` (or `a*b^c`, `axb^c`) becomes a乘b的c次方, as upstream."""
    match = re.search(r"(-?\d+(?:\.\d+)?)[*x×](\d+(?:\.\d+)?)\^(-?\d+(?:\.\d+)?)", text)
    if not match:
        return text
    base, mult, exp = match.groups()
    words = f"{_number_to_chinese(base)}乘{_number_to_chinese(mult)}的{_number_to_chinese(exp)}次方"
    return text[: match.start()] + words + text[match.end() :]


def _remove_brackets(text: str, *, english: bool) -> str:
    for char in _BRACKETS if english else _BRACKETS + "‘’":
        text = text.replace(char, "")
    return text


def _asterisk_to_multiply(text: str, *, english: bool) -> str:
    word, digits = ("multiply", "0-9") if english else ("乘", "一二三四五六七八九十百千万亿")
    operand = rf"[{digits}a-zA-Z]"
    pattern = rf"(?<={operand})\)?\s*\*\s*(?=\(?{operand})"

    def replace(match: re.Match[str]) -> str:
        # upstream keeps a closing bracket before the sign and an opening one after it
        return (")" if match.group().startswith(")") else "") + word

    text = re.sub(pattern, replace, text)
    return text.replace("*", "")


def _special_replace(text: str) -> str:
    text = text.replace("\\", "")
    text = re.sub(r"(?<=\W)额(?=\W)", "呃", f" {text} ")
    text = re.sub(r"[~～]+", "。", text)
    text = _asterisk_to_multiply(text, english=False)
    return text.strip()


def _post_replace(text: str) -> str:
    text = _remove_brackets(text, english=False)
    text = text.replace(" - ", "，").replace("——", "，")
    text = re.sub(r"[,:：;；、]+", "，", text)
    text = re.sub(r"[.…]+", "。", text)
    text = re.sub(r"[_·]+", "", text)
    text = re.sub(r"""['"‘’“”|]+""", "", text)
    for table in (_SYMBOLS, _CIRCLED, _GREEK, _MATH):
        for old, new in table.items():
            text = text.replace(old, new)
    return text


def _keep_spaces_between_words(text: str) -> str:
    """Drop spaces except between two ASCII letters/digits, or after `.,!?;:` before one."""
    text = re.sub(r" +", " ", text)
    return re.sub(r"(?<![a-zA-Z0-9.,!?;:]) | (?![a-zA-Z0-9])", "", text)


def _normalize_punctuation(text: str) -> str:
    text = _keep_spaces_between_words(text)
    marks = re.escape(SENTENCE_PUNCTUATION)
    text = re.sub(f"([{marks}])\\1+", r"\1", text)
    text = re.sub(f"[{marks}](?=[{marks}])", "", text)
    return text.replace("#", "").replace("！", "。").replace("!", ".")


def _ensure_ending(text: str) -> str:
    if text and text[-1] in "？?":
        return text
    end = "。" if contains_upstream_chinese(text) else "."
    if text and text[-1] in SENTENCE_PUNCTUATION:
        return text[:-1] + end
    return text + end
