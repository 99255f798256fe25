#!/usr/bin/env bash
# Tensor parallelism on H200s, every check and measurement in one device call (issues 17 and 18).
#   scripts/gpu_tp.sh two-gpu [lockstep|engine]   # 2 GPUs of one host: qwen3-8b-random bf16, TP=1 then TP=2 on the same machine, in the
#                               # lockstep harness and in the engine (Engine(..., tensor_parallel_size=N)):
#                               # greedy tokens (FA2 and triton), batch-1 decode (128 tokens) with and without the
#                               # collectives, NCCL's own all-reduce latency eager and in a CUDA graph, throughput on
#                               # nano-vllm's workload (256 requests, 100-1024 in and out, temperature 0.6), memory
#                               # per GPU and KV capacity; the scaling table; no process may be left at the end
#   scripts/gpu_tp.sh dry-run   # 1 GPU: the sharded code at size 1 against today's engine on qwen3-0.6b-random
#                               # (greedy tokens on every backend with CUDA graphs, batch-1 and throughput cost,
#                               # NCCL group of one rank capturing all-reduces in a graph), then the two-gpu stage's
#                               # TP=1 run on qwen3-8b-random with a smaller workload
# Every process started here has NCCL's NVLink multicast off (NCCL_NVLS_ENABLE=0,
# TORCH_SYMM_MEM_DISABLE_MULTICAST=1): set below for this shell, and again by ruvoninference.parallel in each rank.
# Carried (git-ignored) in .tp_carry/: fa.tar.zst (the files of ../shared/wheels' flash-attn 2.8.3.post2 wheel,
# recompressed with zstd -19 to 21 MB so they fit a call beside the tree; bin/ holds a zstd for images without
# one) and gpt2-tokenizer/ (GPT-2's vocab.json and merges.txt, the random models' tokenizer). Made with:
#   mkdir -p .tp_carry/bin /tmp/fa && cd /tmp/fa && unzip -q ../shared/wheels/flash_attn-*.whl && \
#     tar -cf - * | zstd -19 -T2 -q -o .tp_carry/fa.tar.zst; cp /usr/bin/zstd .tp_carry/bin/
#   cp -r ~/.cache/ruvoninference/models/gpt2-tokenizer .tp_carry/
set -uo pipefail
stage=${1:?two-gpu or dry-run}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
OUT=${OUT:-$PWD/out}
R=$OUT/tp
mkdir -p "$R" /tmp/site
source "$(dirname "$0")/device_env.sh"
if [ -f .tp_carry/fa.tar.zst ]; then
  zstd=$(command -v zstd || echo .tp_carry/bin/zstd)
  LD_LIBRARY_PATH=.tp_carry/bin "$zstd" -dc .tp_carry/fa.tar.zst | tar -xf - -C /tmp/site
fi
if [ -d .tp_carry/gpt2-tokenizer ]; then
  mkdir -p "$RUVON_CACHE_DIR/models" && cp -r .tp_carry/gpt2-tokenizer "$RUVON_CACHE_DIR/models/"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, "nccl", torch.cuda.nccl.version())'
  python3 -c 'import flash_attn; print("flash_attn", flash_attn.__version__)'; } 2>&1 | tee "$R/device-$stage.txt"

run() { echo "\$ $*" | tee -a "$R/commands.txt"; "$@"; echo "exit $?" | tee -a "$R/commands.txt"; }
bench=(python3 -m ruvoninference.bench.tp)

if [ "$stage" = dry-run ]; then
  run "${bench[@]}" size1 --model qwen3-0.6b-random --attn flash_attention_2 --max-batch-size 256 --num-seqs 64 \
      --repeats 3 --json "$R/size1-qwen3-0.6b.json" 2>&1 | tail -n 40
  run "${bench[@]}" run --tp 1 --model qwen3-8b-random --max-batch-size 64 --num-seqs 32 --max-len 512 \
      --repeats 2 --json "$R/dry-run-tp1-qwen3-8b.json" 2>&1 | tail -n 40
elif [ "$stage" = two-gpu ]; then
  part=${2:-both}  # lockstep, engine or both (two calls, if one would outlast the call's limit)
  if [ "$part" != engine ]; then
    for n in 1 2; do  # the lockstep harness: also times the step without collectives, and NCCL alone
      run "${bench[@]}" run --tp $n --model qwen3-8b-random --json "$R/tp$n-qwen3-8b.json" 2>&1 | tail -n 40
    done
  fi
  if [ "$part" != lockstep ]; then
    for n in 1 2; do  # the engine users run: Engine(..., tensor_parallel_size=n), rank 0 broadcasting each step
      run "${bench[@]}" engine --tp $n --model qwen3-8b-random --json "$R/engine-tp$n-qwen3-8b.json" 2>&1 | tail -n 40
    done
  fi
  run "${bench[@]}" table "$R"/*tp*-qwen3-8b.json --markdown "$R/scaling-qwen3-8b.md"
else
  echo "unknown stage '$stage': two-gpu or dry-run" >&2; exit 2
fi
left=$(pgrep -f "ruvoninference.bench.tp|multiprocessing.spawn" || true)
echo "processes left after the run: ${left:-none}" | tee -a "$R/commands.txt"
