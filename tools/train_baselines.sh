#!/usr/bin/env bash
# Train the four full baselines on the dev pack (CPU, reduced resolution), one after another.
# The X-ray classifier is trained on lung crops: a compact lung segmenter is trained and exported first
# (bundles/xray-lungs); every X-ray classification bundle built from that run needs that very lung bundle.
# Usage: tools/train_baselines.sh [DATA_DIR] [RUNS_DIR] [BUNDLES_DIR]   (defaults: ../shared/data, runs, bundles)
set -euo pipefail
data=${1:-../shared/data}
runs=${2:-runs}
bundles=${3:-bundles}
mkdir -p "$runs" "$bundles"
lungedge train --task xray-seg --data "$data/xray-seg" --arch unet_student_m --size 128 --epochs 14 --patience 5 --batch-size 8 --threads 2 --out "$runs/xray-seg-unet_student_m" --resume
[ -d "$bundles/xray-lungs" ] || lungedge export onnx --baseline "$runs/xray-seg-unet_student_m" --data "$data/xray-seg" --out "$bundles/xray-lungs"
lungedge train --task xray-cls --data "$data/xray-cls" --arch densenet121 --size 128 --epochs 10 --patience 3 --threads 2 --lung-bundle "$bundles/xray-lungs" --out "$runs/xray-cls-densenet121" --resume
lungedge train --task ct-cls --data "$data/ct-cls" --arch densenet121 --size 128 --epochs 20 --patience 8 --lr 0.0005 --threads 2 --out "$runs/ct-cls-densenet121" --resume
lungedge train --task xray-seg --data "$data/xray-seg" --arch unet --size 128 --epochs 20 --patience 6 --batch-size 8 --threads 2 --out "$runs/xray-seg-unet" --resume
lungedge train --task ct-seg --data "$data/ct-seg" --arch unet --size 192 --epochs 25 --patience 7 --batch-size 8 --threads 2 --out "$runs/ct-seg-unet" --resume
