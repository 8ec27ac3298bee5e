#!/usr/bin/env bash
# GPU throughput at the seed sizes, the suite beside the plain reference (bench/plain_tsa.py), in one go:
#   1. training end to end from a Delta table (bench_training.py --impl both), both models;
#   2. model step + AdamW, single-sequence without MoE, bf16, compiled (bench_model.py, suite and plain);
#   3. the same for the two-sequence MoE model, eager (and the suite's compiled), and the single-sequence
#      suite model with CUDA graphs (torch.compile's reduce-overhead);
#   4. the MoE layer alone at the seed widths, both expert kernels and the plain loop (bench_moe.py).
# Planned for about 8 minutes on one H100/H200 (not yet timed there).  Results are appended to bench/results/{model,moe,training}.jsonl, or
# to $OUT/ when OUT is set (line by line, so a run cut short still leaves what it measured).
# Needs torch with CUDA, deltalake, pyarrow, pandas and pyyaml; on a node without a package index, fetch the
# Delta reader's wheels here first (bash bench/gpu_wheels.sh), carry .whl/ there and run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site bash bench/gpu_check.sh
#
#   bash bench/gpu_check.sh            # ROWS=300000 BATCH=4096 STEPS=60 by default
#   SMOKE=1 bash bench/gpu_check.sh    # the same runs at toy sizes on this CPU, with pyspark and mlflow
#                                      # hidden as on a GPU node; results go to a temporary folder
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "${SMOKE:-}" ]; then
  DEVICE=cpu ROWS=3000 BATCH=32 STEPS=12 MODEL_STEPS=3 REPS=2 DATA=$(mktemp -d)
  export TSA_BENCH_RESULTS="$DATA/results" PYTHONPATH="$PWD/bench/gpu_node_site:$PYTHONPATH"
fi
DEVICE=${DEVICE:-cuda}
ROWS=${ROWS:-300000}
BATCH=${BATCH:-4096}
STEPS=${STEPS:-60}
MODEL_STEPS=${MODEL_STEPS:-50}
REPS=${REPS:-20}
DATA=${DATA:-/tmp/tsa_bench}
PY=${PY:-python3}
if [ -n "${OUT:-}" ]; then export TSA_BENCH_RESULTS="$OUT"; fi
RESULTS=${TSA_BENCH_RESULTS:-bench/results}

DEVICE=$DEVICE "$PY" - <<'EOF'
import os
import torch
if os.environ["DEVICE"] == "cuda":
    assert torch.cuda.is_available(), "bench/gpu_check.sh needs a CUDA GPU"
    print("torch", torch.__version__, torch.cuda.get_device_name(0), "grouped_mm:", hasattr(torch, "_grouped_mm"))
EOF

[ -f "$DATA/bench.yaml" ] || "$PY" bench/make_examples.py --root "$DATA" --rows "$ROWS"
"$PY" bench/bench_training.py --config "$DATA/bench.yaml" --preset seed --model single_seq --moe off \
  --batch "$BATCH" --steps "$STEPS" --warmup 10 --amp bf16 --compile --impl both
"$PY" bench/bench_training.py --config "$DATA/bench.yaml" --preset seed --model two_seq --moe on \
  --batch "$BATCH" --steps "$STEPS" --warmup 10 --amp bf16 --impl both

M="--preset seed --batch $BATCH --device $DEVICE --amp bf16 --optim --no-flops"
for impl in suite plain; do
  "$PY" bench/bench_model.py --impl "$impl" $M --model single_seq --moe off --compile --steps "$MODEL_STEPS"
  "$PY" bench/bench_model.py --impl "$impl" $M --model two_seq --moe on --steps $((MODEL_STEPS * 3 / 5))
done
"$PY" bench/bench_model.py --impl suite $M --model two_seq --moe on --compile --steps $((MODEL_STEPS * 3 / 5))
"$PY" bench/bench_model.py --impl suite $M --model single_seq --moe off --compile-mode reduce-overhead \
  --steps "$MODEL_STEPS"
"$PY" bench/bench_moe.py --device "$DEVICE" --amp bf16 --batch "$BATCH" --seq-len 51 --dim 128 --hidden 512 \
  --reps "$REPS"

if [ -n "${SMOKE:-}" ]; then cat "$RESULTS"/*.jsonl; rm -rf "$DATA"; fi
