#!/usr/bin/env bash
# Does pseudo-labelling help? On the synthetic cohort (the demo's: 300 series at 160 px): a teacher
# trained on ~30 % of the training patients' labels, a noised student trained on those plus the
# teacher's pseudo-labels of the other training series (labels hidden) and of the test split, both
# scored once, at the end, on the validation split (never pseudo-labelled, never used for
# checkpoint selection). Teacher and student are the demo's slice encoder recipe
# (config/semi/*_synthetic.yml), trained on two processes (paddle.distributed.launch, gloo).
# Prints both weighted log losses and their ratio; the target is student <= 0.95 x teacher.
# A control separates the pseudo-labels from the extra training: the same student recipe (same
# start, iterations, noise) with the pseudo-labelled source's ratio set to 0 (on by default;
# SEMI_CONTROL=0 skips it). About 20 minutes on two CPU cores (15 without the control).
# Knobs: SEMI_SERIES, SEMI_FRACTION, TEACHER_ITERS, STUDENT_ITERS, SEMI_TEMPERATURE, SEMI_SEED, SEMI_CONTROL, SEMI_PROCS,
# SEMI_PSEUDO_FLAGS (more medseg.semi.pseudo_label flags, e.g. "--uncertain_band 0.1 0.9 --drop
# slice"), SEMI_RATIOS (labelled : pseudo share of the student's epochs; the config's [1, 3]).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=bench_output/semi          # config/semi/*_synthetic.yml read bench_output/semi/prepared
DATA=$OUT/prepared
SEED=${SEMI_SEED:-0}
PROCS=${SEMI_PROCS:-2}
TEACHER_ITERS=${TEACHER_ITERS:-1000}
STUDENT_ITERS=${STUDENT_ITERS:-500}
START=$(date +%s)
rm -rf "$DATA" "$OUT"/*_val.csv "$OUT"/*_val_metrics.json  # nothing stale from an earlier run
mkdir -p "$OUT"

train() {  # name config iters extra-args...: train.py on $PROCS processes -> $OUT/<name>
  local name=$1 config=$2 iters=$3; shift 3
  local launch=()
  [ "$PROCS" -gt 1 ] && launch=(-m paddle.distributed.launch --nproc_per_node "$PROCS" --log_dir "$OUT/logs/$name")
  "$PYTHON" "${launch[@]}" train.py --config "$config" --iters "$iters" --seed "$SEED" --save_dir "$OUT/$name" \
    --save_interval "$iters" --log_iters 100 --overwrite_save_dir "$@" > "$OUT/$name.log" 2>&1
}

echo "== 1/6 synthetic cohort + prepare -> $DATA"
"$PYTHON" -m medseg.data.synthetic --out "$OUT/raw" --series "${SEMI_SERIES:-300}" --seed "$SEED" --size 160 \
    --workers 2 --overwrite > "$OUT/synthetic.log" 2>&1
"$PYTHON" -m medseg.data.prepare --raw_root "$OUT/raw" --dataset_root "$DATA" --workers 2 --val_fraction 0.2 \
    --seed "$SEED" 2> "$OUT/prepare.log" | tail -n +1

echo "== 2/6 labelled subset: ${SEMI_FRACTION:-0.3} of the training patients keep their labels"
"$PYTHON" -m medseg.semi.subset --dataset_root "$DATA" --fraction "${SEMI_FRACTION:-0.3}" --seed "$SEED" \
    --labelled_tag train_labelled --unlabelled_tag train_unlabelled

echo "== 3/6 teacher: $TEACHER_ITERS iterations on train_labelled"
train teacher config/semi/teacher_synthetic.yml "$TEACHER_ITERS"
TEACHER=$OUT/teacher/iter_$TEACHER_ITERS

echo "== 4/6 pseudo-labels: train_unlabelled + test -> $DATA/semi_pseudo_meta.csv"
"$PYTHON" -m medseg.semi.pseudo_label --config config/semi/teacher_synthetic.yml --model "$TEACHER" \
    --split train_unlabelled test --out "$DATA/semi_pseudo_meta.csv" --exclude train_labelled val \
    --temperature "${SEMI_TEMPERATURE:-1.0}" ${SEMI_PSEUDO_FLAGS:-} 2> "$OUT/pseudo_label.log"

echo "== 5/6 student: $STUDENT_ITERS iterations on train_labelled + semi_pseudo, from the teacher"
train student config/semi/student_synthetic.yml "$STUDENT_ITERS" --pretrained "$TEACHER" \
    ${SEMI_RATIOS:+-o "train_dataset.ratios=$SEMI_RATIOS"}
STUDENT=$OUT/student/iter_$STUDENT_ITERS
MODELS="teacher:$TEACHER student:$STUDENT"
if [ "${SEMI_CONTROL:-1}" = 1 ]; then
    echo "   control: the same run without the pseudo-labelled source (ratios [1, 0])"
    train control config/semi/student_synthetic.yml "$STUDENT_ITERS" --pretrained "$TEACHER" \
        -o "train_dataset.ratios=[1, 0]"
    MODELS="$MODELS control:$OUT/control/iter_$STUDENT_ITERS"
fi

echo "== 6/6 the models on the validation split"
for entry in $MODELS; do
    who=${entry%%:*} model=${entry#*:}
    "$PYTHON" infer.py --config config/semi/teacher_synthetic.yml --resume_model "$model" --split val \
        --output "$OUT/${who}_val.csv" > "$OUT/${who}_val.log" 2>&1
done
"$PYTHON" - "$OUT" "$DATA" <<'PY'
import json, os, sys
import numpy as np, pandas as pd
from medseg.constants import LABELS
from medseg.engine.metrics import weighted_log_loss

out, data = sys.argv[1:3]
score = {w: json.load(open(f"{out}/{w}_val_metrics.json"))["weighted_logloss"]
         for w in ("teacher", "student", "control") if os.path.isfile(f"{out}/{w}_val.csv")}
# Pseudo-label quality on the hidden training series (their true labels stay in train_meta.csv).
truth = pd.read_csv(f"{data}/train_meta.csv", dtype={"slice_id": str}).set_index("slice_id")
pseudo = pd.read_csv(f"{data}/semi_pseudo_meta.csv", dtype={"slice_id": str}).set_index("slice_id")
hidden = pseudo.index.intersection(truth.index)
kept = np.isfinite(pseudo.loc[hidden, list(LABELS)].to_numpy()).all(axis=1)
quality = weighted_log_loss(truth.loc[hidden[kept], list(LABELS)].to_numpy(), pseudo.loc[hidden[kept], list(LABELS)].to_numpy())
prior = json.load(open(f"{out}/teacher_val_metrics.json"))["prior_logloss"]
ratio = score["student"] / score["teacher"]
print(f"pseudo-labels vs hidden truth (train_unlabelled, {kept.sum()} slices): weighted log loss {quality:.5f}")
print(f"val prior (class prevalence) weighted log loss: {prior:.5f}")
print(f"teacher val weighted log loss: {score['teacher']:.5f}")
print(f"student val weighted log loss: {score['student']:.5f}")
if "control" in score:
    print(f"control (same run, no pseudo-labels) val weighted log loss: {score['control']:.5f}  "
          f"(student / control: {score['student'] / score['control']:.3f})")
print(f"student / teacher: {ratio:.3f}  (target <= 0.95: {'met' if ratio <= 0.95 else 'NOT met'})")
PY
echo "elapsed: $(( $(date +%s) - START )) s"
