"""A compact map from names to integers, for per-line state in million-line jobs.

A `dict[str, int]` costs about 130 bytes a name (the string, the int, the slot),
which is what the task reader's duplicate-name table and the journal's index
cost today. This table keeps only a 64-bit digest of each name and its value in
two flat arrays, open-addressed: 16 bytes a slot, about 25 bytes a name at the
load it keeps.

Two different names with the same 64-bit digest are one name to this table. For
a million names the chance that any two collide is about 3 in 10^8; a user of the
table that can check (the journal re-reads its entry, which holds the name)
should, and one that cannot (duplicate detection) errs towards calling a line a
duplicate, never towards replacing a WAV.
"""

from __future__ import annotations

import hashlib
from array import array

_EMPTY = 0
_MAX_LOAD = 0.7


def name_digest(name: str) -> int:
    """64-bit digest of `name` (lone surrogates allowed), never 0 (0 marks an empty slot)."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class NameIndex:
    """`name -> int` with dict-like `get`, `in`, item assignment and `len`; no deletion."""

    def __init__(self, capacity: int = 1024) -> None:
        size = 1
        while size < capacity:
            size *= 2
        self._keys = array("Q", bytes(8 * size))
        self._values = array("q", bytes(8 * size))
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def __contains__(self, name: str) -> bool:
        return self._keys[self._slot(name_digest(name))] != _EMPTY

    def get(self, name: str, default: int | None = None) -> int | None:
        slot = self._slot(name_digest(name))
        return self._values[slot] if self._keys[slot] != _EMPTY else default

    def __setitem__(self, name: str, value: int) -> None:
        digest = name_digest(name)
        slot = self._slot(digest)
        if self._keys[slot] == _EMPTY:
            if (self._used + 1) > _MAX_LOAD * len(self._keys):
                self._grow()
                slot = self._slot(digest)
            self._keys[slot] = digest
            self._used += 1
        self._values[slot] = value

    def _slot(self, digest: int) -> int:
        """The slot holding `digest`, or the empty slot where it would go (linear probing)."""
        keys = self._keys
        mask = len(keys) - 1
        slot = digest & mask
        while True:
            key = keys[slot]
            if key == digest or key == _EMPTY:
                return slot
            slot = (slot + 1) & mask

    def _grow(self) -> None:
        old_keys, old_values = self._keys, self._values
        size = 2 * len(old_keys)
        self._keys = array("Q", bytes(8 * size))
        self._values = array("q", bytes(8 * size))
        for digest, value in zip(old_keys, old_values):
            if digest != _EMPTY:
                slot = self._slot(digest)
                self._keys[slot] = digest
                self._values[slot] = value
