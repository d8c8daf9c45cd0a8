"""The text tokenizer: tiktoken ranks + Hugging Face added tokens, read without remote code."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import tiktoken

from glmtts_batch.errors import CheckpointError
from glmtts_batch.glmtts.checkpoint_writers.text_tokenizer import write_text_tokenizer
from glmtts_batch.glmtts.text.g2p import phoneme_inventory
from glmtts_batch.glmtts.text.tokenizer import (
    CONFIG_FILE,
    GLM4_CHAT_TOKENS,
    GLM4_PATTERN,
    MODEL_FILE,
    TextTokenizer,
)

SAMPLES = [
    "今天天气真不错，我们一起去公园散步吧。你觉得怎么样？",
    "Hello world! This is a simple English sentence, isn't it?",
    "我最近在学习machine learning，特别是deep neural networks。",
    "  leading spaces,\n\nnew lines\r\n and\ttabs  ",
    "emoji 😄🚀 and numbers 1234567 and 3.14159",
    "银<|H|><|ANG2|>在<|ZH|><|E4|>条街",
    "",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    write_text_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_checkpoint(tok_dir)


def _reference_encoding(tok_dir: Path) -> tiktoken.Encoding:
    """tiktoken's own special-token path over the same files: an independent reference."""
    ranks = {}
    for line in (tok_dir / MODEL_FILE).read_text().splitlines():
        b64, rank = line.split()
        ranks[base64.b64decode(b64)] = int(rank)
    decoder = json.loads((tok_dir / CONFIG_FILE).read_text())["added_tokens_decoder"]
    special = {v["content"]: int(k) for k, v in decoder.items()}
    return tiktoken.Encoding("ref", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=special)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok: TextTokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_encode_equals_tiktoken_with_added_tokens_as_specials(tok: TextTokenizer, tok_dir: Path) -> None:
    ref = _reference_encoding(tok_dir)
    for text in SAMPLES + ["<|begin_of_audio|><|audio_0|><|audio_32767|><|user|>", "a<|nope|>b<|<|SH|>|>"]:
        assert tok.encode(text) == ref.encode(text, allowed_special="all"), text


def test_merges_compress_text(tok: TextTokenizer) -> None:
    text = "今天天气真不错，我们一起去公园散步吧。The quick brown fox jumps over the lazy dog."
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2


def test_special_tokens_resolved_by_name(tok: TextTokenizer, tok_dir: Path) -> None:
    sp = tok.special
    assert tok.encode("<|audio_0|>") == [sp.ats]
    assert tok.encode("<|audio_32767|>") == [sp.ate]
    assert sp.ate - sp.ats == 32767
    assert tok.encode("<|begin_of_audio|>") == [sp.boa]
    assert tok.encode("<|user|>") == [sp.eoa]
    assert tok.encode("<|endoftext|>") == [sp.pad]
    # The GLM-4 chat tokens sit right after the BPE ranks, as in the released tokenizer.
    n_ranks = len((tok_dir / MODEL_FILE).read_text().splitlines())
    assert sp.pad == n_ranks and sp.eoa == n_ranks + GLM4_CHAT_TOKENS.index("<|user|>")
    assert len({sp.ats, sp.ate, sp.boa, sp.eoa, sp.pad}) == 5
    assert tok.vocab_size == sp.ate + 1 < 36000


def test_added_tokens_inside_text_are_single_ids(tok: TextTokenizer) -> None:
    ids = tok.encode("银<|H|><|ANG2|>x<|audio_7|>")
    assert ids[-3:] == [tok.encode("<|ANG2|>")[0], tok.encode("x")[0], tok.special.ats + 7]
    assert tok.encode("<|H|>") == [tok.token_id("<|H|>")]
    # Every phoneme g2p can emit is one token.
    for name in phoneme_inventory():
        assert len(tok.encode(f"<|{name}|>")) == 1, name
    # Something that only looks like an added token is ordinary text.
    assert len(tok.encode("<|NOT_A_TOKEN|>")) > 1


def _pieces(tok: TextTokenizer, text: str) -> list[str]:
    return [tok.decode([i]) for i in tok.encode(text)]


