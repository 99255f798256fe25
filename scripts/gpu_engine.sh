#!/usr/bin/env bash
# The engine's GPU checks and benchmarks, in as few device calls as possible.
#   scripts/gpu_engine.sh tests        # GPU engine tests, batch-1 benchmarks vs HF generate (gpt2-random, smollm2)
#   scripts/gpu_engine.sh throughput   # benchmark throughput, qwen3-0.6b-random bf16, nano-vllm's bench.py workload
#                                      # (the command's default): temperature 0.6 and greedy, FA2 and triton backends,
#                                      # nano-vllm's batch limits (512 sequences, 16,384 tokens); FA2 beside
#                                      # transformers' continuous batching, warmed, at the same temperature
#   scripts/gpu_engine.sh schedulers   # the three schedulers on one workload at max batch 16 and 64
#   scripts/gpu_engine.sh cpu          # NOT a device call: issue 21's CPU measurement on this machine (2 cores,
#                                      # gpt2-random fp32, batch 32, sampled vs greedy) into docs/benchmarks/cpu-engine-core
set -uo pipefail
stage=${1:?tests, throughput, schedulers or cpu}
if [ "$stage" = cpu ]; then
  D=docs/benchmarks/cpu-engine-core
  exec uv run cli.py benchmark throughput --model gpt2-random --dtype float32 --device cpu --max-batch-size 32 \
      --num-seqs 64 --min-input-len 16 --max-input-len 64 --min-output-len 16 --max-output-len 64 --warmup-tokens 8 \
      --temperature 0.6 --json $D/throughput-gpt2-random-sampled.json --markdown $D/throughput-gpt2-random-sampled.md
fi
OUT=${OUT:-$PWD/out}
R=$OUT/r
mkdir -p "$R"
source "$(dirname "$0")/device_env.sh"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)'
  python3 -c 'import flash_attn; print("flash_attn", flash_attn.__version__)'; } 2>&1 | tee "$R/device-$stage.txt"

run() { echo "\$ $*" | tee -a "$R/commands.txt"; "$@"; echo "exit $?" | tee -a "$R/commands.txt"; }

if [ "$stage" = tests ]; then
  run python3 -m pytest -q -p no:cacheprovider tests/engine/test_engine_gpu.py tests/models/test_models_gpu.py \
      ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$R/pytest-engine-gpu.log"
  for model in gpt2-random smollm2-135m; do
    run python3 cli.py benchmark --model $model --max-tokens 128 --detailed --baseline hf \
        --json "$R/batch1-$model.json" --markdown "$R/batch1-$model.md"
  done
  run python3 cli.py benchmark --model gpt2-random --max-tokens 128 --detailed --enforce-eager --attn sdpa \
      --attn flash_attention_2 --json "$R/batch1-gpt2-random-no-graphs.json" \
      --markdown "$R/batch1-gpt2-random-no-graphs.md"
elif [ "$stage" = throughput ]; then
  nano=(--model qwen3-0.6b-random --dtype bfloat16 --max-batch-size 512 --max-num-batched-tokens 16384
        --temperature 0.6)
  run python3 cli.py benchmark throughput "${nano[@]}" --attn flash_attention_2 --baseline hf \
      --json "$R/throughput-qwen3-fa2.json" --markdown "$R/throughput-qwen3-fa2.md"
  run python3 cli.py benchmark throughput "${nano[@]}" --attn triton \
      --json "$R/throughput-qwen3-triton.json" --markdown "$R/throughput-qwen3-triton.md"
elif [ "$stage" = schedulers ]; then
  for batch in 16 64; do
    run python3 cli.py benchmark throughput --model qwen3-0.6b-random --dtype bfloat16 --attn flash_attention_2 \
        --num-seqs 64 --max-input-len 512 --max-output-len 512 --max-batch-size $batch \
        --scheduler sequential --scheduler static --scheduler continuous \
        --json "$R/schedulers-qwen3-batch$batch.json" --markdown "$R/schedulers-qwen3-batch$batch.md"
  done
else
  echo "unknown stage '$stage': tests, throughput, schedulers or cpu" >&2; exit 2
fi
tar czf "$OUT/results-$stage.tgz" -C "$R" .
