"""`generate`, `implementations` and the generation `benchmark`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import (
    BlockSize, Device, Dtype, EnforceEager, JsonPath, KvCacheMemory, MarkdownPath, MaxBatchSize, Model, Prompt, Prompts,
    Scheduler, TensorParallelSize, build_engine, check_parallel, command_line, engine_config, friendly,
    pick_implementations,
)
from ruvon_cli.render import console, err_console
from ruvon_cli.spec_cmd import (
    DraftModel, NgramMax, NumSpeculativeTokens, Speculative, speculation_line, speculative_options,
)


@friendly
def generate(
    ctx: typer.Context,
    text: Prompts = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "--max-length", help="Maximum number of new tokens.")] = 50,
    model: Model = "smollm2-135m",
    device: Device = None,
    dtype: Dtype = None,
    attn: Annotated[str, typer.Option(help="eager, sdpa, flash_attention_2 or triton.")] = "sdpa",
    temperature: Annotated[float, typer.Option(help="0 = greedy; > 0 samples.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass in (0, 1] (1 = off).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for repeatable sampling (0 to 2**64 - 1).")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop when this string appears (repeatable).")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep generating past EOS.")] = False,
    scheduler: Scheduler = "continuous",
    max_batch_size: MaxBatchSize = 32,
    block_size: BlockSize = None,
    kv_cache_memory: KvCacheMemory = None,
    enforce_eager: EnforceEager = False,
    tensor_parallel_size: TensorParallelSize = 1,
    speculative: Speculative = None,
    num_speculative_tokens: NumSpeculativeTokens = 4,
    draft_model: DraftModel = None,
    ngram_max: NgramMax = 4,
    json_path: JsonPath = None,
) -> None:
    """Stream a continuation of --text (or run several prompts as a batch), then show what the run measured."""
    if ctx.invoked_subcommand is not None:
        return
    import time

    from ruvoninference.errors import RuvonError
    from ruvoninference.sampling import SamplingParams

    # Validate before torch and the model load: bad values fail in a blink.
    if not text:
        raise RuvonError('Give a prompt with --text, e.g. cli.py generate --text "Once upon a time".')
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_tokens=max_tokens,
                              stop=tuple(stop or ()), ignore_eos=ignore_eos)

    from ruvoninference.config import dtype_name
    from ruvoninference.environment import describe
    from ruvoninference.stats import generation_stats, kv_cache_use, peak_memory, reset_peak_memory

    spec = speculative_options(speculative, num_speculative_tokens, draft_model, ngram_max)
    engine = build_engine(model, attn, device, dtype, scheduler, max_batch_size, block_size, kv_cache_memory,
                          enforce_eager, tensor_parallel_size=tensor_parallel_size, **spec)
    prompt_ids = [engine.encode(t) for t in text]
    for ids in prompt_ids:  # a prompt that does not fit fails before any output
        engine.check_request(ids, sampling)
    if engine.bundle.random_weights:
        err_console.print(f"[yellow]{model} has random weights: the text is noise, the timings are real.[/yellow]")
    console.print(f"[dim]{model} · {engine.attn} · {engine.device} · {dtype_name(engine.dtype)}"
                  f"{' · CUDA graphs' if engine.use_cuda_graphs else ''}[/dim]")
    streaming = len(text) == 1
    if streaming:
        console.print(text[0], end="", style="bold", highlight=False)

    # One short untimed request first: the first forward pass pays one-time costs (kernel selection, lazy
    # initialization, allocator growth) that would otherwise count as prefill time. Its single token fills
    # no whole KV block, so it leaves nothing in the prefix cache for the timed run to reuse.
    engine.generate([prompt_ids[0][:1]], SamplingParams(max_tokens=2, ignore_eos=True))
    reset_peak_memory(engine.device)
    start = time.perf_counter()
    if streaming:
        def stream(out) -> None:
            console.file.write(out.new_text)
            console.file.flush()

        outputs = engine.generate(prompt_ids, sampling, on_output=stream)
        console.print()
    else:  # a batch shows progress instead of interleaved streams
        with render.progress_bar() as progress:
            done = []
            progress(f"Generating {len(text)} sequences", 0, len(text))

            def count(out) -> None:
                if out.finished:
                    done.append(out)
                    progress(f"Generating {len(text)} sequences", len(done), len(text))

            outputs = engine.generate(prompt_ids, sampling, on_output=count)
    end = time.perf_counter()
    peak, kind = peak_memory(engine.device)
    stats = generation_stats(outputs, start, end, peak, kind).to_dict()
    stats.update(kv_cache_use(engine.kv_cache.nbytes, engine.block_manager.num_blocks * engine.block_size,
                              engine.bundle.config.kv_bytes_per_token(engine.dtype), outputs))
    if engine.speculator is not None:
        console.print(speculation_line(engine.speculator.stats))
    if not streaming:  # soft_wrap: the terminal wraps long lines; no line breaks are added to the text
        for prompt, out in zip(text, outputs):
            console.print(prompt, end="", style="bold", highlight=False, soft_wrap=True)
            console.print(out.text, highlight=False, markup=False, soft_wrap=True)
            console.print(f"[dim]({out.finish_reason}, {len(out.token_ids)} tokens)[/dim]")
    reasons = ", ".join(sorted({o.finish_reason for o in outputs}))
    console.print(render.stats_table(stats, title=f"Generation stats (finished: {reasons})",
                                     caption="timed after one untimed warm-up request"))
    render.write_json(json_path, {
        "command": command_line(),
        "config": {"model": model, "attn": str(engine.attn), "device": str(engine.device),
                   "dtype": dtype_name(engine.dtype), "max_tokens": max_tokens, "temperature": temperature,
                   "top_k": top_k, "top_p": top_p, "seed": seed, "stop": stop or [], "ignore_eos": ignore_eos,
                   **engine_config(engine), **spec},
        "speculative": engine.speculator.stats.as_dict() if engine.speculator is not None else None,
        "environment": describe(engine.device),
        "outputs": [{"prompt": t, "prompt_token_ids": o.prompt_token_ids, "text": o.text, "token_ids": o.token_ids,
                     "finish_reason": o.finish_reason} for t, o in zip(text, outputs)],
        "random_weights": engine.bundle.random_weights,
        "stats": stats,
    })


@friendly
def implementations(device: Device = None, dtype: Dtype = None) -> None:
    """Every attention implementation: available here or not, and why."""
    from rich.table import Table

    from ruvoninference.attention import ALL_IMPLEMENTATIONS, resolve_device, resolve_dtype, unavailable_reasons
    from ruvoninference.config import dtype_name
    from ruvoninference.environment import describe

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    reasons = unavailable_reasons(dev)
    table = Table(title=f"Attention implementations on {dev} ({dtype_name(torch_dtype)})",
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
    import torch

    gpus = torch.cuda.device_count()
    parallel = f"--tensor-parallel-size up to {gpus}" if gpus else "tensor parallelism runs on the CPU (gloo)"
    console.print(f"{gpus} CUDA GPU{'s' * (gpus != 1)} visible: {parallel}")


def run_benchmark(model, text, max_tokens, device, dtype, warmup, repeats, baseline, attn, detailed,
                  json_path, markdown_path, enforce_eager=False, tensor_parallel_size=1):
    from ruvoninference.errors import RuvonError

    if baseline not in (None, "hf"):
        raise RuvonError(f"Unknown baseline '{baseline}'; the only baseline is 'hf' (Hugging Face generate).")
    if warmup < 0:
        raise RuvonError(f"--warmup must be 0 or more, not {warmup}.")
    if repeats < 1:
        raise RuvonError(f"--repeats must be at least 1, not {repeats}.")
    check_parallel(model, tensor_parallel_size, device, baseline)
    from ruvoninference.bench.generation import compare_implementations, to_markdown
    chosen, skipped = pick_implementations(attn, device)
    with render.progress_bar() as progress:
        report = compare_implementations(
            model, text, max_tokens, chosen, device, dtype, warmup=warmup, repeats=repeats,
            baseline_hf=baseline == "hf", skipped=skipped, progress=progress, enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
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
    text: Prompt = "Once upon a time",
    model: Model = "smollm2-135m",
    device: Device = None,
    dtype: Dtype = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed runs (the median is reported).")] = 3,
    detailed: Annotated[bool, typer.Option("--detailed", help="Split prefill and decode.")] = False,
    baseline: Annotated[Optional[str], typer.Option(help="'hf' adds Hugging Face generate as a row.")] = None,
    attn: Annotated[Optional[list[str]], typer.Option(help="Only these implementations (repeatable).")] = None,
    enforce_eager: EnforceEager = False,
    tensor_parallel_size: TensorParallelSize = 1,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
) -> None:
    """Every available implementation on the same prompt: throughput, TTFT, memory, and token agreement."""
    if ctx.invoked_subcommand is not None:
        return
    run_benchmark(model, text, max_tokens, device, dtype, warmup, repeats, baseline, attn, detailed,
                  json_path, markdown_path, enforce_eager, tensor_parallel_size)
