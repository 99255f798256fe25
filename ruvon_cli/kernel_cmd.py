"""`kernel benchmark`: our Triton kernels head to head with the baselines (GPU)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import Device, Dtype, JsonPath, MarkdownPath, Model, command_line, friendly, pick_implementations
from ruvon_cli.render import console, err_console

@friendly
def kernel_benchmark(
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write a TFLOP/s plot (PNG) here.")] = None,
    seq_len: Annotated[Optional[list[int]], typer.Option("--seq-len", help="Sequence lengths (repeatable).")] = None,
    head_dim: Annotated[Optional[list[int]], typer.Option("--head-dim", help="Head dims (repeatable).")] = None,
) -> None:
    """Our Triton FlashAttention vs standard attention, SDPA backends and FlashAttention-2 (GPU)."""
    from ruvoninference.bench import kernels as kb

    with render.progress_bar() as progress:
        report = kb.run_benchmark(seq_len or kb.DEFAULT_SEQ_LENS, head_dim or kb.DEFAULT_HEAD_DIMS,
                                  progress=progress)
    md = kb.to_markdown(report, command_line())
    console.print(md, markup=False, highlight=False)
    data = report.to_dict()
    data["command"] = command_line()
    render.write_json(json_path, data)
    render.write_text(markdown_path, md)
    if plot:
        kb.plot(report, plot)
        err_console.print(f"[dim]Wrote {plot}[/dim]")
