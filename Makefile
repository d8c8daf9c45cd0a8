# Two entry points for a new machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch: on the project's CPU machines pip takes the local CPU wheel;
# on a GPU machine the same pin pulls the CUDA build from PyPI.
TORCH ?= torch==2.13.0

.PHONY: install demo test bench bench-glmtts bench-load clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: install
	$(BIN)/glmtts-batch run jobs/demo.jsonl --engine espeak

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/bench_worker.py

# GLM-TTS engine on a random-weight checkpoint. CPU default: the tiny preset.
# On a GPU: make bench-glmtts BENCH_ARGS="--preset full --device cuda --dtype bf16"
BENCH_ARGS ?= --preset tiny
bench-glmtts: install
	$(BIN)/python bench/bench_glmtts.py $(BENCH_ARGS)

# Load time and peak host RSS of a full-shape random checkpoint (builds ~8.3 GB once).
bench-load: install
	$(BIN)/python bench/bench_load.py --preset full

clean:
	rm -rf $(VENV) outputs/*/ bench/out
