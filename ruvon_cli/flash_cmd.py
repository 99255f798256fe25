"""`flash`: the attention backends compared in generation, and memory as the context grows."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ruvon_cli import generate_cmd, render
from ruvon_cli.common import Device, Dtype, JsonPath, MarkdownPath, Model, friendly, pick_implementations
from ruvon_cli.render import console


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
    from ruvoninference.bench.prefill import AttentionBenchmark, default_lengths, lengths_within_context
    from ruvoninference.bench.generation import scaling_markdown, to_markdown

    dev = resolve_device(device)
    chosen, skipped = pick_implementations(None, str(dev))
    bench = AttentionBenchmark(model, str(dev), dtype, repeats=repeats)
    if show_memory:
        # Check the lengths against the context before minutes of generation runs, not after.
        loaded = bench.load(chosen[0])
        usable, left_out = lengths_within_context(lengths or default_lengths(dev.type), loaded.context_length, model)
        context = loaded.context_length
        del loaded
    if AttentionImplementation.FLASH_ATTENTION_2.value in skipped:
        console.print(f"[yellow]FlashAttention-2 is not run: {skipped['flash_attention_2']}.[/yellow] "
                      "Comparing what runs here.")
    for line in render.skipped_lines({k: v for k, v in skipped.items() if k != "flash_attention_2"}):
        console.print(line)
    data = generate_cmd.run_benchmark(model, text, max_length, str(dev), dtype, 1, repeats, None, [str(c) for c in chosen],
                          True, None, None)
    data["skipped"] = skipped
    if show_memory:
        if left_out:
            console.print(f"[yellow]Lengths above {context} (the context of {model}) are left out: "
                          f"{', '.join(map(str, left_out))}.[/yellow]")
        rows = []
        with render.progress_bar() as progress:
            bench.progress = progress
            for impl in chosen:
                rows += [r.to_dict() for r in bench.sequence_length_scaling(impl, text, usable)]
        label = ("peak CUDA memory above the weights" if dev.type == "cuda"
                 else "peak PyTorch CPU allocations above the weights (profiler)")
        console.print(render.scaling_table(rows, label))
        ran = [line for r in rows for line in ran_as_lines(r)]
        for line in ran:
            console.print(f"[dim]{line}[/dim]", highlight=False)
        data["memory_scaling"] = {"rows": rows, "memory": label, "lengths": usable, "left_out": left_out}
    render.write_json(json_path, data)
    md = to_markdown(data)
    if show_memory:
        md += "\n" + scaling_markdown(data["memory_scaling"])
        md += "".join(f"\n- {line}" for line in ran) + "\n" if ran else ""
    render.write_text(markdown_path, md)


def ran_as_lines(row: dict) -> list[str]:
    """What one backend's profiled prefill ran for attention: GPU kernels where recorded, else the operators."""
    impl, n = row["implementation"], row["sequence_length"]
    if row.get("attention_kernels"):
        kernels = ", ".join(f"{k['name']} x{k['launches']} ({k['cuda_us'] / 1000:.2f} ms)"
                            for k in row["attention_kernels"])
        return [f"{impl} attention at {n} tokens ran the GPU kernels: {kernels}"]
    if row.get("attention_ops") is None:
        return []
    ops = ", ".join(op.removeprefix("aten::") for op in row["attention_ops"])
    if not ops:
        return [f"{impl} attention at {n} tokens: the profiler recorded no attention operator"]
    return [f"{impl} attention at {n} tokens ran the operators: {ops}"]
