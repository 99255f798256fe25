"""Tensor-parallel measurements: what cutting a model over N GPUs buys, and what its communication costs.

    python -m ruvoninference.bench.tp run --tp 2 --model qwen3-8b-random --json tp2.json     # N ranks
    python -m ruvoninference.bench.tp size1 --json size1.json      # the sharded code at size 1 vs today's
    python -m ruvoninference.bench.tp table tp1.json tp2.json --markdown scaling.md

`run` starts N ranks (rank 0 here, N-1 spawned, NCCL with NVLink multicast off) and measures, on the
sharded model in the engine with CUDA graphs:
- batch-1 decode: one prompt, 128 new tokens, median of repeats after a warm-up; the same timed again with
  the all-reduces and the logits all-gather skipped (`parallel.layers.without_collectives`: wrong outputs,
  right timing), so the difference per step is what communication costs a decode step;
- NCCL's own all-reduce latency for a decode step's message ([1, hidden] in the dtype), eagerly and
  replayed from a CUDA graph of 100 all-reduces;
- throughput on nano-vllm's workload shape (`bench.throughput.nano_vllm_workload`: prompts and outputs of
  100-1024 tokens) at temperature 0.6, each request seeded;
- memory per GPU (weights, KV cache) and the KV-cache capacity in tokens.

How the ranks run the engine here: every rank runs the same engine on the same requests in lockstep (the
same schedule, since each rank's KV cache is given the same number of blocks, and the same tokens, since
every rank receives the same gathered logits and every request is seeded), so the collectives of each
step line up. That is the benchmark's harness; it costs every rank the host work rank 0 does anyway.

`size1` checks, on one GPU, that the sharded layers at size 1 (a real NCCL group of one rank) give today's
greedy tokens on every available backend with CUDA graphs, and times both side by side (alternating
repeats, medians): the cost of the sharded code at size 1.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ruvoninference.attention import get_available_implementations
from ruvoninference.config import dtype_name, resolve_dtype
from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.environment import describe
from ruvoninference.models import load_model
from ruvoninference.parallel import TPGroup, load_shard, spawn
from ruvoninference.parallel.engine import lockstep_engine, shutdown
from ruvoninference.parallel.group import SAFE_ENVIRONMENT, init_group
from ruvoninference.parallel.launch import rendezvous
from ruvoninference.parallel.layers import without_collectives

BATCH1_TOKENS = 128
GREEDY_PROMPTS = [list(range(11, 11 + n)) for n in (3, 20, 77, 150, 301, 9, 40, 700)]  # different lengths
GREEDY_TOKENS = 64
SIZE1_KV = 16 << 30  # every engine of the size-1 comparison gets the same cache (two engines share the GPU)
MiB = 2**20


def checkpoint(args: argparse.Namespace, result: dict, tp: TPGroup | None = None) -> None:
    """Write what is measured so far (rank 0), so a run stopped at its time limit still leaves its results."""
    if args.json and (tp is None or tp.is_driver):
        with open(args.json, "w") as f:
            json.dump({**result, "partial": True}, f, indent=1, default=str)


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def batch1(engine: Engine, repeats: int, prompt: list[int]) -> dict:
    params = SamplingParams(max_tokens=BATCH1_TOKENS, ignore_eos=True)
    engine.generate([prompt], params)  # warm-up: graphs captured, kernels tuned
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        out = engine.generate([prompt], params)
        _sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"tokens_per_s": BATCH1_TOKENS / median, "ms_per_token": 1e3 * median / BATCH1_TOKENS,
            "times_s": times, "token_ids": out[0].token_ids}


def nano_vllm_shape(num_seqs: int, max_len: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """nano-vllm's bench.py draws: per prompt a length in [100, max_len] and that many ids in [0, 10000],
    then every output length in [100, max_len] (Python's random, seeded)."""
    rng, low = random.Random(seed), min(100, max_len)
    prompts = [[rng.randint(0, 10_000) for _ in range(rng.randint(low, max_len))] for _ in range(num_seqs)]
    return prompts, [rng.randint(low, max_len) for _ in range(num_seqs)]


def throughput(engine: Engine, num_seqs: int, temperature: float, max_len: int = 1024) -> dict:
    prompts, output_lens = nano_vllm_shape(num_seqs, max_len)
    params = [SamplingParams(temperature=temperature, seed=i, max_tokens=n, ignore_eos=True)
              for i, n in enumerate(output_lens)]
    engine.generate([[1] * 16], SamplingParams(max_tokens=16, ignore_eos=True))  # warm-up
    _sync()
    start = time.perf_counter()
    engine.generate(prompts, params)
    _sync()
    seconds = time.perf_counter() - start
    return {"num_seqs": num_seqs, "max_len": max_len, "output_tokens": sum(output_lens),
            "prompt_tokens": sum(map(len, prompts)), "seconds": seconds,
            "output_tokens_per_s": sum(output_lens) / seconds, "temperature": temperature, "seeded": True}


def allreduce_latency(tp: TPGroup, numel: int, dtype: torch.dtype, iters: int = 100) -> dict:
    """NCCL's all-reduce of `numel` elements: eager (launch + sync each) and replayed from a CUDA graph."""
    x = torch.ones(numel, dtype=dtype, device="cuda")
    for _ in range(10):
        dist.all_reduce(x, group=tp.group)
    _sync()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x, group=tp.group)
    _sync()
    eager = (time.perf_counter() - start) / iters
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dist.all_reduce(x, group=tp.group)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        for _ in range(iters):
            dist.all_reduce(x, group=tp.group)
    x.fill_(1)
    graph.replay()
    _sync()
    captured_ok = bool((x == tp.world_size**iters).all()) if tp.world_size > 1 else bool((x == 1).all())
    start = time.perf_counter()
    graph.replay()
    _sync()
    in_graph = (time.perf_counter() - start) / iters
    return {"numel": numel, "bytes": numel * x.element_size(), "eager_us": 1e6 * eager,
            "in_graph_us": 1e6 * in_graph, "graph_result_correct": captured_ok}


