"""Content hashes of input files, remembered while the file is unchanged.

A 5,000-line audiobook job names one prompt recording 5,000 times; its hash is needed
for every resume key and every prompt-cache lookup, but the file is read once. A file
counts as unchanged while its resolved path, size, mtime and ctime (to the nanosecond)
are the same: the heuristic make and rsync rely on.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class FileDigests:
    """sha256 of a file's bytes, recomputed only when the file changed (LRU-bounded)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._known: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
        self.files_hashed = 0

    def __call__(self, path: str | os.PathLike[str]) -> str:
        """Raises OSError when the file cannot be read."""
        resolved = Path(path).resolve()
        st = resolved.stat()
        stamp = (str(resolved), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = self._known.get(stamp)
        if known is not None:
            self._known.move_to_end(stamp)
            return known
        value = sha256_file(resolved)
        self.files_hashed += 1
        self._known[stamp] = value
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        return value
