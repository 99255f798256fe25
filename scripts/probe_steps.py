"""Where do the long gaps of a served run come from? The engine alone, requests arriving as a Poisson process.

A served run with staggered arrivals (requests joining while others decode) showed inter-token gaps of about
100 ms at its p99, against 10 ms when every request starts at once. This probe replays such arrivals on the
offline engine, without HTTP, and times every step with what it held:

    uv run python scripts/probe_steps.py --attn sdpa --rate 46 --num 256 --json out.json

For each step: wall time of `engine.step()`, prefill sequences and tokens, decodes, whether a CUDA graph was
replayed, and the allocator's counters (a cudaMalloc retry frees every cached block and synchronizes). It
prints the distribution per kind of step and the slowest steps. The arrival times are drawn with a seed, so
two configurations see the same arrivals.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import random
import time

import numpy as np
import torch

from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.models import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="qwen3-0.6b-random")
    p.add_argument("--attn", action="append", default=None)
    p.add_argument("--rate", type=float, default=46.0)
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--no-mixed", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--leave-fraction", type=float, default=0.0,
                   help="abort this fraction of the requests (seeded choice) after --leave-after tokens, as a "
                        "client that leaves; run once without and once with them on the same arrivals")
    p.add_argument("--leave-after", type=int, default=4)
    p.add_argument("--control", action="store_true",
                   help="also run the chosen requests as requests that simply ask for --leave-after tokens and "
                        "finish (no abort): what the leavers cost the others, minus what aborting adds")
    p.add_argument("--profile-steps", type=int, default=0, help="cProfile the first N timed steps")
    p.add_argument("--trace-mixed", type=int, default=0,
                   help="torch.profiler over the first N steps that carry a prefill and decodes: the top operators")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bundle = load_model(args.model, device, torch.bfloat16 if cuda else torch.float32)
    results = []
    for attn in args.attn or ["sdpa"]:
        for mixed in ([False] if args.no_mixed else [True, False]):
            for leave in sorted({0.0, args.leave_fraction}):
                results.append(probe(bundle, attn, mixed, args, leave))
            if args.control and args.leave_fraction:
                results.append(probe(bundle, attn, mixed, args, args.leave_fraction, short=True))
    if args.json:
        name = torch.cuda.get_device_name() if cuda else "cpu"
        json.dump({"device": name, "torch": torch.__version__, "args": vars(args), "runs": results},
                  open(args.json, "w"), indent=1)


def _alloc_stats(cuda: bool) -> dict:
    return torch.cuda.memory_stats() if cuda else {}


def probe(bundle, attn: str, mixed: bool, args, leave_fraction: float = 0.0, short: bool = False) -> dict:
    engine = Engine(bundle, attn, max_batch_size=args.max_batch_size, mixed_batches=mixed)
    cuda = engine.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rng = random.Random(0)
    arrivals, t = [], 0.0
    for _ in range(args.num):
        arrivals.append(t)
        t += rng.expovariate(args.rate)
    vocab = bundle.config.vocab_size
    prompts = [[rng.randrange(vocab // 10, vocab) for _ in range(args.input_len)] for _ in range(args.num)]
    chooser = random.Random(1)
    leaving = {str(i) for i in range(args.num) if chooser.random() < leave_fraction}
    produced: dict[str, int] = {}
    sampling = SamplingParams(max_tokens=args.output_len, ignore_eos=True, temperature=1.0)
    # warm-up: one request, as the serving benchmark does
    engine.generate([prompts[0]], SamplingParams(max_tokens=8, ignore_eos=True))

    seen: list[dict] = []
    prepare = engine.runner.prepare

    def recording_prepare(batch):
        inputs = prepare(batch)
        seen.append({"prefill_seqs": batch.num_prefill, "prefill_tokens": sum(batch.num_new_tokens[:batch.num_prefill]),
                     "decodes": len(batch.seqs) - batch.num_prefill, "graph": inputs.graph_key is not None,
                     "key": list(inputs.graph_key) if inputs.graph_key else None})
        return inputs

    engine.runner.prepare = recording_prepare
    sync()
    stats0 = _alloc_stats(cuda)
    steps, i, start, traced = [], 0, time.perf_counter(), 0
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    gaps: list[float] = []
    while i < args.num or engine.has_unfinished():
        now = time.perf_counter() - start
        while i < args.num and arrivals[i] <= now:
            rid = str(i)
            params = SamplingParams(max_tokens=args.leave_after, ignore_eos=True, temperature=1.0) \
                if short and rid in leaving else sampling
            engine.add_request(prompts[i], params, request_id=rid)
            i += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, arrivals[i] - now))
            continue
        before = len(seen)
        retries0 = _alloc_stats(cuda).get("num_alloc_retries", 0)
        profiler = cProfile.Profile() if len(steps) < args.profile_steps else None
        if cuda and traced < args.trace_mixed and engine.scheduler.waiting and engine.scheduler.running:
            traced += 1
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as trace:
                engine.step()
                torch.cuda.synchronize()
            last_seen = seen[-1] if seen else {}
            print(f"-- torch.profiler of a step holding {last_seen}:")
            for key in ("self_cpu_time_total", "self_device_time_total"):
                print(trace.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
            continue
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        outputs = engine.step()
        if profiler:
            profiler.disable()
        t1 = time.perf_counter()
        if profiler and t1 - t0 > 0.05:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            print(f"-- profile of step {len(steps)} ({(t1 - t0) * 1e3:.1f} ms):\n" + text.getvalue()[:6000])
        for out in outputs:
            produced[out.request_id] = produced.get(out.request_id, 0) + len(out.new_token_ids)
            if not short and out.request_id in leaving and produced[out.request_id] >= args.leave_after \
                    and not out.finished:
                engine.abort(out.request_id)  # the client left: its later tokens are not counted
                last.pop(out.request_id, None)
                continue
            if out.new_token_ids and out.request_id not in leaving:
                if out.request_id in last:
                    gaps.append(t1 - last[out.request_id])
                else:
                    first[out.request_id] = t1
                last[out.request_id] = t1
        record = seen[before] if len(seen) > before else {"prefill_seqs": 0, "prefill_tokens": 0, "decodes": 0,
                                                          "graph": False, "key": None}
        record = {**record, "ms": (t1 - t0) * 1e3, "launched": len(seen) - before,
                  "alloc_retries": _alloc_stats(cuda).get("num_alloc_retries", 0) - retries0,
                  "at_s": t0 - start}
        steps.append(record)
    elapsed = time.perf_counter() - start
    stats1 = _alloc_stats(cuda)

    def kind(s):
        if s["prefill_seqs"] and s["decodes"]:
            return "mixed"
        if s["prefill_seqs"]:
            return "prefill"
        if s["decodes"]:
            return "decode-graph" if s["graph"] else "decode-eager"
        return "none"

    summary = {}
    for k in ("decode-graph", "decode-eager", "mixed", "prefill", "none"):
        ms = np.array([s["ms"] for s in steps if kind(s) == k])
        if ms.size:
            summary[k] = {"steps": int(ms.size), "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
                          "max_ms": float(ms.max()), "total_s": float(ms.sum() / 1e3)}
    gaps_ms = np.array(gaps) * 1e3
    slow = sorted(steps, key=lambda s: -s["ms"])[:15]
    stay = [r for r in first if r not in leaving and r in last]
    tpot = [(last[r] - first[r]) / (args.output_len - 1) * 1e3 for r in stay]
    result = {"attn": attn, "mixed_batches": mixed, "leave_fraction": leave_fraction, "left": len(leaving),
              "leavers_as_short_requests": short,
              "tpot_median_ms": float(np.median(tpot)) if tpot else 0.0,
              "steps_with_prefill": sum(1 for s in steps if s["prefill_seqs"]),
              "elapsed_s": elapsed, "steps": len(steps), "by_kind": summary,
              "itl_median_ms": float(np.median(gaps_ms)), "itl_p99_ms": float(np.percentile(gaps_ms, 99)),
              "itl_max_ms": float(gaps_ms.max()),
              "alloc_retries": stats1.get("num_alloc_retries", 0) - stats0.get("num_alloc_retries", 0),
              "cuda_mallocs": stats1.get("segment.all.allocated", 0) - stats0.get("segment.all.allocated", 0),
              "graphs": len(engine.runner._graphs), "slowest": slow}
    print(f"\n== {attn} mixed={mixed} leaving={len(leaving)}{' (short requests, no abort)' if short else ''}: {elapsed:.2f} s, {len(steps)} steps "
          f"({result['steps_with_prefill']} with a prefill), stayers' TPOT median {result['tpot_median_ms']:.2f} ms, "
          f"ITL median {result['itl_median_ms']:.2f} "
          f"p99 {result['itl_p99_ms']:.2f} max {result['itl_max_ms']:.1f} ms, alloc retries {result['alloc_retries']}, "
          f"new segments {result['cuda_mallocs']}")
    for k, v in summary.items():
        print(f"  {k:13s} {v['steps']:5d} steps  median {v['median_ms']:7.2f}  p99 {v['p99_ms']:7.2f}  "
              f"max {v['max_ms']:7.1f} ms  total {v['total_s']:.2f} s")
    for s in slow[:8]:
        print(f"  slow: {s['ms']:7.1f} ms at {s['at_s']:.2f} s  prefill {s['prefill_seqs']}x{s['prefill_tokens']}t  "
              f"decodes {s['decodes']}  graph {s['key']}  launched {s['launched']}  retries {s['alloc_retries']}")
    engine.runner.prepare = prepare
    del engine, prepare, recording_prepare
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    main()
