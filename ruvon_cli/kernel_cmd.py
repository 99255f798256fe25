"""`kernel benchmark` and `kernel paged`: our Triton kernels head to head with the baselines (GPU).

The same options as `python -m ruvoninference.bench.kernels [--paged]`.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import JsonPath, MarkdownPath, command_line, friendly, load_saved
from ruvon_cli.render import console, err_console

PlotPath = Annotated[Optional[str], typer.Option("--plot", help="Write a plot (PNG) here.")]
RenderPath = Annotated[Optional[str], typer.Option("--render", help="Render a saved --json report instead of measuring.")]
SeqLens = Annotated[Optional[list[int]], typer.Option("--seq-len", help="Sequence lengths (repeatable).")]


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
        report, saved = load_saved(render_path, kb.report_from_dict, "kernel benchmark")
        command = saved.get("command", "(not recorded)")
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
    part: Annotated[str, typer.Option("--part", help="decode, prefill, short (batch-1 prompts vs FA2), both "
                                                      "(decode and prefill) or all.")] = "both",
    heads: Annotated[Optional[list[str]], typer.Option("--heads", help="Head shape QUERY/KVxDIM, like 28/4x128 "
                                                                       "(repeatable).")] = None,
    cell: Annotated[Optional[list[str]], typer.Option("--cell", help="Decode cell BATCHxKV_LEN, like 4x32768, instead "
                                                                     "of the --batch x --kv-len grid (repeatable).")] = None,
    ragged: Annotated[bool, typer.Option("--ragged", help="Decode lengths drawn between kv_len/2 and kv_len.")] = False,
    render_path: RenderPath = None,
) -> None:
    """Paged attention: split-KV decode vs FlashAttention-2 and SDPA (µs, GB/s), prefill over pages vs contiguous."""
    from ruvoninference.bench import kernels as kb
    from ruvoninference.errors import RuvonError

    if part not in kb.PARTS:
        raise RuvonError(f"--part must be one of {', '.join(kb.PARTS)}, not {part!r}.")
    if render_path:
        report, saved = load_saved(render_path, kb.paged_report_from_dict, "kernel paged")
        command = saved.get("command", "(not recorded)")
        json_path = None
    else:
        shapes = [kb.parse_heads(h) for h in heads] if heads else kb.DECODE_HEADS
        pairs = [kb.parse_cell(c) for c in cell] if cell else None
        with render.progress_bar() as progress:
            report = kb.run_paged_benchmark(batch or kb.DECODE_BATCHES, kv_len or kb.DECODE_KV_LENS, shapes,
                                            seq_len or kb.PREFILL_SEQ_LENS, kb.PARTS[part], progress=progress,
                                            ragged=ragged, pairs=pairs)
        command = command_line()
    data = {**report.to_dict(), "command": command}
    _emit(data, kb.paged_markdown(report, command), json_path, markdown_path, plot, kb.paged_plot, report,
          render.paged_tables(data))
    if data.get("prefill_short"):
        console.print(short_table(data))


def short_table(data: dict):
    """Batch-1 prompts: ours (contiguous and over pages) against FlashAttention-2, CUDA-graph µs and ratios."""
    from rich.table import Table

    table = Table(title="Short prompts, batch 1: µs in a CUDA graph; ÷FA2 > 1 = ours faster (eager in --markdown)")
    for col in ("heads", "n", "ours", "paged", "FA2", "SDPA", "÷FA2", "paged ÷FA2"):
        table.add_column(col, justify="right")
    rows = {(r["heads_q"], r["heads_kv"], r["head_dim"], r["seq_len"], r["provider"]): r for r in data["prefill_short"]}
    for q in data["prefill_short_ratios"]:
        key = (q["heads_q"], q["heads_kv"], q["head_dim"], q["seq_len"])

        def us(provider):
            r = rows.get((*key, provider))
            return render.num(r and r["graph_us"], ".1f") if r and r["status"] == "ok" else (r["status"][:8] if r else "—")

        table.add_row(f"{key[0]}/{key[1]}x{key[2]}", str(key[3]), us("ours_contiguous"), us("ours_paged_256"),
                      us("flash_attn"), us("sdpa"), render.num(q["ours_contiguous_vs_fa2_graph"], ".2f"),
                      render.num(q["ours_paged_256_vs_fa2_graph"], ".2f"))
    return table
