"""Text normalisation for Chinese, English and mixed text, as upstream `TextFrontEnd.text_normalize`.

Steps (same order as upstream):

1. Pre-processing: a leading `1. ` list number becomes `1。`, a literal `\\n` becomes a line
   break, lines are stripped, empty ones dropped, each line gets ending punctuation and the
   lines are joined; emoji are removed; a hyphen between two letters becomes a space.
2. Text with a Chinese character goes the Chinese way, else the English way:
   * Chinese: scientific notation (`3.5×10^8` -> 三点五乘十的八次方), `-` between digits ->
     减 and other `-` dropped, 咯 before punctuation -> 喽, the replacement rules
     (噢 -> 哦, 欸 -> 诶); WeTextProcessing's Chinese TN grammar; backslashes dropped,
     standalone 额 -> 呃, tildes -> 。, `*` -> 乘 between numbers; brackets and quotes
     dropped, Chinese clause punctuation unified to `，` and `。`, superscripts, `/`, `~`,
     circled numbers, Greek letters and maths symbols spelled out; lower-cased.
   * English: WeTextProcessing's English TN grammar, brackets dropped, `*` -> multiply,
     digits left over spelled out (inflect), punctuation other than `.,!?':;` dropped,
     lower-cased, runs of one mark collapsed, one space after each mark.
3. Runs of clause punctuation collapse to their last mark, `#` is dropped, `！`/`!` -> `。`/`.`.
4. The text ends with `。` (Chinese) or `.` (English) unless it ends with a question mark.

The grammars come from `wetext` (the maintained kaldifst runtime of WeTextProcessing's
FSTs). Upstream pins WeTextProcessing 1.0.3, whose grammar differs from wetext's in ways
two small rules put back:

* 1.0.3 says 两 for a leading 2 before 百/千/万 anywhere inside a number (1299 ->
  一千两百九十九); wetext only at the start of the number (一千二百九十九). We apply it to
  number readings the grammar produced (not to Chinese numerals already in the input).
  1.0.3 also rewrites 十二万 to 十两万; we do not copy that mistake (2 after 十 is not a
  leading digit).
* 1.0.3 reads a standalone `+` and `=` (and `×`, `÷`, `≥`, `≤`) as 加, 等于, 乘, 除,
  大于等于, 小于等于 even between letters (α+β -> 阿尔法加贝塔); wetext only between numbers.
  wetext also skips its grammar for Chinese text without digits, which 1.0.3 does not; so
  these operators are spelled out after the grammar ran, whether or not it did.

Known differences that remain (the golden cases all match):

* Scientific notation reads its numbers with a plain Chinese number reader; upstream's own
  reader garbles some (120000 -> 十万二万), ours says 十二万.
* 1.0.3's whitelist rewrites a few tokens without digits (`M.V.P` -> `M V P`); wetext
  does not run its grammar on Chinese text without digits, so such text keeps them.
"""

from __future__ import annotations

import re

import emoji
import inflect
from wetext import Normalizer

# Clause punctuation upstream treats as sentence/clause boundaries.
PUNCTUATION_CHARS = "。？！；：、.?!;:，,"

REPLACEMENTS = {"噢": "哦", "欸": "诶"}  # interjection spellings the model reads better

_CHINESE = re.compile(r"[\u4e00-\u9fff]")
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
_LEADING_TWO = re.compile(r"(?<!十)二(?=[百千万])")


def contains_chinese(text: str) -> bool:
    return bool(_CHINESE.search(text))


class TextNormalizer:
    """Upstream's text normalisation on wetext grammars. Build once, reuse for every text."""

    def __init__(self, replacements: dict[str, str] | None = None) -> None:
        self._zh = Normalizer(
            lang="zh",
            operator="tn",
            traditional_to_simple=True,
            full_to_half=True,
            remove_interjections=False,
            remove_erhua=False,
        )
        self._en = Normalizer(lang="en", operator="tn")
        self._inflect = inflect.engine()
        self._replacements = dict(REPLACEMENTS if replacements is None else replacements)

    def normalize(self, text: str) -> str:
        text = _preprocess(text)
        if contains_chinese(text):
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
        text = re.sub(f"咯([{re.escape(PUNCTUATION_CHARS)}])", r"喽\1", text)
        for old, new in self._replacements.items():
            text = text.replace(old, new)
        before = text
        text = self._zh.normalize(text)
        text = _two_as_liang(text, before)
        for op, word in _OPERATORS.items():
            text = text.replace(op, word)
        text = _special_replace(text)
        return _post_replace(text)

    # --- English ---

    def _normalize_english(self, text: str) -> str:
        text = text.replace("'", "’")
        text = self._en.normalize(text)
        text = _remove_brackets(text, english=True)
        text = _asterisk_to_multiply(text, english=True)
        text = text.replace("—", " ").replace("’", "'")
        text = re.sub(r"\d+", lambda m: self._inflect.number_to_words(m.group()), text)
        text = re.sub(r"\s+", " ", text)
        text = re.sub(r"[^\w\s.,!?':;]", "", text).lower()
        text = re.sub(r"([.,!?':;])\1+", r"\1", text)
        text = re.sub(r"\s*([.,?!':;])\s*", r"\1 ", text)
        return text.strip()


def _preprocess(text: str) -> str:
    text = re.sub(r"^(\d+)\. ", r"\1。", text)  # a leading list number is not a decimal point
    text = text.replace("\\n", "\n")
    lines = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        if line[-1] not in _LINE_ENDINGS:
            line = line + "。" if contains_chinese(line) else line + ". "
        lines.append(line)
    joined = "".join(lines)
    text = joined if contains_chinese(joined) else " ".join(lines)
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
    marks = re.escape(PUNCTUATION_CHARS)
    text = re.sub(f"([{marks}])\\1+", r"\1", text)
    text = re.sub(f"[{marks}](?=[{marks}])", "", text)
    return text.replace("#", "").replace("！", "。").replace("!", ".")


def _ensure_ending(text: str) -> str:
    if text and text[-1] in "？?":
        return text
    end = "。" if contains_chinese(text) else "."
    if text and text[-1] in PUNCTUATION_CHARS:
        return text[:-1] + end
    return text + end
