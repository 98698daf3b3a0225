#!/usr/bin/env bash
# The whole job on the embedded synthetic cohort (what `make demo` runs):
# synthetic cohort -> prepare -> train -> infer the test split -> submission -> report.
# Every step can be rerun: the cohort and the prepared cache are reused when complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_output}
CONFIG=${DEMO_CONFIG:-config/demo_cpu.yml}
SERIES=${DEMO_SERIES:-100}
SIZE=${DEMO_SIZE:-256}
SLICES=${DEMO_SLICES:-}          # fixed slices per series (tests); default: 20-80 as in RSNA
ITERS=${DEMO_ITERS:-}            # default: the config's iters
# One OpenMP thread: the demo's MobileNet is made of small ops that a second thread slows down
# (measured here: 2.06 s per training step with 1 thread, 2.86 s with 2).
export OMP_NUM_THREADS=${DEMO_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

step "1/6 synthetic cohort ($SERIES series, ${SIZE} px) -> $OUT/raw"
"$PYTHON" -m medseg.data.synthetic --out "$OUT/raw" --series "$SERIES" --seed 0 --size "$SIZE" --workers 2 \
  ${SLICES:+--n_slices "$SLICES"}

step "2/6 prepare (DICOM -> meta tables + window cache) -> $OUT/prepared"
"$PYTHON" -m medseg.data.prepare --raw_root "$OUT/raw" --dataset_root "$OUT/prepared" --workers 2 --val_fraction 0.2 --seed 42

data=(-o "train_dataset.dataset_root=$OUT/prepared" -o "val_dataset.dataset_root=$OUT/prepared")
step "3/6 train $CONFIG -> $OUT/train"
"$PYTHON" train.py --config "$CONFIG" "${data[@]}" --save_dir "$OUT/train" --overwrite_save_dir \
  --do_eval --save_interval "${DEMO_SAVE_INTERVAL:-100}" --seed 0 ${ITERS:+--iters "$ITERS"}

step "4/6 infer the test split -> $OUT/predictions_test.csv"
"$PYTHON" infer.py --config "$CONFIG" "${data[@]}" --resume_model "$OUT/train/best_model" \
  --split test --output "$OUT/predictions_test.csv"

step "5/6 Kaggle submission -> $OUT/submission.csv"
"$PYTHON" -m medseg.outputs.submission --pred "$OUT/predictions_test.csv" \
  --sample "$OUT/raw/stage_2_sample_submission.csv" --out "$OUT/submission.csv"

step "6/6 evaluation report (the synthetic test labels are known) -> $OUT/report"
echo "demo finished in $(( $(date +%s) - start ))s"
"$PYTHON" -m medseg.outputs.report --pred "$OUT/predictions_test.csv" \
  --truth "$OUT/raw/stage_2_test_truth.csv" --dataset_root "$OUT/prepared" --out "$OUT/report"
