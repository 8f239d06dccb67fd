#!/usr/bin/env bash
# Install the lungedge runtime on an NVIDIA Jetson running JetPack 5.1.x (L4T R35.2+) or 6.x (L4T R36.2+).
#
#   sudo jetson/setup.sh --check          # report what it finds and what it would do; changes nothing
#   sudo jetson/setup.sh                  # install (safe to re-run: every step checks before it acts)
#   sudo jetson/setup.sh --source dist/lungedge-0.1.0-py3-none-any.whl
#
# What it does, in order:
#   1. refuses anything but a supported Jetson: aarch64, /etc/nv_tegra_release of L4T R35.2+ or R36.2+;
#   2. checks JetPack's parts: the system Python (3.8 on JetPack 5, 3.10 on JetPack 6) and JetPack's
#      TensorRT Python bindings (python3-libnvinfer; TensorRT is never pip-installed on a Jetson);
#   3. apt: python3-venv, python3-dev, build-essential (pycuda is compiled here);
#   4. a virtual environment PREFIX/venv on the system Python with --system-site-packages, so JetPack's
#      TensorRT is visible while pip never touches the system's own packages;
#   5. pip: the runtime's dependencies (numpy pinned for JetPack's TensorRT, opencv-python-headless,
#      onnxruntime (PyPI's aarch64 wheel is CPU-only), pydicom, nibabel, tqdm), onnx (the engine build reads
#      the ONNX graph), pycuda built against CUDA_HOME, then lungedge itself with --no-deps (no torch);
#   6. copies jetson/ (these scripts, the unit, README) to PREFIX/jetson, readable by the service user;
#   7. unless --no-service: the system user "lungedge" (in group video, for /dev/nvhost-* and /dev/nvmap),
#      /var/lib/lungedge/{bundles,watch,out,cache}, /etc/default/lungedge (only if absent) and the systemd
#      unit (not enabled: build the engine and run the self-test first, see jetson/README.md).
#
# Exit status: 0 done (with --check: nothing stands in the way), 2 usage, 3 not a supported Jetson/JetPack,
# 4 a JetPack part is missing or does not match, anything else: the failing install step's status.
#
# Environment: LUNGEDGE_PYTHON (system Python, default /usr/bin/python3), CUDA_HOME (default /usr/local/cuda),
# PIP_INDEX_URL etc. as pip reads them. For tests only, and only with --check: LUNGEDGE_TEGRA_RELEASE_FILE
# (instead of /etc/nv_tegra_release) and LUNGEDGE_ARCH (instead of uname -m).
set -euo pipefail

readonly DEFAULT_RELEASE_FILE=/etc/nv_tegra_release
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly SERVICE_USER=lungedge
readonly STATE_DIR=/var/lib/lungedge

CHECK=0
SERVICE=1
PREFIX=/opt/lungedge
SOURCE=""
PYTHON="${LUNGEDGE_PYTHON:-/usr/bin/python3}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
RELEASE_FILE="${LUNGEDGE_TEGRA_RELEASE_FILE:-$DEFAULT_RELEASE_FILE}"
ARCH="${LUNGEDGE_ARCH:-$(uname -m)}"

say() { printf '%s\n' "$*"; }
refuse() { # refuse STATUS MESSAGE...
    local status="$1"
    shift
    printf 'lungedge setup: REFUSED: %s\n' "$*" >&2
    exit "$status"
}
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-0}"
}
# act DESCRIPTION COMMAND...: run it, or with --check only say it would.
act() {
    local what="$1"
    shift
    if [ "$CHECK" -eq 1 ]; then
        say "  would: $what"
    else
        say "  doing: $what"
        "$@"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --check) CHECK=1 ;;
        --no-service) SERVICE=0 ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift ;;
        --source) SOURCE="${2:?--source needs a checkout folder or a wheel}"; shift ;;
        -h|--help) usage 0 ;;
        *) say "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done
readonly VENV="$PREFIX/venv"
if [ -z "$SOURCE" ] && [ -f "$(dirname "$SCRIPT_DIR")/pyproject.toml" ]; then
    SOURCE="$(dirname "$SCRIPT_DIR")"  # run from a checkout: install that checkout
fi

