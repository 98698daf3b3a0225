#!/usr/bin/env bash
# K-fold training of one config (python -m medseg.tools.kfold): each fold trains on the other
# folds' patients under paddle.distributed.launch (GPUs or CPU, like script/brain_ih_clas.sh),
# predicts its own patients and the test split; then SAVE_ROOT gets oof.csv, test.csv (fold
# probabilities averaged) and fold_report.json, printed as a table. The folds are the prepared
# root's: python -m medseg.data.prepare ... --folds K. A rerun continues (finished folds are kept,
# an interrupted one resumes from its last checkpoint).
# Usage: script/kfold.sh CONFIG SAVE_ROOT [medseg.tools.kfold flags...]
#   script/kfold.sh config/demo_cpu.yml output/kfold --pretrain_config config/demo_cpu_pretrain.yml \
#       -o train_dataset.dataset_root=data/prepared -o val_dataset.dataset_root=data/prepared --save_interval 50
#   --folds 0,2 trains (and collects) those folds only.
# Environment:
#   NPROC        processes (GPUs) per node (default: the GPUs in CUDA_VISIBLE_DEVICES, else 1)
#   NNODES, MASTER, NODE_RANK, LAUNCH_ARGS: as in script/brain_ih_clas.sh
#   NUM_WORKERS  loader workers per process (default: train.py's)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
[ $# -ge 2 ] || { echo "usage: script/kfold.sh CONFIG SAVE_ROOT [medseg.tools.kfold flags...]" >&2; exit 2; }
CONFIG=$1
SAVE_ROOT=$2
shift 2
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -ra _gpus <<< "$CUDA_VISIBLE_DEVICES"
    NPROC=${NPROC:-${#_gpus[@]}}
fi
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
LAUNCH=(--nproc_per_node "$NPROC" --nnodes "$NNODES")  # never --devices: on a CPU it would ask for GPUs
if [ "$NNODES" != 1 ]; then
    [ -n "${MASTER:-}" ] || { echo "error: NNODES=$NNODES needs MASTER=<host:port of node 0>" >&2; exit 2; }
fi
[ -n "${MASTER:-}" ] && LAUNCH+=(--master "$MASTER")
[ -n "${NODE_RANK:-}" ] && LAUNCH+=(--rank "$NODE_RANK")
read -ra EXTRA_LAUNCH <<< "${LAUNCH_ARGS:-}"
ARGS=(--config "$CONFIG" --save_root "$SAVE_ROOT" "$@")
[ -n "${NUM_WORKERS:-}" ] && ARGS+=(--num_workers "$NUM_WORKERS")

# Check the inputs, write the fold tables and SAVE_ROOT/kfold.json; the last line names the folds left.
plan=$("$PYTHON" -m medseg.tools.kfold plan "${ARGS[@]}")
printf '%s\n' "$plan" | sed '$d'
todo=$(printf '%s\n' "$plan" | tail -n 1)
[[ "$todo" == "todo:"* ]] || { echo "error: medseg.tools.kfold plan printed no fold list" >&2; exit 1; }
for k in ${todo#todo:}; do
    log_dir="$SAVE_ROOT/logs/fold_$k"
    [ "$NNODES" = 1 ] || log_dir="$log_dir/$(hostname -s)"
    echo "== fold $k (logs: $log_dir)"
    # The launcher runs a program that is not a .py file as given: this Python with -m.
    "$PYTHON" -m paddle.distributed.launch "${LAUNCH[@]}" "${EXTRA_LAUNCH[@]}" --log_dir "$log_dir" \
        "$PYTHON" -m medseg.tools.kfold fold --fold "$k" "${ARGS[@]}"
done
"$PYTHON" -m medseg.tools.kfold collect "${ARGS[@]}"
