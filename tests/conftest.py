"""Shared fixtures. Golden parity vectors live in ../shared/golden beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
REFERENCE = REPO.parent / "shared" / "glmtts-reference"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden parity vectors not found at {GOLDEN} (they ship in ../shared beside the repo)")
    return GOLDEN


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"GLM-TTS reference configs not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete random-weight GLM-TTS checkpoint in the released layout, tiny shapes."""
    from glmtts_batch.glmtts.make_checkpoint import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "glmtts-tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny `llm/` folder (vocabulary tiny_llm.VOCAB), read-only for the tests."""
    from tiny_llm import VOCAB

    from glmtts_batch.glmtts.checkpoint_writers.llm import write_random_llm
    from glmtts_batch.glmtts.llm import LlmConfig

    return write_random_llm(tmp_path_factory.mktemp("llm"), LlmConfig.tiny(vocab_size=VOCAB), seed=3)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread: tiny matrices spend longer starting threads than computing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
