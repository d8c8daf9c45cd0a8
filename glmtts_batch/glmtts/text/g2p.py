"""Phoneme mode: Chinese characters whose reading is ambiguous become phoneme tokens.

GLM-TTS knows one added token per pinyin initial (`<|SH|>`) and per toneless-final-plus-tone
(`<|ANG2|>`, neutral tone = 5), in pypinyin's strict spelling: `y`/`w` are not initials
(`yin2` -> `<|IN2|>`), `ü` is `V` (`lü4` -> `<|L|><|V4|>`), `you` is `IOU`, `wei` is `UEI`,
and the `i` after zh/ch/sh/r is `III`, after z/c/s `II`. A character spelled as phonemes is
`<|initial|><|final+tone|>`, or `<|final+tone|>` when it has no initial.

How upstream (`TextFrontEnd.g2p_infer`) decides, and how we differ:

* A user dictionary is matched first, longest word first; every character of a matched
  word is spelled out with the dictionary's reading. Upstream's dictionary values are
  pre-formatted token strings; ours are pinyin with tone numbers (`"yin2 hang2"`), which
  are checked and converted when the dictionary is loaded.
* Runs of Chinese characters are read as a whole (so phrase context picks the reading of
  polyphones), with 嗯 and 呣 read as 恩 and 母 as upstream does.
* Upstream then keeps every character listed in its data file `G2P_able_1word.json`
  (3,372 characters it trusts) and spells out all others. That file is not ours to ship,
  so here a character is spelled out when its reading in context differs from its most
  common reading (pypinyin's first reading for the character alone): 行 in 银行 (hang2,
  not xing2), 重 in 重庆, 长 in 长大, 了 in 了解. A character read the usual way is left
  for the model, which reads it that way anyway. This is a deliberate difference: for
  text upstream would spell out but that is read the common way (rare characters,
  polyphones in their usual reading) we keep the character.
* Everything that is not a Chinese character (Latin text, digits, punctuation, phoneme
  tokens already present) passes through unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pypinyin import Style, pinyin
from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

from glmtts_batch.errors import PhonemeDictError
from glmtts_batch.glmtts.text.chars import is_han

INITIALS = ("B", "C", "CH", "D", "F", "G", "H", "J", "K", "L", "M", "N", "P", "Q", "R", "S", "SH", "T", "X", "Z", "ZH")
FINALS = (
    "A", "AI", "AN", "ANG", "AO", "E", "EI", "EN", "ENG", "ER", "I", "IA", "IAN", "IANG", "IAO", "IE", "II",
    "III", "IN", "ING", "IO", "IONG", "IOU", "O", "ONG", "OU", "U", "UA", "UAI", "UAN", "UANG", "UEI", "UEN",
    "UENG", "UO", "V", "VAN", "VE", "VN",
)  # fmt: skip
TONES = ("1", "2", "3", "4", "5")

# Read as these for pinyin only (pypinyin gives the syllabic n2 / m2, which have no token).
_READ_AS = {"嗯": "恩", "呣": "母"}

_SYLLABLE = re.compile(r"^[a-zü]+[1-5]$")
_TOKEN = re.compile(r"<\|[^|<>]*\|>")


def phoneme_inventory() -> list[str]:
    """Every phoneme name `to_phoneme_text` can emit (token text without `<|` `|>`)."""
    return list(INITIALS) + [f + t for f in FINALS for t in TONES]


def syllable_phonemes(syllable: str) -> list[str]:
    """`"hang2"` -> `["H", "ANG2"]`, `"yin2"` -> `["IN2"]`, `"zhi1"` -> `["ZH", "III1"]`.

    Raises ValueError for something that is not a toned pinyin syllable we have tokens for.
    """
    syl = syllable.strip().lower().replace("u:", "ü").replace("v", "ü")
    if not _SYLLABLE.match(syl):
        raise ValueError(f"{syllable!r} is not pinyin with a tone number 1-5 (e.g. 'hang2')")
    initial = to_initials(syl, strict=True).upper()
    final = to_finals_tone3(syl, strict=True, neutral_tone_with_five=True).upper()
    if initial in ("ZH", "CH", "SH", "R") and final[:-1] == "I":
        final = "III" + final[-1]
    elif initial in ("Z", "C", "S") and final[:-1] == "I":
        final = "II" + final[-1]
    if initial and initial not in INITIALS or final[:-1] not in FINALS or initial + final[:-1] == "":
        raise ValueError(f"{syllable!r} is not a pinyin syllable GLM-TTS has phoneme tokens for")
    return [initial, final] if initial else [final]


def format_phonemes(names: list[str]) -> str:
    return "".join(f"<|{n}|>" for n in names)


@dataclass(frozen=True)
class PhonemeDict:
    """Forced readings: word -> one toned pinyin syllable per character."""

    entries: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, mapping: dict[str, str], *, where: str = "phoneme dictionary") -> PhonemeDict:
        entries = {}
        for word, reading in mapping.items():
            entries[word] = _check_entry(word, reading, where)
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path) -> PhonemeDict:
        """Read a JSONL file of `{"word": "银行", "pinyin": "yin2 hang2"}` or `{"银行": "yin2 hang2"}` lines."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise PhonemeDictError(f"{path}: cannot read the phoneme dictionary ({exc})") from exc
        entries: dict[str, tuple[str, ...]] = {}
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise PhonemeDictError(f"{where}: not valid JSON ({exc})") from None
            if isinstance(obj, dict) and set(obj) == {"word", "pinyin"}:
                word, reading = obj["word"], obj["pinyin"]
            elif isinstance(obj, dict) and len(obj) == 1 and not set(obj) & {"word", "pinyin"}:
                ((word, reading),) = obj.items()
            else:
                raise PhonemeDictError(
                    f'{where}: expected {{"word": "...", "pinyin": "..."}} or {{"<word>": "<pinyin>"}}, got {line.strip()!r}'
                )
            entries[word] = _check_entry(word, reading, where)
        return cls(entries)


