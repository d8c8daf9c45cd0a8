"""Rehearsal helper for bench/gpu.sh: a site folder that holds only what the GPU image holds.

    python bench/mock_gpu_image.py OUT_DIR

Links into OUT_DIR every top-level module (and its .dist-info) of the distributions in
IMAGE_PACKAGES (the GPU image's package list, /work/.library/device/KINDS.md) that this
interpreter has installed, with what they require here. Run with `python -S` and PYTHONPATH=<wheels site>:OUT_DIR, an
import sees the image's packages plus the carried wheels and nothing else, so a wheel
missing from bench/fetch_gpu_wheels.sh fails here as it would there.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp
""".split()


def top_level_paths(dist: importlib.metadata.Distribution) -> set[Path]:
    """The site-packages entries a distribution installed (packages, modules, .dist-info, .libs)."""
    base = Path(str(dist.locate_file("")))
    entries = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    return {base / entry for entry in entries if entry != "__pycache__" and not entry.endswith(".pth")}


def with_requirements(names: list[str]) -> tuple[list[importlib.metadata.Distribution], list[str]]:
    """The installed distributions of `names` plus everything they require here (the image
    is self-consistent, so what an image package needs here stands for what it has there)."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    missing: list[str] = []
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-").replace(".", "-")
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values()), missing


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    linked = 0
    dists, missing = with_requirements(IMAGE_PACKAGES)
    for dist in dists:
        for path in top_level_paths(dist):
            target = out / path.name
            if path.exists() and not target.exists():
                os.symlink(path, target)
                linked += 1
    print(f"{out}: {linked} entries linked; not installed here (absent from the mock too): {len(missing)}")


if __name__ == "__main__":
    main()
