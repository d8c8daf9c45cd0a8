"""WeTextProcessing 1.0.3's compiled text-normalisation graphs, run with kaldifst (no pynini).

Upstream pins WeTextProcessing 1.0.3. Its wheel ships the compiled graphs
(`tn/zh_tn_tagger.fst`, `tn/en_tn_tagger.fst`, `tn/en_tn_verbalizer.fst`, ...), and running
them gives upstream's readings exactly, quirks included, where the maintained `wetext`
graphs differ on many inputs. We read the files from the installed distribution without
importing it: its Python code needs pynini, these graphs only need kaldifst.

A grammar call is: tag (the tagger FST turns text into tokens such as
`cardinal { value: "三" }`), reorder each token's fields into the order the verbalizer
expects, verbalize (strip the markup).

* English: tagger and verbalizer are 1.0.3's own files (upstream builds `EnNormalizer()` from
  that cache).
* Chinese: upstream builds `ZhNormalizer(remove_erhua=False, remove_interjections=False,
  full_to_half=True)` with `overwrite_cache=True`. The tagger does not depend on these
  options, so 1.0.3's shipped tagger is the one upstream builds. The shipped verbalizer was
  built with the defaults (it deletes 呃, 啊 and the erhua 儿), so we verbalize in Python
  instead: every Chinese token's reading is the concatenation of its field values (fraction
  and per-unit measure insert 分之 and 每), followed by 1.0.3's full-width to half-width
  table. 1.0.3's compiled verbalizer never applies the table's `＃` row, and neither do we.
  `tests/test_text_normalize.py` checks this against the shipped verbalizer.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from glmtts_batch.errors import GraphsUnavailable

WETEXTPROCESSING_VERSION = "1.0.3"

# Field order the verbalizers expect (WeTextProcessing's TokenParser orders).
_ZH_ORDERS = {
    "date": ["year", "month", "day"],
    "fraction": ["denominator", "numerator"],
    "measure": ["denominator", "numerator", "value"],
    "money": ["value", "currency"],
    "time": ["noon", "hour", "minute", "second"],
}
_EN_ORDERS = {
    "date": ["preserve_order", "text", "day", "month", "year"],
    "money": ["integer_part", "fractional_part", "quantity", "currency_maj"],
}
_TOKEN = re.compile(r' *([A-Za-z_]+) \{((?: *[A-Za-z_]+: "(?:[^"\\]|\\.)*")*) *\}')
_FIELD = re.compile(r'([A-Za-z_]+): "((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)", re.S)
_HALF_WIDTH_SKIPPED = {"＃"}  # in the table, but 1.0.3's compiled graph does not apply it

Token = tuple[str, list[tuple[str, str]]]  # (name, [(field, escaped value), ...])


def graph_dir() -> Path:
    """The installed WeTextProcessing 1.0.3's `tn` folder (found without importing it)."""
    try:
        dist = importlib.metadata.distribution("WeTextProcessing")
    except importlib.metadata.PackageNotFoundError as exc:
        raise GraphsUnavailable("WeTextProcessing is not installed") from exc
    if dist.version != WETEXTPROCESSING_VERSION:
        raise GraphsUnavailable(
            f"WeTextProcessing {dist.version} is installed; upstream's graphs are {WETEXTPROCESSING_VERSION}'s"
        )
    folder = Path(str(dist.locate_file("tn")))
    if not (folder / "zh_tn_tagger.fst").is_file():
        raise GraphsUnavailable(f"no compiled graphs in {folder}")
    return folder


def parse_tokens(tagged: str) -> list[Token]:
    tokens: list[Token] = []
    pos, end = 0, len(tagged.rstrip(" "))
    while pos < end:
        match = _TOKEN.match(tagged, pos)
        if match is None:
            raise ValueError(f"unexpected tagger output at {pos}: {tagged[pos : pos + 40]!r}")
        tokens.append((match.group(1), _FIELD.findall(match.group(2))))
        pos = match.end()
    return tokens


