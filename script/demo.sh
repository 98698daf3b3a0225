#!/usr/bin/env bash
# The whole job on the embedded synthetic cohort (what `make demo` runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_output}
mkdir -p "$OUT"

echo "== 1/1 synthetic cohort -> $OUT/raw"
"$PYTHON" -m medseg.data.synthetic --out "$OUT/raw" --series "${DEMO_SERIES:-100}" --seed 0 --size "${DEMO_SIZE:-256}" --workers 2
