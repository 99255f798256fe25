#!/usr/bin/env bash
# The serving measurements of issues 15 and 21 on the GPU, in one device call (each stage has its own limit):
#   STAGES="tests startup serve probe" bash scripts/gpu_serve.sh     (carry .whl_serve; .whl_xz for FA2 in the tests)
# Run it from a `git archive HEAD` export with the commit in a file COMMIT (the device's copy of .git can lag).
# qwen3-0.6b-random in bf16, sdpa (the server's default), the continuous scheduler, max batch 64,
# N requests of INPUT_LEN prompt and OUTPUT_LEN new tokens.
#   probe    scripts/probe_steps.py: the engine alone under the same Poisson arrivals, every step timed;
#   isolation  the fixed-rate leaver A/B of `serve` alone (sdpa), and `benchmark server-overhead`;
#   leavers  more repeats of that A/B at each rate of RATES (REPS names the repeats);
#   tests    the GPU tests of the engine (every backend; the random models: SmolLM2's GGUF is not carried);
#   startup  Engine.startup_s and the number of decode graphs captured before the engine is ready, per backend;
#   serve    on one server: concurrency 64 at temperature 1.0 and 0, and with 10% of the clients leaving after
#            4 chunks; then Poisson arrivals at 80% of the request rate concurrency 64 sustained, with and
#            without 10% leaving (the same arrival times: the leaving clients only take load away), each
#            twice, interleaved; a server with --api-key on the concurrency-64 run (auth's cost); a server with
#            --no-mixed-batches at the 80% rate; a server on our Triton kernels at the 80% rate, with and
#            without leavers; the offline engine on the same requests (`benchmark
#            throughput`): served / offline is the cost of serving; `benchmark server-overhead` on this host.
# Writes JSON + markdown under $OUT/serve, a summary in $OUT/serve/summary.md.
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
STAGES=${STAGES:-"tests startup serve probe"}
source "$(dirname "$0")/device_env.sh"
for f in .whl_xz/*.tar.xz; do [ -e "$f" ] && mkdir -p /tmp/site && tar -xJf "$f" -C /tmp/site; done
export PYTHONPATH=$PWD:$PYTHONPATH
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  python3 -c 'import fastapi, uvicorn, pydantic; print("fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__, "pydantic", pydantic.__version__)'
  python3 -c 'import flash_attn; print("flash_attn", flash_attn.__version__)'
  echo "commit $(cat COMMIT 2>/dev/null || git log -1 --format=%H 2>/dev/null)"; } 2>&1 | tee "$R/device.txt"

run() { echo "\$ $*" | tee -a "$R/commands.txt"; "$@"; echo "exit $?" | tee -a "$R/commands.txt"; }
has() { case " $STAGES " in *" $1 "*) return 0;; esac; return 1; }

if has tests; then
  run timeout "${TESTS_S:-300}" python3 -m pytest -q -m gpu tests/engine/test_engine_gpu.py \
    tests/engine/test_prompt_logprobs.py tests/test_attention.py tests/kernels/test_sampling_kernel.py \
    -k "not smollm2" > "$R/tests-engine-gpu.log" 2>&1
  tail -5 "$R/tests-engine-gpu.log"
fi

if has startup; then
  run timeout "${STARTUP_S:-240}" python3 - "$MODEL" "$BATCH" "$R/startup.json" <<'PY'
import json, sys, time
import torch
from ruvoninference.attention import get_available_implementations
from ruvoninference.engine import Engine
from ruvoninference.models import load_model
model, batch, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bundle = load_model(model, torch.device("cuda"), torch.bfloat16)
rows = []
for attn in [i.value for i in get_available_implementations("cuda")]:
    torch.cuda.synchronize()
    engine = Engine(bundle, attn, max_batch_size=batch)
    graphs = len(engine.runner._graphs)
    rows.append({"attn": attn, "startup_s": engine.startup_s, "graphs": graphs, "max_batch_size": batch,
                 "context_length": engine.context_length, "block_size": engine.block_size,
                 "kv_blocks": engine.block_manager.num_blocks})
    print(rows[-1], flush=True)
    del engine
    torch.cuda.empty_cache()
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": model, "dtype": "bfloat16",
           "note": "startup_s: Engine() on already loaded weights (cache sizing, kernel compiles, graph captures)",
           "engines": rows}, open(path, "w"), indent=1)
PY
fi

port=8100
start_server() {  # start_server NAME [serve options...]
  local name=$1; shift
  port=$((port + 1))
  echo "\$ python3 cli.py serve --model $MODEL --dtype $DTYPE --port $port --max-batch-size $BATCH $*" \
    | tee -a "$R/commands.txt"
  python3 cli.py serve --model "$MODEL" --dtype "$DTYPE" --port "$port" --max-batch-size "$BATCH" "$@" \
    > "$R/server-$name.log" 2>&1 &
  pid=$!
  local t0=$SECONDS
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "server $name ready after $((SECONDS - t0)) s" | tee -a "$R/commands.txt"
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null; }
bench() {  # bench NAME [benchmark serve options...]
  local name=$1; shift
  run timeout 120 python3 cli.py benchmark serve --url "http://127.0.0.1:$port" --num-prompts "$N" \
    --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" "$@" --json "$R/serve-$name.json" \
    --markdown "$R/serve-$name.md" > "$R/bench-$name.log" 2>&1
}

leaver_ab() {  # 80% of the request rate of serve-c64-t1-a, with and without 10% leaving, twice, interleaved
  RATE=$(python3 -c "import json; print(round(0.8 * json.load(open('$R/serve-c64-t1-a.json'))['runs'][0]['request_throughput'], 2))")
  echo "80% of the request rate sustained at concurrency 64: $RATE req/s" | tee -a "$R/commands.txt"
  for rep in a b; do
    bench rate80-$rep --concurrency "$N" --temperature 1.0 --request-rate "$RATE"
    bench rate80-d10-$rep --concurrency "$N" --temperature 1.0 --request-rate "$RATE" --disconnect-fraction 0.1
  done
}

if has serve; then
  start_server sdpa
  bench c64-t1-a --concurrency 64 --temperature 1.0
  bench c64-t1-d10-a --concurrency 64 --temperature 1.0 --disconnect-fraction 0.1
  bench c64-t1-b --concurrency 64 --temperature 1.0
  bench c64-t1-d10-b --concurrency 64 --temperature 1.0 --disconnect-fraction 0.1
  bench c64-t0 --concurrency 64 --temperature 0
  leaver_ab
  curl -s "http://127.0.0.1:$port/metrics" > "$R/metrics-sdpa.txt"
  stop_server

  start_server apikey --api-key serve-bench-key
  for rep in a b; do OPENAI_API_KEY=serve-bench-key bench c64-t1-apikey-$rep --concurrency 64 --temperature 1.0; done
  stop_server

  start_server triton --attn triton
  for rep in a b; do
    bench triton-rate80-$rep --concurrency "$N" --temperature 1.0 --request-rate "$RATE"
    bench triton-rate80-d10-$rep --concurrency "$N" --temperature 1.0 --request-rate "$RATE" --disconnect-fraction 0.1
  done
  stop_server

  start_server unmixed --no-mixed-batches
  bench rate80-unmixed --concurrency "$N" --temperature 1.0 --request-rate "$RATE"
  stop_server

  run timeout 180 python3 cli.py benchmark throughput --model "$MODEL" --dtype "$DTYPE" --scheduler continuous \
    --num-seqs "$N" --min-input-len "$INPUT_LEN" --max-input-len "$INPUT_LEN" --min-output-len "$OUTPUT_LEN" \
    --max-output-len "$OUTPUT_LEN" --max-batch-size "$BATCH" --temperature 1.0 \
    --json "$R/throughput-offline.json" --markdown "$R/throughput-offline.md" > "$R/throughput-offline.log" 2>&1
  if python3 cli.py benchmark server-overhead --help >/dev/null 2>&1; then
    run timeout 120 python3 cli.py benchmark server-overhead --serve-json "$R/serve-c64-t1-a.json" \
      --json "$R/server-overhead.json" --markdown "$R/server-overhead.md" > "$R/server-overhead.log" 2>&1
  fi

  python3 - "$R" <<'PY' 2>&1 | tee "$R/summary.md"
import json, sys
r = sys.argv[1]
def run(name):
    try:
        return json.load(open(f"{r}/serve-{name}.json"))["runs"][0]
    except (OSError, KeyError, IndexError, ValueError):
        return None
names = ["c64-t1-a", "c64-t1-b", "c64-t1-d10-a", "c64-t1-d10-b", "c64-t0", "rate80-a", "rate80-b", "rate80-d10-a",
         "rate80-d10-b", "c64-t1-apikey-a", "c64-t1-apikey-b", "triton-rate80-a", "triton-rate80-b",
         "triton-rate80-d10-a", "triton-rate80-d10-b", "rate80-unmixed"]
print("| run | ok | failed | aborted | duration s | output tok/s | TTFT median ms | TTFT p99 ms | TPOT median ms "
      "| ITL median ms | ITL p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name in names:
    x = run(name)
    if x:
        print(f"| {name} | {x['completed']} | {x['failed']} | {x.get('aborted', 0)} | {x['duration_s']:.2f} | "
              f"{x['output_throughput']:,.1f} | {x['median_ttft_ms']:,.1f} | {x['p99_ttft_ms']:,.1f} | "
              f"{x['median_tpot_ms']:,.2f} | {x['median_itl_ms']:,.2f} | {x['p99_itl_ms']:,.2f} |")
    else:
        print(f"| {name} | missing | | | | | | | | | |")
try:
    offline = json.load(open(f"{r}/throughput-offline.json"))["runs"][0]["engine"]["output_tokens_per_s"]
    served = run("c64-t1-a")["output_throughput"]
    print(f"\nserved at concurrency 64, temperature 1: {served:,.1f} output tok/s; offline engine, same requests "
          f"and temperature: {offline:,.1f}; served/offline = {served / offline:.1%}")
except (OSError, KeyError, TypeError, ValueError) as exc:
    print(f"offline throughput missing: {exc}")
PY
fi

if has isolation; then  # the fixed-rate leaver A/B alone, on the default server, and the host's overhead
  start_server sdpa
  bench c64-t1-a --concurrency 64 --temperature 1.0
  leaver_ab
  stop_server
  run timeout 120 python3 cli.py benchmark server-overhead --serve-json "$R/serve-c64-t1-a.json" \
    --json "$R/server-overhead.json" --markdown "$R/server-overhead.md" > "$R/server-overhead.log" 2>&1
  python3 - "$R" <<'PY' 2>&1 | tee "$R/summary.md"
import json, sys
r = sys.argv[1]
for name in ("c64-t1-a", "rate80-a", "rate80-b", "rate80-d10-a", "rate80-d10-b"):
    x = json.load(open(f"{r}/serve-{name}.json"))["runs"][0]
    print(f"| {name} | {x['completed']} | {x['failed']} | {x.get('aborted', 0)} | {x['duration_s']:.2f} | "
          f"{x['output_throughput']:,.1f} | {x['median_ttft_ms']:,.1f} | {x['p99_ttft_ms']:,.1f} | "
          f"{x['median_tpot_ms']:,.2f} | {x['median_itl_ms']:,.2f} | {x['p99_itl_ms']:,.2f} |")
PY
fi

if has leavers; then  # more repeats of the fixed-rate leaver A/B, at each of RATES (req/s), interleaved
  start_server sdpa
  for rate in ${RATES:-40.64 47.64}; do
    for rep in ${REPS:-c d}; do
      bench rate$rate-$rep --concurrency "$N" --temperature 1.0 --request-rate "$rate"
      bench rate$rate-d10-$rep --concurrency "$N" --temperature 1.0 --request-rate "$rate" --disconnect-fraction 0.1
    done
  done
  stop_server
fi

if has probe; then  # the engine alone under the same arrivals: every step's time and what it held
  run timeout 300 python3 scripts/probe_steps.py --attn sdpa --attn triton --rate "${RATE:-46}" --num "$N" \
    --profile-steps 2 --json "$R/probe-steps.json" > "$R/probe-steps.log" 2>&1
  grep -E "^==|^  [a-z]|^-- profile" "$R/probe-steps.log"
fi
tar -czf "$OUT/results-serve.tgz" -C "$OUT" serve  # one file: a call returns only so many
