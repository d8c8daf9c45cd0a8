# Entry points for a new machine: `make demo`, `make test` and `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch: on the project's CPU machines pip takes the local CPU wheel;
# on a GPU machine the same pin pulls the CUDA build from PyPI.
TORCH ?= torch==2.13.0
# Upstream's text-normalisation graphs, without the pynini it pins (see pyproject.toml).
UPSTREAM_TN := WeTextProcessing==1.0.3

.PHONY: install demo test lint format bench bench-glmtts bench-writes gpu-wheels bench-load image-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps "$(UPSTREAM_TN)"
	touch $@

demo: install
	$(BIN)/glmtts-batch run jobs/demo.jsonl --engine espeak

test: install
	$(BIN)/python -m pytest -q

# ruff (lint + format check) and mypy, configured in pyproject.toml; the tools come from the `lint` extra.
$(VENV)/.lint-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e ".[lint]"
	touch $@

lint: $(VENV)/.lint-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Apply the formatter and the safe lint fixes.
format: $(VENV)/.lint-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/bench_worker.py
	$(BIN)/python bench/trace_growth.py

# GLM-TTS engine, today's sequential path against the batched engine, on a full-shape
# random-weight checkpoint (built once in $(BENCH_CKPT), ~8.3 GB, unless it is there) with forced
# token counts: a 16-task one-narrator job of 30 tokens per task on CPU, sequential on its first
# 4 tasks, batched at 16; under 10 minutes on 2 cores. Figures and the GPU run (bench/gpu.sh)
# in bench/RESULTS.md. Other runs, e.g.:
#   make bench-glmtts BENCH_CKPT=/work/bench-ckpt/full      make bench-glmtts BENCH_ARGS="--dtype bf16"
BENCH_CKPT ?= bench/checkpoints/full
BENCH_ARGS ?=
bench-glmtts: install
	$(BIN)/python bench/bench_glmtts.py --preset full --model-dir $(BENCH_CKPT) --device cpu \
	  --tasks 16 --tokens 30 --batch-sizes 16 --subset-tasks 4 --dtype fp32 \
	  --json bench/out/glmtts_cpu.json $(BENCH_ARGS)

# The GPU benchmark's wheels (cp312, into the git-ignored .whl/ that travels to a lent GPU).
gpu-wheels:
	PYTHON=$(BIN)/python bench/fetch_gpu_wheels.sh

# WAVs written inline vs. behind the engine (writer thread), no-op/GPU-like/espeak engines.
bench-writes: install
	$(BIN)/python bench/bench_writes.py

# Load time and peak host RSS of a full-shape random checkpoint (builds ~8.3 GB once).
bench-load: install
	$(BIN)/python bench/bench_load.py --preset full

# No Docker engine here: lint the Dockerfile (hadolint), build the image's runtime
# environment (torch + the wheel with the server extra) into a fresh venv, report its size.
image-check:
	$(PYTHON) docker/image_check.py --torch "$(TORCH)"

clean:
	rm -rf $(VENV) outputs/*/ bench/out build/image-check
