#!/usr/bin/env bash
# Run tests/runtime and the entry point's tests (tests/cli/test_entry_point.py) under Python 3.8 and 3.10 in their own venvs (idempotent: venvs are reused).
#
#   tools/test_runtime_pythons.sh            # both
#   tools/test_runtime_pythons.sh 3.8        # one
#
# Interpreters default to pyenv's; override with PY38=/path/python3.8 PY310=/path/python3.10.
# Venvs default to .venvs/venv38 and .venvs/venv310 in the repo; override with VENV_ROOT=/some/dir.
# A missing interpreter is skipped with a message, except under CI=true where it fails.
# The runtime's own dependencies, openvino (the optional backend, tested everywhere), plus onnx (tests build tiny models), pillow (pydicom's JPEG baseline
# decoder for the CR sample files), tritonclient[grpc] (parses the Triton export's config.pbtxt), pytest and vermin.
# No torch: the runtime must not need it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_ROOT="${VENV_ROOT:-$REPO/.venvs}"
PY38="${PY38:-/root/.pyenv/versions/3.8.18/bin/python3.8}"
PY310="${PY310:-/root/.pyenv/versions/3.10.13/bin/python3.10}"
PACKAGES=(numpy opencv-python-headless onnxruntime openvino pydicom nibabel tqdm pytest onnx pillow vermin
          "tritonclient[grpc]")

run_one() {
    local version="$1" python="$2"
    local venv="$VENV_ROOT/venv${version/./}"
    if [ ! -x "$python" ]; then
        python="$(command -v "python$version" || true)"
    fi
    if [ -z "$python" ] || ! "$python" -c 'import sys' >/dev/null 2>&1; then
        if [ "${CI:-}" = "true" ]; then
            echo "Python $version not found (set PY${version/./}=/path/to/python$version); required under CI=true" >&2
            return 1
        fi
        echo "== Python $version not found: skipping its runtime tests (set PY${version/./}=/path/to/python$version)"
        return 0
    fi
    mkdir -p "$VENV_ROOT"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    # pip resolves the newest release of each package that still has a wheel for this Python.
    "$venv/bin/python" -m pip install --quiet --only-binary=:all: "${PACKAGES[@]}"
    "$venv/bin/python" -m pip install --quiet --no-deps -e "$REPO"
    echo "== Python $version ($venv)"
    "$venv/bin/python" -m pip list 2>/dev/null | grep -iE '^(numpy|opencv-python-headless|onnxruntime|openvino|pydicom|nibabel|onnx|pillow|pytest) '
    (cd "$REPO" && env -u PYTHONPATH "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/runtime tests/cli/test_entry_point.py)
}

target="${1:-all}"
status=0
if [ "$target" = "all" ] || [ "$target" = "3.8" ]; then run_one 3.8 "$PY38" || status=1; fi
if [ "$target" = "all" ] || [ "$target" = "3.10" ]; then run_one 3.10 "$PY310" || status=1; fi
exit $status
