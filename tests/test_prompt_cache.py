"""Per-prompt feature cache: content-hash keys, invalidation, LRU bound, counters."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from glmtts_batch.errors import PromptAudioError
from glmtts_batch.glmtts.prompt import PromptCache, PromptFeatures


class Computer:
    """A `compute` callable that records how often it ran and returns distinct features."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> PromptFeatures:
        self.calls += 1
        return PromptFeatures(
            prompt_text_ids=[self.calls, 7],
            speech_tokens=[3, 1, 4, self.calls],
            embedding=torch.full((192,), float(self.calls)),
            prompt_mel=torch.zeros(50, 80),
        )


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "voice.wav"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    return path


def test_second_lookup_is_a_hit_and_returns_the_same_features(prompt_file):
    cache, compute = PromptCache(), Computer()
    first = cache.get_or_compute(prompt_file, "hello there", compute)
    second = cache.get_or_compute(prompt_file, "hello there", compute)
    assert second is first
    assert compute.calls == 1
    assert (cache.hits, cache.misses) == (1, 1)


def test_same_content_under_two_names_is_a_hit(prompt_file, tmp_path):
    copy = tmp_path / "elsewhere" / "copy_of_voice.flac"
    copy.parent.mkdir()
    shutil.copyfile(prompt_file, copy)
    cache, compute = PromptCache(), Computer()
    first = cache.get_or_compute(prompt_file, "hello", compute)
    assert cache.get_or_compute(copy, "hello", compute) is first
    assert compute.calls == 1 and cache.hits == 1


def test_modified_file_is_a_miss(prompt_file):
    cache, compute = PromptCache(), Computer()
    before = cache.get_or_compute(prompt_file, "hello", compute)
    stat = prompt_file.stat()
    data = bytearray(prompt_file.read_bytes())
    data[100] ^= 0xFF  # same size
    prompt_file.write_bytes(bytes(data))
    # Make sure the stamp differs even on a filesystem with coarse timestamps.
    os.utime(prompt_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = cache.get_or_compute(prompt_file, "hello", compute)
    assert after is not before
    assert compute.calls == 2
    assert (cache.hits, cache.misses) == (0, 2)


def test_touched_but_unchanged_file_is_still_a_hit(prompt_file):
    cache, compute = PromptCache(), Computer()
    first = cache.get_or_compute(prompt_file, "hello", compute)
    os.utime(prompt_file, ns=(0, prompt_file.stat().st_mtime_ns + 5_000_000_000))
    assert cache.get_or_compute(prompt_file, "hello", compute) is first
    assert cache.files_hashed == 2  # the new stamp forced a re-hash, which found the same bytes


def test_unchanged_file_is_hashed_once(prompt_file):
    cache, compute = PromptCache(), Computer()
    for text in ("a", "b", "a", "b", "a"):
        cache.get_or_compute(prompt_file, text, compute)
    assert cache.files_hashed == 1
    assert compute.calls == 2


def test_different_prompt_text_is_a_miss(prompt_file):
    cache, compute = PromptCache(), Computer()
    a = cache.get_or_compute(prompt_file, "first transcript", compute)
    b = cache.get_or_compute(prompt_file, "second transcript", compute)
    assert a is not b and compute.calls == 2 and cache.misses == 2


def test_sample_rate_is_part_of_the_key(prompt_file):
    compute = Computer()
    shared = {}
    for rate in (24000, 32000):
        cache = PromptCache(sample_rate=rate)
        shared[rate] = cache.get_or_compute(prompt_file, "hi", compute)
    assert compute.calls == 2
    assert shared[24000] is not shared[32000]


def test_lru_evicts_the_least_recently_used_entry(tmp_path):
    files = []
    for i in range(3):
        path = tmp_path / f"v{i}.wav"
        path.write_bytes(f"voice {i}".encode() * 100)
        files.append(path)
    cache, compute = PromptCache(max_entries=2), Computer()
    cache.get_or_compute(files[0], "t", compute)  # [0]
    cache.get_or_compute(files[1], "t", compute)  # [0, 1]
    cache.get_or_compute(files[0], "t", compute)  # hit -> [1, 0]
    cache.get_or_compute(files[2], "t", compute)  # evicts 1 -> [0, 2]
    assert len(cache) == 2 and compute.calls == 3
    cache.get_or_compute(files[0], "t", compute)  # still cached
    assert compute.calls == 3
    cache.get_or_compute(files[1], "t", compute)  # was evicted
    assert compute.calls == 4
    assert len(cache) == 2


def test_hit_rate_math(prompt_file):
    cache, compute = PromptCache(), Computer()
    assert cache.hit_rate == 0.0
    for _ in range(4):
        cache.get_or_compute(prompt_file, "same", compute)
    cache.get_or_compute(prompt_file, "other", compute)
    assert (cache.hits, cache.misses) == (3, 2)
    assert cache.hit_rate == pytest.approx(3 / 5)
    stats = cache.stats()
    assert stats["prompt_cache_hits"] == 3
    assert stats["prompt_cache_misses"] == 2
    assert stats["prompt_cache_hit_rate"] == pytest.approx(0.6)
    assert stats["prompt_cache_entries"] == 2


def test_failed_compute_stores_nothing(prompt_file):
    cache = PromptCache()

    def broken() -> PromptFeatures:
        raise PromptAudioError("prompt audio voice.wav: silent")

    with pytest.raises(PromptAudioError):
        cache.get_or_compute(prompt_file, "t", broken)
    assert len(cache) == 0 and cache.misses == 1
    compute = Computer()
    cache.get_or_compute(prompt_file, "t", compute)
    assert compute.calls == 1


def test_unreadable_prompt_is_a_prompt_error(tmp_path):
    cache = PromptCache()
    with pytest.raises(PromptAudioError) as info:
        cache.get_or_compute(tmp_path / "gone.wav", "t", Computer())
    assert info.value.field == "prompt_audio"
    assert "gone.wav" in str(info.value)


def test_clear_keeps_counters(prompt_file):
    cache, compute = PromptCache(), Computer()
    cache.get_or_compute(prompt_file, "t", compute)
    cache.get_or_compute(prompt_file, "t", compute)
    cache.clear()
    assert len(cache) == 0 and cache.hits == 1
    cache.get_or_compute(prompt_file, "t", compute)
    assert compute.calls == 2 and cache.misses == 2


def test_rejects_empty_capacity():
    with pytest.raises(ValueError):
        PromptCache(max_entries=0)


def test_a_digest_from_the_caller_is_used_without_reading_the_file(prompt_file):
    # The batch loop hashes each prompt once (resume key) and hands the digest over.
    from glmtts_batch.digests import sha256_file

    cache, compute = PromptCache(), Computer()
    digest = sha256_file(prompt_file)
    first = cache.get_or_compute(prompt_file, "hi", compute, digest=digest)
    assert cache.files_hashed == 0
    assert cache.get_or_compute(prompt_file, "hi", compute) is first  # same key as the file's own hash
    assert cache.files_hashed == 1 and (cache.hits, cache.misses, compute.calls) == (1, 1, 1)