def test_split_pattern_numbers_in_groups_of_three(tok: TextTokenizer) -> None:
    pieces = _pieces(tok, "1234567")
    assert "".join(pieces) == "1234567"
    ends = {sum(len(p) for p in pieces[: k + 1]) for k in range(len(pieces))}
    assert {3, 6, 7} <= ends
    assert all(len(p) <= 3 for p in pieces)


def test_split_pattern_contractions_and_words(tok: TextTokenizer) -> None:
    for text, boundary in [("it's", 2), ("They're", 4), ("we'll", 2), ("I'M", 1)]:
        pieces = _pieces(tok, text)
        ends = {sum(len(p) for p in pieces[: k + 1]) for k in range(len(pieces))}
        assert boundary in ends, (text, pieces)
    # A space belongs to the word after it, never to the word before.
    pieces = _pieces(tok, "hello world")
    assert not any(p.endswith(" ") and p.strip() for p in pieces)


def test_no_prefix_tokens(tok: TextTokenizer) -> None:
    assert tok.encode("a") == [ord("a")]  # single bytes have rank = byte value here
    assert tok.encode("") == []


def test_test_tokenizer_is_deterministic(tok_dir: Path, tmp_path: Path) -> None:
    write_text_tokenizer(tmp_path)
    for name in (MODEL_FILE, CONFIG_FILE):
        assert (tmp_path / name).read_bytes() == (tok_dir / name).read_bytes()


def _copy(tok_dir: Path, dst: Path) -> Path:
    for name in (MODEL_FILE, CONFIG_FILE):
        (dst / name).write_bytes((tok_dir / name).read_bytes())
    return dst


@pytest.mark.parametrize("missing", [MODEL_FILE, CONFIG_FILE])
def test_missing_file_is_checkpoint_error(tok_dir: Path, tmp_path: Path, missing: str) -> None:
    (_copy(tok_dir, tmp_path) / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        TextTokenizer.from_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "name, content",
    [
        (MODEL_FILE, "not base64!! 0\n"),
        (MODEL_FILE, "QQ== notanumber\n"),
        (MODEL_FILE, "QQ== 65\n"),  # single bytes missing
        (CONFIG_FILE, "{not json"),
        (CONFIG_FILE, '{"tokenizer_class": "x"}'),
        (CONFIG_FILE, '{"added_tokens_decoder": {"abc": {"content": "<|x|>"}}}'),
    ],
)
def test_malformed_file_is_checkpoint_error(tok_dir: Path, tmp_path: Path, name: str, content: str) -> None:
    (_copy(tok_dir, tmp_path) / name).write_text(content)
    with pytest.raises(CheckpointError, match=name):
        TextTokenizer.from_checkpoint(tmp_path)


def test_special_token_missing_is_clear_error(tok_dir: Path, tmp_path: Path) -> None:
    _copy(tok_dir, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["added_tokens_decoder"] = {
        k: v for k, v in config["added_tokens_decoder"].items() if v["content"] != "<|begin_of_audio|>"
    }
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    tok = TextTokenizer.from_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="begin_of_audio"):
        _ = tok.special


def test_added_token_id_clashing_with_rank_is_error(tok_dir: Path, tmp_path: Path) -> None:
    _copy(tok_dir, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["added_tokens_decoder"]["5"] = {"content": "<|clash|>"}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="collide"):
        TextTokenizer.from_checkpoint(tmp_path)


def test_unknown_id_decode_is_value_error(tok: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="unknown token id"):
        tok.decode([10**7])


def test_glm4_chat_tokens_fall_back_to_remote_code_ids(tok_dir: Path, tmp_path: Path) -> None:
    # The GLM-4 remote code gives its chat tokens ids right after the ranks even when
    # tokenizer_config.json does not list them.
    _copy(tok_dir, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    decoder = config["added_tokens_decoder"]
    n_ranks = len((tok_dir / MODEL_FILE).read_text().splitlines())
    del decoder[str(n_ranks + GLM4_CHAT_TOKENS.index("<|user|>"))]
    decoder[str(n_ranks)] = {"content": "<|something_else|>"}  # takes <|endoftext|>'s usual id
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    tok = TextTokenizer.from_checkpoint(tmp_path)
    assert tok.encode("<|user|>") == [n_ranks + GLM4_CHAT_TOKENS.index("<|user|>")]
    assert tok.encode("<|something_else|>") == [n_ranks]
    assert len(tok.encode("<|endoftext|>")) > 1  # no id left for it: ordinary text
