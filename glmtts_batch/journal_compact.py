"""Journal compaction: keep only each output name's latest entry.

The resume journal (`manifest.Journal`) is append-only: every WAV written adds a
line, so re-synthesising a task (new text, new seed, `--no-resume`) leaves the old
line behind, and a nightly job that redoes its tasks grows the journal forever.
A reader only ever uses a name's last entry, so the others can go.

`compact_journal` rewrites the file with those last entries, each line's bytes
unchanged and in their original order, into a temporary file beside it that is
fsynced and renamed over the journal (then the folder is fsynced). A crash at any
point leaves either the old journal or the new one, both complete; a temporary
file left by a crash is replaced by the next compaction.

Entries are grouped by their exact `output_name`, never folded by case: a
journal that knows `A` and `a` keeps both, so no WAV this tool wrote ever
becomes unknown. Torn or unparsable lines are dropped (no reader can use them).
A journal holding an entry of another format version is left as it is: a newer
tool's entries are not this code's to drop.

Memory: 16-byte name digests and an 8-byte offset per line in flat arrays, not
the names themselves; about 60 bytes a line at the peak, while sorting (25 MB and
8 s for a 400,000-line, 150 MB journal on the project's 2-core machine).

Call it only while holding the output folder's lock and while no `Journal` has
the file open (its handles would keep writing to the replaced file): at run
start, before `Journal(out_dir)`, is the place.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import JOURNAL_VERSION, parse_journal_line
from .outputs import fsync_dir

COMPACT_SUFFIX = ".compact-tmp"


@dataclass(frozen=True)
class Compaction:
    lines: int  # complete lines read (entries, unparsable ones included)
    live: int  # entries kept: one per output name
    rewritten: bool  # False: below the threshold, or an unknown entry version (see `reason`)
    reason: str | None = None

    @property
    def stale(self) -> int:
        return self.lines - self.live


def compact_journal(path: Path, *, min_stale: int = 1000, fsync: bool = True) -> Compaction:
    """Rewrite the journal at `path` with each name's latest entry, if it has at least
    `min_stale` lines more than names (and at least as many stale lines as live ones,
    so compaction costs O(1) per append, amortised). `min_stale=0` always rewrites.
    """
    digests, offsets, lines, unknown = _scan(path)
    keep = _latest_per_name(digests)
    live = int(np.count_nonzero(keep))
    if unknown:
        return Compaction(lines, live, False, f"entry of unknown version on line {unknown}")
    stale = lines - live
    if min_stale and (stale < min_stale or stale < live):
        return Compaction(lines, live, False, "below threshold")
    _rewrite(path, offsets[keep], fsync=fsync)
    return Compaction(lines, live, True)


def _scan(path: Path) -> tuple[np.ndarray, np.ndarray, int, int | None]:
    """Per usable line: its name's 16-byte digest (as 2 x uint64) and its byte offset."""
    names = array("Q")
    offsets = array("q")
    lines = 0
    unknown: int | None = None
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn tail: the Journal cuts it off too
            lines += 1
            name = _entry_name(raw)
            if isinstance(name, int) and unknown is None:
                unknown = lines
            elif isinstance(name, str):
                digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                names.frombytes(digest)
                offsets.append(offset)
            offset += len(raw)
    digests = np.frombuffer(names, dtype=np.uint64).reshape(-1, 2) if names else np.zeros((0, 2), np.uint64)
    return digests, np.frombuffer(offsets, dtype=np.int64) if offsets else np.zeros(0, np.int64), lines, unknown


def _entry_name(raw: bytes) -> str | int | None:
    """The entry's output_name; its version (an int) if it is not ours; None if unusable."""
    try:
        entry = json.loads(raw)
    except ValueError:
        # An entry glued after torn bytes is one the Journal reads: keep its line as it is.
        parsed = parse_journal_line(raw)
        return parsed[1]["output_name"] if parsed is not None else None
    if not isinstance(entry, dict) or not isinstance(entry.get("output_name"), str):
        return None
    if entry.get("v") != JOURNAL_VERSION:
        version = entry.get("v")
        return version if isinstance(version, int) and not isinstance(version, bool) else None
    return entry["output_name"] if isinstance(entry.get("record"), dict) else None


def _latest_per_name(digests: np.ndarray) -> np.ndarray:
    """Mask over lines: True for the last line of each name (digest)."""
    n = len(digests)
    if n == 0:
        return np.zeros(0, dtype=bool)
    position = np.arange(n)
    # Sorted by name, then by position: a name's last line ends its group.
    order = np.lexsort((position, digests[:, 1], digests[:, 0]))
    d = digests[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = (d[1:] != d[:-1]).any(axis=1)
    keep = np.zeros(n, dtype=bool)
    keep[order[last]] = True
    return keep


def _rewrite(path: Path, offsets: np.ndarray, *, fsync: bool) -> None:
    tmp = path.with_name(path.name + COMPACT_SUFFIX)
    try:
        os.unlink(tmp)  # a crashed compaction's leftover (or a planted link: the link itself goes)
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666)  # as the Journal creates it (umask applies)
    try:
        with open(fd, "wb") as out, open(path, "rb") as src:
            wanted = iter(offsets)  # ascending, so one sequential pass copies them
            next_kept = next(wanted, None)
            offset = 0
            for raw in src:
                if next_kept is None:
                    break
                if offset == next_kept:
                    out.write(raw)
                    next_kept = next(wanted, None)
                offset += len(raw)
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_dir(path.parent)
