"""`generate`, `implementations` and the generation `benchmark`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import Device, Dtype, JsonPath, MarkdownPath, Model, command_line, friendly, pick_implementations
from ruvon_cli.render import console, err_console


@friendly
def generate(
    ctx: typer.Context,
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="The prompt to continue.")] = None,
    max_length: Annotated[int, typer.Option(help="Maximum number of new tokens.")] = 50,
    model: Model = "smollm2-135m",
    device: Device = None,
    dtype: Dtype = None,
    attn: Annotated[str, typer.Option(help="eager, sdpa, flash_attention_2 or triton.")] = "sdpa",
    temperature: Annotated[float, typer.Option(help="0 = greedy; > 0 samples.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass in (0, 1] (1 = off).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for repeatable sampling.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop when this string appears (repeatable).")] = None,
    json_path: JsonPath = None,
) -> None:
    """Stream a continuation of --text, then show what the run measured."""
    if ctx.invoked_subcommand is not None:
        return
    from ruvoninference.attention import load_model_with_attention
    from ruvoninference.environment import describe
    from ruvoninference.errors import RuvonError
    from ruvoninference.generation import StopRule, encode_prompts, generate as run_generation
    from ruvoninference.sampling import SamplingParams

    if text is None:
        raise RuvonError('Give a prompt with --text, e.g. cli.py generate --text "Once upon a time".')
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    StopRule(max_length)  # validate before the model loads: bad values fail in a blink
    with render.progress_bar() as progress:
        progress(f"Loading {model} ({attn})", 0, 1)
        loaded = load_model_with_attention(model, attn, device, dtype, progress=progress)
    encode_prompts(loaded, [text], max_length)  # a prompt that does not fit fails before any output
    if loaded.random_weights:
        err_console.print(f"[yellow]{model} has random weights: the text is noise, the timings are real.[/yellow]")
    console.print(f"[dim]{model} · {loaded.implementation} · {loaded.device} · "
                  f"{str(loaded.dtype).removeprefix('torch.')}[/dim]")
    console.print(text, end="", style="bold", highlight=False)

    def on_token(_row: int, _token: int, piece: str) -> None:
        console.file.write(piece)
        console.file.flush()

    result = run_generation(loaded, text, max_length, sampling, stop_strings=stop or (), on_token=on_token)
    console.print()
    seq, stats = result.sequences[0], result.stats.to_dict()
    console.print(render.stats_table(stats, title=f"Generation stats (finished: {seq.finish_reason})"))
    render.write_json(json_path, {
        "command": command_line(),
        "config": {"model": model, "attn": str(loaded.implementation), "device": str(loaded.device),
                   "dtype": str(loaded.dtype).removeprefix("torch."), "max_new_tokens": max_length,
                   "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
                   "stop": stop or []},
        "environment": describe(loaded.device),
        "prompt": text, "prompt_token_ids": seq.prompt_ids, "text": seq.text, "token_ids": seq.token_ids,
        "logprobs": seq.logprobs, "finish_reason": seq.finish_reason, "random_weights": loaded.random_weights,
        "stats": stats,
    })


@friendly
def implementations(device: Device = None, dtype: Dtype = None) -> None:
    """Every attention implementation: available here or not, and why."""
    from rich.table import Table

    from ruvoninference.attention import ALL_IMPLEMENTATIONS, resolve_device, resolve_dtype, unavailable_reasons
    from ruvoninference.environment import describe

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    reasons = unavailable_reasons(dev)
    table = Table(title=f"Attention implementations on {dev} ({str(torch_dtype).removeprefix('torch.')})",
                  caption=render.environment_line(describe(dev)))
    table.add_column("implementation")
    table.add_column("status")
    table.add_column("why")
    for impl in ALL_IMPLEMENTATIONS:
        if impl in reasons:
            table.add_row(impl.value, "[red]unavailable[/red]", reasons[impl])
        else:
            table.add_row(impl.value, "[green]available[/green]", "")
    console.print(table)


def run_benchmark(model, text, max_tokens, device, dtype, warmup, repeats, baseline, attn, detailed,
                   json_path, markdown_path):
    from ruvoninference.bench.generation import compare_implementations, to_markdown
    from ruvoninference.errors import RuvonError

    if baseline not in (None, "hf"):
        raise RuvonError(f"Unknown baseline '{baseline}'; the only baseline is 'hf' (Hugging Face generate).")
    if warmup < 0 or repeats < 1:
        raise RuvonError("--warmup must be >= 0 and --repeats >= 1.")
    chosen, skipped = pick_implementations(attn, device)
    with render.progress_bar() as progress:
        report = compare_implementations(
            model, text, max_tokens, chosen, device, dtype, warmup=warmup, repeats=repeats,
            baseline_hf=baseline == "hf", skipped=skipped, progress=progress,
        )
    data = report.to_dict()
    data["command"] = command_line()
    console.print(render.benchmark_table(data, detailed))
    for line in render.skipped_lines(report.skipped):
        console.print(line)
    render.write_json(json_path, data)
    render.write_text(markdown_path, to_markdown(data))
    return data


@friendly
def benchmark(
    ctx: typer.Context,
    max_tokens: Annotated[int, typer.Option(help="New tokens per run.")] = 50,
    text: Annotated[str, typer.Option("--text", "-t", help="The prompt.")] = "Once upon a time",
    model: Model = "smollm2-135m",
    device: Device = None,
    dtype: Dtype = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed runs (the median is reported).")] = 3,
    detailed: Annotated[bool, typer.Option("--detailed", help="Split prefill and decode.")] = False,
    baseline: Annotated[Optional[str], typer.Option(help="'hf' adds Hugging Face generate as a row.")] = None,
    attn: Annotated[Optional[list[str]], typer.Option(help="Only these implementations (repeatable).")] = None,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
) -> None:
    """Every available implementation on the same prompt: throughput, TTFT, memory, and token agreement."""
    if ctx.invoked_subcommand is not None:
        return
    run_benchmark(model, text, max_tokens, device, dtype, warmup, repeats, baseline, attn, detailed,
                   json_path, markdown_path)
