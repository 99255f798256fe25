"""Rich rendering of library results. Nothing here computes a number; it only shows what was measured."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f} MiB"


def num(value: float | None, spec: str = ",.1f") -> str:
    return "—" if value is None else format(value, spec)


@contextlib.contextmanager
def progress_bar() -> Iterator:
    """A rich progress bar driven by the library's `progress(description, completed, total)` callback."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=err_console, transient=True,
    ) as bar:
        task = bar.add_task("Starting", total=None)

        def update(description: str, completed: int, total: int) -> None:
            bar.update(task, description=description, completed=completed, total=total)

        yield update


def environment_line(env: dict) -> str:
    parts = [env["device"], f"torch {env['torch']}", f"transformers {env['transformers']}"]
    if env.get("triton"):
        parts.append(f"triton {env['triton']}")
    if env.get("flash_attn"):
        parts.append(f"flash-attn {env['flash_attn']}")
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    return " · ".join(parts)


def write_json(path: str | None, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: str | None, text: str) -> None:
    """Write a result; the CLI checked the path (an existing folder, writable) before the run."""
    if path:
        Path(path).expanduser().write_text(text)
        err_console.print(f"[dim]Wrote {path}[/dim]")


def stats_table(stats: dict, title: str = "Generation stats", caption: str | None = None) -> Table:
    table = Table(title=title, show_header=False, caption=caption)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("prompt tokens", str(stats["prompt_tokens"]))
    table.add_row("generated tokens", str(stats["generated_tokens"]))
    table.add_row("time to first token", f"{stats['time_to_first_token_s'] * 1000:,.1f} ms")
    table.add_row("prefill", f"{stats['prefill_tokens_per_s']:,.1f} tokens/s")
    table.add_row("decode", f"{stats['decode_tokens_per_s']:,.1f} tokens/s")
    table.add_row("total time", f"{stats['total_time_s']:,.3f} s")
    kind = "peak CUDA memory" if stats["peak_memory_kind"] == "cuda_allocated" else "peak process memory (RSS)"
    if "kv_pool_bytes" in stats:
        table.add_row("KV-cache pool (reserved)", f"{mib(stats['kv_pool_bytes'])}, {stats['kv_pool_tokens']:,} tok")
        table.add_row("KV cache this run filled", f"{mib(stats['kv_used_bytes'])}, {stats['kv_used_tokens']:,} tok")
        table.add_row(f"{kind}, pool included", mib(stats["peak_memory_bytes"]))
    else:
        table.add_row(kind, mib(stats["peak_memory_bytes"]))
    return table


def _match_cell(row: dict) -> str:
    if row["matches_eager"] is None:
        return "—"
    return "yes" if row["matches_eager"] else f"no (from {row['first_mismatch']})"


def _memory_kind(rows: list[dict]) -> str:
    kinds = {r.get("peak_memory_kind") for r in rows} - {None}
    return "peak CUDA memory" if kinds == {"cuda_allocated"} else "peak process memory (RSS)" if kinds else "peak memory"


