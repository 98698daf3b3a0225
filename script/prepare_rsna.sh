#!/usr/bin/env bash
# Prepare the RSNA 2019 stage-2 data (or a synthetic cohort in the same layout) for training.
#   RAW_ROOT: folder with stage_2_train/, stage_2_test/, stage_2_train.csv
#   DATASET_ROOT: output (train/val/test_meta.csv, cache/, prepare_errors.csv)
# Safe to rerun after an interruption: finished series are reused.
# Crops as the paper configs ask (--crop released: what the released checkpoints saw); a later
# --crop head among the extra flags gives this project's head crop instead.
# Usage: script/prepare_rsna.sh RAW_ROOT DATASET_ROOT [extra prepare flags, e.g. --workers 8]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -lt 2 ]; then
    echo "usage: $0 RAW_ROOT DATASET_ROOT [--workers N] [--val_fraction 0.1] [--seed 42] [--windows 40/80,80/200,40/380] [--crop head]" >&2
    exit 2
fi
RAW_ROOT=$1
DATASET_ROOT=$2
shift 2
PYTHON=${PYTHON:-.venv/bin/python}
# One pydicom/numpy process per core: keep each single-threaded.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
exec "$PYTHON" -m medseg.data.prepare --raw_root "$RAW_ROOT" --dataset_root "$DATASET_ROOT" --crop released "$@"
