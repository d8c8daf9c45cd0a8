"""A small text tokenizer folder in the released `vq32k-phoneme-tokenizer/` format.

BPE ranks learned from a short bilingual corpus, and every added token the runtime needs
(chat tokens at the ids the GLM-4 remote code gives them, boa/eoa, phonemes, 32768 audio
tokens), so the tokenizer, LLM vocabulary and flow embedding of a random checkpoint agree.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import regex

from glmtts_batch.glmtts.text.tokenizer import (
    CONFIG_FILE,
    GLM4_CHAT_TOKENS,
    GLM4_PATTERN,
    MODEL_FILE,
    N_AUDIO_TOKENS,
)

_CORPUS = """\
今天天气真不错，我们一起去公园散步吧。你觉得怎么样？人工智能是计算机科学的一个重要分支。
语音合成技术能够把文字信息转化为自然流畅的语音，广泛应用于智能客服、有声读物和导航播报。
这件衣服原价一千两百九十九元，现在打八点五折。会议定于二零二四年三月十五日下午举行。
我们的银行在这条街上，他是一个很有名的人。中国的历史非常悠久，文化也很丰富。
The quick brown fox jumps over the lazy dog. Speech synthesis is the artificial production of human speech.
A text to speech system converts normal language text into speech; it can't be perfect, but it's good.
They're here, we've seen it, I'm sure you'll like it and he'd agree. Numbers like 12345 and 2024 are read aloud.
Hello world! This is a simple English sentence for testing the text front end of the model.
"""

_SPECIAL_GLM_EXTRA = ("<|begin_of_audio|>", "<|end_of_audio|>")


def learn_merges(corpus: str, n_merges: int) -> list[bytes]:
    """Greedy byte-pair merges over `corpus` pre-split by the GLM-4 pattern.

    Each step merges the most frequent adjacent pair (ties broken by the bytes, so the
    result is deterministic). Returns the merged tokens in rank order.
    """
    words = Counter(tuple(bytes([b]) for b in w.encode("utf-8")) for w in regex.findall(GLM4_PATTERN, corpus))
    merges: list[bytes] = []
    known = {bytes([b]) for b in range(256)}
    while len(merges) < n_merges:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        pairs = Counter({p: c for p, c in pairs.items() if p[0] + p[1] not in known})
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        merged = a + b
        merges.append(merged)
        known.add(merged)
        new_words: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            out: list[bytes] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return merges


def write_text_tokenizer(path: Path, *, n_audio_tokens: int = N_AUDIO_TOKENS, n_merges: int = 400) -> None:
    """Write a small tokenizer folder in the released format.

    Layout of ids: 256 single bytes, the learned merges, the GLM-4 chat tokens (the ids the
    remote code gives them), `<|begin_of_audio|>`, `<|end_of_audio|>`, the phoneme tokens
    that `g2p.py` can emit, then `<|audio_0|>` .. `<|audio_{n-1}|>` contiguous.
    `TextTokenizer.special` needs the full 32768 audio tokens (ate is `<|audio_32767|>`);
    a smaller `n_audio_tokens` is only for tests of the tokenizer itself.
    """
    from glmtts_batch.glmtts.text.g2p import phoneme_inventory

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokens = [bytes([b]) for b in range(256)] + learn_merges(_CORPUS, n_merges)
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}" for rank, tok in enumerate(tokens)]
    (path / MODEL_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    added = list(GLM4_CHAT_TOKENS) + list(_SPECIAL_GLM_EXTRA)
    added += [f"<|{p}|>" for p in phoneme_inventory()]
    added += [f"<|audio_{k}|>" for k in range(n_audio_tokens)]
    decoder = {
        str(len(tokens) + i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate(added)
    }
    config = {
        "added_tokens_decoder": decoder,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 8192,
        "padding_side": "left",
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    (path / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