if [ "$CHECK" -eq 0 ]; then
    if [ "$RELEASE_FILE" != "$DEFAULT_RELEASE_FILE" ] || [ -n "${LUNGEDGE_ARCH:-}" ]; then
        refuse 2 "LUNGEDGE_TEGRA_RELEASE_FILE / LUNGEDGE_ARCH simulate another machine; they are accepted with --check only"
    fi
    if [ "$(id -u)" -ne 0 ]; then
        refuse 2 "run as root (sudo $0); use --check to see what it would do"
    fi
fi

# ---- 1. the machine and its JetPack release -------------------------------------------------------------

if [ "$ARCH" != "aarch64" ]; then
    refuse 3 "this is a $ARCH machine, not a Jetson (aarch64); on a PC or server install with pip: pip install lungedge"
fi
if [ ! -r "$RELEASE_FILE" ]; then
    refuse 3 "$RELEASE_FILE not found: not a Jetson running Jetson Linux (L4T), or the BSP is incomplete"
fi
# First line, e.g. "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ..."
release_line="$(head -n 1 "$RELEASE_FILE")"
if [[ ! "$release_line" =~ ^#\ R([0-9]+)\ \(release\),\ REVISION:\ ([0-9]+)\.([0-9]+) ]]; then
    refuse 3 "cannot read the L4T release from $RELEASE_FILE (first line: '$release_line')"
fi
L4T_MAJOR="${BASH_REMATCH[1]}"
L4T_MINOR="${BASH_REMATCH[2]}"
L4T_PATCH="${BASH_REMATCH[3]}"
L4T="$L4T_MAJOR.$L4T_MINOR.$L4T_PATCH"

# L4T -> JetPack, the TensorRT it ships (version prefix) and its system Python. Sources: NVIDIA's JetPack
# release notes; jetson-containers' l4t_version.py table (see jetson/README.md, "Supported devices and JetPack releases").
case "$L4T_MAJOR.$L4T_MINOR" in
    35.2) JETPACK=5.1 ;;
    35.3) JETPACK=5.1.1 ;;
    35.4) JETPACK=5.1.2 ;;
    35.5) JETPACK=5.1.3 ;;
    35.6) JETPACK="5.1.4 or later 5.1.x" ;;
    36.2) JETPACK="6.0 DP" ;;
    36.3) JETPACK=6.0 ;;
    36.4)
        case "$L4T_PATCH" in
            0|2) JETPACK=6.1 ;;
            3) JETPACK=6.2 ;;
            4) JETPACK=6.2.1 ;;
            *) JETPACK="6.2.x (L4T $L4T not in this script's table)" ;;
        esac ;;
    32.*) refuse 3 "L4T R$L4T is JetPack 4 (TensorRT 8.2 or older, Python 3.6): not supported; reflash with JetPack 5.1.x or 6.x" ;;
    34.*|35.0|35.1) refuse 3 "L4T R$L4T is JetPack 5.0.x (TensorRT 8.4): not supported; upgrade to JetPack 5.1.x (L4T R35.2.1 or later)" ;;
    36.0|36.1) refuse 3 "L4T R$L4T is a JetPack 6 early-access release: not supported; upgrade to JetPack 6.0 or later" ;;
    *) refuse 3 "L4T R$L4T is not a release this script knows (supported: R35.2-R35.6 = JetPack 5.1.x, R36.2-R36.4 = JetPack 6.x)" ;;
esac
case "$L4T_MAJOR" in
    35) TRT_EXPECTED=8.5; PY_EXPECTED=3.8; NUMPY_PIN="numpy>=1.21,<1.24" ;;
    36) PY_EXPECTED=3.10; NUMPY_PIN="numpy>=1.21,<2"
        if [ "$L4T_MINOR" -lt 4 ]; then TRT_EXPECTED=8.6; else TRT_EXPECTED=10.3; fi ;;
esac
# numpy: TensorRT 8.5's Python nptype() uses np.bool, removed in NumPy 1.24 (NVIDIA/TensorRT#2557);
# JetPack 6's TensorRT bindings and NVIDIA's Jetson wheels are built against NumPy 1.x.
say "machine: aarch64, L4T R$L4T -> JetPack $JETPACK (TensorRT $TRT_EXPECTED, Python $PY_EXPECTED)"
if [ -r /proc/device-tree/model ]; then
    say "model: $(tr -d '\0' < /proc/device-tree/model)"
