#!/usr/bin/env bash
# First-run validation on a Jetson, after jetson/setup.sh: run it before serving anything, and send the report
# back if a step fails. It reads the platform, checks the installation, asks CUDA and TensorRT what the device
# has, and runs the bundle's golden self-test on ONNX Runtime (CPU) and on every TensorRT engine the bundle has.
# It writes no patient data: the bundle's golden inputs are synthetic or de-identified arrays.
#
#   jetson/validate.sh BUNDLE [--report FILE]
#
# Run it as the service user (sudo -u lungedge jetson/validate.sh /var/lib/lungedge/bundles/current) so that
# device permissions are tested as the service will meet them; as root it also shows the clock settings.
# Exit status: 0 every step passed; 1 a step failed (see the report); 2 usage; 3 not a Jetson.
# Environment: LUNGEDGE_BIN (default /opt/lungedge/venv/bin/lungedge), LUNGEDGE_PYTHON (the python beside it).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUNDLE=""
REPORT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --report) REPORT="${2:?--report needs a file}"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        -*) printf 'unknown option: %s\n' "$1" >&2; exit 2 ;;
        *) BUNDLE="$1" ;;
    esac
    shift
done
if [ -z "$BUNDLE" ] || [ ! -f "$BUNDLE/manifest.json" ]; then
    printf 'usage: %s BUNDLE [--report FILE] (BUNDLE: a folder with manifest.json)\n' "$0" >&2
    exit 2
fi
if [ "$(uname -m)" != aarch64 ] || [ ! -r /etc/nv_tegra_release ]; then
    printf 'validate: this is not a Jetson (no aarch64 /etc/nv_tegra_release); nothing to validate here\n' >&2
    exit 3
fi
LUNGEDGE_BIN="${LUNGEDGE_BIN:-/opt/lungedge/venv/bin/lungedge}"
LUNGEDGE_PYTHON="${LUNGEDGE_PYTHON:-$(dirname "$LUNGEDGE_BIN")/python}"
REPORT="${REPORT:-${TMPDIR:-/tmp}/lungedge-validation-$(date -u +%Y%m%dT%H%M%SZ).txt}"
: > "$REPORT"

failed=0
log() { printf '%s\n' "$*" | tee -a "$REPORT"; }
step() { # step NAME COMMAND...: run, keep its output in the report, PASS/FAIL on the console
    local name="$1" status=0
    shift
    printf '\n== %s\n$ %s\n' "$name" "$*" >> "$REPORT"
    "$@" >> "$REPORT" 2>&1 || status=$?
    if [ "$status" -eq 0 ]; then
        printf 'PASS  %s\n' "$name"
    else
        printf 'FAIL  %s (status %s)\n' "$name" "$status"
        printf '(status %s)\n' "$status" >> "$REPORT"
        failed=1
    fi
}
info() { # info NAME COMMAND...: like step, but a failure is only noted (facts, not requirements)
    local name="$1"
    shift
    printf '\n== %s (information)\n$ %s\n' "$name" "$*" >> "$REPORT"
    "$@" >> "$REPORT" 2>&1 || printf '(not available: status %s)\n' "$?" >> "$REPORT"
}

log "lungedge on-device validation, $(date -u +%Y-%m-%dT%H:%M:%SZ), user $(id -un), report $REPORT"
info "platform" sh -c 'head -n 1 /etc/nv_tegra_release; tr -d "\0" < /proc/device-tree/model; echo; uname -r'
info "power mode" nvpmodel -q
if [ "$(id -u)" -eq 0 ]; then info "clocks" jetson_clocks --show; fi
# shellcheck disable=SC2317  # called through step
installation_complete() { # setup.sh --check passes, nothing left to do (reinstalling lungedge aside)
    local out
    out="$("$SCRIPT_DIR/setup.sh" --check --no-service 2>&1)" || { printf '%s\n' "$out"; return 1; }
    printf '%s\n' "$out"
    if grep "would:" <<< "$out" | grep -qv "pip install --no-deps"; then
        printf 'setup.sh has steps left to do: run sudo %s/setup.sh\n' "$SCRIPT_DIR"
        return 1
    fi
    if grep -q "pip install --no-deps" <<< "$out"; then
        printf 'note: the installed lungedge is not the one in %s (fine if it was installed from a wheel)\n' \
            "$(dirname "$SCRIPT_DIR")"
    fi
}
step "installation (setup.sh --check finds nothing left to do)" installation_complete
step "CUDA device as this user (pycuda)" "$LUNGEDGE_PYTHON" -c '
import pycuda.driver as cuda
cuda.init()
d = cuda.Device(0)
print(f"{cuda.Device.count()} device(s); 0: {d.name()}, compute capability {d.compute_capability()}, "
      f"{d.total_memory() // 2**20} MiB; CUDA driver {cuda.get_driver_version()}")'
step "TensorRT builder" "$LUNGEDGE_PYTHON" -c '
import tensorrt as trt
b = trt.Builder(trt.Logger(trt.Logger.ERROR))
print(f"TensorRT {trt.__version__}: DLA cores {b.num_DLA_cores}, fast FP16 {b.platform_has_fast_fp16}, "
      f"fast INT8 {b.platform_has_fast_int8}")'
step "self-test on ONNX Runtime (CPU)" "$LUNGEDGE_BIN" selftest "$BUNDLE" --backend onnxruntime

engines="$("$LUNGEDGE_PYTHON" - "$BUNDLE" <<'PY'
import json, os, sys
with open(os.path.join(sys.argv[1], "manifest.json"), encoding="utf-8") as fh:
    arts = json.load(fh)["artifacts"]
print(" ".join(sorted({a["precision"] for a in arts.values()
                       if a["backend"] == "tensorrt" and not a["format"].startswith("onnx")})))
PY
)" || engines=""
if [ -z "$engines" ]; then
    log "no TensorRT engine in the bundle yet: build one with jetson/build_engine.sh $BUNDLE, then run this again"
    failed=1
fi
for precision in $engines; do
    if command -v tegrastats > /dev/null 2>&1; then
        tegra_log="$(mktemp)"
        tegrastats --interval 500 --logfile "$tegra_log" > /dev/null 2>&1 &
        tegra_pid=$!
    fi
    step "self-test on TensorRT ($precision)" "$LUNGEDGE_BIN" selftest "$BUNDLE" --backend tensorrt --precision "$precision"
    if [ -n "${tegra_pid:-}" ]; then
        kill "$tegra_pid" 2> /dev/null || true
        wait "$tegra_pid" 2> /dev/null || true
        info "tegrastats during the $precision self-test" cat "$tegra_log"
        rm -f "$tegra_log"
        tegra_pid=""
    fi
done

if [ "$failed" -eq 0 ]; then
    log "all steps passed; the service can be enabled: sudo systemctl enable --now lungedge"
else
    log "some steps failed: see $REPORT (it holds no patient data) and jetson/README.md, 'Troubleshooting'"
fi
exit "$failed"
