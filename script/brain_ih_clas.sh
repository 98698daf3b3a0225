#!/usr/bin/env bash
# Train the paper's model, then predict the test split with the best checkpoint (as the original
# script does). GPUs: set CUDA_VISIBLE_DEVICES; CPU: the same command runs with gloo.
# Usage: script/brain_ih_clas.sh [config] [save_dir] [extra train.py flags...]
# Environment:
#   NPROC        processes (GPUs) per node (default: the GPUs in CUDA_VISIBLE_DEVICES, else 1)
#   NNODES       nodes (default 1); with more, run the same command on every node with
#   MASTER       host:port of node 0, reachable from every node (required when NNODES > 1)
#   NODE_RANK    this node's rank (optional; the launcher assigns one otherwise)
#   LAUNCH_ARGS  further paddle.distributed.launch arguments, e.g. "--job_id ich1"
#   NUM_WORKERS  loader workers per process (default: train.py's, from the cores per process)
# Two nodes of 8 GPUs, save_dir on storage both nodes see:
#   node 0: NNODES=2 MASTER=10.0.0.1:8090 NPROC=8 script/brain_ih_clas.sh config/x.yml /shared/run --scale_lr linear
#   node 1: the same command
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${1:-config/brain_intracranial_hemorrhage_clas_sequential.yml}
SAVE_DIR=${2:-output/brain_ih_clas}
shift $(( $# > 2 ? 2 : $# ))
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -ra _gpus <<< "$CUDA_VISIBLE_DEVICES"
    NPROC=${NPROC:-${#_gpus[@]}}
fi
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
LAUNCH=(--nproc_per_node "$NPROC" --nnodes "$NNODES")
if [ "$NNODES" != 1 ]; then
    [ -n "${MASTER:-}" ] || { echo "error: NNODES=$NNODES needs MASTER=<host:port of node 0>" >&2; exit 2; }
fi
[ -n "${MASTER:-}" ] && LAUNCH+=(--master "$MASTER")
[ -n "${NODE_RANK:-}" ] && LAUNCH+=(--rank "$NODE_RANK")
read -ra EXTRA_LAUNCH <<< "${LAUNCH_ARGS:-}"
WORKERS=()
[ -n "${NUM_WORKERS:-}" ] && WORKERS=(--num_workers "$NUM_WORKERS")
LOG_DIR=${LOG_DIR:-log}
[ "$NNODES" = 1 ] || LOG_DIR="$LOG_DIR/$(hostname -s)"  # one log tree per node on shared storage

"$PYTHON" -m paddle.distributed.launch "${LAUNCH[@]}" "${EXTRA_LAUNCH[@]}" --log_dir "$LOG_DIR/train" \
    train.py --config "$CONFIG" --save_dir "$SAVE_DIR" --do_eval --use_vdl \
    --save_interval "${SAVE_INTERVAL:-1000}" --keep_checkpoint_max 5 "${WORKERS[@]}" "$@"

MODEL="$SAVE_DIR/best_model"
[ -d "$MODEL" ] || MODEL=$(ls -d "$SAVE_DIR"/iter_* | sort -t_ -k2 -n | tail -1)
"$PYTHON" -m paddle.distributed.launch "${LAUNCH[@]}" "${EXTRA_LAUNCH[@]}" --log_dir "$LOG_DIR/infer" \
    infer.py --config "$CONFIG" --resume_model "$MODEL" --infer_splition test --multigpu_infer \
    "${WORKERS[@]}" --output "$SAVE_DIR/predictions_test.csv"
