#!/usr/bin/env bash
# The GPU half of the checks, in as few device calls as possible (see docs/benchmarks/README.md).
#   scripts/gpu_check.sh engine   # GPU tests, implementations, generation benchmarks, flash --show-memory
#   scripts/gpu_check.sh kernel   # the Triton kernel benchmark (TFLOP/s, memory, plot)
# Writes everything under $OUT/r and packs it into $OUT/results-<stage>.tgz.
# On the device image: python3 has torch, transformers, triton; extra wheels come from .whl_small/.whl, and
# the SmolLM2 GGUF from /tmp/g/model.gguf (it is larger than one call may carry, so it arrives in two halves).
set -uo pipefail
stage=${1:?engine or kernel}
OUT=${OUT:-$PWD/out}
R=$OUT/r
mkdir -p "$R"
source "$(dirname "$0")/device_env.sh"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)'
  python3 -c 'import flash_attn; print("flash_attn", flash_attn.__version__)'; } 2>&1 | tee "$R/device.txt"

run() { echo "\$ $*" | tee -a "$R/commands.txt"; "$@"; echo "exit $?" | tee -a "$R/commands.txt"; }

if [ "$stage" = engine ]; then
  run python3 -m pytest -q -p no:cacheprovider tests/kernels/test_flash_attention_kernel.py tests/test_triton_backend.py \
      tests/test_attention.py 2>&1 | tee "$R/pytest-gpu.log"
  run python3 cli.py implementations 2>&1 | tee "$R/implementations.txt"
  run python3 cli.py benchmark --max-tokens 50 --detailed --baseline hf \
      --json "$R/benchmark-smollm2.json" --markdown "$R/benchmark-smollm2.md"
  run python3 cli.py benchmark --model gpt2-random --max-tokens 50 --detailed --baseline hf \
      --json "$R/benchmark-gpt2-random.json" --markdown "$R/benchmark-gpt2-random.md"
  run python3 cli.py flash --text "Once upon a time" --show-memory --json "$R/flash.json" --markdown "$R/flash.md"
  run python3 cli.py flash --text "test" --max-length 10 2>&1 | tee "$R/flash-short.txt"
else
  run python3 -m pytest -q -p no:cacheprovider tests/kernels/test_flash_attention_kernel.py tests/test_triton_backend.py \
      2>&1 | tee "$R/pytest-kernel.log"
  run python3 cli.py kernel benchmark --json "$R/kernel.json" --markdown "$R/kernel.md" --plot "$R/kernel.png"
  if [ -n "${EXPLORE:-}" ]; then  # the opt-in TMA variant, for the notes
    RUVON_FLASH_TMA=1 run python3 cli.py kernel benchmark --head-dim 128 --seq-len 4096 --seq-len 16384 \
        --markdown "$R/variant-tma.md" > /dev/null
  fi
fi
tar czf "$OUT/results-$stage.tgz" -C "$R" .
