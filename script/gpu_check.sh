#!/usr/bin/env bash
# The first thing to run on a GPU node: a few iterations of the paper config on 1 GPU and on all
# GPUs, in float32, AMP O1 and O2 (float16; bfloat16 where the GPU has it), with and without
# recompute — each evaluating and saving at its end — then a resume and an inference from the
# saved checkpoints. One table row per case: pass/FAIL, peak GPU memory, slices/s.
# On a machine without a GPU it runs the float32 cases (1 and 2 processes) of the config with a
# toy encoder (MobileNetV3-small) and a 1-layer sequence head.
# Random series of SLICES slices (default 40 on a GPU) stand in for data: nothing is learnt.
# Usage: script/gpu_check.sh [config] ; env: PYTHON, WORK (output/gpu_check), ITERS (4),
#        SLICES, CASE_TIMEOUT (seconds per case, 900)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WORK=${WORK:-output/gpu_check}
ITERS=${ITERS:-4}
CASE_TIMEOUT=${CASE_TIMEOUT:-900}
CONFIG_ARG=${1:-config/brain_intracranial_hemorrhage_clas_sequential.yml}
HELPER=medseg/tools/gpu_check.py

rm -rf "$WORK" && mkdir -p "$WORK/logs"
eval "$("$PYTHON" "$HELPER" setup --work "$WORK" --config "$CONFIG_ARG" ${SLICES:+--slices "$SLICES"})" || exit 1
echo "gpu_check on $CHECK_DEVICE with $CHECK_CONFIG (logs in $WORK/logs)"
DATA_OPTS=(-o "train_dataset.dataset_root=$CHECK_DATA" -o "val_dataset.dataset_root=$CHECK_DATA")
NAMES=()

run() {  # run <name> <processes> <helper args...>: under the launcher when more than one process
    local name=$1 procs=$2; shift 2
    NAMES+=("$name")
    echo "-- $name"
    if [ "$procs" -gt 1 ]; then
        timeout "$CASE_TIMEOUT" "$PYTHON" -m paddle.distributed.launch --nproc_per_node "$procs" \
            --log_dir "$WORK/logs/$name" "$HELPER" "$@" >"$WORK/logs/$name.out" 2>&1 </dev/null
    else
        mkdir -p "$WORK/logs/$name"
        timeout "$CASE_TIMEOUT" "$PYTHON" "$HELPER" "$@" >"$WORK/logs/$name/workerlog.0" 2>&1 </dev/null
    fi
}

FIRST_SINGLE=""
while read -r name procs amp dtype recompute; do
    run "$name" "$procs" case --work "$WORK" --name "$name" --config "$CHECK_CONFIG" "${DATA_OPTS[@]}" \
        -o "model.encoder.recompute=$recompute" --save_dir "$WORK/runs/$name" --iters "$ITERS" \
        --save_interval "$ITERS" --log_iters 1 --do_eval --amp "$amp" --amp_dtype "$dtype" --num_workers 1
    if [ "$procs" -eq 1 ] && [ "$recompute" = false ]; then
        # every precision's checkpoint must resume and load into a float32 model for inference
        run "${name}_resume" 1 case --work "$WORK" --name "${name}_resume" --config "$CHECK_CONFIG" "${DATA_OPTS[@]}" \
            --save_dir "$WORK/runs/$name" --resume_model "$WORK/runs/$name/iter_$ITERS" --iters $((ITERS + 2)) \
            --save_interval $((ITERS + 2)) --log_iters 1 --amp "$amp" --amp_dtype "$dtype" --num_workers 1
        run "${name}_infer" 1 infer --work "$WORK" --name "${name}_infer" --config "$CHECK_CONFIG" \
            -o "val_dataset.dataset_root=$CHECK_DATA" --model "$WORK/runs/$name/iter_$((ITERS + 2))" --split test
    fi
done < <("$PYTHON" "$HELPER" cases)

"$PYTHON" "$HELPER" table --work "$WORK" "${NAMES[@]}"
