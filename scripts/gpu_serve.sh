#!/usr/bin/env bash
# The serving benchmarks of issues 15 and 21 on the GPU, in one device call:
#   scripts/gpu_serve.sh      (carry .whl_serve and .whl_small)
# qwen3-0.6b-random in bf16, the continuous scheduler, INPUT_LEN-token prompts and OUTPUT_LEN new tokens:
#   1. `benchmark serve` at concurrency 64, temperature 1.0 (what a client that sets nothing gets), and 0;
#   2. the offline engine (`benchmark throughput`, no HTTP) on the same requests and temperature 1.0:
#      served / offline output tok/s is the cost of serving;
#   3. Poisson arrivals at 80% of the request rate run 1 sustained (p99 inter-token latency under load),
#      with mixed batches and without (--no-mixed-batches);
#   4. concurrency 64 with 10% of the clients leaving mid-stream: the others' latencies beside run 1's.
# Writes JSON + markdown under $OUT/serve, a summary in $OUT/serve/summary.md, and $OUT/results-serve.tgz.
set -uo pipefail
OUT=${OUT:-$PWD/out}
R=$OUT/serve
mkdir -p "$R"
MODEL=${MODEL:-qwen3-0.6b-random}
DTYPE=${DTYPE:-bf16}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-128}
N=${N:-256}
BATCH=${BATCH:-64}
source "$(dirname "$0")/device_env.sh"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, fastapi, uvicorn, pydantic; print(torch.__version__, fastapi.__version__, uvicorn.__version__, pydantic.__version__)'
} 2>&1 | tee "$R/device.txt"

run() { echo "\$ $*" | tee -a "$R/commands.txt"; "$@"; echo "exit $?" | tee -a "$R/commands.txt"; }
port=8100
start_server() {  # start_server NAME [serve options...]
  local name=$1; shift
  port=$((port + 1))
  echo "\$ python3 cli.py serve --model $MODEL --dtype $DTYPE --port $port --max-batch-size $BATCH $*" \
    | tee -a "$R/commands.txt"
  python3 cli.py serve --model "$MODEL" --dtype "$DTYPE" --port "$port" --max-batch-size "$BATCH" "$@" \
    > "$R/server-$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null; }
bench() {  # bench NAME [benchmark serve options...]
  local name=$1; shift
  run python3 cli.py benchmark serve --url "http://127.0.0.1:$port" --num-prompts "$N" --input-len "$INPUT_LEN" \
    --output-len "$OUTPUT_LEN" "$@" --json "$R/serve-$name.json" --markdown "$R/serve-$name.md"
}

start_server mixed
bench c64-t1 --concurrency 64 --temperature 1.0
bench c64-t0 --concurrency 64 --temperature 0
bench c64-t1-disconnect10 --concurrency 64 --temperature 1.0 --disconnect-fraction 0.1
RATE=$(python3 -c "import json; print(round(0.8 * json.load(open('$R/serve-c64-t1.json'))['runs'][0]['request_throughput'], 2))")
echo "80% of the request rate sustained at concurrency 64: $RATE req/s" | tee -a "$R/commands.txt"
bench rate80-mixed --concurrency "$N" --temperature 1.0 --request-rate "$RATE"
stop_server
start_server unmixed --no-mixed-batches
bench rate80-unmixed --concurrency "$N" --temperature 1.0 --request-rate "$RATE"
stop_server

# The engine without HTTP, on the same requests (the offline engine's best: same batch, same temperature).
run python3 cli.py benchmark throughput --model "$MODEL" --dtype "$DTYPE" --scheduler continuous --num-seqs "$N" \
  --min-input-len "$INPUT_LEN" --max-input-len "$INPUT_LEN" --min-output-len "$OUTPUT_LEN" \
  --max-output-len "$OUTPUT_LEN" --max-batch-size "$BATCH" --temperature 1.0 \
  --json "$R/throughput-offline.json" --markdown "$R/throughput-offline.md"

python3 - "$R" <<'PY' 2>&1 | tee "$R/summary.md"
import json, sys
r = sys.argv[1]
def run(name):
    try:
        return json.load(open(f"{r}/serve-{name}.json"))["runs"][0]
    except (OSError, KeyError, IndexError):
        return None
print("| run | ok | failed | aborted | output tok/s | TTFT p99 ms | TPOT median ms | ITL median ms | ITL p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name in ("c64-t1", "c64-t0", "c64-t1-disconnect10", "rate80-mixed", "rate80-unmixed"):
    x = run(name)
    if x:
        print(f"| {name} | {x['completed']} | {x['failed']} | {x.get('aborted', 0)} | {x['output_throughput']:,.1f} | "
              f"{x['p99_ttft_ms']:,.1f} | {x['median_tpot_ms']:,.2f} | {x['median_itl_ms']:,.2f} | {x['p99_itl_ms']:,.2f} |")
try:
    offline = json.load(open(f"{r}/throughput-offline.json"))["engine"]["output_tokens_per_s"]
    served = run("c64-t1")["output_throughput"]
    print(f"\nserved at concurrency 64, temperature 1: {served:,.1f} output tok/s; offline engine, same requests "
          f"and temperature: {offline:,.1f}; served/offline = {served / offline:.1%} (goal: 85%)")
except (OSError, KeyError, TypeError) as exc:
    print(f"offline throughput missing: {exc}")
PY
tar -czf "$OUT/results-serve.tgz" -C "$OUT" serve