def benchmark_table(report: dict, detailed: bool) -> RenderableType:
    """The generation benchmark in two tables that each fit 80 columns: the verdict, then (--detailed) the detail.

    Units live in the headers so the cells stay short; the memory kind (CUDA allocator or process RSS) is
    said once, in the caption.
    """
    cfg, rows = report["config"], report["rows"]
    main = Table(
        title=f"{cfg['model']} · {cfg.get('max_tokens', cfg.get('max_new_tokens'))} new tokens · {cfg['dtype']} · "
        f"median of {cfg['repeats']} after {cfg['warmup']} warm-up",
        caption=f"peak MiB: {_memory_kind(rows)} · {environment_line(report['environment'])}",
    )
    main.add_column("implementation")
    for col in ("tok/s", "TTFT ms", "peak MiB", "vs eager"):
        main.add_column(col, justify="right")
    main.add_column("= eager", justify="center")
    for r in rows:
        speed = "—" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x"
        main.add_row(implementation_label(r["implementation"]), num(r["tokens_per_s_median"]), num(_ms(r["ttft_median_s"])),
                     num(_mib_value(r["peak_memory_bytes"]), ",.0f"), speed, _match_cell(r))
    if not detailed:
        return main
    detail = Table(title="Detail: run time, spread over repeats, prefill and decode")
    detail.add_column("implementation")
    for col in ("median s", "tok/s min–max", "prefill tok/s", "decode tok/s"):
        detail.add_column(col, justify="right")
    for r in rows:
        detail.add_row(implementation_label(r["implementation"]), num(r["median_time_s"], ".3f"),
                       f"{r['tokens_per_s_min']:.1f}–{r['tokens_per_s_max']:.1f}",
                       num(r["prefill_tokens_per_s"], ",.0f"), num(r["decode_tokens_per_s"]))
    return Group(main, detail)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _mib_value(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def implementation_label(name: str) -> str:
    """'hf_generate:flash_attention_2' -> 'HF flash_attention_2': the baseline rows fit a narrow terminal."""
    return "HF " + name.removeprefix("hf_generate:") if name.startswith("hf_generate:") else name


def skipped_lines(skipped: dict[str, str]) -> list[str]:
    return [f"[yellow]{name}[/yellow] not run: {why}" for name, why in skipped.items()]


def scaling_table(rows: list[dict], memory_label: str) -> RenderableType:
    """Prefill against n as two narrow tables (time, then memory), one column per implementation.

    One wide table with a time and a memory column per implementation needs 9 columns for four backends
    and no longer fits a terminal; two tables of five columns do. A pass that ran out of memory says OOM.
    """
    lengths = sorted({r["sequence_length"] for r in rows})
    impls = list(dict.fromkeys(r["implementation"] for r in rows))
    cells = {(r["implementation"], r["sequence_length"]): r for r in rows}

    def table(title: str, value) -> Table:
        t = Table(title=title, min_width=60)  # room for the title on one line; still inside 80 columns
        t.add_column("n", justify="right")
        for impl in impls:
            t.add_column(impl, justify="right")
        for n in lengths:
            out = [f"{n:,}"]
            for impl in impls:
                r = cells.get((impl, n))
                out.append("—" if r is None else value(r) if r["status"] == "ok" else f"[red]{r['status']}[/red]")
            t.add_row(*out)
        return t

    return Group(
        table("Prefill of n tokens: median time (ms)", lambda r: num(_ms(r["seconds"]))),
        table(f"Prefill of n tokens: {memory_label}, MiB", lambda r: num(_mib_value(r["peak_memory_bytes"]), ",.0f")),
    )


KERNEL_SHORT = {"standard": "std", "sdpa_flash": "flash", "sdpa_cudnn": "cuDNN",
                "sdpa_efficient": "effic.", "flash_attn": "FA2", "triton": "ours"}
KERNEL_DEFAULT = ["standard", "sdpa_cudnn", "flash_attn", "triton"]


def _status_or(row: dict | None, value: str) -> str:
    """`value` for a measured row; the status (OOM, error) in red otherwise; a dash where nothing ran."""
    if row is None:
        return "—"
    return value if row["status"] == "ok" else f"[red]{row['status'].split(':')[0]}[/red]"


def kernel_table(data: dict, detailed: bool = False) -> Table:
    """TFLOP/s per cell from a kernel report's dict (`KernelReport.to_dict()` or its saved JSON).

    By default the four providers the articles compare and ours over FA2 and cuDNN; `detailed` shows every
    provider that ran instead of the ratios. Both fit 80 columns with short provider names, spelled out in
    the caption.
    """
    providers = [p for p in data["config"]["providers"] if detailed or p in KERNEL_DEFAULT]
    ratio = {(r["head_dim"], r["causal"], r["seq_len"]): r for r in data.get("ratios", [])}
    cells: dict[tuple, dict[str, dict]] = {}
    for r in data["rows"]:
        cells.setdefault((r["head_dim"], r["causal"], r["seq_len"]), {})[r["provider"]] = r
    table = Table(title=f"Attention forward, TFLOP/s ({data['config']['dtype']})",
                  caption=" · ".join([*(f"{KERNEL_SHORT[p]} = {p}" for p in providers if p in KERNEL_SHORT),
                                      data["environment"]["device"]]))
    for col in ("d", "causal", "n"):
        table.add_column(col, justify="right")
    for p in providers:
        table.add_column(KERNEL_SHORT.get(p, p), justify="right")
    if not detailed:
        table.add_column("÷FA2", justify="right")
        table.add_column("÷cuDNN", justify="right")
    for key, cell in cells.items():
        values = []
        for p in providers:
            r = cell.get(p)
            values.append(_status_or(r, num(r and r["tflops"], ".0f")))
        if not detailed:
            q = ratio.get(key, {})
            values += [num(q.get("vs_flash_attn"), ".2f"), num(q.get("vs_sdpa_cudnn"), ".2f")]
        table.add_row(str(key[0]), "yes" if key[1] else "no", f"{key[2]:,}", *values)
    return table


def _us(value: float | None) -> str:
    """Microseconds: a decimal below 100, where it is a tenth of a percent or more."""
    return num(value, ",.1f" if value is not None and value < 100 else ",.0f")


def paged_tables(data: dict) -> RenderableType:
    """The paged-kernel report (`PagedReport.to_dict()` or its saved JSON) as two 80-column tables.

    Decode: ours at pages of 256 against FlashAttention-2 (the same pages), with ours at pages of 16 over
    FA2, the `ceiling` (the fastest K/V read of the run over FA2's: the best ratio any kernel could show) and
    the fraction of the copy bandwidth. Prefill: ours over pages against our contiguous kernel. The full
    table, every provider in µs and GB/s, is the --markdown file.
    """
    env, parts = data["environment"], []
    if data.get("decode"):
        cells: dict[tuple, dict[str, dict]] = {}
        for r in data["decode"]:
            cells.setdefault((r["heads_q"], r["heads_kv"], r["head_dim"], r["batch"], r["kv_len"]), {})[r["provider"]] = r
        ratio = {(q["heads_q"], q["heads_kv"], q["head_dim"], q["batch"], q["kv_len"]): q for q in data["decode_ratios"]}
        t = Table(title="Decode over pages: µs per call (CUDA-graph median)", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption=f"ours = pages of 256, 16 = ours at pages of 16; ÷FA2 = FA2's time over ours; ceiling = the "
                          f"fastest K/V read of the run over FA2's; copy% = our read over the copy "
                          f"({num(data.get('copy_gbps'), ',.0f')} GB/s) · {env['device']}")
        for col in ("q/kv×d", "batch", "kv_len", "ours", "FA2", "÷FA2", "16÷FA2", "ceiling", "copy%"):
            t.add_column(col, justify="right")
        for key, cell in cells.items():
            q = ratio.get(key, {})
            ours, fa2 = cell.get("triton_paged_256"), cell.get("flash_attn_paged_256")
            t.add_row(f"{key[0]}/{key[1]}×{key[2]}", str(key[3]), f"{key[4]:,}",
                      _status_or(ours, _us(ours and ours["us"])), _status_or(fa2, _us(fa2 and fa2["us"])),
                      num(q.get("speedup_vs_fa2_256"), ".2f"), num(q.get("speedup_vs_fa2_16"), ".2f"),
                      num(q.get("fa2_ceiling"), ".2f"), num(q.get("copy_fraction_256") and 100 * q["copy_fraction_256"], ".0f"))
        parts.append(t)
    if data.get("prefill"):
        cells = {}
        for r in data["prefill"]:
            cells.setdefault((r["heads_q"], r["heads_kv"], r["head_dim"], r["seq_len"], r["batch"]), {})[r["provider"]] = r
        ratio = {(q["heads_q"], q["heads_kv"], q["head_dim"], q["seq_len"]): q for q in data["prefill_ratios"]}
        t = Table(title="Prefill over pages: ms (median), causal", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="÷ = our contiguous kernel's time over ours over pages (1.0: paging costs nothing)")
        for col in ("q/kv×d", "seq_len", "batch", "contiguous", "pages 256", "pages 16", "÷256", "÷16"):
            t.add_column(col, justify="right")
        for key, cell in cells.items():
            q = ratio.get(key[:4], {})
            shown = [_status_or(cell.get(p), num(cell.get(p) and cell[p]["ms"], ".3f"))
                     for p in ("triton_contiguous", "triton_paged_256", "triton_paged_16")]
            t.add_row(f"{key[0]}/{key[1]}×{key[2]}", f"{key[3]:,}", str(key[4]), *shown,
                      num(q.get("paged_256_vs_contiguous"), ".2f"), num(q.get("paged_16_vs_contiguous"), ".2f"))
        parts.append(t)
    return Group(*parts)
