"""NameIndex: a dict[str, int] replacement whose memory is a few bytes per name."""

from __future__ import annotations

import tracemalloc

from glmtts_batch.nameindex import NameIndex


def test_it_maps_names_like_a_dict_through_many_resizes() -> None:
    index = NameIndex(capacity=4)
    expected: dict[str, int] = {}
    for i in range(5000):
        name = f"utt{i:05d}" if i % 3 else f"第{i}章"
        index[name] = i
        expected[name] = i
    index["utt00001"] = -7  # a later value replaces the earlier one
    expected["utt00001"] = -7

    assert len(index) == len(expected) == 5000
    assert all(index.get(name) == value for name, value in expected.items())
    assert all(name in index for name in expected)
    assert "utt99999" not in index and index.get("utt99999") is None and index.get("x", 3) == 3


def test_names_are_exact_and_lone_surrogates_are_allowed() -> None:
    index = NameIndex()
    index["A"] = 1
    index["\u00e9"] = 2
    index["bad\ud800"] = 3
    assert "a" not in index and "e\u0301" not in index
    assert (index.get("A"), index.get("\u00e9"), index.get("bad\ud800")) == (1, 2, 3)


def test_memory_per_name_is_a_fraction_of_a_dicts() -> None:
    n = 20_000
    names = [f"utt{i:06d}" for i in range(n)]

    def held(make) -> float:  # type: ignore[no-untyped-def]
        tracemalloc.start()
        try:
            table = make()
            for i, name in enumerate(names):
                table[name.upper()] = i + 1000  # new strings and ints, as the reader makes them
            return tracemalloc.get_traced_memory()[0] / n
        finally:
            tracemalloc.stop()

    ours, a_dict = held(NameIndex), held(dict)
    assert ours < 50, f"{ours:.0f} bytes a name"
    assert a_dict > 2 * ours  # the measurement can tell the two apart
