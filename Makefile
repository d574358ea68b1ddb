# Every install step of simpo-q lives here. `make demo` and `make test` work on a fresh
# machine: they create .venv when it is missing, install the package and what it needs
# (llama-cpp-python compiles llama.cpp once; pip's wheel cache reuses it afterwards),
# build the native module in place, and run.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS := $(VENV)/.deps-installed
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: help demo test test-fast lint rust-test py-test native go-toolchain install-check bench gpu-check clean

help:
	@echo "make demo           run the main job on the embedded tiny Gemma-2 model"
	@echo "make test           fmt, clippy, cargo test, ruff (lint and format), stubtest, pytest"
	@echo "make test-fast      pytest without the tests marked slow (for daily work; CI runs make test)"
	@echo "make bench          run benches/ (numbers go to BENCHMARKS.md by hand)"
	@echo "make install-check  pip install . into a fresh venv and smoke-test it"
	@echo "make gpu-check      the one prepared accelerator check (benches/gpu_check.py, < 8 min on an H100)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Dependencies (and an editable install whose native module `native` rebuilds in place).
$(DEPS): pyproject.toml | $(PY)
	$(PIP) install -q "maturin>=1.9.4,<2"
	$(PIP) install -q -e ".[test]"
	touch $@

native: $(DEPS)
	$(VENV)/bin/maturin develop --release --skip-install -q

demo: native
	$(VENV)/bin/simpo-q demo

rust-test:
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo test --release -p simpo-q-core

lint: native
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(PY) -m mypy.stubtest simpo_q._native --allowlist .stubtest-allowlist

# Debian's Go toolchain: tests/test_publish.py executes the Modelfile's TEMPLATE with Go's own
# text/template (Ollama's template engine). Installed with apt-get where missing; without it
# that test skips locally and fails under CI.
go-toolchain:
	@command -v go >/dev/null || test -x /usr/lib/go/bin/go \
		|| apt-get install -y -q golang-go >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q golang-go >/dev/null) \
		|| echo "note: could not install golang-go; the Modelfile template test will skip (and fail under CI)"

py-test: native go-toolchain
	$(PY) -m pytest -q

test: rust-test lint py-test

test-fast: native go-toolchain
	$(PY) -m pytest -q -m "not slow"

install-check:
	rm -rf /tmp/simpo-q-install-check
	$(PYTHON) -m venv /tmp/simpo-q-install-check
	/tmp/simpo-q-install-check/bin/pip install -q . --no-deps
	/tmp/simpo-q-install-check/bin/pip install -q numpy
	/tmp/simpo-q-install-check/bin/python -c "import numpy as np, simpo_q; \
		q = simpo_q.quantize(np.ones((2, 256), np.float32), 'Q3_K'); \
		assert q.shape == (2, 110), q.shape; print('pip install . ok:', simpo_q.__version__)"
	/tmp/simpo-q-install-check/bin/simpo-q --help > /dev/null

bench: native
	$(PY) benches/bench_quantize.py

# On a machine with one NVIDIA GPU: training (FSDP2, bf16, 9B widths at 4 layers), the chunked
# log-probs, the importance matrix and the quantizer, in one call; results under out/gpu-check.
gpu-check: native
	$(PY) benches/gpu_check.py --out out/gpu-check

clean:
	cargo clean
	rm -rf out python/simpo_q/*.so
