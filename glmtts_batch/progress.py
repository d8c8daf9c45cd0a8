"""Progress reporting: a tqdm bar on a terminal, periodic log lines otherwise (cron).

The total is the task file's line count when the run started. A file still being written
(a producer appending to it) can outgrow it; the total is then dropped rather than shown
as "25/16 lines", since the true count is not known until the file ends.

Writing progress never ends a run: output that cannot be written is dropped
(`log.emit`); a bar whose stream fails is turned off.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .log import PREFIX, emit, silence


class Progress:
    """Counts lines as they finish. `enabled=None` picks the style from `stream.isatty()`."""

    def __init__(
        self,
        total: int | None = None,
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        every_lines: int = 100,
        every_s: float = 30.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = True
        self.enabled = enabled
        self.total = total
        self.every_lines = every_lines
        self.every_s = every_s
        self.lines = 0
        self.counts = {"ok": 0, "failed": 0, "invalid": 0, "skipped": 0}
        self.audio_s = 0.0
        self._start = time.monotonic()
        self._last_log = self._start
        self._last_log_lines = 0
        self._bar = None
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            try:
                self._bar = tqdm(total=total, unit="line", file=self.stream, dynamic_ncols=True)
            except (OSError, ValueError) as exc:
                self._drop_bar(exc)

    def update(self, status: str, audio_s: float = 0.0, *, line: int | None = None) -> None:
        """One record done. `line` is its physical line, so the bar also counts skipped blank lines."""
        self.lines = line if line is not None else self.lines + 1
        if self.total is not None and self.lines > self.total:
            self._drop_total()
        self.counts[status] += 1
        self.audio_s += audio_s
        if not self.enabled:
            return
        if self._bar is not None:
            try:
                self._bar.update(self.lines - self._bar.n)
                self._bar.set_postfix_str(self._postfix(), refresh=False)
            except (OSError, ValueError) as exc:
                self._drop_bar(exc)
            return
        now = time.monotonic()
        if self.lines - self._last_log_lines >= self.every_lines or now - self._last_log >= self.every_s:
            self._log_line(now)

    def _drop_total(self) -> None:
        self.total = None
        if self._bar is not None:
            self._bar.total = None  # tqdm then shows a count and a rate, no percentage
            self._bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            try:
                self._bar.set_postfix_str(self._postfix(), refresh=True)
                self._bar.close()
            except (OSError, ValueError) as exc:
                self._drop_bar(exc)
        elif self.lines != self._last_log_lines:
            self._log_line(time.monotonic())

    def _drop_bar(self, exc: BaseException) -> None:
        """The terminal went away: no more progress output at all."""
        if isinstance(exc, BrokenPipeError):
            silence(self.stream)
        bar, self._bar = self._bar, None
        self.enabled = False
        if bar is None:
            return
        try:
            bar.disable = True  # tqdm's own close would write to the stream again
            bar.close()
        except Exception:  # noqa: BLE001 - only tidying up a bar that is already lost
            pass

    def _speed(self, now: float | None = None) -> float:
        wall = (now or time.monotonic()) - self._start
        return self.audio_s / wall if wall > 0 else 0.0

    def _postfix(self) -> str:
        counts = " ".join(f"{status}={n}" for status, n in self.counts.items())
        return f"{counts} {self._speed():.2f} audio s/s"

    def _log_line(self, now: float) -> None:
        total = f"/{self.total}" if self.total else ""
        emit(f"{PREFIX}{self.lines}{total} lines, {self._postfix()}, {now - self._start:.0f} s\n", self.stream)
        self._last_log = now
        self._last_log_lines = self.lines


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
