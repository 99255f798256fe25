"""`benchmark throughput`: many random requests through the engine, per scheduler, beside a baseline."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import (
    BlockSize, Device, Dtype, EnforceEager, JsonPath, KvCacheMemory, MarkdownPath, Model, build_engine, command_line,
    engine_config, friendly,
)
from ruvon_cli.render import console


@friendly
def throughput(
    model: Model = "smollm2-135m",
    attn: Annotated[str, typer.Option(help="eager, sdpa, flash_attention_2 or triton.")] = "sdpa",
    device: Device = None,
    dtype: Dtype = None,
    num_seqs: Annotated[int, typer.Option(help="Requests in the workload.")] = 256,
    min_input_len: Annotated[int, typer.Option(help="Shortest prompt (tokens).")] = 100,
    max_input_len: Annotated[int, typer.Option(help="Longest prompt (tokens).")] = 1024,
    min_output_len: Annotated[int, typer.Option(help="Fewest new tokens.")] = 100,
    max_output_len: Annotated[int, typer.Option(help="Most new tokens.")] = 1024,
    scheduler: Annotated[Optional[list[str]], typer.Option(
        help="continuous, static or sequential; repeat to compare them on the same workload.")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most sequences in one step.")] = 256,
    block_size: BlockSize = None,
    kv_cache_memory: KvCacheMemory = None,
    enforce_eager: EnforceEager = False,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts and lengths.")] = 0,
    baseline: Annotated[Optional[str], typer.Option(
        help="'hf': transformers' continuous batching (CUDA) or padded generate batches (CPU).")] = None,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
) -> None:
    """Offline throughput on random prompts (EOS ignored): tokens/s, step times, KV blocks, vs a baseline."""
    from ruvoninference.bench.throughput import benchmark_throughput
    from ruvoninference.errors import RuvonError

    if baseline not in (None, "hf"):
        raise RuvonError(f"Unknown baseline '{baseline}'; the only baseline is 'hf'.")
    if num_seqs < 1 or not (1 <= min_input_len <= max_input_len) or not (1 <= min_output_len <= max_output_len):
        raise RuvonError("--num-seqs must be >= 1 and each --min-…-len between 1 and its --max-…-len.")
    policies = scheduler or ["continuous"]
    runs = []
    for i, policy in enumerate(policies):
        engine = build_engine(model, attn, device, dtype, policy, max_batch_size, block_size, kv_cache_memory,
                              enforce_eager)
        with render.progress_bar() as progress:
            result = benchmark_throughput(
                engine, model, num_seqs, (min_input_len, max_input_len), (min_output_len, max_output_len), seed,
                baseline_hf=baseline == "hf" and i == len(policies) - 1, progress=progress,
            )
        result["config"].update(engine_config(engine))
        runs.append(result)
        del engine
    data = {"command": command_line(), "runs": runs}
    console.print(render_table(runs))
    render.write_json(json_path, data)
    render.write_text(markdown_path, to_markdown(data))


def _rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for r in runs:
        e = r["engine"]
        bw = e.get("decode_bandwidth_vs_copy")
        rows.append([
            r["config"]["scheduler"], f"{e['output_tokens_per_s']:,.0f}", f"{e['total_tokens_per_s']:,.0f}",
            f"{e['decode_steps'].get('p50_ms', 0):,.1f}", f"{e['decode_steps'].get('p99_ms', 0):,.1f}",
            str(e["kv_blocks_used_max"]), str(e["preemptions"]), "—" if bw is None else f"{100 * bw:.0f}%",
        ])
    hf = runs[-1].get("hf")
    if hf:
        rows.append(["HF", f"{hf['output_tokens_per_s']:,.0f}", f"{hf['total_tokens_per_s']:,.0f}",
                     "—", "—", "—", "—", "—"])
    return rows


HEADERS = ["scheduler", "out tok/s", "total tok/s", "decode p50 ms", "decode p99 ms", "KV blocks used", "preempted",
           "decode BW / copy"]
SHORT_HEADERS = ["run", "out\ntok/s", "total\ntok/s", "decode\np50 ms", "decode\np99 ms", "KV\nused", "pre-\nempt",
                 "BW/\ncopy"]


def render_table(runs: list[dict]):
    from rich.table import Table

    cfg = runs[0]["config"]
    caption = [render.environment_line(runs[0]["environment"]),
               f"KV blocks: {runs[0]['engine']['kv_blocks_total']} of {cfg['block_size']} tokens · "
               "BW/copy: decode bytes/s over a device copy's"]
    if runs[-1].get("hf"):
        caption.append(f"HF: {runs[-1]['hf']['method']} · ours ({runs[-1]['config']['scheduler']}) / HF: "
                       f"{runs[-1]['speedup_vs_hf']:.2f}x")
    table = Table(title=f"Throughput: {cfg['num_seqs']} requests, {cfg['model']} · {cfg['attn']} · "
                        f"{cfg['device']} · {cfg['dtype']}", caption="\n".join(caption))
    for h in SHORT_HEADERS:
        table.add_column(h, justify="left" if h == "run" else "right")
    for row in _rows(runs):
        table.add_row(*row)
    return table


def to_markdown(data: dict) -> str:
    runs = data["runs"]
    env, cfg = runs[0]["environment"], runs[0]["config"]
    lines = [
        f"Device: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, triton {env['triton']}, "
        f"flash-attn {env['flash_attn']}.",
        f"Model {cfg['model']}, {cfg['attn']}, {cfg['dtype']}; {cfg['num_seqs']} requests, inputs "
        f"{cfg['input_lens'][0]}-{cfg['input_lens'][1]} and outputs {cfg['output_lens'][0]}-{cfg['output_lens'][1]} "
        f"tokens (seed {cfg['seed']}, EOS ignored): {cfg['prompt_tokens']} prompt and {cfg['output_tokens']} output "
        f"tokens; block size {cfg['block_size']}, max batch {cfg['max_batch_size']}, CUDA graphs {cfg['cuda_graphs']}.",
        f"Command: `{data['command']}`",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(runs)]
    if runs[-1].get("hf"):
        lines.append(f"\nHF: {runs[-1]['hf']['method']}.")
    e = runs[-1]["engine"]
    if e.get("decode_bytes_per_s"):
        lines.append(f"\nDecode steps moved {e['decode_bytes_per_s'] / 1e9:,.1f} GB/s (weights + KV read); a "
                     f"device-to-device copy in the same run moved {e['copy_bytes_per_s'] / 1e9:,.1f} GB/s "
                     f"(read + written).")
    if runs[-1].get("speedup_vs_hf"):
        lines.append(f"\nOurs ({runs[-1]['config']['scheduler']}) over the baseline: {runs[-1]['speedup_vs_hf']:.2f}x "
                     "output tokens/s.")
    return "\n".join(lines) + "\n"
