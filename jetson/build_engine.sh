#!/usr/bin/env bash
# Build a bundle's TensorRT engine on this Jetson, then self-test it. Engines only run on the TensorRT
# version and GPU they were built on, so this runs on the device itself, once per bundle and JetPack.
#
#   jetson/build_engine.sh BUNDLE [--precision fp16|int8] [--dla-core N|auto] [--max-batch N]
#                          [--timing-cache FILE] [--dry-run]
#
#   --precision     fp16 (default) builds from the bundle's fp32 ONNX model; int8 builds from its TensorRT
#                   QDQ model (artifact onnx-int8-trt: explicit quantization, no calibration on the device)
#   --dla-core      N: put the engine on DLA core N (Orin AGX/NX, Xavier; GPU fallback for layers DLA cannot
#                   run); auto: DLA core 0 where the device has one, else the GPU. Default: the GPU.
#   --max-batch     largest batch the engine's optimisation profile accepts (default 8; opt is 1: bedside
#                   latency is one image at a time). On DLA it is 1: DLA needs min = opt = max (static shapes).
#   --timing-cache  TensorRT timing cache kept between builds (default:
#                   /var/lib/lungedge/cache/timing-trt<version>.cache); makes rebuilds much faster
#   --dry-run       print the lungedge command and its trtexec equivalent; build nothing
#
# It runs `lungedge engine build` (which records the engine and its fingerprint in the bundle manifest),
# prints the equivalent trtexec command for reference (trtexec alone does not update the manifest), then
# `lungedge selftest BUNDLE --backend tensorrt --precision P`. Run it as the user that owns the bundle
# folder, for the service: sudo -u lungedge jetson/build_engine.sh /var/lib/lungedge/bundles/NAME
#
# Exit status: 0 built and self-tested; 1 the self-test failed; 2 usage or bundle problem; 3 the device lacks
# what was asked (no TensorRT, no such DLA core); other: the build's own status.
# Environment: LUNGEDGE_BIN (default /opt/lungedge/venv/bin/lungedge, else lungedge on PATH), LUNGEDGE_PYTHON
# (default: the python next to LUNGEDGE_BIN, else python3; it must import lungedge).
set -euo pipefail

say() { printf '%s\n' "$*"; }
die() { # die STATUS MESSAGE...
    local status="$1"
    shift
    printf 'build_engine: %s\n' "$*" >&2
    exit "$status"
}
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-0}"
}

BUNDLE=""
PRECISION=fp16
DLA=""
MAX_BATCH=8
MAX_BATCH_GIVEN=0
CACHE=""
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --precision) PRECISION="${2:?--precision needs fp16 or int8}"; shift ;;
        --dla-core) DLA="${2:?--dla-core needs a core number or auto}"; shift ;;
        --max-batch) MAX_BATCH="${2:?--max-batch needs a number}"; MAX_BATCH_GIVEN=1; shift ;;
        --timing-cache) CACHE="${2:?--timing-cache needs a file}"; shift ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage 0 ;;
        -*) say "unknown option: $1" >&2; usage 2 ;;
        *) [ -z "$BUNDLE" ] || die 2 "one bundle at a time (got $BUNDLE and $1)"; BUNDLE="$1" ;;
    esac
    shift
done
[ -n "$BUNDLE" ] || usage 2
case "$PRECISION" in fp16|int8) ;; *) die 2 "--precision must be fp16 or int8 (fp32 engines gain little on Jetson)" ;; esac
case "$DLA" in ""|auto|[0-9]) ;; *) die 2 "--dla-core must be a core number (0, 1) or auto" ;; esac
[[ "$MAX_BATCH" =~ ^[1-9][0-9]*$ ]] || die 2 "--max-batch must be a positive number"
[ -f "$BUNDLE/manifest.json" ] || die 2 "$BUNDLE is not a bundle (no manifest.json)"

LUNGEDGE_BIN="${LUNGEDGE_BIN:-}"
if [ -z "$LUNGEDGE_BIN" ]; then
    if [ -x /opt/lungedge/venv/bin/lungedge ]; then
        LUNGEDGE_BIN=/opt/lungedge/venv/bin/lungedge
    else
        LUNGEDGE_BIN="$(command -v lungedge || echo lungedge)"
    fi
fi
if [ -z "${LUNGEDGE_PYTHON:-}" ]; then
    if [ -x "$(dirname "$LUNGEDGE_BIN")/python" ]; then
        LUNGEDGE_PYTHON="$(dirname "$LUNGEDGE_BIN")/python"
    else
        LUNGEDGE_PYTHON=python3
    fi
fi

TRT_VERSION=""
if TRT_VERSION="$("$LUNGEDGE_PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)"; then
    say "tensorrt: $TRT_VERSION"
elif [ "$DRY_RUN" -eq 0 ]; then
    die 3 "TensorRT's Python bindings are not importable by $LUNGEDGE_PYTHON; run jetson/setup.sh first"
fi
if [ -z "$CACHE" ]; then
    CACHE="/var/lib/lungedge/cache/timing-trt${TRT_VERSION:-VERSION}.cache"
fi