def _memory(engine: Engine, bundle) -> dict:
    weights = sum(p.numel() * p.element_size() for p in bundle.model.parameters())
    return {"weights_mib": weights / MiB, "kv_cache_mib": engine.kv_cache.nbytes / MiB,
            "kv_capacity_tokens": engine.block_manager.num_blocks * engine.block_size,
            "max_allocated_mib": torch.cuda.max_memory_allocated() / MiB if torch.cuda.is_available() else None,
            "kv_heads_per_rank": bundle.config.num_kv_heads}


def run_rank(tp: TPGroup, args: argparse.Namespace) -> dict | None:
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    dtype = resolve_dtype(args.dtype, device)
    bundle = load_shard(args.model, device, dtype, tp)
    config = {"model": args.model, "dtype": dtype_name(dtype), "attn": args.attn, "tp": tp.world_size,
              "max_batch_size": args.max_batch_size, "max_num_batched_tokens": args.max_num_batched_tokens,
              "cuda_graphs": device.type == "cuda", "environment": dict(SAFE_ENVIRONMENT), "harness": "lockstep"}
    kw = {"max_batch_size": args.max_batch_size, "max_num_batched_tokens": args.max_num_batched_tokens}
    prompt = list(range(100, 100 + args.prompt_len))
    result = {"config": config, "greedy": {}}
    for attn in args.greedy_attn:  # correctness: greedy tokens, compared across sizes by `table`
        engine = lockstep_engine(bundle, tp, attn=attn, **kw)
        outs = engine.generate(GREEDY_PROMPTS, SamplingParams(max_tokens=GREEDY_TOKENS, ignore_eos=True))
        result["greedy"][attn] = {"token_ids": [o.token_ids for o in outs],
                                  "blocks_free_after": engine.block_manager.num_free_blocks,
                                  "num_blocks": engine.block_manager.num_blocks}
        del engine
        _free()
        checkpoint(args, result, tp)
    engine = lockstep_engine(bundle, tp, attn=args.attn, **kw)
    result["memory"] = _memory(engine, bundle)
    result["batch1"] = batch1(engine, args.repeats, prompt)
    checkpoint(args, result, tp)
    result["throughput"] = throughput(engine, args.num_seqs, args.temperature, args.max_len)
    checkpoint(args, result, tp)
    result["blocks_free_after"] = engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    del engine
    _free()
    if tp.world_size > 1:
        with without_collectives():
            quiet = lockstep_engine(bundle, tp, attn=args.attn, **kw)
            result["batch1_without_collectives"] = batch1(quiet, args.repeats, prompt)
            del quiet
        step = result["batch1"]["ms_per_token"] - result["batch1_without_collectives"]["ms_per_token"]
        result["collectives_ms_per_step"] = step
        result["collectives_per_step"] = 2 * bundle.config.num_layers + 2  # per layer 2, embedding, logits
    if device.type == "cuda":
        hidden = bundle.config.hidden_size
        result["nccl_allreduce"] = [allreduce_latency(tp, n * hidden, dtype) for n in (1, 8, 64)]
    return result if tp.is_driver else None


