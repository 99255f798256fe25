"""Rich rendering of library results. Nothing here computes a number; it only shows what was measured."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
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
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        err_console.print(f"[dim]Wrote {path}[/dim]")


def write_text(path: str | None, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        err_console.print(f"[dim]Wrote {path}[/dim]")


def stats_table(stats: dict, title: str = "Generation stats") -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("prompt tokens", str(stats["prompt_tokens"]))
    table.add_row("generated tokens", str(stats["generated_tokens"]))
    table.add_row("time to first token", f"{stats['time_to_first_token_s'] * 1000:,.1f} ms")
    table.add_row("prefill", f"{stats['prefill_tokens_per_s']:,.1f} tokens/s")
    table.add_row("decode", f"{stats['decode_tokens_per_s']:,.1f} tokens/s")
    table.add_row("total time", f"{stats['total_time_s']:,.3f} s")
    kind = "peak CUDA memory" if stats["peak_memory_kind"] == "cuda_allocated" else "peak process memory (RSS)"
    table.add_row(kind, mib(stats["peak_memory_bytes"]))
    return table


def benchmark_table(report: dict, detailed: bool) -> Table:
    cfg = report["config"]
    table = Table(
        title=f"{cfg['model']} · {cfg['max_new_tokens']} new tokens · {cfg['dtype']} · "
        f"median of {cfg['repeats']} after {cfg['warmup']} warm-up",
        caption=environment_line(report["environment"]),
    )
    for col in ("implementation", "median time", "tokens/s (median)", "min–max", "TTFT"):
        table.add_column(col, justify="right" if col != "implementation" else "left")
    if detailed:
        table.add_column("prefill tok/s", justify="right")
        table.add_column("decode tok/s", justify="right")
    table.add_column("peak memory", justify="right")
    table.add_column("vs eager", justify="right")
    table.add_column("tokens = eager", justify="center")
    for r in report["rows"]:
        match = "—" if r["matches_eager"] is None else (
            "yes" if r["matches_eager"] else f"no (from token {r['first_mismatch']})"
        )
        cells = [
            r["implementation"], f"{r['median_time_s']:.3f} s", num(r["tokens_per_s_median"]),
            f"{r['tokens_per_s_min']:.1f}–{r['tokens_per_s_max']:.1f}", f"{r['ttft_median_s'] * 1000:.1f} ms",
        ]
        if detailed:
            cells += [num(r["prefill_tokens_per_s"]), num(r["decode_tokens_per_s"])]
        speed = "—" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x"
        cells += [mib(r["peak_memory_bytes"]), speed, match]
        table.add_row(*cells)
    return table


def skipped_lines(skipped: dict[str, str]) -> list[str]:
    return [f"[yellow]{name}[/yellow] not run: {why}" for name, why in skipped.items()]


def scaling_table(rows: list[dict], memory_label: str) -> Table:
    lengths = sorted({r["sequence_length"] for r in rows})
    impls = list(dict.fromkeys(r["implementation"] for r in rows))
    table = Table(title=f"Prefill of n tokens: time and {memory_label}")
    table.add_column("n", justify="right")
    for impl in impls:
        table.add_column(f"{impl} time", justify="right")
        table.add_column(f"{impl} memory", justify="right")
    cells = {(r["implementation"], r["sequence_length"]): r for r in rows}
    for n in lengths:
        out = [str(n)]
        for impl in impls:
            r = cells.get((impl, n))
            if r is None or r["status"] != "ok":
                out += [r["status"] if r else "—", r["status"] if r else "—"]
            else:
                out += [f"{r['seconds'] * 1000:,.1f} ms", mib(r["peak_memory_bytes"])]
        table.add_row(*out)
    return table
