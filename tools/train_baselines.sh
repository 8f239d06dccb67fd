#!/usr/bin/env bash
# Train the four full baselines on the dev pack (CPU, reduced resolution), one after another.
# Usage: tools/train_baselines.sh [DATA_DIR] [RUNS_DIR]   (defaults: ../shared/data, runs)
set -euo pipefail
data=${1:-../shared/data}
runs=${2:-runs}
mkdir -p "$runs"
lungedge train --task xray-cls --data "$data/xray-cls" --arch densenet121 --size 128 --epochs 12 --patience 4 --threads 2 --out "$runs/xray-cls-densenet121" --resume
lungedge train --task ct-cls --data "$data/ct-cls" --arch densenet121 --size 128 --epochs 12 --patience 4 --threads 2 --out "$runs/ct-cls-densenet121" --resume
lungedge train --task xray-seg --data "$data/xray-seg" --arch unet --size 128 --epochs 20 --patience 6 --batch-size 8 --threads 2 --out "$runs/xray-seg-unet" --resume
lungedge train --task ct-seg --data "$data/ct-seg" --arch unet --size 192 --epochs 25 --patience 7 --batch-size 8 --threads 2 --out "$runs/ct-seg-unet" --resume
