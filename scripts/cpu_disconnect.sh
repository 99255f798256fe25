#!/usr/bin/env bash
# Clients that leave, on the CPU (issue 15): do the others' latencies move when 10% of the clients close their
# stream after 4 chunks? Two designs, each run twice and interleaved, on one server (gpt2-random, float32):
#   closed loop   at most CONC requests in flight, all sent at once: a leaving client frees its slot at once,
#                 so the next request arrives mid-decode (the arrivals differ between the two runs);
#   fixed rate    Poisson arrivals at 80% of the closed loop's request rate, the same seeded arrival times in
#                 both runs: the leavers only take load away, so this is the comparison that isolates them.
#   bash scripts/cpu_disconnect.sh [OUT_DIR]      (default docs/benchmarks/cpu-serve/disconnect)
set -uo pipefail
R=${1:-docs/benchmarks/cpu-serve/disconnect}
mkdir -p "$R"
PORT=${PORT:-8791}
N=${N:-64}; CONC=${CONC:-8}; IN=${IN:-32}; OUTLEN=${OUTLEN:-32}
: > "$R/commands.txt"
run() { echo "\$ $*" >> "$R/commands.txt"; "$@"; echo "exit $?" >> "$R/commands.txt"; }
echo "\$ OMP_NUM_THREADS=1 uv run cli.py serve --model gpt2-random --device cpu --port $PORT --max-batch-size 16" >> "$R/commands.txt"
OMP_NUM_THREADS=1 uv run cli.py serve --model gpt2-random --device cpu --port "$PORT" --max-batch-size 16 > "$R/server.log" 2>&1 &
pid=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done
bench() { local name=$1; shift
  run uv run cli.py benchmark serve --url "http://127.0.0.1:$PORT" --num-prompts "$N" --input-len "$IN" \
    --output-len "$OUTLEN" --temperature 1.0 "$@" --json "$R/$name.json" --markdown "$R/$name.md" > /dev/null 2>&1; }
uptime >> "$R/commands.txt"
bench closed-a --concurrency "$CONC"
bench closed-d10-a --concurrency "$CONC" --disconnect-fraction 0.1
bench closed-b --concurrency "$CONC"
bench closed-d10-b --concurrency "$CONC" --disconnect-fraction 0.1
RATE=$(python3 -c "import json; print(round(0.8 * json.load(open('$R/closed-a.json'))['runs'][0]['request_throughput'], 3))")
echo "80% of the closed loop's request rate: $RATE req/s" >> "$R/commands.txt"
for rep in a b; do
  bench rate80-$rep --concurrency "$N" --request-rate "$RATE"
  bench rate80-d10-$rep --concurrency "$N" --request-rate "$RATE" --disconnect-fraction 0.1
done
uptime >> "$R/commands.txt"
kill "$pid"; wait "$pid" 2>/dev/null
