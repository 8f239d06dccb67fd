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

# Debian tools the tests use, installed when missing and apt is usable: shellcheck lints jetson/*.sh; dcmtk
# (storescu/echoscu, the sending cart), orthanc (the receiving PACS) and dicom3tools (dciodvfy) test the DICOM node.
TOOLS := shellcheck:shellcheck storescu:dcmtk echoscu:dcmtk Orthanc:orthanc dciodvfy:dicom3tools openssl:openssl
tools:
	@missing=""; for t in $(TOOLS); do command -v "$${t%%:*}" >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	     $$(echo $$missing | tr ' ' '\n' | sort -u) >/dev/null); } || \
	  echo "not installed:$$missing: their tests skip (and fail under CI=true)"; fi

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
