#!/usr/bin/env bash
# Ablation: the demo sequence model vs its slice-only twin (same data, seed, iterations, encoder).
# Prints both weighted log losses on the synthetic test split and their ratio (target: sequence
# <= 0.85 x slice-only; the synthetic lesions span several slices and fade at their ends).
# Usage: bench/ablation.sh [iters]   (env: PYTHON, ABL_OUT, DEMO_SERIES, DEMO_SIZE)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${ABL_OUT:-bench_output/ablation}
mkdir -p "$OUT"
CONFIG=config/demo_cpu.yml
ITERS=${1:-}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

"$PYTHON" -m medseg.data.synthetic --out "$OUT/raw" --series "${DEMO_SERIES:-100}" --seed 0 \
  --size "${DEMO_SIZE:-256}" --workers 2 > "$OUT.synthetic.log" 2>&1
"$PYTHON" -m medseg.data.prepare --raw_root "$OUT/raw" --dataset_root "$OUT/prepared" --workers 2 \
  --val_fraction 0.2 --seed 42 > "$OUT.prepare.log" 2>&1
data=(-o "train_dataset.dataset_root=$OUT/prepared" -o "val_dataset.dataset_root=$OUT/prepared")
slice_only=(-o model.sequential=false -o "loss.losses=[{type: MaskedWeightedBCE, weights: [1, 1, 1, 1, 1, 2]}]" -o "loss.coef=[1]")

score() {  # name, extra flags...: train, infer the test split, write the report's score line
  local name=$1; shift
  "$PYTHON" train.py --config "$CONFIG" "${data[@]}" "$@" --save_dir "$OUT/$name" --overwrite_save_dir \
    --seed 0 --save_interval 100000 ${ITERS:+--iters "$ITERS"} > "$OUT/$name.train.log" 2>&1
  local last
  last=$(ls -d "$OUT/$name"/iter_* | sort -t_ -k2 -n | tail -1)
  "$PYTHON" infer.py --config "$CONFIG" "${data[@]}" "$@" --resume_model "$last" --split test \
    --output "$OUT/$name/predictions_test.csv" > "$OUT/$name.infer.log" 2>&1
  "$PYTHON" -m medseg.outputs.report --pred "$OUT/$name/predictions_test.csv" \
    --truth "$OUT/raw/stage_2_test_truth.csv" --out "$OUT/$name/report" | tail -1 > "$OUT/$name.score"
}

# The two arms run side by side, one OpenMP thread each (the demo model is fastest on one thread).
score sequence & seq_pid=$!
score slice_only "${slice_only[@]}" & slice_pid=$!
wait "$seq_pid"
wait "$slice_pid"
seq_line=$(cat "$OUT/sequence.score")
slice_line=$(cat "$OUT/slice_only.score")
seq_loss=$(sed -E 's/weighted_logloss=([0-9.]+).*/\1/' <<< "$seq_line")
slice_loss=$(sed -E 's/weighted_logloss=([0-9.]+).*/\1/' <<< "$slice_line")
printf '%-12s %s\n' sequence "$seq_line" slice-only "$slice_line"
"$PYTHON" -c "import sys; s, o = map(float, sys.argv[1:]); print(f'sequence / slice-only = {s / o:.3f} (target <= 0.85)')" "$seq_loss" "$slice_loss"