def _check_entry(word: object, reading: object, where: str) -> tuple[str, ...]:
    if not isinstance(word, str) or not word.strip():
        raise PhonemeDictError(f"{where}: the word must be a non-empty string")
    if not isinstance(reading, str):
        raise PhonemeDictError(f"{where}: the pinyin of {word!r} must be a string like 'yin2 hang2'")
    syllables = tuple(reading.split())
    if len(syllables) != len(word):
        raise PhonemeDictError(
            f"{where}: {word!r} has {len(word)} characters but {len(syllables)} pinyin syllables ({reading!r})"
        )
    for syl in syllables:
        try:
            syllable_phonemes(syl)
        except ValueError as exc:
            raise PhonemeDictError(f"{where}: {word!r}: {exc}") from None
    return syllables


def _default_reading(char: str) -> str:
    return pinyin(_READ_AS.get(char, char), style=Style.TONE3, neutral_tone_with_five=True, strict=True)[0][0]


def _convert_chinese_run(run: str) -> str:
    readings = pinyin(
        "".join(_READ_AS.get(c, c) for c in run), style=Style.TONE3, neutral_tone_with_five=True, strict=True
    )
    out = []
    for char, (reading,) in zip(run, readings, strict=True):
        if reading != _default_reading(char):
            try:
                out.append(format_phonemes(syllable_phonemes(reading)))
                continue
            except ValueError:
                pass  # a reading with no token (rare interjections): keep the character
        out.append(char)
    return "".join(out)


def _convert_plain(text: str) -> str:
    out, run = [], []
    for char in text:
        if is_han(char):
            run.append(char)
            continue
        if run:
            out.append(_convert_chinese_run("".join(run)))
            run = []
        out.append(char)
    if run:
        out.append(_convert_chinese_run("".join(run)))
    return "".join(out)


def to_phoneme_text(text: str, user_dict: PhonemeDict | None = None) -> str:
    """Spell out ambiguous Chinese characters (and dictionary words) as phoneme tokens."""
    words = sorted(user_dict.entries, key=len, reverse=True) if user_dict else []
    out: list[str] = []
    plain_start = i = 0
    while i < len(text):
        # Tokens already in the text (e.g. a previous pass) are left alone.
        token = _TOKEN.match(text, i)
        if token:
            i = token.end()
            continue
        word = next((w for w in words if text.startswith(w, i)), None)
        if word is None:
            i += 1
            continue
        out.append(_convert_plain(text[plain_start:i]))
        out.append("".join(format_phonemes(syllable_phonemes(s)) for s in user_dict.entries[word]))  # type: ignore[union-attr]
        i += len(word)
        plain_start = i
    out.append(_convert_plain(text[plain_start:]))
    return "".join(out)
