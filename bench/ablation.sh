#!/usr/bin/env bash
# Ablation: what the sequence model adds over its slice-only twin, on the synthetic test split.
# The demo (script/demo.sh) trains the slice encoder + slice head (stage 1), then a sequence head
# (BiGRU) on its frozen features (stage 2). The slice-only twin is the stage-1 model itself: same
# data, same encoder, same weights; the only difference is the sequence head. A third arm trains
# the paper's transformer head in place of the BiGRU (same stage-2 recipe and budget). Prints the
# weighted log losses and the ratios (target: sequence <= 0.85 x slice-only; the synthetic lesions
# span several slices and fade at their ends).
# Usage: bench/ablation.sh   (env: PYTHON, ABL_OUT, and the demo's DEMO_* knobs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${ABL_OUT:-bench_output/ablation}
mkdir -p "$OUT"
score() {  # name checkpoint config-overrides...: infer the test split, print the report's score line
  local name=$1 model=$2; shift 2
  OMP_NUM_THREADS=1 "$PYTHON" infer.py --config "$@" -o "val_dataset.dataset_root=$OUT/prepared" --resume_model "$model" \
    --split test --output "$OUT/${name}_test.csv" > "$OUT.$name.infer.log" 2>&1
  "$PYTHON" -m medseg.outputs.report --pred "$OUT/${name}_test.csv" --truth "$OUT/raw/stage_2_test_truth.csv" \
    --out "$OUT/${name}_report" | tail -1
}
DEMO_OUT=$OUT bash script/demo.sh > "$OUT.demo.log" 2>&1 || { tail -20 "$OUT.demo.log"; exit 1; }
tail -1 "$OUT.demo.log" > "$OUT/sequence.score"

encoder=$(ls -d "$OUT"/pretrain/iter_* | sort -t_ -k2 -n | tail -1)
score slice_only "$encoder" "${DEMO_PRETRAIN_CONFIG:-config/demo_cpu_pretrain.yml}" > "$OUT/slice_only.score"

# The paper's transformer head on the same frozen encoder, trained like the demo's stage 2.
config=${DEMO_CONFIG:-config/demo_cpu.yml}
head=(-o "model.head={type: TransformerSequenceHead, init_range: 0.0}")
OMP_NUM_THREADS=1 "$PYTHON" -m paddle.distributed.launch --nproc_per_node "${DEMO_PROCS:-2}" --log_dir "$OUT/logs/transformer" \
  train.py --config "$config" "${head[@]}" -o "train_dataset.dataset_root=$OUT/prepared" \
  -o "val_dataset.dataset_root=$OUT/prepared" --pretrained "$encoder" --save_dir "$OUT/transformer" --overwrite_save_dir \
  --seed 0 --do_eval --save_interval "${DEMO_SAVE_INTERVAL:-100}" > "$OUT.transformer.log" 2>&1 \
  || { tail -20 "$OUT.transformer.log"; exit 1; }
score transformer "$OUT/transformer/best_model" "$config" "${head[@]}" > "$OUT/transformer.score"

seq_line=$(cat "$OUT/sequence.score")
slice_line=$(cat "$OUT/slice_only.score")
transformer_line=$(cat "$OUT/transformer.score")
loss() { sed -E 's/weighted_logloss=([0-9.]+).*/\1/' <<< "$1"; }
printf '%-24s %s\n' "sequence (BiGRU, demo)" "$seq_line" "sequence (transformer)" "$transformer_line" slice-only "$slice_line"
"$PYTHON" -c "import sys; s, t, o = map(float, sys.argv[1:]); print(f'transformer / slice-only = {t / o:.3f}'); print(f'sequence / slice-only = {s / o:.3f} (target <= 0.85)')" \
  "$(loss "$seq_line")" "$(loss "$transformer_line")" "$(loss "$slice_line")"
