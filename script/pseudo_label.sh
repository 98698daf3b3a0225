#!/usr/bin/env bash
# One round of pseudo-labelling: the teacher predicts unlabelled series and its soft labels are
# written as DATASET_ROOT/<tag>_meta.csv for a student config (e.g. config/semi/student_paper.yml).
# For another round, pass the student's checkpoint as the teacher.
# Usage: script/pseudo_label.sh CONFIG TEACHER_CKPT DATASET_ROOT [SPLIT] [OUT_TAG] [extra flags...]
#   e.g. script/pseudo_label.sh config/brain_intracranial_hemorrhage_clas_sequential.yml \
#        output/brain_ih_clas/best_model data/rsna_prepared test test_pseudo --temperature 0.5
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ $# -lt 3 ]; then
    sed -n '2,8p' "$0" >&2
    exit 2
fi
CONFIG=$1 TEACHER=$2 ROOT=$3 SPLIT=${4:-test} TAG=${5:-${4:-test}_pseudo}
shift $(( $# > 5 ? 5 : $# ))

"$PYTHON" -m medseg.semi.pseudo_label --config "$CONFIG" --model "$TEACHER" --dataset_root "$ROOT" \
    --split "$SPLIT" --out "$ROOT/${TAG}_meta.csv" --num_workers "${NUM_WORKERS:-2}" "$@"
