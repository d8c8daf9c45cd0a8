# Entry points for a new machine: `make demo`, `make test` and `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch: on the project's CPU machines pip takes the local CPU wheel;
# on a GPU machine the same pin pulls the CUDA build from PyPI.
TORCH ?= torch==2.13.0
# Upstream's text-normalisation graphs, without the pynini it pins (see pyproject.toml).
UPSTREAM_TN := WeTextProcessing==1.0.3

.PHONY: install demo test lint format bench bench-glmtts bench-writes bench-load image-check clean

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

# GLM-TTS engine on a full-shape random-weight checkpoint (built once, ~8.3 GB): 1 task and
# a 32-task job on a GPU; 3 tasks of 100 tokens on CPU. Other runs, e.g.:
#   make bench-glmtts BENCH_ARGS="--dtype bf16"      make bench-glmtts BENCH_ARGS="--preset tiny"
BENCH_ARGS ?=
bench-glmtts: install
	$(BIN)/python bench/bench_glmtts.py $(BENCH_ARGS)

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
