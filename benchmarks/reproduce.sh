#!/usr/bin/env bash
# Every benchmark behind BENCHMARKS.md, then BENCHMARKS.md itself. Run from the repository root:
#
#   benchmarks/reproduce.sh [DATA_DIR] [RUNS_DIR] [BUNDLES_DIR] [REPORTS_DIR]
#
# defaults: ../shared/data, runs (tools/train_baselines.sh), bundles (lungedge compress --recipe <task> ...
# --out bundles/<task>; baseline exports in bundles/<task>-baseline), docs/benchmarks (committed: JSON, Markdown, plots). A task whose baseline run is missing is skipped; a task without a compressed
# bundle is benchmarked baseline-only (torch FP32 vs its ONNX FP32 export). Set THREADS to pin the thread count.
set -euo pipefail
data=${1:-../shared/data}
runs=${2:-runs}
bundles=${3:-bundles}
reports=${4:-docs/benchmarks}
threads=${THREADS:-0}
L=${LUNGEDGE:-lungedge}
mkdir -p "$reports"
done_dirs=()

bench_task() {  # task arch [extra bench flags...]
    local task=$1 run="$runs/$1-$2" base="$bundles/$1-baseline" variants=()
    shift 2
    if [ ! -f "$run/metrics.json" ]; then
        echo "skip $task: no trained baseline in $run" >&2
        return
    fi
    [ -f "$base/manifest.json" ] || $L export onnx --baseline "$run" --data "$data/$task" --out "$base" --force
    [ -f "$bundles/$task/manifest.json" ] && variants=(--variants "$bundles/$task")
    $L bench --torch-run "$run" --baseline "$base" ${variants[@]+"${variants[@]}"} --data "$data/$task" --split test \
        --threads "$threads" --batch 8 --out "$reports/$task" --no-progress "$@"
    done_dirs+=("$reports/$task")
}

# The X-ray classifier is judged per source, age group, view and source x label; it reads lung crops by the
# lung bundle it was trained with (tools/train_baselines.sh builds bundles/xray-lungs).
xray_flags=(--subgroups "source,age_group,view,source+label")
[ -f "$bundles/xray-lungs/manifest.json" ] && xray_flags+=(--lung-bundle "$bundles/xray-lungs")
bench_task xray-cls densenet121 "${xray_flags[@]}"
# ... and at a screening operating point (COVID sensitivity >= 0.90 in each COVID source, fitted on validation).
if [ -f "$reports/xray-cls/results.json" ]; then
    python tools/operating_point.py --results "$reports/xray-cls/results.json" --data "$data/xray-cls" \
        --min-sensitivity 0.90 --rows xray-cls-densenet121:torch-fp32 xray-cls-student_m-int8:onnx-int8 \
        --markdown "$reports/operating-point/report.md" > /dev/null
fi
bench_task ct-cls densenet121
bench_task xray-seg unet
bench_task ct-seg unet

seg="$bundles/ct-seg"
[ -f "$seg/manifest.json" ] || seg="$bundles/ct-seg-baseline"
if [ -f "$seg/manifest.json" ]; then
    cls=()
    [ -f "$bundles/ct-cls/manifest.json" ] && cls=(--classifier "$bundles/ct-cls")
    $L bench scaling --segmenter "$seg" ${cls[@]+"${cls[@]}"} --data "$data/ct-seg" "$data/ct-cls" --slices 10 50 100 300 \
        --repeats 3 --batch 16 --backend auto --threads "$threads" --out "$reports/ct-scaling" --no-progress
    done_dirs+=("$reports/ct-scaling")
fi

if [ ${#done_dirs[@]} -gt 0 ]; then
    run_dirs=()
    for r in "$runs"/*/metrics.json; do [ -f "$r" ] && run_dirs+=("$(dirname "$r")"); done
    # Reports of other commands (their own reproduce lines inside): operating point, ct-seg Pareto, shortcut screen, QC, fuzzing,
    # DICOM node, CPU speed.
    includes=()
    for f in "$reports"/operating-point/report.md "$reports"/ct-seg-pareto/report.md "$reports"/shortcut/report.md "$reports"/qc-xray-cls/report.md \
             "$reports"/qc-ct-cls/report.md "$reports"/fuzz/report.md "$reports"/dicom-node/report.md \
             "$reports"/issue13-cpu-speed/report.md; do
        [ -f "$f" ] && includes+=("$f")
    done
    python benchmarks/make_benchmarks_md.py "${done_dirs[@]}" -o BENCHMARKS.md --runs ${run_dirs[@]+"${run_dirs[@]}"} \
        ${includes[@]+--include "${includes[@]}"}
fi
