#!/usr/bin/env bash
# The engine's GPU checks and benchmarks, in as few device calls as possible.
#   scripts/gpu_engine.sh tests        # GPU engine tests, batch-1 benchmarks vs HF generate (gpt2-random, smollm2)
#   scripts/gpu_engine.sh throughput   # benchmark throughput (qwen3-0.6b-random, bf16) vs transformers' continuous
#                                      # batching; triton backend; the three schedulers on one workload at max
#                                      # batch 16 and 64
# (PYTEST_K=... passes -k to the tests, e.g. "not smollm2" when the GGUF was not carried.)
# Wheels the device image lacks come from .whl (flash-attn), .whl_small (gguf) and .whl_serve; the SmolLM2 GGUF
# from /tmp/g/model.gguf (it is larger than one call may carry: it arrives in two halves, see docs/benchmarks).
# Writes under $OUT/r and packs everything into $OUT/results-<stage>.tgz.
set -uo pipefail
stage=${1:?tests or throughput}
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
else
  run python3 cli.py benchmark throughput --model qwen3-0.6b-random --dtype bfloat16 --attn flash_attention_2 \
      --baseline hf --json "$R/throughput-qwen3-fa2.json" --markdown "$R/throughput-qwen3-fa2.md"
  run python3 cli.py benchmark throughput --model qwen3-0.6b-random --dtype bfloat16 --attn triton \
      --json "$R/throughput-qwen3-triton.json" --markdown "$R/throughput-qwen3-triton.md"
  for batch in 16 64; do
    run python3 cli.py benchmark throughput --model qwen3-0.6b-random --dtype bfloat16 --attn flash_attention_2 \
        --num-seqs 64 --max-input-len 512 --max-output-len 512 --max-batch-size $batch \
        --scheduler sequential --scheduler static --scheduler continuous \
        --json "$R/schedulers-qwen3-batch$batch.json" --markdown "$R/schedulers-qwen3-batch$batch.md"
  done
fi
tar czf "$OUT/results-$stage.tgz" -C "$R" .
