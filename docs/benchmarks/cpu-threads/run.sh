#!/usr/bin/env bash
# Decode tokens/s of `generate` (smollm2-135m, sdpa, float32, 16 new tokens, EOS ignored) under three
# OpenMP settings, interleaved, three rounds; the 1-minute load average is recorded with every run.
#   default: no OMP variable (what torch does alone; measured before the CLI set OMP_WAIT_POLICY=PASSIVE,
#            so repeat it now with OMP_WAIT_POLICY=ACTIVE, which spins like libgomp's default at first)
#   omp1:    OMP_NUM_THREADS=1
#   passive: OMP_WAIT_POLICY=PASSIVE (idle threads sleep instead of spinning): the CLI's default now
# Usage: bash docs/benchmarks/cpu-threads/run.sh   (writes docs/benchmarks/cpu-threads/results.jsonl)
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1
out=docs/benchmarks/cpu-threads/results.jsonl
tmp=$(mktemp -d)
: > $out
run() {  # $1 setting
  local env=(OMP_WAIT_POLICY=ACTIVE)
  case $1 in
    omp1) env=(OMP_NUM_THREADS=1) ;;
    passive) env=(OMP_WAIT_POLICY=PASSIVE) ;;
  esac
  rm -f "$tmp/g.json"
  env "${env[@]}" uv run cli.py generate --text "Once upon a time" --max-tokens 16 --ignore-eos \
      --json "$tmp/g.json" >/dev/null 2>"$tmp/err.txt"
  python3 - "$1" "$tmp" >> $out <<'PY'
import json, os, sys
setting, tmp = sys.argv[1], sys.argv[2]
try:
    d = json.load(open(f"{tmp}/g.json"))
    r = {"device": d["environment"]["device"], "decode_tok_s": round(d["stats"]["decode_tokens_per_s"], 2),
         "ttft_ms": round(1000 * d["stats"]["time_to_first_token_s"], 1)}
except (OSError, ValueError, KeyError):
    r = {"failed": open(f"{tmp}/err.txt").read()[-300:]}
print(json.dumps({"condition": "plain", "setting": setting, "loadavg1": os.getloadavg()[0], **r}))
PY
}
for rep in 1 2 3; do for s in omp1 default passive; do run $s; done; done