def engine_run(args: argparse.Namespace) -> dict:
    """The engine users run: `Engine(..., tensor_parallel_size=N)` (rank 0 schedules and broadcasts each step;
    at N = 1 today's engine), timed like `run`."""
    kw = {"max_batch_size": args.max_batch_size, "max_num_batched_tokens": args.max_num_batched_tokens}
    engine = Engine(args.model, args.attn, args.device, args.dtype, tensor_parallel_size=args.tp, **kw)
    result = {"config": {"model": args.model, "dtype": dtype_name(engine.dtype), "attn": args.attn, "tp": args.tp,
                         **kw, "cuda_graphs": engine.use_cuda_graphs, "harness": "engine",
                         "environment": dict(SAFE_ENVIRONMENT)}}
    try:
        outs = engine.generate(GREEDY_PROMPTS, SamplingParams(max_tokens=GREEDY_TOKENS, ignore_eos=True))
        result["greedy"] = {args.attn: {"token_ids": [o.token_ids for o in outs],
                                        "blocks_free_after": engine.block_manager.num_free_blocks,
                                        "num_blocks": engine.block_manager.num_blocks}}
        result["memory"] = _memory(engine, engine.bundle)
        result["batch1"] = batch1(engine, args.repeats, list(range(100, 100 + args.prompt_len)))
        checkpoint(args, result)
        result["throughput"] = throughput(engine, args.num_seqs, args.temperature, args.max_len)
        result["blocks_free_after"] = engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    finally:
        shutdown(engine)
    return result


def size1(args: argparse.Namespace) -> dict:
    """The sharded code at size 1 (a real NCCL group of one rank) against today's engine, side by side."""
    device = torch.device("cuda")
    dtype = resolve_dtype(args.dtype, device)
    tp = init_group(0, 1, device, rendezvous())
    allreduce = [allreduce_latency(tp, n * 1024, dtype) for n in (1, 64)]  # NCCL starts and captures at size 1
    today = load_model(args.model, device, dtype)
    sharded = load_shard(args.model, device, dtype, tp)
    result = {"config": {"model": args.model, "dtype": dtype_name(dtype), "attn": args.attn,
                         "max_batch_size": args.max_batch_size, "num_seqs": args.num_seqs, "max_len": args.max_len,
                         "temperature": args.temperature, "repeats": args.repeats, "cuda_graphs": True,
                         "kv_cache_memory": SIZE1_KV},
              "nccl_size1_allreduce": allreduce}
    kw = {"attn": args.attn, "max_batch_size": args.max_batch_size, "kv_cache_memory": SIZE1_KV,
          "max_num_batched_tokens": args.max_num_batched_tokens}
    engines = {"today": Engine(today, **kw), "sharded_size1": Engine(sharded, **kw)}
    prompt = list(range(100, 100 + args.prompt_len))
    b1 = {name: [] for name in engines}
    tput = {name: [] for name in engines}
    for _ in range(args.repeats):  # alternating, so drift hits both
        for name, engine in engines.items():
            b1[name].append(batch1(engine, 2, prompt)["tokens_per_s"])
            tput[name].append(throughput(engine, args.num_seqs, args.temperature, args.max_len)["output_tokens_per_s"])
    med = {k: {"batch1_tokens_per_s": statistics.median(b1[k]), "throughput_tokens_per_s": statistics.median(tput[k]),
               "batch1_runs": b1[k], "throughput_runs": tput[k]} for k in engines}
    result["cost"] = med
    result["sharded_over_today"] = {m: med["sharded_size1"][m] / med["today"][m]
                                    for m in ("batch1_tokens_per_s", "throughput_tokens_per_s")}
    del engines
    torch.cuda.empty_cache()
    checkpoint(args, result)
    prompts = [list(range(7, 7 + n)) for n in (5, 17, 40, 3)]
    greedy = SamplingParams(max_tokens=32, ignore_eos=True)
    result["tokens_equal_per_backend"] = {}
    for attn in map(str, get_available_implementations(device)):
        outs = [[o.token_ids for o in Engine(b, attn=attn, max_batch_size=8, kv_cache_memory=SIZE1_KV).generate(
            prompts, greedy)] for b in (today, sharded)]
        result["tokens_equal_per_backend"][attn] = {"equal": outs[0] == outs[1], "today": outs[0],
                                                    "sharded_size1": outs[1]}
        torch.cuda.empty_cache()
        checkpoint(args, result)
    dist.destroy_process_group()
    return result


