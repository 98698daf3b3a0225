#!/usr/bin/env bash
# The whole job on the embedded synthetic cohort (what `make demo` runs): synthetic cohort ->
# prepare -> train stage 1 (the slice encoder; data-parallel, one process per core:
# paddle.distributed.launch, gloo on CPU, as on a GPU node) -> save the encoder's slice embeddings
# -> train stage 2 (the sequence model) on them -> calibrate on the validation embeddings -> join
# head and encoder into one model -> infer the test split with it -> submission -> report.
# Every step can be rerun: the cohort and the prepared cache are reused when complete.
# The cohort is the first `report` seed of medseg/data/cohort_seeds.py (DEMO_SEED to change it; the
# recipe was developed on other cohorts). RAW=DIR (or DEMO_RAW=DIR) runs the same job on an existing
# Kaggle-layout folder instead (a real RSNA subset, another site's cohort): nothing is generated,
# and the test split is scored only if DIR has stage_2_test_truth.csv (ID,Label rows as in
# stage_2_train.csv).
set -euo pipefail
GIVEN=${RAW:-${DEMO_RAW:-}}      # an existing Kaggle-layout folder instead of a synthetic cohort
if [ -n "$GIVEN" ] && [ -d "$GIVEN" ]; then GIVEN=$(cd "$GIVEN" && pwd); fi  # before the cd below
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_output}
PRETRAIN_CONFIG=${DEMO_PRETRAIN_CONFIG:-config/demo_cpu_pretrain.yml}
CONFIG=${DEMO_CONFIG:-config/demo_cpu.yml}          # the image model (embedding and inference)
EMBED_CONFIG=${DEMO_EMBED_CONFIG:-config/demo_cpu_embed.yml}  # stage 2 on the saved embeddings
SERIES=${DEMO_SERIES:-300}
SIZE=${DEMO_SIZE:-160}
PROCS=${DEMO_PROCS:-2}           # training processes (one OpenMP thread each)
SLICES=${DEMO_SLICES:-}          # fixed slices per series (tests); default: 20-80 as in RSNA
# Scanner sites of the cohort (python -m medseg.data.synthetic --sites): "all" mixes the five
# presets (issue 13: a model that met one scanner fails at the next hospital); "classic" is the
# single-scanner cohort of the earlier demos.
SITES=${DEMO_SITES:-all}
CALIBRATE=${DEMO_CALIBRATE:-1}   # per-class temperatures fitted on the validation split (0: raw probabilities)
RAW=${GIVEN:-$OUT/raw}
# One OpenMP thread per process: the demo's MobileNet is made of small ops that a second thread
# slows down (measured here: 2.06 s per training step with 1 thread, 2.86 s with 2).
export OMP_NUM_THREADS=${DEMO_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# Embedding and inference share the series out over the $PROCS processes, each decoding its own
# series (loader workers per process: DEMO_WORKERS).
WORKERS=${DEMO_WORKERS:-0}
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

if [ -n "$GIVEN" ]; then
  [ -d "$RAW" ] || { echo "RAW=$RAW: not a directory (expected the Kaggle layout: stage_2_train/, stage_2_train.csv, ...)" >&2; exit 2; }
  step "1/10 cohort: $RAW (given)"
else
  SEED=${DEMO_SEED:-$("$PYTHON" -m medseg.data.cohort_seeds report | cut -d' ' -f1)}
  step "1/10 synthetic cohort ($SERIES series, ${SIZE} px, sites $SITES, seed $SEED) -> $RAW"
  "$PYTHON" -m medseg.data.synthetic --out "$RAW" --series "$SERIES" --seed "$SEED" --size "$SIZE" --workers 2 \
    --sites "$SITES" ${SLICES:+--n_slices "$SLICES"}
fi

step "2/10 prepare (DICOM -> meta tables + window cache) -> $OUT/prepared"
"$PYTHON" -m medseg.data.prepare --raw_root "$RAW" --dataset_root "$OUT/prepared" --workers 2 --val_fraction 0.2 --seed 42

data=(-o "train_dataset.dataset_root=$OUT/prepared" -o "val_dataset.dataset_root=$OUT/prepared")
launched() {  # name script args...: the script on $PROCS processes (their logs: $OUT/logs/<name>)
  local name=$1; shift
  local launch=()
  [ "$PROCS" -gt 1 ] && launch=(-m paddle.distributed.launch --nproc_per_node "$PROCS" --log_dir "$OUT/logs/$name")
  "$PYTHON" "${launch[@]}" "$@"
}
train() {  # name config extra-args...: train.py on $PROCS processes -> $OUT/<name>
  local name=$1 config=$2; shift 2
  launched "$name" train.py --config "$config" "${data[@]}" --save_dir "$OUT/$name" --overwrite_save_dir \
    --seed 0 "$@"
}

step "3/10 train stage 1, the slice encoder: $PRETRAIN_CONFIG -> $OUT/pretrain"
train pretrain "$PRETRAIN_CONFIG" --save_interval 100000 ${DEMO_PRETRAIN_ITERS:+--iters "$DEMO_PRETRAIN_ITERS"}
encoder=$(ls -d "$OUT"/pretrain/iter_* | sort -t_ -k2 -n | tail -1)

step "4/10 embed the train and validation slices once with the stage-1 encoder -> $OUT/embeddings"
# The encoder's forward pass on every slice, saved (float16) so that stage 2 trains on features
# instead of running the frozen encoder at every step.
launched embed medseg/tools/embed.py --config "$CONFIG" "${data[@]}" --model "$encoder" \
  --split train --split val --out "$OUT/embeddings" --num_workers "$WORKERS"

step "5/10 train stage 2, the sequence model, on the embeddings: $EMBED_CONFIG -> $OUT/train"
# The features are as wide as the stage-1 encoder makes them (its manifest says so): any $CONFIG works.
width=$("$PYTHON" -c 'import sys; from medseg.data.embeddings import read_manifest; print(read_manifest(sys.argv[1])["feature_dim"])' \
  "$OUT/embeddings")
embedded=(-o "train_dataset.embeddings=$OUT/embeddings" -o "val_dataset.embeddings=$OUT/embeddings"
          -o "model.encoder.feature_dim=$width")
"$PYTHON" train.py --config "$EMBED_CONFIG" "${embedded[@]}" --pretrained "$encoder" --save_dir "$OUT/train" \
  --overwrite_save_dir --seed 0 --do_eval --save_interval "${DEMO_SAVE_INTERVAL:-100}" ${DEMO_ITERS:+--iters "$DEMO_ITERS"}

head=$OUT/train/best_model
rm -f "$head/calibration.json"
report_args=()   # the report shows the calibration error before and after
if [ "$CALIBRATE" = 1 ]; then
  report_args=(--calibration "$head/calibration.json")
  step "6/10 calibrate on the validation embeddings -> $head/calibration.json"
  "$PYTHON" -m medseg.outputs.calibrate --config "$EMBED_CONFIG" "${embedded[@]}" --resume_model "$head"
else
  step "6/10 calibration: off (DEMO_CALIBRATE=0)"
fi

model=$OUT/model
step "7/10 join the stage-2 head and the stage-1 encoder into one model -> $model"
rm -rf "$model"
"$PYTHON" -m medseg.tools.embed join --head "$head" --out "$model" --encoder "$encoder"

step "8/10 infer the test split (DICOM-derived slices through the joined model) -> $OUT/predictions_test.csv"
launched infer infer.py --config "$model/config.yml" "${data[@]}" --resume_model "$model" \
  --split test --output "$OUT/predictions_test.csv" --num_workers "$WORKERS" --multigpu_infer

step "9/10 Kaggle submission -> $OUT/submission.csv"
"$PYTHON" -m medseg.outputs.submission --pred "$OUT/predictions_test.csv" \
  --sample "$RAW/stage_2_sample_submission.csv" --out "$OUT/submission.csv"

step "10/10 evaluation report on the test split -> $OUT/report"
echo "demo finished in $(( $(date +%s) - start ))s"
if [ ! -f "$RAW/stage_2_test_truth.csv" ]; then
  echo "$RAW/stage_2_test_truth.csv not found: the test labels are unknown, no score (predictions: $OUT/predictions_test.csv)"
  exit 0
fi
"$PYTHON" -m medseg.outputs.report --pred "$OUT/predictions_test.csv" \
  --truth "$RAW/stage_2_test_truth.csv" --dataset_root "$OUT/prepared" --out "$OUT/report" "${report_args[@]}"
