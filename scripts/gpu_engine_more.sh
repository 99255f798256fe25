#!/usr/bin/env bash
# Second engine call: model GPU tests, triton throughput with width-bucketed graphs, schedulers at batch 16.
set -uo pipefail
OUT=${OUT:-$PWD/out}; R=$OUT/r; mkdir -p "$R"
source "$(dirname "$0")/device_env.sh"
run() { echo "\$ $*" | tee -a "$R/commands.txt"; "$@"; echo "exit $?" | tee -a "$R/commands.txt"; }
run python3 -m pytest -q -p no:cacheprovider tests/models/test_models_gpu.py 2>&1 | tail -5 | tee "$R/pytest-models-gpu.log"
run python3 cli.py benchmark throughput --model qwen3-0.6b-random --dtype bfloat16 --attn triton \
    --json "$R/throughput-qwen3-triton.json" --markdown "$R/throughput-qwen3-triton.md" > /dev/null
run python3 cli.py benchmark throughput --model qwen3-0.6b-random --dtype bfloat16 --attn flash_attention_2 \
    --num-seqs 64 --max-input-len 512 --max-output-len 512 --max-batch-size 16 \
    --scheduler sequential --scheduler static --scheduler continuous \
    --json "$R/schedulers-qwen3.json" --markdown "$R/schedulers-qwen3.md" > /dev/null
cat "$R"/*.md
