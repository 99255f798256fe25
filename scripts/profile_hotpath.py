"""Where the host's time goes in a throughput run: cProfile over one timed generate of nano-vllm's workload.

    python scripts/profile_hotpath.py --model qwen3-0.6b-random --attn flash_attention_2 --dtype bfloat16 \
        --temperature 0.6 --out profile.txt

Prints the run's output tokens/s (under the profiler, which slows Python code by a factor of about 1.5-2, so
this is not the benchmark's number) and the functions that took the most time of their own. The engine is
warmed up first (one short generate), as `benchmark throughput` does. Research tooling for Part 13.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats

from ruvoninference.bench.throughput import nano_vllm_workload, run_engine, warm_up_engine
from ruvoninference.engine import Engine
from ruvoninference.environment import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-0.6b-random")
    parser.add_argument("--attn", default="flash_attention_2")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--max-input-len", type=int, default=1024)
    parser.add_argument("--max-output-len", type=int, default=1024)
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--async-scheduling", choices=("on", "off"), default=None,
                        help="overlapped steps (engine/overlap.py); default: the engine's choice")
    parser.add_argument("--no-profile", action="store_true", help="time the run without the profiler")
    parser.add_argument("--json", default=None, help="write the run's measurements here")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args()
    overlap = None if args.async_scheduling is None else args.async_scheduling == "on"
    engine = Engine(args.model, args.attn, device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size,
                    max_num_batched_tokens=args.max_num_batched_tokens, async_scheduling=overlap)
    vocab = engine.bundle.config.vocab_size
    workload = nano_vllm_workload(args.num_seqs, (100, args.max_input_len), (100, args.max_output_len),
                                  max_token_id=min(10000, vocab - 1))
    warm_up_engine(engine, args.temperature)
    profile = cProfile.Profile()
    if not args.no_profile:
        profile.enable()
    result = run_engine(engine, workload, args.temperature)
    profile.disable()
    result["async_scheduling"] = engine.async_scheduling
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "environment": describe(engine.device), "result": result}, f, indent=1)
    text = io.StringIO()
    under = "without the profiler" if args.no_profile else "under cProfile"
    text.write(f"{args.model} {args.attn} {args.dtype} temperature {args.temperature} async_scheduling "
               f"{engine.async_scheduling}: {result['output_tokens_per_s']:,.0f} output tok/s {under}, "
               f"{result['elapsed_s']:.2f} s, "
               f"{result['decode_steps'].get('count', 0)} decode steps, {result['prefill_steps'].get('count', 0)} "
               f"prefill or mixed steps\n")
    if not args.no_profile:
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())
    if args.out:
        with open(args.out, "w") as f:
            f.write(text.getvalue())


if __name__ == "__main__":
    main()
