# Two entry points: `make demo` (set up, then run the built-in demo) and `make test` (set up, then test).
# Both create .venv with the CPU build of torch (torch==2.13.0 is pinned: a range would pull CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not slow and not tensorrt and not gpu"

.PHONY: setup tools demo test test-all test-pythons lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lungedge demo

# shellcheck lints jetson/*.sh in the tests; installed from Debian's packages when missing and apt is usable.
tools:
	@command -v shellcheck >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null); } || \
	  echo "shellcheck not installed: its tests skip (and fail under CI=true)"

test: setup tools
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(MAKE) test-pythons

test-all: setup
	$(PY) -m pytest -q

# The runtime's tests under the Jetson Pythons (3.8 for JetPack 5, 3.10 for JetPack 6) where installed.
test-pythons:
	bash tools/test_runtime_pythons.sh

lint: setup
	$(VENV)/bin/ruff check .
