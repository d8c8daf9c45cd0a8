"""The structural Dockerfile check `make image-check` falls back on without hadolint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("image_check", REPO / "docker" / "image_check.py")
image_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image_check)


def test_the_repository_dockerfile_passes() -> None:
    image_check.structural_check((REPO / "Dockerfile").read_text())


@pytest.mark.parametrize(
    "edit, complaint",
    [
        (("USER 10001:10001", "USER root"), "non-root"),
        (("HEALTHCHECK", "# no health check"), "HEALTHCHECK"),
        (("--no-index", ""), "only the built wheels"),
        (('"glmtts-batch[server]==0.1.0"', '"glmtts-batch[server,test]==0.1.0" pytest'), "pytest"),
    ],
)
def test_a_dockerfile_missing_a_requirement_fails(edit: tuple[str, str], complaint: str) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert edit[0] in text
    with pytest.raises(SystemExit, match=complaint):
        image_check.structural_check(text.replace(edit[0], edit[1]))
