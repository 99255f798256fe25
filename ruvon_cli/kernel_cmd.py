"""`kernel benchmark` and `kernel paged`: our Triton kernels head to head with the baselines (GPU).

The same options as `python -m ruvoninference.bench.kernels [--paged]`.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import JsonPath, MarkdownPath, command_line, friendly
from ruvon_cli.render import console, err_console

PlotPath = Annotated[Optional[str], typer.Option("--plot", help="Write a plot (PNG) here.")]
RenderPath = Annotated[Optional[str], typer.Option("--render", help="Render a saved --json report instead of measuring.")]
SeqLens = Annotated[Optional[list[int]], typer.Option("--seq-len", help="Sequence lengths (repeatable).")]


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _emit(data: dict, md: str, json_path, markdown_path, plot, draw, report, table) -> None:
    """The terminal gets the table; the files get everything (JSON, the full markdown table, the plot)."""
    console.print(table)
    console.print(f"[dim]{data['command']}[/dim]")
    render.write_json(json_path, data)
    render.write_text(markdown_path, md)
    if plot:
        draw(report, plot)
        err_console.print(f"[dim]Wrote {plot}[/dim]")


@friendly
def kernel_benchmark(
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
    plot: PlotPath = None,
    seq_len: SeqLens = None,
    head_dim: Annotated[Optional[list[int]], typer.Option("--head-dim", help="Head dims (repeatable).")] = None,
    render_path: RenderPath = None,
    detailed: Annotated[bool, typer.Option("--detailed", help="Every provider's TFLOP/s instead of the ratios.")] = False,
) -> None:
    """Our Triton FlashAttention vs standard attention, SDPA backends and FlashAttention-2 (GPU)."""
    from ruvoninference.bench import kernels as kb

    if render_path:
        saved = _load(render_path)
        report, command = kb.report_from_dict(saved), saved.get("command", "(not recorded)")
        json_path = None
    else:
        with render.progress_bar() as progress:
            report = kb.run_benchmark(seq_len or kb.DEFAULT_SEQ_LENS, head_dim or kb.DEFAULT_HEAD_DIMS,
                                      progress=progress)
        command = command_line()
    data = {**report.to_dict(), "command": command}
    _emit(data, kb.to_markdown(report, command), json_path, markdown_path, plot, kb.plot, report,
          render.kernel_table(data, detailed))


@friendly
def kernel_paged(
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
    plot: PlotPath = None,
    batch: Annotated[Optional[list[int]], typer.Option("--batch", help="Decode batch sizes (repeatable).")] = None,
    kv_len: Annotated[Optional[list[int]], typer.Option("--kv-len", help="Decode cache lengths (repeatable).")] = None,
    seq_len: SeqLens = None,
    part: Annotated[str, typer.Option("--part", help="decode, prefill or both.")] = "both",
    render_path: RenderPath = None,
) -> None:
    """Paged attention: split-KV decode vs FlashAttention-2 and SDPA (µs, GB/s), prefill over pages vs contiguous."""
    from ruvoninference.bench import kernels as kb
    from ruvoninference.errors import RuvonError

    if part not in ("decode", "prefill", "both"):
        raise RuvonError(f"--part must be decode, prefill or both, not {part!r}.")
    if render_path:
        saved = _load(render_path)
        report, command = kb.paged_report_from_dict(saved), saved.get("command", "(not recorded)")
        json_path = None
    else:
        parts = ("decode", "prefill") if part == "both" else (part,)
        with render.progress_bar() as progress:
            report = kb.run_paged_benchmark(batch or kb.DECODE_BATCHES, kv_len or kb.DECODE_KV_LENS, kb.DECODE_HEADS,
                                            seq_len or kb.PREFILL_SEQ_LENS, parts, progress=progress)
        command = command_line()
    data = {**report.to_dict(), "command": command}
    _emit(data, kb.paged_markdown(report, command), json_path, markdown_path, plot, kb.paged_plot, report,
          render.paged_tables(data))
