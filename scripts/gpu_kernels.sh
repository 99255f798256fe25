#!/usr/bin/env bash
# The paged kernels on a GPU in one device call: the benchmark, the tile/split sweep, the GPU test matrix.
#   bash scripts/gpu_kernels.sh            # writes under $OUT (default ./out)
# Needs flash-attn on the path for the FlashAttention-2 column: on the device image, install the wheel first
# (python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl;
#  export PYTHONPATH=/tmp/site). Each stage has its own time limit so one slow stage cannot eat the rest.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  python3 -c 'import flash_attn; print("flash_attn", flash_attn.__version__)'; } 2>&1 | tee "$OUT/device.txt"

stage() { local limit=$1; shift; echo "\$ $*" | tee -a "$OUT/commands.txt"; timeout "$limit" "$@"; echo "exit $?" | tee -a "$OUT/commands.txt"; }

stage ${BENCH_S:-300} python3 -m ruvoninference.bench.kernels --paged \
    --json "$OUT/paged.json" --markdown "$OUT/paged.md" --plot "$OUT/paged.png" > "$OUT/bench.log" 2>&1
tail -5 "$OUT/bench.log"
stage ${SWEEP_S:-90} python3 scripts/kernel_explore.py --paged > "$OUT/explore-paged.jsonl" 2>&1
stage ${TEST_S:-150} python3 -m pytest -q -p no:cacheprovider -n 8 tests/kernels/test_paged_attention.py \
    > "$OUT/pytest-paged.log" 2>&1
tail -3 "$OUT/pytest-paged.log"
grep -E "^\| " "$OUT/paged.md" | cut -c1-220
