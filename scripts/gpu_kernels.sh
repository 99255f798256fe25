#!/usr/bin/env bash
# The paged kernels on a GPU in one device call: the GPU test matrix, the head-shape sweep, and the short-prompt
# prefill comparison; optionally the engine's triton backend and the tile/split explorations.
#   bash scripts/gpu_kernels.sh            # writes under $OUT (default ./out)
#   ENGINE=1 bash scripts/gpu_kernels.sh   # also tests/engine/test_engine_gpu.py -k triton (random models)
#   SWEEP=1 bash scripts/gpu_kernels.sh    # also kernel_explore.py --shapes (splits x tiles on untuned shapes)
# Carry .whl (flash-attn, for the FlashAttention-2 columns); scripts/device_env.sh installs it. When the working
# tree plus the 60 MiB wheel exceed what a call carries (64 MiB), carry .whl_xz instead: the wheel's unpacked
# files as a .tar.xz (19 MiB; `unzip` the wheel, `tar -cJf`), unpacked here into /tmp/site. Each stage has its
# own time limit; the sweep's JSON + markdown are written as the stage ends.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
source "$(dirname "$0")/device_env.sh"
for f in .whl_xz/*.tar.xz; do [ -e "$f" ] && mkdir -p /tmp/site && tar -xJf "$f" -C /tmp/site; done
export PYTHONPATH=$PWD:$PYTHONPATH
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  python3 -c 'import flash_attn; print("flash_attn", flash_attn.__version__)'; } 2>&1 | tee "$OUT/device.txt"

stage() { local limit=$1; shift; echo "\$ $*" | tee -a "$OUT/commands.txt"; timeout "$limit" "$@"; echo "exit $?" | tee -a "$OUT/commands.txt"; }

# The sweep: every group size 1-8 (7/1, 28/4, 12/2, 40/8, 9/3 included), head_dim 64 and 128, batch 1-256,
# kv 1k-128k, ragged lengths, pages of 16 and 256 (FA2 on 256); then batch-1 prompts of 256-2k tokens.
HEADS="--heads 7/1x128 --heads 28/4x128 --heads 40/8x128 --heads 32/8x128 --heads 16/8x128 --heads 8/8x128
       --heads 28/4x64 --heads 12/2x64 --heads 9/3x64 --heads 16/2x64 --heads 12/12x64"
CELLS="--cell 1x131072 --cell 4x32768 --cell 32x8192 --cell 128x2048 --cell 256x1024 --cell 1x1024"
stage ${BENCH_S:-150} python3 -m ruvoninference.bench.kernels --paged --part decode --ragged $HEADS $CELLS \
    --json "$OUT/sweep.json" --markdown "$OUT/sweep.md" > "$OUT/sweep.log" 2>&1
stage ${SHORT_S:-35} python3 -m ruvoninference.bench.kernels --paged --part short \
    --json "$OUT/short.json" --markdown "$OUT/short.md" > "$OUT/short.log" 2>&1
stage ${RAN_S:-30} python3 scripts/kernel_explore.py --kernels-ran > "$OUT/kernels-ran.jsonl" 2>&1
python3 -c "import xdist" 2>/dev/null && WORKERS="-n 8" || WORKERS=""
stage ${TEST_S:-100} python3 -m pytest -q -p no:cacheprovider $WORKERS tests/kernels/test_paged_attention.py \
    > "$OUT/pytest-paged.log" 2>&1
tail -1 "$OUT/pytest-paged.log"
if [ "${ENGINE:-0}" = 1 ]; then
  stage ${ENGINE_S:-150} python3 -m pytest -q -p no:cacheprovider tests/engine/test_engine_gpu.py \
      -k "triton and not smollm2" > "$OUT/pytest-engine-triton.log" 2>&1
  tail -1 "$OUT/pytest-engine-triton.log"
fi
if [ "${SWEEP:-0}" = 1 ]; then
  stage 170 python3 scripts/kernel_explore.py --shapes > "$OUT/explore-shapes.jsonl" 2>&1
fi
tail -2 "$OUT/sweep.log" "$OUT/short.log"
