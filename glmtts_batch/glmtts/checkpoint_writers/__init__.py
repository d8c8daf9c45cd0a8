"""Random-weight writers for every part of a GLM-TTS checkpoint, in the released layout.

Model modules hold inference code only; what tests and benchmarks need to build a
checkpoint without the real 9 GB download lives here, one module per part:

* `llm`: `write_random_llm` (config, `save_pretrained`-style shards, index);
* `flow`: `write_random_flow` (`flow.pt` as `{"model": state_dict}`, released `config.yaml`);
* `speech_tokenizer`: `write_random_speech_tokenizer` (configs + streamed safetensors);
* `hift`: `write_random_hift`;
* `vocos2d`: `write_random_vocos2d` (scripted stand-in);
* `campplus`: `write_random_campplus` (ONNX stand-in, written without the `onnx` package);
* `text_tokenizer`: `write_text_tokenizer` (small BPE + every added token);
* `safetensors_stream`: `write_safetensors_stream`, one tensor in memory at a time.

`glmtts.make_checkpoint.build_random_checkpoint` assembles them. Every config class has
`tiny()` and `full()`; `preset_config` is the one way to pick between them by name.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

PRESETS = ("tiny", "full")


class _HasPresets(Protocol):
    @classmethod
    def tiny(cls) -> object: ...

    @classmethod
    def full(cls) -> object: ...


C = TypeVar("C", bound=_HasPresets)


def preset_config(config_class: type[C], preset: str) -> C:
    """`config_class.tiny()` or `config_class.full()`; ValueError for any other name."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return getattr(config_class, preset)()
