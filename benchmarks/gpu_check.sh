#!/usr/bin/env bash
# GPU check of the shared-prefix scoring, in bf16 on a Qwen2.5-0.5B-shaped random-init model (no hub needed).
#
# Prepare (on a machine with package-index access):  bash benchmarks/fetch_gpu_wheels.sh   -> .whl/ (about 45 MB)
# Run (on the offline GPU machine, repository root):  bash benchmarks/gpu_check.sh
#
# The GPU machine needs torch (CUDA), transformers, accelerate, peft, and datasets with pyarrow and pandas; trl and
# bitsandbytes (and datasets' small dependencies, if datasets is missing) come from .whl/. Parts, each in its own
# Python process with its own timeout (about 7.5 minutes in all on one H100):
#   env        versions, imports, the GPU
#   agreement  packed vs naive per-completion log-probs (max abs/rel difference), fp32 and bf16, sdpa and eager
#   qlora      3 training steps of DynamicPOTrainer on the 4-bit NF4 model (bf16 compute) with a LoRA adapter,
#              loaded from a random-init checkpoint saved to a temporary folder
#   step_time  benchmarks/step_time.py --device cuda --dtype bf16 --model-shape qwen2.5-0.5b (fewer rounds)
# Results: PASS/FAIL per part and a summary; logs and step_time.json go to $OUT (default /tmp/gpu_check).
# Exit status: 0 when every part passed.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-/tmp/gpu_check}"
SITE="${SITE:-/tmp/site}"
DEVICE="${DEVICE:-cuda}"  # dry run on a CPU machine: DEVICE=cpu SHAPE=test STEP_EXTRA="--quick --dtype fp32"
SHAPE="${SHAPE:-qwen2.5-0.5b}"
mkdir -p "$OUT" "$SITE"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

start_all=$(date +%s)
shopt -s nullglob
always=(.whl/trl-*.whl .whl/bitsandbytes-*.whl)
if [ ${#always[@]} -lt 2 ]; then
    echo "FAIL install: .whl/ lacks the trl and bitsandbytes wheels; run benchmarks/fetch_gpu_wheels.sh first"
    exit 1
fi
python3 -m pip install -q --no-index --no-deps --target "$SITE" "${always[@]}"
# datasets (trl 1.16 needs >= 4.7) only where the machine has none that works: it would shadow the machine's own.
if ! python3 -c 'import sys, datasets; from packaging.version import Version as V; sys.exit(V(datasets.__version__) < V("4.7"))' 2>/dev/null; then
    extra=(.whl/datasets-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl .whl/xxhash-*.whl)
    echo "installing datasets from .whl/ (${extra[*]})"
    python3 -m pip install -q --no-index --no-deps --target "$SITE" "${extra[@]}"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "installed into $SITE in $(( $(date +%s) - start_all )) s"

declare -a summary=()
failed=0

run_part() {  # run_part NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    local log="$OUT/$name.log" t0 rc
    t0=$(date +%s)
    echo
    echo "=== $name (timeout ${limit} s) ==="
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    local took=$(( $(date +%s) - t0 ))
    if [ "$rc" -eq 0 ]; then
        summary+=("PASS $name (${took} s)")
    else
        local why="exit $rc"
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="timed out after ${limit} s"; fi
        summary+=("FAIL $name ($why, ${took} s; log $log)")
        failed=1
    fi
}

run_part env 60 python3 benchmarks/gpu_parts.py env --device "$DEVICE"
run_part agreement 110 python3 benchmarks/gpu_parts.py agreement --device "$DEVICE" --model-shape "$SHAPE"
run_part qlora 130 python3 benchmarks/gpu_parts.py qlora --device "$DEVICE" --model-shape "$SHAPE" --steps 3
run_part step_time 170 python3 benchmarks/step_time.py --device "$DEVICE" --dtype bf16 --model-shape "$SHAPE" \
    --reps 3 --warmup 1 --loss-reps 10 --json "$OUT/step_time.json" ${STEP_EXTRA:-}
# step_time.py prints MET/MISSED per target but exits 0: the targets are reported, not enforced here.

echo
echo "=== summary ($(( $(date +%s) - start_all )) s) ==="
for line in "${summary[@]}"; do echo "$line"; done
grep -hE 'packed vs naive|noise floor' "$OUT/agreement.log" 2>/dev/null || true
grep -hE 'target (<=|>=)' "$OUT/step_time.log" 2>/dev/null || true
exit "$failed"
