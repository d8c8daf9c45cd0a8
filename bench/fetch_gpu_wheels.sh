#!/usr/bin/env bash
# Download, into .whl/ (git-ignored; it travels to the GPU machine with `carry: [".whl"]`),
# the cp312 manylinux wheels of the runtime packages that the GPU machine's image lacks.
#
# The image already has torch, numpy, transformers, safetensors, onnxruntime, tiktoken,
# click, tqdm, pyyaml, regex, attrs, typing-extensions (/work/.library/device/KINDS.md).
# What is left of pyproject.toml's runtime deps, plus what those need at import time
# (each wheel's Requires-Dist, non-extra lines), pinned to the versions this project's CPU
# venv runs. Not fetched: WeTextProcessing (upstream's TN graphs; `make install` adds it with
# --no-deps. The benchmark's timings do not depend on which graphs read the text, so the
# wetext fallback, announced at load, serves) and espeakng-loader (the espeak engine only;
# the benchmark never loads it).
#
#   bench/fetch_gpu_wheels.sh                                  # .whl/, cp312, for the GPU
#   PYVER=3.11 DEST=bench/out/whl-cp311 bench/fetch_gpu_wheels.sh      # the same set for the CPU rehearsal
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PYVER=${PYVER:-3.12}   # 3.11: the CPU rehearsal of bench/gpu.sh (GPU_SH_REHEARSAL=1)
DEST=${DEST:-.whl}
WHEELS=(
  jsonlines==4.0.0           # needs attrs (in the image)
  soundfile==0.14.0          # bundles libsndfile; needs cffi
  cffi==2.1.1
  pycparser==3.12
  soxr==1.1.0
  kaldi-native-fbank==1.23.0
  kaldifst==1.8.3
  wetext==0.1.8              # needs kaldifst, contractions
  contractions==0.1.73       # needs textsearch
  textsearch==0.0.24         # needs anyascii, pyahocorasick
  anyascii==0.3.3
  pyahocorasick==2.3.1
  pypinyin==0.55.0
  emoji==2.16.0
  inflect==7.6.0             # needs jaraco.functools, more-itertools, typeguard
  jaraco.functools==4.6.0
  more-itertools==11.2.1
  typeguard==4.6.1           # needs typing-extensions (in the image)
)
mkdir -p "$DEST"
# The device README's command: binary wheels only, CPython 3.12, the manylinux tags pip
# matches exactly (2_31/2_34 for newer builds).
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
du -sh "$DEST"
"$PYTHON" bench/check_wheels.py "$DEST" --python-version "$PYVER"
