#!/usr/bin/env bash
# The serving benchmarks on the GPU, in one device call:
#   scripts/gpu_serve.sh      (carry .whl_serve, and .whl_small / .whl if the model needs them)
# For each scheduler: start `cli.py serve` on 127.0.0.1, run `cli.py benchmark serve` at concurrency 1, 8, 32,
# 64 and 128, stop the server. Then the engine's offline `benchmark throughput` on the same lengths, for the
# "HTTP costs little" comparison at concurrency 64. Writes JSON + markdown under $OUT/serve and packs them
# into $OUT/results-serve.tgz.
#
# .whl_serve holds cp312 manylinux wheels of what the device image lacks (fastapi, uvicorn, pydantic,
# pydantic-core, starlette, annotated-types, typing-inspection, typing-extensions, opentelemetry-api); its
# anyio, h11, httpx, prometheus-client and click are used as they are.
set -uo pipefail
OUT=${OUT:-$PWD/out}
R=$OUT/serve
mkdir -p "$R"
MODEL=${MODEL:-gpt2-random}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-64}
BATCH=${BATCH:-128}
LEVELS=${LEVELS:-"1 8 32 64 128"}
source "$(dirname "$0")/device_env.sh"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, fastapi, uvicorn, pydantic; print(torch.__version__, fastapi.__version__, uvicorn.__version__, pydantic.__version__)'
} 2>&1 | tee "$R/device.txt"

run() { echo "\$ $*" | tee -a "$R/commands.txt"; "$@"; echo "exit $?" | tee -a "$R/commands.txt"; }

port=8000
for sched in sequential static continuous; do
  port=$((port + 1))
  echo "\$ python3 cli.py serve --model $MODEL --port $port --scheduler $sched --max-batch-size $BATCH" \
    | tee -a "$R/commands.txt"
  python3 cli.py serve --model "$MODEL" --port "$port" --scheduler "$sched" --max-batch-size "$BATCH" \
    > "$R/server-$sched.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  for c in $LEVELS; do
    # Enough requests to fill the concurrency a few times; sequential serves one at a time whatever c is,
    # so it gets fewer (its throughput does not depend on c) to keep the call inside its time limit.
    if [ "$sched" = sequential ]; then n=$(( c > 16 ? c : 16 )); else n=$(( 4 * c > 16 ? 4 * c : 16 )); fi
    run python3 cli.py benchmark serve --url "http://127.0.0.1:$port" --concurrency "$c" --num-prompts "$n" \
      --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
      --json "$R/serve-$sched-c$c.json" --markdown "$R/serve-$sched-c$c.md"
  done
  kill "$pid"; wait "$pid" 2>/dev/null
done

# The engine without HTTP, on the workload of concurrency 64 (256 requests of the same lengths).
run python3 cli.py benchmark throughput --model "$MODEL" --scheduler continuous --num-seqs 256 \
  --min-input-len "$INPUT_LEN" --max-input-len "$INPUT_LEN" --min-output-len "$OUTPUT_LEN" \
  --max-output-len "$OUTPUT_LEN" --max-batch-size 64 --json "$R/throughput-offline.json" \
  --markdown "$R/throughput-offline.md"

python3 - "$R" <<'PY' 2>&1 | tee "$R/serve-comparison.md"
import glob, json, sys
from ruvon_cli.serve_cmd import comparison_markdown
r = sys.argv[1]
print(comparison_markdown(sorted(glob.glob(f"{r}/serve-*-c*.json"))))
try:
    offline = json.load(open(f"{r}/throughput-offline.json"))
    served = json.load(open(f"{r}/serve-continuous-c64.json"))["runs"][0]["output_throughput"]
    print(f"served output tok/s at concurrency 64: {served:,.1f}; offline benchmark throughput JSON: "
          f"throughput-offline.json (compare its output tokens/s)")
except (OSError, KeyError, IndexError) as exc:
    print(f"comparison with the offline throughput not made: {exc}")
PY
tar -czf "$OUT/results-serve.tgz" -C "$OUT" serve
