#!/usr/bin/env bash
# The GPU check for a session lent a GPU (the device tool: ~15 min of device time in all).
# Run from the repository root; ends inside ~9 minutes (GPU_CHECK_BUDGET_S, default 540):
#
#   OUT=/some/folder bash scripts/gpu_check.sh      # the device tool sets OUT itself
#
# Every step runs under `timeout` with its own budget, cut to what is left of the whole
# budget; a step that cannot get GPU_CHECK_MIN_STEP_S seconds (default 20; or its own budget
# when smaller) is skipped, so the most important steps come first and the whole suite, which
# CI also runs (on the CPU), comes last with what is left. Writes at most 8 files, all directly in $OUT:
#   summary.log          one line per step: name, exit status, seconds, its output file
#   gpu-tests.log        python -m pytest -m gpu -q
#   info-kernels.txt     gpucnn info --kernels
#   train-fp32.json      gpucnn bench --train (lenet5, vgg, fast) in fp32, with the PyTorch peers
#   airbench.json        scripts/airbench_race.py (needs airbench 0.1.8: see AIRBENCH_SRC)
#   kernels-fp32.json    gpucnn bench --set lenet --set vgg --set fast --all-variants
#   train-tf32-bf16.json the training bench in tf32 and bf16, when --precision exists
#   full-suite.log       python -m pytest -q (the whole suite)
# Progress lines of the bench runs go to summary.log too.
#
# airbench is not in the GPU image and the machine has no network: carry its source, e.g.
#   pip download --no-deps airbench==0.1.8 -d /tmp/ab && mkdir -p .airbench &&
#   tar xzf /tmp/ab/airbench-0.1.8.tar.gz -C .airbench      # and `carry: [".airbench"]`
# AIRBENCH_SRC (default .airbench/airbench-0.1.8) goes on PYTHONPATH when it exists.
#
# GPU_CHECK_DRY_RUN=1: print each step and create its (empty) output file instead of
# running it, as if each step used its whole limit (the worst-case schedule; CI checks the
# budget and the files this way).

set -u
OUT="${OUT:-gpu_check_out}"
PYTHON="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
MIN_STEP="${GPU_CHECK_MIN_STEP_S:-20}"
DRY="${GPU_CHECK_DRY_RUN:-0}"
AIRBENCH_SRC="${AIRBENCH_SRC:-.airbench/airbench-0.1.8}"

mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$AIRBENCH_SRC" ]; then
    export PYTHONPATH="$PYTHONPATH:$PWD/$AIRBENCH_SRC"
fi
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.log"
START=$(date +%s)
DRY_SPENT=0  # dry run: the seconds the steps would have taken at most
: > "$SUMMARY"

now() { echo $(( $(date +%s) + DRY_SPENT )); }

note() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME BUDGET_S OUTFILE COMMAND...: stdout to OUTFILE (a .log gets stderr too; a
# .json is written by the command itself, its stdout/stderr go to the summary).
run_step() {
    local name=$1 budget=$2 outfile=$3
    shift 3
    local left=$((BUDGET - ($(now) - START)))
    local limit=$((budget < left ? budget : left))
    local floor=$((budget < MIN_STEP ? budget : MIN_STEP))
    if [ "$limit" -lt "$floor" ]; then
        note "$name: skipped (${left}s of the budget left)"
        return 0
    fi
    if [ "$DRY" = "1" ]; then
        note "$name: would run (timeout ${limit}s): $* -> $outfile"
        : > "$OUT/$outfile"
        DRY_SPENT=$((DRY_SPENT + limit))
        return 0
    fi
    local t0=$(date +%s) rc
    if [[ "$outfile" == *.json ]]; then
        timeout --kill-after=10 "$limit" "$@" >> "$SUMMARY" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" > "$OUT/$outfile" 2>&1
    fi
    rc=$?
    note "$name: rc=$rc ($(( $(date +%s) - t0 ))s, limit ${limit}s) -> $outfile"
}

note "gpu_check: $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'); budget ${BUDGET}s"
GPUCNN=("$PYTHON" -m gpucnn)

run_step gpu-tests 75 gpu-tests.log "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider
run_step info 15 info-kernels.txt "${GPUCNN[@]}" info --kernels
# the torch.compile peer compiles each twin first (tens of seconds): the largest budget
run_step train-fp32 140 train-fp32.json "${GPUCNN[@]}" bench --device cuda --train --train-models lenet5,vgg,fast \
    --train-batch 512 --train-images 10000 --repeats 3 --warmup 1 --sgemm-size 4096 --json "$OUT/train-fp32.json"
if "$PYTHON" -c "import airbench" 2>/dev/null || [ "$DRY" = "1" ]; then
    run_step airbench 75 airbench.json "$PYTHON" scripts/airbench_race.py --epochs 2 --json "$OUT/airbench.json"
else
    note "airbench: skipped (airbench is not importable; carry its source as $AIRBENCH_SRC)"
fi
run_step kernels-fp32 70 kernels-fp32.json "${GPUCNN[@]}" bench --device cuda --set lenet --set vgg --set fast \
    --batches 512 --all-variants --repeats 8 --warmup 2 --sgemm-size 4096 --json "$OUT/kernels-fp32.json"
if "${GPUCNN[@]}" bench --help 2>/dev/null | grep -q -- --precision || [ "$DRY" = "1" ]; then
    for precision in tf32 bf16; do
        run_step "train-$precision" 50 "train-tf32-bf16.json" "${GPUCNN[@]}" bench --device cuda --precision "$precision" \
            --train --train-models vgg,fast --train-batch 512 --train-images 10000 --repeats 3 --warmup 1 \
            --sgemm-size 4096 --json "$OUT/train-$precision.part.json"
    done
    if [ "$DRY" != "1" ]; then  # one file for both precisions (the 8-file limit)
        "$PYTHON" - "$OUT" <<'EOF' >> "$SUMMARY" 2>&1
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = {p.name.split(".")[0][len("train-"):]: json.loads(p.read_text()) for p in sorted(out.glob("train-*.part.json"))}
(out / "train-tf32-bf16.json").write_text(json.dumps(parts, indent=1) + "\n")
for p in out.glob("train-*.part.json"):
    p.unlink()
print(f"train-tf32-bf16.json: {', '.join(parts) or 'nothing'}")
EOF
    fi
else
    note "train-tf32/bf16: skipped (gpucnn bench has no --precision option yet)"
fi
if "$PYTHON" -c "import xdist" 2>/dev/null; then
    PARALLEL=(-n 8 --dist loadfile)  # the suite takes 2-4 min on one core; what is left may be less
else
    PARALLEL=()
fi
# last: CI runs the CPU part on every commit; this is the whole suite on the GPU machine
run_step full-suite 200 full-suite.log "$PYTHON" -m pytest -q -p no:cacheprovider "${PARALLEL[@]}"
note "gpu_check: done in $(( $(now) - START ))s"