def agreement(a: list[list[int]], b: list[list[int]]) -> list[int]:
    """Per prompt, how many leading greedy tokens two runs share (bf16 sums in another order can flip a
    near-tie; after the first flip the continuations differ, so the shared prefix is the measure)."""
    return [next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), min(len(p), len(q))) for p, q in zip(a, b)]


def table(results: list[dict]) -> str:
    """The scaling table: tokens/s and memory per GPU for each size, with the ratio to the smallest size run
    the same way (`harness`: the lockstep harness of `run`, or the engine of `engine`)."""
    results = sorted(results, key=lambda r: (r["config"].get("harness", "lockstep"), r["config"]["tp"]))
    header = ("| TP | harness | batch-1 tok/s | x | throughput tok/s | x | weights/GPU MiB | KV cache/GPU MiB | "
              "KV capacity tokens |")
    lines = [header, "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes: list[str] = []
    for harness in dict.fromkeys(r["config"].get("harness", "lockstep") for r in results):
        group = [r for r in results if r["config"].get("harness", "lockstep") == harness]
        _group_rows(group, harness, lines, notes)
    return "\n".join(lines + [""] + notes) + "\n"


def _group_rows(results: list[dict], harness: str, lines: list[str], notes: list[str]) -> None:
    base = results[0]
    backends = list(base["greedy"])
    if len(backends) > 1:  # the bf16 noise floor: two backends at the same size, same weights
        shared = agreement(base["greedy"][backends[0]]["token_ids"], base["greedy"][backends[1]]["token_ids"])
        notes.append(f"- {harness} noise floor: at TP={base['config']['tp']}, {backends[0]} and {backends[1]} share "
                     f"{shared} of {GREEDY_TOKENS} leading greedy tokens per prompt")
    for r in results[1:]:
        for attn, g in r["greedy"].items():
            if attn in base["greedy"]:
                shared = agreement(base["greedy"][attn]["token_ids"], g["token_ids"])
                notes.append(f"- {harness} greedy {attn}: TP={r['config']['tp']} shares {shared} of {GREEDY_TOKENS} "
                             f"leading tokens with TP={base['config']['tp']} per prompt; blocks free after: "
                             f"{g['blocks_free_after']}/{g['num_blocks']}")
        if "collectives_ms_per_step" in r:
            notes.append(f"- {harness} TP={r['config']['tp']} batch-1: collectives cost "
                         f"{r['collectives_ms_per_step']:.3f} ms per decode step ({r['collectives_per_step']} collectives)")
    for r in results:
        b, t, m = r["batch1"]["tokens_per_s"], r["throughput"]["output_tokens_per_s"], r["memory"]
        lines.append(f"| {r['config']['tp']} | {harness} | {b:,.1f} | {b / base['batch1']['tokens_per_s']:.2f} | "
                     f"{t:,.0f} | {t / base['throughput']['output_tokens_per_s']:.2f} | {m['weights_mib']:,.0f} | "
                     f"{m['kv_cache_mib']:,.0f} | {m['kv_capacity_tokens']:,} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ruvoninference.bench.tp")
    parser.add_argument("mode", choices=("run", "engine", "size1", "table"))
    parser.add_argument("files", nargs="*", help="table: the JSON files of `run`")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--model", default="qwen3-8b-random")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attn", default="flash_attention_2")
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--max-len", type=int, default=1024, help="longest prompt and output (nano-vllm: 1024)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--greedy-attn", nargs="*", default=["flash_attention_2", "triton"])
    parser.add_argument("--device", default="cuda", help="cpu: a gloo smoke run of the same code")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    if args.mode == "table":
        text = table([json.loads(Path(f).read_text()) for f in args.files])
        if args.markdown:
            Path(args.markdown).write_text(text)
        print(text)
        return 0
    if args.mode == "size1":
        result = size1(args)
    elif args.mode == "engine":
        result = engine_run(args)
    else:
        result = spawn(run_rank, args.tp, torch.device(args.device), (args,))
    result["device"] = describe(args.device)
    result["command"] = " ".join(["python -m ruvoninference.bench.tp", *(argv or sys.argv[1:])])
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text if len(text) < 4000 else text[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
