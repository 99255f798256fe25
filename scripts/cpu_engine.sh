#!/usr/bin/env bash
# The engine's CPU benchmarks (2-core laptop class): batch 1 vs Hugging Face generate in fp32 and bf16, and the
# three schedulers on one workload. Writes JSON + markdown into ${1:-docs/benchmarks/cpu-engine-core}.
set -euo pipefail
D=${1:-docs/benchmarks/cpu-engine-core}
mkdir -p "$D"
for model in gpt2-random smollm2-135m; do
  for dtype in float32 bfloat16; do
    uv run cli.py benchmark --model $model --dtype $dtype --max-tokens 64 --attn sdpa --baseline hf --detailed \
        --json "$D/batch1-$model-$dtype.json" --markdown "$D/batch1-$model-$dtype.md"
  done
done
uv run cli.py benchmark throughput --model gpt2-random --num-seqs 24 --min-input-len 16 --max-input-len 96 \
    --min-output-len 16 --max-output-len 96 --max-batch-size 8 \
    --scheduler sequential --scheduler static --scheduler continuous \
    --json "$D/schedulers-gpt2-random.json" --markdown "$D/schedulers-gpt2-random.md"
