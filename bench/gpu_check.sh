#!/usr/bin/env bash
# GPU throughput at the seed sizes, the suite beside the plain reference (bench/plain_tsa.py), in one go:
#   1. model step + AdamW, single-sequence without MoE, bf16, compiled (bench_model.py, suite and plain);
#   2. the same for the two-sequence MoE model, eager;
#   3. the MoE layer alone at the seed widths, both expert kernels and the plain loop (bench_moe.py);
#   4. training end to end from a Delta table (bench_training.py --impl both), both models.
# About 8 minutes on one H100/H200.  Results are appended to bench/results/{model,moe,training}.jsonl and,
# when OUT is set, copied there.  Needs torch with CUDA, deltalake, pyarrow, pandas and pyyaml.
#
#   bash bench/gpu_check.sh            # ROWS=300000 BATCH=4096 STEPS=60 by default
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ROWS=${ROWS:-300000}
BATCH=${BATCH:-4096}
STEPS=${STEPS:-60}
DATA=${DATA:-/tmp/tsa_bench}

python - <<'EOF'
import torch
assert torch.cuda.is_available(), "bench/gpu_check.sh needs a CUDA GPU"
print("torch", torch.__version__, torch.cuda.get_device_name(0), "grouped_mm:", hasattr(torch, "_grouped_mm"))
EOF

for impl in suite plain; do
  python bench/bench_model.py --impl "$impl" --preset seed --model single_seq --moe off --batch "$BATCH" \
    --amp bf16 --compile --optim --steps 50 --no-flops
  python bench/bench_model.py --impl "$impl" --preset seed --model two_seq --moe on --batch "$BATCH" \
    --amp bf16 --optim --steps 30 --no-flops
done
python bench/bench_model.py --impl suite --preset seed --model two_seq --moe on --batch "$BATCH" \
  --amp bf16 --compile --optim --steps 30 --no-flops
python bench/bench_moe.py --device cuda --amp bf16 --batch "$BATCH" --seq-len 51 --dim 128 --hidden 512 --reps 20

[ -f "$DATA/bench.yaml" ] || python bench/make_examples.py --root "$DATA" --rows "$ROWS"
python bench/bench_training.py --config "$DATA/bench.yaml" --preset seed --model single_seq --moe off \
  --batch "$BATCH" --steps "$STEPS" --warmup 10 --amp bf16 --compile --impl both
python bench/bench_training.py --config "$DATA/bench.yaml" --preset seed --model two_seq --moe on \
  --batch "$BATCH" --steps "$STEPS" --warmup 10 --amp bf16 --impl both

if [ -n "${OUT:-}" ]; then cp bench/results/model.jsonl bench/results/moe.jsonl bench/results/training.jsonl "$OUT"/; fi
