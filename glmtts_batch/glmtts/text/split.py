"""Cutting long text into pieces the LLM generates one at a time.

Same rules as upstream `TextFrontEnd.split_by_len`:

1. The text is cut into units: one unit per Chinese character, per run of letters (an
   English word, with `'` and `-` allowed inside it), and per other character. Spaces
   join the unit before them.
2. Length is counted in "Chinese-character equivalents": an all-ASCII word counts 0.7
   per syllable (English syllables are shorter), every other unit counts 1.
3. Units are gathered into sentences that end at a punctuation unit once at least
   `min_len` has been gathered.
4. A sentence longer than `max_len` is cut every `max_len` units (one more when the unit
   at the cut is punctuation, so no piece starts with it).

Upstream indexes unit `max_len` in step 4 even when the sentence has fewer units than
that (possible when its words have many syllables), and raises IndexError. There we cut
instead at the last whole unit that keeps the piece within `max_len`, so no piece is over
the limit, no word is split and nothing is dropped.

Syllables are counted with upstream's vowel-group rule (its fallback). Upstream first asks
the CMU pronouncing dictionary (`pronouncing` package); we do not depend on it, so that the
split never changes with what is installed. The two agree on every golden case; for a word
where they disagree a piece boundary can move by a word.

Every step is linear in the text length (a task's text can be long): pieces are cut by
index rather than by re-slicing the rest, and a length is summed only as far as the
comparison needs, in the same order as a full sum, so the result is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from glmtts_batch.glmtts.text.chars import SENTENCE_PUNCTUATION, is_han

EN_SYLLABLE_WEIGHT = 0.7  # an English syllable is about 0.7 of a Chinese character's duration


def split_into_units(text: str) -> list[str]:
    units: list[str] = []
    word: list[str] = []
    for char in text:
        if not is_han(char) and (char.isalpha() or (word and char in "'-")):
            word.append(char)
            continue
        if word:
            units.append("".join(word))
            word = []
        units.append(char)
    if word:
        units.append("".join(word))
    merged: list[list[str]] = []  # parts of each unit, joined once (+= on a list item copies)
    for unit in units:
        if unit.isspace() and merged:
            merged[-1].append(unit)
        else:
            merged.append([unit])
    return ["".join(parts) for parts in merged]


def count_syllables_rule(word: str) -> int:
    """Vowel groups, not counting a final 'e' unless it is the only vowel."""
    word = word.lower()
    n = len(re.findall(r"(?!e$)[aeiouy]+", word))
    if re.fullmatch(r"[^aeiouy]*e", word):
        n += 1
    return max(n, 1)


class LengthCounter:
    """Length of a list of units in Chinese-character equivalents."""

    def __init__(self, syllables: Callable[[str], int] | None = None) -> None:
        self._syllables = syllables or count_syllables_rule
        self._cache: dict[str, int] = {}

    def unit(self, unit: str) -> float:
        word = unit.strip()
        if word and word.isascii() and word.isalpha():
            if word not in self._cache:
                self._cache[word] = self._syllables(word)
            return self._cache[word] * EN_SYLLABLE_WEIGHT
        return 1

    def __call__(self, units: list[str]) -> float:
        total = 0.0
        for u in units:
            total += self.unit(u)
        return total

    def exceeds(self, units: list[str], start: int, limit: float) -> bool:
        """Whether `self(units[start:])` > limit, reading no further than needed.

        Units weigh more than zero, so the partial sums only grow (in floating point too):
        the answer is the full sum's, at a cost bounded by the limit, not the list.
        """
        total = 0.0
        for i in range(start, len(units)):
            total += self.unit(units[i])
            if total > limit:
                return True
        return False


def _is_punct(unit: str) -> bool:
    stripped = unit.strip()
    return len(stripped) == 1 and stripped in SENTENCE_PUNCTUATION


def _min_sentences(units: list[str], min_len: int, length: LengthCounter) -> list[list[str]]:
    sentences: list[list[str]] = []
    current: list[str] = []
    for unit in units:
        current.append(unit)
        if _is_punct(unit) and length(current) >= min_len:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def _hard_cut(sentence: list[str], max_len: int, length: LengthCounter) -> list[list[str]]:
    pieces: list[list[str]] = []
    start = 0  # the rest of the sentence is sentence[start:]
    while length.exceeds(sentence, start, max_len):
        if len(sentence) - start > max_len:
            cut = max_len + 1 if _is_punct(sentence[start + max_len]) else max_len
        else:
            # Upstream raises here; keep the longest prefix within the limit (at least one unit).
            cut, total = 0, 0.0
            while start + cut < len(sentence) and total + length.unit(sentence[start + cut]) <= max_len:
                total += length.unit(sentence[start + cut])
                cut += 1
            cut = max(cut, 1)
        pieces.append(sentence[start : start + cut])
        start += cut
    if start < len(sentence):
        pieces.append(sentence[start:])
    return pieces


def split_by_len(text: str, min_len: int = 30, max_len: int = 60, *, length: LengthCounter | None = None) -> list[str]:
    """Cut `text` into pieces of about `min_len`..`max_len` Chinese-character equivalents."""
    length = length or LengthCounter()
    pieces: list[str] = []
    for sentence in _min_sentences(split_into_units(text), min_len, length):
        pieces.extend("".join(units) for units in _hard_cut(sentence, max_len, length))
    return pieces