# DLA: how many cores this device has, as TensorRT sees them (0 on Orin Nano and on GPUs).
DLA_CORE=""
if [ -n "$DLA" ]; then
    if [ "$DRY_RUN" -eq 1 ] && [ -z "$TRT_VERSION" ]; then
        DLA_CORE="${DLA/auto/0}"
        say "dla: not checked in a dry run without TensorRT; assuming core $DLA_CORE exists"
    else
        dla_count="$("$LUNGEDGE_PYTHON" -c 'import tensorrt as trt; print(trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)')"
        say "dla: $dla_count core(s) on this device"
        if [ "$DLA" = auto ]; then
            if [ "$dla_count" -gt 0 ]; then DLA_CORE=0; else say "dla: none here; building for the GPU"; fi
        elif [ "$DLA" -lt "$dla_count" ]; then
            DLA_CORE="$DLA"
        else
            die 3 "DLA core $DLA requested but this device has $dla_count (Orin Nano has none); leave out --dla-core"
        fi
    fi
fi

if [ -n "$DLA_CORE" ] && [ "$MAX_BATCH" -ne 1 ]; then
    # TensorRT: "DLA does not support dynamic dimensions, so the profile's min, max, and opt values must be equal".
    [ "$MAX_BATCH_GIVEN" -eq 0 ] || say "note: --max-batch $MAX_BATCH ignored on DLA (static shapes only)"
    MAX_BATCH=1
fi

if [ "$DRY_RUN" -eq 0 ]; then
    mkdir -p "$(dirname "$CACHE")" 2>/dev/null || true
    if [ ! -w "$(dirname "$CACHE")" ]; then
        say "note: $(dirname "$CACHE") is not writable by $(id -un); building without a timing cache"
        CACHE=""
    fi
fi

# The lungedge command, with only the options its `engine build` understands (checked from its --help).
CMD=("$LUNGEDGE_BIN" engine build "$BUNDLE" --precision "$PRECISION")
help_text=""
if [ "$DRY_RUN" -eq 0 ]; then
    help_text="$("$LUNGEDGE_BIN" engine build --help 2>&1)" \
        || die 2 "'lungedge engine build' is not available here: $help_text"
fi
add_option() { # add_option FLAG VALUE REQUIRED(0/1)
    if [ "$DRY_RUN" -eq 1 ] || grep -q -- "$1" <<< "$help_text"; then
        CMD+=("$1" "$2")
    elif [ "$3" -eq 1 ]; then
        die 2 "this lungedge's 'engine build' has no $1 option; update lungedge"
    else
        say "note: this lungedge's 'engine build' has no $1 option; building without it"
    fi
}
[ -z "$DLA_CORE" ] || add_option --dla-core "$DLA_CORE" 1
add_option --max-batch "$MAX_BATCH" 0
[ -z "$CACHE" ] || add_option --timing-cache "$CACHE" 0

# The trtexec equivalent, from the same code `lungedge engine build` uses (lungedge.compress.cli.engine_source
# picks the ONNX model: FP32 ONNX for FP16, the TensorRT QDQ model onnx-int8-trt for INT8).
TRTEXEC_LINE="$("$LUNGEDGE_PYTHON" - "$BUNDLE" "$PRECISION" "$MAX_BATCH" "$DLA_CORE" "$CACHE" "${TRT_VERSION:-10.0}" <<'PY'
import json, os, sys
from lungedge.compress.cli import engine_source
from lungedge.compress.engine import EngineConfig, trtexec_command
from lungedge.runtime.errors import LungedgeError
bundle, precision, max_batch, dla, cache, trt_version = sys.argv[1:7]
with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as fh:
    m = json.load(fh)
try:
    key = engine_source(m, precision, int(trt_version.split(".")[0]))
except LungedgeError as exc:
    sys.exit(str(exc))
config = EngineConfig(precision=precision, opt_batch=1, max_batch=int(max_batch), timing_cache=cache or None,
                      dla_core=int(dla) if dla else None)
engine = f"/tmp/{m['name']}-{precision}" + (f"-dla{dla}" if dla else "") + ".plan"
print(trtexec_command(os.path.join(bundle, m["artifacts"][key]["path"]), engine, config,
                      input_name=m["input"]["name"], input_hw=m["input"]["shape"][2:], trt_version=trt_version))
PY
)" || die 2 "cannot tell what to build from $BUNDLE (see above)"

say "engine build: ${CMD[*]}"
say "trtexec equivalent (reference only; it does not record the engine in the manifest; trtexec is in"
say "/usr/src/tensorrt/bin on JetPack):"
say "  $TRTEXEC_LINE"
if command -v nvpmodel > /dev/null 2>&1; then
    say "power mode: $(nvpmodel -q 2>/dev/null | head -n 1 || echo unknown) (build in the mode you will serve in)"
fi
if [ "$DRY_RUN" -eq 1 ]; then
    say "self-test: $LUNGEDGE_BIN selftest $BUNDLE --backend tensorrt --precision $PRECISION"
    exit 0
fi

"${CMD[@]}"
say "self-test of the new engine:"
if "$LUNGEDGE_BIN" selftest "$BUNDLE" --backend tensorrt --precision "$PRECISION"; then
    say "engine built and self-tested. Serve it: LUNGEDGE_BACKEND=tensorrt (and --precision $PRECISION in"
    say "LUNGEDGE_ARGS) in /etc/default/lungedge, then sudo systemctl restart lungedge"
else
    die 1 "the engine failed its self-test: do not serve it (try --precision fp16, or without --dla-core)"
fi
