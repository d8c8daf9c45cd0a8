"""How a text will be read, before any GPU time is spent: normalised text, pieces, phoneme tokens.

The same text front end a GLM-TTS run uses (`glmtts.text`), without a model or a tokenizer:
for each input it gives upstream's normalised text, the pieces the LLM generates one at a
time, and in phoneme mode each piece with its ambiguous Chinese characters spelled as
phoneme tokens. Inputs are the lines of a text file, or the `input_text` of every line of a
task file. A line that cannot be read gives a `PreviewError` naming the line; the other
lines are still previewed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import RunError
from .glmtts.text.frontend import normalize_and_split
from .glmtts.text.normalize import TextNormalizer
from .glmtts.text.split import LengthCounter


@dataclass(frozen=True)
class TextPreview:
    line: int  # 1-based line of the input file
    input: str
    normalized: str
    pieces: list[str]
    phonemes: list[str] | None = None  # one per piece, in phoneme mode

    def to_json(self) -> dict:
        record: dict = {"input": self.input, "normalized": self.normalized, "pieces": self.pieces}
        if self.phonemes is not None:
            record["phonemes"] = self.phonemes
        return record


@dataclass(frozen=True)
class PreviewError:
    line: int
    message: str  # names the line (and the field, for a task line)


PreviewItem = TextPreview | PreviewError


class TextPreviewer:
    """Build once (loads the normalisation grammars and, for phoneme mode, pypinyin), reuse."""

    def __init__(
        self,
        *,
        phoneme: bool = False,
        phoneme_dict: str | Path | None = None,
        normalizer: TextNormalizer | None = None,
    ) -> None:
        self.phoneme = phoneme or phoneme_dict is not None
        self._normalizer = normalizer or TextNormalizer()
        self._length = LengthCounter()
        self._phoneme_dict = None
        if self.phoneme:
            from .glmtts.text.g2p import PhonemeDict

            self._phoneme_dict = PhonemeDict.load(phoneme_dict) if phoneme_dict is not None else None

    @property
    def normalizer(self) -> TextNormalizer:
        return self._normalizer

    def preview(self, text: str, line: int = 1) -> TextPreview:
        normalized, pieces = normalize_and_split(text, self._normalizer, self._length)
        phonemes = None
        if self.phoneme:
            from .glmtts.text.g2p import to_phoneme_text

            phonemes = [to_phoneme_text(piece, self._phoneme_dict) for piece in pieces]
        return TextPreview(line, text, normalized, pieces, phonemes)

    def preview_text_file(self, path: str | Path) -> Iterator[PreviewItem]:
        """Every non-blank line of a UTF-8 text file (`-`: standard input) is one text."""
        for line, text in _text_lines(path):
            yield text if isinstance(text, PreviewError) else self.preview(text, line)

    def preview_task_file(self, path: str | Path) -> Iterator[PreviewItem]:
        """The `input_text` of every task line; an invalid line gives a PreviewError.

        Lines are validated as `glmtts-batch check` does, so a line whose prompt audio is
        missing is reported as invalid too."""
        from .tasks import InvalidLine, iter_task_file

        try:
            items = iter_task_file(path)
        except RunError:
            raise
        except OSError as exc:
            raise RunError(f"cannot read task file {path}: {exc.strerror or exc}") from exc
        for item in items:
            if isinstance(item, InvalidLine):
                where = f" [{item.error.field}]" if item.error.field else ""
                message = str(item.error)
                if not message.startswith(f"line {item.line}"):
                    message = f"line {item.line}: {message}"
                yield PreviewError(item.line, f"invalid task{where}: {message}")
            else:
                yield self.preview(item.text, item.line)


def _text_lines(path: str | Path) -> Iterator[tuple[int, str | PreviewError]]:
    if str(path) == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        raw_lines: Iterable[bytes] = buffer if buffer is not None else (s.encode("utf-8") for s in sys.stdin)
        yield from _decode_lines(raw_lines, "standard input")
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; errors must name the file)
    except OSError as exc:
        raise RunError(f"cannot read text file {path}: {exc.strerror or exc}") from exc
    with f:
        try:
            yield from _decode_lines(f, str(path))
        except OSError as exc:
            raise RunError(f"cannot read text file {path}: {exc.strerror or exc}") from exc


def _decode_lines(raw_lines: Iterable[bytes], where: str) -> Iterator[tuple[int, str | PreviewError]]:
    for line, raw in enumerate(raw_lines, start=1):
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            yield line, PreviewError(line, f"{where} line {line}: not UTF-8 text (byte {exc.start + 1})")
            continue
        if text.strip():
            yield line, text
