#!/usr/bin/env bash
# GPU check (issue 11): CUDA tests and the GPU figures the README needs, on one GPU, in under 9 minutes.
#
#   bash bench/gpu_check.sh [OUT_DIR]          # from the repository root, with a CUDA build of PyTorch installed
#
# Every step has its own time limit and the script goes on past a failed one; the log (OUT_DIR/gpu_check.log,
# default ./gpu_check) holds each step's output and a summary of what passed. Steps (limits):
#   1. CUDA tests (tests/test_cuda.py: padded batch = alone with TF32 on and off, heads fp32 under autocast,
#      short training of every head in bf16 and fp16)                                                    80 s
#   2. training compute, paper config, bf16, crops in memory: global batch 160 and 20 per GPU             85 s
#   3. training end to end with the data pipeline (wav files, DataLoader workers): crops/s and data_wait,
#      batch 160 and 20                                                                                  150 s
#   4. extraction seconds of audio per second and eval of 3,000 synthetic 4-8 s files (bf16, mirror off) 100 s
#   5. training compute with train.compile=true (torch.compile), batch 160                                  90 s
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
PY=${PYTHON:-python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
: > "$LOG"
status=()

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    status+=("$name: rc=$rc, $((SECONDS - t0)) s")
}

$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0), 'cuda', torch.version.cuda)" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
CPUS=$(nproc)
WORKERS=$(( CPUS > 13 ? 12 : CPUS - 1 ))

step "cuda-tests" 80 $PY -m pytest -q -m cuda tests/test_cuda.py
step "train-compute-160" 45 $PY bench/train.py --config paper --device cuda --batch 160 --steps 20 --precision bf16
step "train-compute-20" 40 $PY bench/train.py --config paper --device cuda --batch 20 --steps 50 --precision bf16
step "train-pipeline-160" 90 $PY bench/train_pipeline.py --config paper --device cuda --batch 160 --steps 60 \
    --workers "$WORKERS" --files 2000
step "train-pipeline-20" 60 $PY bench/train_pipeline.py --config paper --device cuda --batch 20 --steps 200 \
    --log-every 20 --workers "$WORKERS" --files 600
step "extract-eval-3000" 100 $PY bench/eval.py --device cuda --precision bf16 --no-mirror --files 3000 \
    --seconds 4 6 8 --batch-frames 12800 --workers "$WORKERS" --threads 4
step "train-compute-160-compiled" 90 $PY bench/train.py --config paper --device cuda --batch 160 --steps 20 \
    --precision bf16 --compile

echo "== summary" | tee -a "$LOG"
printf '%s\n' "${status[@]}" | tee -a "$LOG"
