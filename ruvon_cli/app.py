"""The command line: parse arguments, call the library, render what it returns."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.render import console, err_console

# Quiet the libraries' own logging and tqdm bars: we draw our own progress, and warnings about
# generation flags we set on purpose would bury the output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="ruvoninference: run and measure LLM inference optimizations on your own machine.",
)
generate_app = typer.Typer(invoke_without_command=True, pretty_exceptions_enable=False)
kernel_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help="Our Triton kernel.")
app.add_typer(generate_app, name="generate", help="Generate text (default), list implementations, benchmark.")
app.add_typer(kernel_app, name="kernel")

Model = Annotated[str, typer.Option("--model", "-m", help="smollm2-135m (embedded), gpt2-random, a Hub id or a folder.")]
Device = Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when present).")]
Dtype = Annotated[Optional[str], typer.Option(help="float32, float16 or bfloat16 (default: fp32 on CPU, fp16 on CUDA).")]
JsonPath = Annotated[Optional[str], typer.Option("--json", help="Also write the full result as JSON here.")]
MarkdownPath = Annotated[Optional[str], typer.Option("--markdown", help="Also write a markdown table here.")]


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def friendly(fn):
    """User errors become one sentence on stderr and exit code 2; anything else is a real bug and shows."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ruvoninference.errors import RuvonError

        try:
            _quiet_libraries()
            return fn(*args, **kwargs)
        except RuvonError as exc:
            err_console.print(f"[bold red]Error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None
        except Exception as exc:
            import torch

            if isinstance(exc, torch.OutOfMemoryError):
                err_console.print("[bold red]Error:[/bold red] the GPU ran out of memory; try a shorter prompt, "
                                  "fewer tokens or a smaller dtype.", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            raise

    return wrapper


def _command_line() -> str:
    return shlex.join(["cli.py", *sys.argv[1:]])


@generate_app.callback()
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
        "command": _command_line(),
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


def _pick_implementations(attn: list[str] | None, device: str | None):
    from ruvoninference.attention import get_available_implementations, parse_implementation, unavailable_reasons

    available = get_available_implementations(device)
    reasons = {str(k): v for k, v in unavailable_reasons(device).items()}
    if attn:
        chosen = [parse_implementation(a) for a in attn]
        for impl in chosen:
            if impl not in available:
                from ruvoninference.errors import RuvonError

                raise RuvonError(f"Attention implementation '{impl}' is unavailable: {reasons[str(impl)]}.")
        return chosen, {}
    return available, reasons


def _run_benchmark(model, text, max_tokens, device, dtype, warmup, repeats, baseline, attn, detailed,
                   json_path, markdown_path):
    from ruvoninference.benchmark import compare_implementations, to_markdown
    from ruvoninference.errors import RuvonError

    if baseline not in (None, "hf"):
        raise RuvonError(f"Unknown baseline '{baseline}'; the only baseline is 'hf' (Hugging Face generate).")
    if warmup < 0 or repeats < 1:
        raise RuvonError("--warmup must be >= 0 and --repeats >= 1.")
    chosen, skipped = _pick_implementations(attn, device)
    with render.progress_bar() as progress:
        report = compare_implementations(
            model, text, max_tokens, chosen, device, dtype, warmup=warmup, repeats=repeats,
            baseline_hf=baseline == "hf", skipped=skipped, progress=progress,
        )
    data = report.to_dict()
    data["command"] = _command_line()
    console.print(render.benchmark_table(data, detailed))
    for line in render.skipped_lines(report.skipped):
        console.print(line)
    render.write_json(json_path, data)
    render.write_text(markdown_path, to_markdown(data))
    return data


@friendly
def benchmark(
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
    _run_benchmark(model, text, max_tokens, device, dtype, warmup, repeats, baseline, attn, detailed,
                   json_path, markdown_path)


for target in (generate_app, app):
    target.command("implementations")(implementations)
    target.command("benchmark")(benchmark)


@app.command()
@friendly
def flash(
    text: Annotated[str, typer.Option("--text", "-t", help="The prompt.")] = "Once upon a time",
    max_length: Annotated[int, typer.Option(help="New tokens per generation run.")] = 100,
    show_memory: Annotated[bool, typer.Option("--show-memory", help="Also sweep the context length.")] = False,
    lengths: Annotated[Optional[list[int]], typer.Option("--length", help="Context lengths for --show-memory.")] = None,
    model: Model = "smollm2-135m",
    device: Device = None,
    dtype: Dtype = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per measurement.")] = 3,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
) -> None:
    """Eager vs SDPA vs FlashAttention-2 (and our Triton kernel): speed, and memory as the context grows."""
    from ruvoninference.attention import AttentionImplementation, resolve_device
    from ruvoninference.attention.benchmarks import AttentionBenchmark
    from ruvoninference.benchmark import scaling_markdown, to_markdown

    dev = resolve_device(device)
    chosen, skipped = _pick_implementations(None, str(dev))
    if AttentionImplementation.FLASH_ATTENTION_2.value in skipped:
        console.print(f"[yellow]FlashAttention-2 is not run: {skipped['flash_attention_2']}.[/yellow] "
                      "Comparing what runs here.")
    for line in render.skipped_lines({k: v for k, v in skipped.items() if k != "flash_attention_2"}):
        console.print(line)
    data = _run_benchmark(model, text, max_length, str(dev), dtype, 1, repeats, None, [str(c) for c in chosen],
                          True, None, None)
    data["skipped"] = skipped
    if show_memory:
        if lengths is None:
            lengths = [512, 1024, 2048, 4096, 8192] if dev.type == "cuda" else [128, 256, 512, 1024]
        bench = AttentionBenchmark(model, str(dev), dtype, repeats=repeats)
        rows = []
        with render.progress_bar() as progress:
            bench.progress = progress
            for impl in chosen:
                loaded = bench.load(impl)
                usable = [n for n in lengths if n <= loaded.context_length]
                if len(usable) < len(lengths):
                    console.print(f"[yellow]Lengths above {loaded.context_length} (the context of {model}) "
                                  "are left out.[/yellow]")
                rows += [r.to_dict() for r in bench.sequence_length_scaling(impl, text, usable, loaded=loaded)]
                del loaded
        label = ("peak CUDA memory above the weights" if dev.type == "cuda"
                 else "peak PyTorch CPU allocations above the weights (profiler)")
        console.print(render.scaling_table(rows, label))
        data["memory_scaling"] = {"rows": rows, "memory": label, "lengths": lengths}
    render.write_json(json_path, data)
    md = to_markdown(data)
    if show_memory:
        md += "\n" + scaling_markdown(data["memory_scaling"])
    render.write_text(markdown_path, md)


@kernel_app.command("benchmark")
@friendly
def kernel_benchmark(
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write a TFLOP/s plot (PNG) here.")] = None,
    seq_len: Annotated[Optional[list[int]], typer.Option("--seq-len", help="Sequence lengths (repeatable).")] = None,
    head_dim: Annotated[Optional[list[int]], typer.Option("--head-dim", help="Head dims (repeatable).")] = None,
) -> None:
    """Our Triton FlashAttention vs standard attention, SDPA backends and FlashAttention-2 (GPU)."""
    from ruvoninference.kernels import benchmark as kb

    with render.progress_bar() as progress:
        report = kb.run_benchmark(seq_len or kb.DEFAULT_SEQ_LENS, head_dim or kb.DEFAULT_HEAD_DIMS,
                                  progress=progress)
    md = kb.to_markdown(report, _command_line())
    console.print(md, markup=False, highlight=False)
    data = report.to_dict()
    data["command"] = _command_line()
    render.write_json(json_path, data)
    render.write_text(markdown_path, md)
    if plot:
        kb.plot(report, plot)
        err_console.print(f"[dim]Wrote {plot}[/dim]")


def main() -> None:
    app()
