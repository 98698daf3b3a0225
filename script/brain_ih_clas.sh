#!/usr/bin/env bash
# Train the paper's model, then predict the test split with the best checkpoint (as the original
# script does). GPUs: set CUDA_VISIBLE_DEVICES; CPU: the same command runs with gloo.
# Usage: script/brain_ih_clas.sh [config] [save_dir] [extra train.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${1:-config/brain_intracranial_hemorrhage_clas_sequential.yml}
SAVE_DIR=${2:-output/brain_ih_clas}
shift $(( $# > 2 ? 2 : $# ))
NPROC=${NPROC:-1}

"$PYTHON" -m paddle.distributed.launch --nproc_per_node "$NPROC" --log_dir "${LOG_DIR:-log}/train" \
    train.py --config "$CONFIG" --save_dir "$SAVE_DIR" --do_eval --use_vdl \
    --save_interval "${SAVE_INTERVAL:-1000}" --keep_checkpoint_max 5 --num_workers "${NUM_WORKERS:-4}" "$@"

MODEL="$SAVE_DIR/best_model"
[ -d "$MODEL" ] || MODEL=$(ls -d "$SAVE_DIR"/iter_* | sort -t_ -k2 -n | tail -1)
"$PYTHON" -m paddle.distributed.launch --nproc_per_node "$NPROC" --log_dir "${LOG_DIR:-log}/infer" \
    infer.py --config "$CONFIG" --resume_model "$MODEL" --infer_splition test --multigpu_infer \
    --num_workers "${NUM_WORKERS:-4}" --output "$SAVE_DIR/predictions_test.csv"