fi
if command -v dpkg-query > /dev/null 2>&1; then
    jp_pkg="$(dpkg-query -W -f='${Version}' nvidia-jetpack 2>/dev/null || true)"
    say "nvidia-jetpack package: ${jp_pkg:-not installed (fine: only the parts below are needed)}"
fi

# ---- 2. JetPack's parts: system Python, TensorRT bindings, CUDA ------------------------------------------

if ! py_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"; then
    refuse 4 "no Python at $PYTHON (JetPack $JETPACK ships python3 $PY_EXPECTED): sudo apt-get install python3"
fi
if [ "$py_version" != "$PY_EXPECTED" ]; then
    refuse 4 "$PYTHON is Python $py_version but JetPack $JETPACK's TensorRT bindings are built for Python $PY_EXPECTED; point LUNGEDGE_PYTHON at the system python$PY_EXPECTED"
fi
say "python: $PYTHON ($py_version)"
if ! trt_version="$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)"; then
    refuse 4 "JetPack's TensorRT Python bindings are missing for $PYTHON. Install them from JetPack's apt repository: sudo apt-get install python3-libnvinfer (or the whole nvidia-jetpack). Do not pip install tensorrt on a Jetson."
fi
case "$trt_version" in
    "$TRT_EXPECTED"|"$TRT_EXPECTED".*) say "tensorrt: $trt_version (JetPack's)" ;;
    *) refuse 4 "TensorRT $trt_version is installed but JetPack $JETPACK ships TensorRT $TRT_EXPECTED: a mixed installation; reinstall JetPack's python3-libnvinfer (and remove any pip-installed tensorrt)" ;;
esac

# ---- 3. apt packages ------------------------------------------------------------------------------------

apt_missing=()
for pkg in python3-venv python3-dev build-essential; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        apt_missing+=("$pkg")
    fi
