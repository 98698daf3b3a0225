#!/usr/bin/env bash
# Predict every CT series in a DICOM folder (any names, any nesting) and write a report.
# Usage: script/predict.sh MODEL DICOM_DIR OUT [CONFIG] [extra medseg.predict flags...]
#   MODEL: a training checkpoint (iter_N/, best_model/) or a folder written by export.py
#   CONFIG: the experiment config (optional for an exported model: it carries config.yml)
# Outputs: OUT/predictions.csv, OUT/predictions.json, OUT/skipped.csv, OUT/report.html + PNGs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ $# -lt 3 ]; then
    sed -n '2,6p' "$0" >&2
    exit 2
fi
MODEL=$1 DICOM_DIR=$2 OUT=$3
shift 3
CONFIG_ARGS=()
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
    CONFIG_ARGS=(--config "$1")
    shift
fi
# One process on 2 cores: 2 OpenMP threads, passive waiting (busy-waiting halves the speed).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$PYTHON" -m medseg.predict "${CONFIG_ARGS[@]}" --model "$MODEL" --dicom_dir "$DICOM_DIR" --out "$OUT" "$@"