def _reorder(tokens: list[Token], orders: dict[str, list[str]]) -> list[Token]:
    out: list[Token] = []
    for name, fields in tokens:
        values = dict(fields)
        if name in orders and values.get("preserve_order") != "true":
            fields = [(key, values[key]) for key in orders[name] if key in values]
        out.append((name, fields))
    return out


def _serialize(tokens: list[Token]) -> str:
    return " ".join(name + " {" + "".join(f' {k}: "{v}"' for k, v in fields) + " }" for name, fields in tokens)


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(r"\1", value)


def _read_table(path: Path) -> dict[str, str]:
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            full, half = line.split("\t", 1)
            table[full] = half
    return table


class _Graph:
    """One compiled FST applied as a rewrite (best path), one call per text."""

    def __init__(self, path: Path) -> None:
        import kaldifst  # deferred: only the normaliser needs it, not the package import

        self._fst = kaldifst.TextNormalizer(str(path))

    def __call__(self, text: str) -> str:
        return self._fst.normalize(text)


class ChineseGrammar:
    """1.0.3's Chinese TN grammar with upstream's options (erhua and interjections kept)."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or graph_dir()
        self._tagger = _Graph(folder / "zh_tn_tagger.fst")
        table = _read_table(folder / "chinese" / "data" / "char" / "fullwidth_to_halfwidth.tsv")
        self._half_width = str.maketrans({k: v for k, v in table.items() if k not in _HALF_WIDTH_SKIPPED})

    def tag(self, text: str) -> list[Token]:
        return parse_tokens(self._tagger(text)) if text else []

    def normalize(self, text: str) -> str:
        parts = []
        for name, fields in _reorder(self.tag(text), _ZH_ORDERS):
            values = {key: _unescape(value) for key, value in fields}
            if name == "fraction":
                parts.append(values.get("denominator", "") + "分之" + values.get("numerator", ""))
            elif name == "measure" and "denominator" in values:
                parts.append("每" + values["denominator"] + values.get("numerator", ""))
            else:
                parts.append("".join(_unescape(value) for _, value in fields))
        return "".join(parts).translate(self._half_width)


class EnglishGrammar:
    """1.0.3's English TN grammar, tagger and verbalizer as shipped."""

    def __init__(self, folder: Path | None = None, *, rejoin_split_words: bool = True) -> None:
        folder = folder or graph_dir()
        self._tagger = _Graph(folder / "en_tn_tagger.fst")
        self._verbalizer = _Graph(folder / "en_tn_verbalizer.fst")
        self._rejoin = rejoin_split_words

    def normalize(self, text: str) -> str:
        tokens = parse_tokens(self._tagger(text)) if text else []
        if not tokens:
            return ""
        plain = self._verbalizer(_serialize(_reorder(tokens, _EN_ORDERS)))
        if self._rejoin:
            rejoined = rejoin_split_words(tokens, text)
            if rejoined != tokens:
                return self._verbalizer(_serialize(_reorder(rejoined, _EN_ORDERS))) or plain
        return plain


def rejoin_split_words(tokens: list[Token], source: str) -> list[Token]:
    """Undo 1.0.3's English measure rule taking a word's first letters as a unit.

    `4 first` is tagged as 4 with unit `F` followed by the word `irst` ("four f irst"), and a
    piece ending in `per hour` as unit `per H` and word `our`. Where the unit's last word
    and the next word make a word of the source text, the number stays a number and the word
    is whole again."""
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        name, fields = tokens[i]
        values = dict(fields)
        if name == "measure" and i + 1 < len(tokens) and tokens[i + 1][0] == "w" and "units" in values:
            head, _, last = values["units"].rpartition(" ")
            word = last + dict(tokens[i + 1][1]).get("v", "")
            match = re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", source, re.IGNORECASE)
            if last.isalpha() and last.isupper() and match:
                number = [(k, v) for k, v in fields if k != "units"]
                if all(re.fullmatch(r"[a-z ]*", v) for k, v in number if k != "negative"):
                    out.append(("decimal" if "integer_part" in values else "cardinal", number))
                out.extend(("w", [("v", w)]) for w in head.split())
                out.append(("w", [("v", match.group())]))
                i += 2
                continue
        out.append(tokens[i])
        i += 1
    return out