done
apt_install() {
    apt-get update
    apt-get install -y --no-install-recommends "$@"
}
if [ ${#apt_missing[@]} -gt 0 ]; then
    act "apt-get install ${apt_missing[*]}" apt_install "${apt_missing[@]}"
else
    say "apt: python3-venv, python3-dev, build-essential already installed"
fi

# ---- 4. the virtual environment ---------------------------------------------------------------------------

if [ -x "$VENV/bin/python" ]; then
    venv_version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ "$venv_version" != "$PY_EXPECTED" ]; then
        refuse 4 "$VENV was made with Python $venv_version (JetPack upgraded?); remove it (sudo rm -rf $VENV) and re-run"
    fi
    say "venv: $VENV (Python $venv_version) exists"
else
    act "create $VENV on $PYTHON with --system-site-packages (sees JetPack's TensorRT)" \
        "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# Ubuntu 20.04's venv brings pip 20.0.2, which cannot install manylinux_2_27/_2_28 wheels (PEP 600 needs
# pip >= 20.3); PyPI's aarch64 onnxruntime wheels carry only those tags.
pip_ok=0
if [ -x "$VENV/bin/python" ]; then
    "$VENV/bin/python" - <<'PY' && pip_ok=1
import sys
from pip import __version__ as v
sys.exit(0 if tuple(int(p) for p in v.split(".")[:2]) >= (23, 0) else 1)
PY
fi
if [ "$pip_ok" -eq 1 ]; then
    say "pip: $("${PIP[@]}" --version | cut -d' ' -f1-2) in the venv"
else
    act "upgrade pip in the venv to >= 23 (PEP 600 wheel tags)" "${PIP[@]}" install --upgrade "pip>=23"
fi

# ---- 5. Python packages -------------------------------------------------------------------------------------

# Runtime dependencies, plus onnx for `lungedge engine build` (compress/engine.py reads the ONNX graph to check
# its Q/DQ nodes); each checked by importing it (numpy also against its pin) before anything is fetched.
RUNTIME_REQS=("$NUMPY_PIN" opencv-python-headless "onnxruntime>=1.15" "pydicom>=2.3" "nibabel>=4.0" "tqdm>=4.60"
              "onnx>=1.14")
missing_reqs=()
if [ -x "$VENV/bin/python" ]; then
    while IFS= read -r req; do
        [ -n "$req" ] && missing_reqs+=("$req")
    done < <("$VENV/bin/python" - "${RUNTIME_REQS[@]}" <<'PY'
import importlib, sys
modules = {"numpy": "numpy", "opencv-python-headless": "cv2", "onnxruntime": "onnxruntime",
           "pydicom": "pydicom", "nibabel": "nibabel", "tqdm": "tqdm", "onnx": "onnx"}
for req in sys.argv[1:]:
    name = req.split(">")[0].split("<")[0].split("=")[0]
    try:
        mod = importlib.import_module(modules[name])
    except Exception:
        print(req)
        continue
    if name == "numpy":
        version = tuple(int(p) for p in mod.__version__.split(".")[:2])
        upper = tuple(int(p) for p in req.split("<")[1].split(".")[:2])
        if not (1, 21) <= version < upper:
            print(req)
PY
)
else
    missing_reqs=("${RUNTIME_REQS[@]}")
fi
if [ ${#missing_reqs[@]} -gt 0 ]; then
    # All of them at once, so pip settles versions that agree (e.g. an opencv that accepts the numpy pin).
    act "pip install ${RUNTIME_REQS[*]} (missing or out of range: ${missing_reqs[*]})" \
        "${PIP[@]}" install "${RUNTIME_REQS[@]}"
else
    say "pip: runtime dependencies present (${NUMPY_PIN})"
fi

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pycuda.driver' > /dev/null 2>&1; then
    say "pycuda: present"
else
    if [ ! -x "$CUDA_HOME/bin/nvcc" ] || [ ! -r "$CUDA_HOME/include/cuda.h" ]; then
        refuse 4 "pycuda is compiled here and needs JetPack's CUDA toolkit in $CUDA_HOME (bin/nvcc, include/cuda.h): sudo apt-get install nvidia-jetpack (or cuda-toolkit-<version>), or set CUDA_HOME"
    fi
    say "cuda: $("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*' || echo "nvcc in $CUDA_HOME")"
    act "pip install pycuda, compiled against $CUDA_HOME" \
        env PATH="$CUDA_HOME/bin:$PATH" CUDA_ROOT="$CUDA_HOME" CPATH="$CUDA_HOME/include" \
        LIBRARY_PATH="$CUDA_HOME/lib64" "${PIP[@]}" install "pycuda>=2022.1" "$NUMPY_PIN"
fi

# lungedge itself, without dependencies: the torch side (train, compress) is never installed here.
stamp=""
if [ -z "$SOURCE" ]; then
    # The installed copy of this script (PREFIX/jetson) has no checkout beside it.
    if [ -x "$VENV/bin/python" ] && version="$("$VENV/bin/python" -c \
            'from importlib.metadata import version; print(version("lungedge"))' 2>/dev/null)"; then
        say "lungedge: $version installed (no --source given: left as it is)"
    else
        refuse 2 "lungedge is not installed and there is no checkout beside this script: give --source CHECKOUT|WHEEL"
    fi
elif [ -d "$SOURCE" ]; then
    [ -f "$SOURCE/pyproject.toml" ] || refuse 2 "$SOURCE is not a lungedge checkout (no pyproject.toml)"
    # safe.directory: root reading a checkout owned by another user (git >= 2.35.2 refuses otherwise)
    git_src=(git -c "safe.directory=$SOURCE" -C "$SOURCE")
    if command -v git > /dev/null 2>&1 && "${git_src[@]}" rev-parse HEAD > /dev/null 2>&1; then
        stamp="git $("${git_src[@]}" rev-parse HEAD) $("${git_src[@]}" status --porcelain | sha256sum | cut -c1-16)"
    else
        stamp="unversioned $(date +%s)"  # no way to tell: always reinstall
    fi
elif [ -f "$SOURCE" ] && [[ "$SOURCE" == *.whl ]]; then
    stamp="wheel $(sha256sum "$SOURCE" | cut -c1-64)"
else
    refuse 2 "--source $SOURCE is neither a lungedge checkout nor a .whl file"
fi
install_lungedge() {
    "${PIP[@]}" install --no-deps --force-reinstall "$SOURCE"
    printf '%s\n' "$stamp" > "$PREFIX/installed-source"
}
if [ -z "$stamp" ]; then
    :
elif [ -f "$PREFIX/installed-source" ] && [ "$(cat "$PREFIX/installed-source")" = "$stamp" ] \
        && "$VENV/bin/python" -c 'import lungedge.runtime' > /dev/null 2>&1; then
    say "lungedge: already installed from this source ($stamp)"
else
    act "pip install --no-deps $SOURCE (runtime only; no torch)" install_lungedge
fi

# The jetson tools where the service user can read them (home folders are 0750 on Ubuntu 22.04).
if [ "$SCRIPT_DIR" != "$PREFIX/jetson" ]; then
    stale=()
    for f in setup.sh build_engine.sh validate.sh lungedge.service lungedge.default README.md; do
        cmp -s "$SCRIPT_DIR/$f" "$PREFIX/jetson/$f" || stale+=("$f")
    done
    install_tools() {
        install -d -m 0755 "$PREFIX/jetson"
        for f in "${stale[@]}"; do
            case "$f" in *.sh) mode=0755 ;; *) mode=0644 ;; esac
            install -m "$mode" "$SCRIPT_DIR/$f" "$PREFIX/jetson/$f"
        done
    }
    if [ ${#stale[@]} -gt 0 ]; then
        act "install the jetson tools into $PREFIX/jetson (${stale[*]})" install_tools
    else
        say "tools: $PREFIX/jetson up to date"
    fi
fi

if [ "$(readlink /usr/local/bin/lungedge 2>/dev/null || true)" != "$VENV/bin/lungedge" ]; then
    act "link /usr/local/bin/lungedge -> $VENV/bin/lungedge" ln -sfn "$VENV/bin/lungedge" /usr/local/bin/lungedge
fi

if [ "$CHECK" -eq 0 ]; then
    say "verifying the installation:"
    "$VENV/bin/python" - <<'PY'
import numpy, onnxruntime, pycuda, tensorrt
import lungedge.runtime.backends.trt, lungedge.runtime.service  # noqa: F401
print(f"  tensorrt {tensorrt.__version__}, pycuda {pycuda.VERSION_TEXT}, onnxruntime {onnxruntime.__version__} "
      f"({', '.join(onnxruntime.get_available_providers())}), numpy {numpy.__version__}")
PY
fi

# ---- 6. the service's user, folders, environment file and unit ------------------------------------------

if [ "$SERVICE" -eq 1 ]; then
    if id -u "$SERVICE_USER" > /dev/null 2>&1; then
        say "user: $SERVICE_USER exists"
    else
        act "create system user $SERVICE_USER (home $STATE_DIR, no login shell)" \
            useradd --system --user-group --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    if ! id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx video; then
        act "add $SERVICE_USER to group video (CUDA device nodes)" usermod -aG video "$SERVICE_USER"
    fi
    for dir in "$STATE_DIR" "$STATE_DIR/bundles" "$STATE_DIR/watch" "$STATE_DIR/out" "$STATE_DIR/cache"; do
        if [ ! -d "$dir" ]; then
            act "create $dir (owner $SERVICE_USER, mode 0750)" install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$dir"
        fi
    done
    if [ -e /etc/default/lungedge ]; then
        say "config: /etc/default/lungedge exists (left as it is)"
    else
        act "install /etc/default/lungedge from jetson/lungedge.default" \
            install -m 0644 "$SCRIPT_DIR/lungedge.default" /etc/default/lungedge
    fi
    unit_tmp="$(mktemp)"
    trap 'rm -f "$unit_tmp"' EXIT
    sed "s|/opt/lungedge/venv|$VENV|g" "$SCRIPT_DIR/lungedge.service" > "$unit_tmp"
    if cmp -s "$unit_tmp" /etc/systemd/system/lungedge.service; then
        say "unit: /etc/systemd/system/lungedge.service up to date"
    else
        act "install /etc/systemd/system/lungedge.service (not enabled)" \
            install -m 0644 "$unit_tmp" /etc/systemd/system/lungedge.service
        if command -v systemctl > /dev/null 2>&1; then
            act "systemctl daemon-reload" systemctl daemon-reload
        fi
    fi
fi

if [ "$CHECK" -eq 1 ]; then
    say "check: nothing stands in the way; run without --check to do the steps marked 'would'."
else
    say "done. Next ($PREFIX/jetson/README.md): copy a bundle to $STATE_DIR/bundles, then as the service user"
    say "$PREFIX/jetson/build_engine.sh and $PREFIX/jetson/validate.sh, then: sudo systemctl enable --now lungedge"
fi
