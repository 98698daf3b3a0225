#!/usr/bin/env bash
# Ablation: what the sequence model adds over its slice-only twin, on the synthetic test split.
# The demo (script/demo.sh) trains the slice encoder + slice head (stage 1), then the paper's
# sequence head on its frozen features (stage 2). The slice-only twin is the stage-1 model itself:
# same data, same encoder, same weights; the only difference is the sequence head. Prints both
# weighted log losses and their ratio (target: sequence <= 0.85 x slice-only; the synthetic
# lesions span several slices and fade at their ends).
# Usage: bench/ablation.sh   (env: PYTHON, ABL_OUT, and the demo's DEMO_* knobs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${ABL_OUT:-bench_output/ablation}
mkdir -p "$OUT"
DEMO_OUT=$OUT bash script/demo.sh > "$OUT.demo.log" 2>&1 || { tail -20 "$OUT.demo.log"; exit 1; }
tail -1 "$OUT.demo.log" > "$OUT/sequence.score"

encoder=$(ls -d "$OUT"/pretrain/iter_* | sort -t_ -k2 -n | tail -1)
OMP_NUM_THREADS=1 "$PYTHON" infer.py --config "${DEMO_PRETRAIN_CONFIG:-config/demo_cpu_pretrain.yml}" \
  -o "val_dataset.dataset_root=$OUT/prepared" --resume_model "$encoder" --split test \
  --output "$OUT/slice_only_test.csv" > "$OUT.slice_only.infer.log" 2>&1
"$PYTHON" -m medseg.outputs.report --pred "$OUT/slice_only_test.csv" --truth "$OUT/raw/stage_2_test_truth.csv" \
  --out "$OUT/slice_only_report" | tail -1 > "$OUT/slice_only.score"

seq_line=$(cat "$OUT/sequence.score")
slice_line=$(cat "$OUT/slice_only.score")
loss() { sed -E 's/weighted_logloss=([0-9.]+).*/\1/' <<< "$1"; }
printf '%-12s %s\n' sequence "$seq_line" slice-only "$slice_line"
"$PYTHON" -c "import sys; s, o = map(float, sys.argv[1:]); print(f'sequence / slice-only = {s / o:.3f} (target <= 0.85)')" \
  "$(loss "$seq_line")" "$(loss "$slice_line")"
