"""`benchmark throughput`: many random requests through the engine, per scheduler, beside a baseline."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import (
    BlockSize, Device, Dtype, EnforceEager, JsonPath, KvCacheMemory, MarkdownPath, Model, TensorParallelSize,
    check_parallel, command_line, engine_config, friendly, parse_size,
)
from ruvon_cli.render import console


@friendly
def throughput(
    model: Model = "smollm2-135m",
    attn: Annotated[str, typer.Option(help="eager, sdpa, flash_attention_2 or triton.")] = "sdpa",
    device: Device = None,
    dtype: Dtype = None,
    workload: Annotated[str, typer.Option(
        help="nano-vllm: exactly nano-vllm's bench.py (Python random, seed 0, ids 0-10000); random: vLLM's random "
             "dataset (torch generator, ids over the vocabulary). The length options apply to both.")] = "nano-vllm",
    temperature: Annotated[float, typer.Option(
        help="Sampling temperature of ours and the baseline (nano-vllm's 0.6); above 0, ours also runs greedy.")] = 0.6,
    num_seqs: Annotated[int, typer.Option(help="Requests in the workload.")] = 256,
    min_input_len: Annotated[Optional[int], typer.Option(
        help="Shortest prompt (tokens; default 100, or --max-input-len when that is smaller).")] = None,
    max_input_len: Annotated[int, typer.Option(help="Longest prompt (tokens).")] = 1024,
    min_output_len: Annotated[Optional[int], typer.Option(
        help="Fewest new tokens (default 100, or --max-output-len when that is smaller).")] = None,
    max_output_len: Annotated[int, typer.Option(help="Most new tokens.")] = 1024,
    scheduler: Annotated[Optional[list[str]], typer.Option(
        help="continuous, static or sequential; repeat to compare them on the same workload.")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most sequences in one step.")] = 256,
    max_num_batched_tokens: Annotated[Optional[int], typer.Option(
        help="Most tokens in one step (default: the engine's, 8192 on CUDA, 2048 on a CPU).")] = None,
    mixed_batches: Annotated[bool, typer.Option(
        "--mixed-batches/--no-mixed-batches",
        help="Decodes ride along in prefill steps (continuous scheduler only).")] = True,
    block_size: BlockSize = None,
    kv_cache_memory: KvCacheMemory = None,
    enforce_eager: EnforceEager = False,
    tensor_parallel_size: TensorParallelSize = 1,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts and lengths.")] = 0,
    warmup_tokens: Annotated[int, typer.Option(
        help="New tokens of the warm-up generate before each timed one (nano-vllm's 64).")] = 64,
    baseline: Annotated[Optional[str], typer.Option(
        help="'hf': transformers' continuous batching (CUDA) or padded generate batches (CPU).")] = None,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
) -> None:
    """Offline throughput on random prompts (EOS ignored), sampled and greedy: tokens/s, step times, vs a baseline."""
    import math

    from ruvoninference.bench.throughput import WORKLOADS, benchmark_throughput
    from ruvoninference.errors import RuvonError

    if baseline not in (None, "hf"):
        raise RuvonError(f"Unknown baseline '{baseline}'; the only baseline is 'hf'.")
    if workload not in WORKLOADS:
        raise RuvonError(f"Unknown workload '{workload}'; use one of: {', '.join(WORKLOADS)}.")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise RuvonError(f"--temperature must be a number >= 0 (0 means greedy only), not {temperature}.")
    if num_seqs < 1:
        raise RuvonError(f"--num-seqs must be at least 1, not {num_seqs}.")
    # A maximum below a default minimum lowers that minimum; minimums given explicitly are checked as given.
    min_input_len = min(100, max_input_len) if min_input_len is None else min_input_len
    min_output_len = min(100, max_output_len) if min_output_len is None else min_output_len
    for kind, low, high in (("input", min_input_len, max_input_len), ("output", min_output_len, max_output_len)):
        if not 1 <= low <= high:
            raise RuvonError(f"--min-{kind}-len ({low}) must be at least 1 and at most --max-{kind}-len ({high}).")
    if warmup_tokens < 1:
        raise RuvonError(f"--warmup-tokens must be at least 1, not {warmup_tokens}.")
    if max_num_batched_tokens is not None and max_num_batched_tokens < 1:
        raise RuvonError(f"--max-num-batched-tokens must be at least 1, not {max_num_batched_tokens}.")
    budget = parse_size(kv_cache_memory) if kv_cache_memory is not None else None
    check_parallel(model, tensor_parallel_size, device, baseline)
    cut = f", {tensor_parallel_size} processes" if tensor_parallel_size != 1 else ""
    policies = scheduler or ["continuous"]
    runs = []
    for i, policy in enumerate(policies):
        def make_engine(bundle, progress, policy=policy):
            """bundle None: load the model; else reuse its weights, except tensor-parallel, where every rank
            loads its shard by name again (the library stops the previous engine's workers first)."""
            from ruvoninference.engine import Engine

            reuse = bundle is not None and tensor_parallel_size == 1
            progress(f"A fresh engine on {model}'s weights" if reuse else f"Loading {model} ({attn}{cut})", 0, 1)
            return Engine(bundle if reuse else model, attn, device, dtype, max_batch_size=max_batch_size,
                          block_size=block_size, scheduler=policy, max_num_batched_tokens=max_num_batched_tokens,
                          kv_cache_memory=budget, enforce_eager=enforce_eager, mixed_batches=mixed_batches,
                          progress=progress, tensor_parallel_size=tensor_parallel_size)

        with render.progress_bar() as progress:
            result = benchmark_throughput(
                make_engine, model, workload, num_seqs, (min_input_len, max_input_len),
                (min_output_len, max_output_len), seed, temperature,
                baseline_hf=baseline == "hf" and i == len(policies) - 1, warmup_tokens=warmup_tokens,
                describe_engine=lambda e: {**engine_config(e), "mixed_batches": e.scheduler.mixed},
                progress=progress,
            )
        runs.append(result)
    data = {"command": command_line(), "runs": runs}
    console.print(render_table(runs))
    render.write_json(json_path, data)
    render.write_text(markdown_path, to_markdown(data))
    failed = runs[-1].get("hf", {}).get("error")
    if failed:  # ours is printed and written; the run still fails, so scripts notice
        render.err_console.print(f"[bold red]The baseline failed:[/bold red] {failed}", highlight=False,
                                 soft_wrap=True)
        raise typer.Exit(1)


def _label(scheduler: str, result: dict) -> str:
    t = result.get("temperature")  # absent from results older than --temperature (greedy)
    return scheduler if t is None else f"{scheduler} T={t:g}" if t > 0 else f"{scheduler} greedy"


def _row(label: str, e: dict) -> list[str]:
    bw = e.get("decode_bandwidth_vs_copy")
    return [label, f"{e['output_tokens_per_s']:,.0f}", f"{e['total_tokens_per_s']:,.0f}",
            f"{e['decode_steps'].get('p50_ms', 0):,.1f}", f"{e['decode_steps'].get('p99_ms', 0):,.1f}",
            str(e["kv_blocks_used_max"]), str(e["preemptions"]), "—" if bw is None else f"{100 * bw:.0f}%"]


def _rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for r in runs:
        for key in ("engine", "engine_greedy"):
            if key in r:
                rows.append(_row(_label(r["config"]["scheduler"], r[key]), r[key]))
    hf = runs[-1].get("hf")
    if hf:
        t = runs[-1]["engine"].get("temperature")
        label = _label("HF", {"temperature": t}) if t is not None else "HF"
        if "error" in hf:
            rows.append([label, "failed", "—", "—", "—", "—", "—", "—"])
        else:
            rows.append([label, f"{hf['output_tokens_per_s']:,.0f}", f"{hf['total_tokens_per_s']:,.0f}",
                         "—", "—", "—", "—", "—"])
    return rows


def _workload_line(cfg: dict) -> str:
    lens = (f"inputs {cfg['input_lens'][0]}-{cfg['input_lens'][1]} and outputs {cfg['output_lens'][0]}-"
            f"{cfg['output_lens'][1]} tokens")
    if cfg.get("workload") == "nano-vllm":
        what = (f"nano-vllm's bench.py workload (Python random, seed {cfg['seed']}: {cfg['num_seqs']} prompts of ids "
                f"{cfg['token_ids'][0]}-{cfg['token_ids'][1]}, {lens})")
    else:
        what = f"{cfg['num_seqs']} random requests ({lens}, seed {cfg['seed']})"
    return f"{what}, EOS ignored: {cfg['prompt_tokens']} prompt and {cfg['output_tokens']} output tokens"


def _ratio_line(runs: list[dict]) -> str | None:
    ratios = [f"{r['config']['scheduler']} {r['sampled_vs_greedy']:.2f}x" for r in runs if "sampled_vs_greedy" in r]
    return "sampled / greedy: " + ", ".join(ratios) if ratios else None


HEADERS = ["run", "out tok/s", "total tok/s", "decode p50 ms", "decode p99 ms", "KV blocks used", "preempted",
           "decode BW / copy"]
SHORT_HEADERS = ["run", "out\ntok/s", "total\ntok/s", "decode\np50 ms", "decode\np99 ms", "KV\nused", "pre-\nempt",
                 "BW/\ncopy"]


def render_table(runs: list[dict]):
    from rich.table import Table

    cfg = runs[0]["config"]
    caption = [render.environment_line(runs[0]["environment"]),
               f"KV blocks: {runs[0]['engine']['kv_blocks_total']} of {cfg['block_size']} tokens · "
               "BW/copy: decode bytes/s over a device copy's"]
    if _ratio_line(runs):
        caption.append(_ratio_line(runs))
    if runs[-1].get("hf", {}).get("error"):
        caption.append(f"HF: {runs[-1]['hf']['method']} failed (see the JSON)")
    elif runs[-1].get("hf"):
        caption.append(f"HF: {runs[-1]['hf']['method']} · ours ({runs[-1]['config']['scheduler']}) / HF: "
                       f"{runs[-1]['speedup_vs_hf']:.2f}x")
    workload = "nano-vllm workload" if cfg.get("workload") == "nano-vllm" else "requests"
    table = Table(title=f"Throughput: {cfg['num_seqs']} {workload}, {cfg['model']} · {cfg['attn']} · "
                        f"{cfg['device']} · {cfg['dtype']}{_parallel(cfg)}", caption="\n".join(caption))
    for h in SHORT_HEADERS:
        table.add_column(h, justify="left" if h == "run" else "right")
    for row in _rows(runs):
        table.add_row(*row)
    return table


def _parallel(cfg: dict, separator: str = " · ") -> str:
    n = cfg.get("tensor_parallel_size", 1)  # absent from results older than -tp
    return f"{separator}tensor-parallel over {n} processes" if n > 1 else ""


def _settings(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def to_markdown(data: dict) -> str:
    runs = data["runs"]
    env, cfg = runs[0]["environment"], runs[0]["config"]
    lines = [
        f"Device: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, triton {env['triton']}, "
        f"flash-attn {env['flash_attn']}.",
        f"Model {cfg['model']}, {cfg['attn']}, {cfg['dtype']}{_parallel(cfg, ', ')}; {_workload_line(cfg)}; block size {cfg['block_size']}, "
        f"max batch {cfg['max_batch_size']}, {cfg['max_num_batched_tokens']} batched tokens, "
        f"CUDA graphs {cfg['cuda_graphs']}" + (f", mixed batches {cfg['mixed_batches']}." if "mixed_batches" in cfg
                                               else "."),
    ]
    if "sampling" in cfg:
        warm = runs[0]["engine"]["warmup"]
        lines.append(f"Sampling: {_settings(cfg['sampling'])}. Ours: one warm-up generate ({warm['max_tokens']} "
                     f"tokens of '{warm['prompt']}'), then one timed generate of the workload; throughput = output "
                     "tokens / its wall time. Greedy runs in a fresh engine on the same weights.")
    lines += [f"Command: `{data['command']}`", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(runs)]
    if _ratio_line(runs):
        lines.append(f"\nOurs {_ratio_line(runs)} output tokens/s (same prompts and lengths, fresh engines).")
        for r in runs:
            if "sampled_vs_greedy_per_cpu_s" in r:
                lines.append(f"Process CPU time ({r['config']['scheduler']}): sampled {r['engine']['process_cpu_s']:,.1f} s, "
                             f"greedy {r['engine_greedy']['process_cpu_s']:,.1f} s; sampled / greedy per CPU-second "
                             f"{r['sampled_vs_greedy_per_cpu_s']:.2f}x.")
    hf = runs[-1].get("hf")
    if hf:
        lines.append(f"\nHF: {hf['method']}" + (f" failed: {hf['error']}" if "error" in hf else "."))
        if "settings" in hf:
            lines.append(f"Its settings: {_settings(hf['settings'])}.")
            lines.append(f"Its warm-up: {hf['warmup']['what']}.")
    e = runs[-1]["engine"]
    if e.get("decode_bytes_per_s"):
        lines.append(f"\nDecode steps moved {e['decode_bytes_per_s'] / 1e9:,.1f} GB/s (weights + KV read); a "
                     f"device-to-device copy in the same run moved {e['copy_bytes_per_s'] / 1e9:,.1f} GB/s "
                     f"(read + written).")
    if runs[-1].get("speedup_vs_hf"):
        lines.append(f"\nOurs ({_label(runs[-1]['config']['scheduler'], e)}) over the baseline: "
                     f"{runs[-1]['speedup_vs_hf']:.2f}x output tokens/s.")
    return "\n".join(lines) + "\n"
