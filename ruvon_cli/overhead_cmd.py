"""`benchmark server-overhead`: what each of the server's duties to its clients costs the host, per request,
per token, per step and per scrape, optionally as a share of a `benchmark serve` run's latencies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table

from ruvon_cli import render
from ruvon_cli.common import JsonPath, MarkdownPath, command_line, friendly
from ruvon_cli.render import console


@friendly
def server_overhead(
    repeats: Annotated[int, typer.Option(help="Timed rounds per measurement (the median is reported).")] = 21,
    warmup: Annotated[int, typer.Option(help="Rounds run first and thrown away.")] = 3,
    inner: Annotated[int, typer.Option(help="Calls per round (a round's time is divided by it).")] = 2000,
    serve_json: Annotated[str | None, typer.Option(
        help="A `benchmark serve --json` result: each cost is also shown as a share of its median TTFT or "
             "ITL.")] = None,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
) -> None:
    """The host cost of auth, body limit, validation, backpressure, metrics and fault isolation, in-process."""
    from ruvoninference.bench.server_overhead import benchmark_server_overhead, load_serve_json
    from ruvoninference.errors import RuvonError

    if repeats < 2:
        raise RuvonError(f"--repeats must be at least 2 (a median of rounds), not {repeats}.")
    if warmup < 0 or inner < 1:
        raise RuvonError(f"--warmup must be at least 0 and --inner at least 1, not {warmup} and {inner}.")
    if serve_json is not None:
        load_serve_json(serve_json)  # a bad file is reported before the minute of measuring
    with render.progress_bar() as progress:
        data = benchmark_server_overhead(repeats=repeats, warmup=warmup, inner=inner, serve_json=serve_json,
                                         progress=progress)
    data["command"] = command_line()
    console.print(overhead_table(data))
    render.write_json(json_path, data)
    render.write_text(markdown_path, overhead_markdown(data))


PER = {"request": "request", "token": "token", "step": "step", "scrape": "scrape"}


def _runs(data: dict) -> list[dict]:
    return (data.get("relative_to") or {}).get("runs", [])


def _run_label(run: dict) -> str:
    return f"% of c{run['concurrency']} (TTFT {run['median_ttft_ms']:,.1f} ms, ITL {run['median_itl_ms']:,.2f} ms)"


def _rows(data: dict, what: bool) -> list[list[str]]:
    rows = []
    for name, f in data["features"].items():
        row = [name, PER[f["per"]], f"{f['us']:,.3f}", f"{f['spread_us']:,.3f}"]
        row += [f"{run['percent'][name]:.3g}%" for run in _runs(data)]
        rows.append(row + [f["what"]] if what else row)
    return rows


def _header(data: dict, label: Callable[[dict], str], what: bool) -> list[str]:
    return ["feature", "per", "µs", "noise ± µs", *[label(r) for r in _runs(data)]] + (["what is timed"] if what else [])


def overhead_table(data: dict) -> Table:
    cfg, env = data["config"], data["environment"]
    load = data["load_average"]["before"]
    runs = [f"c{r['concurrency']}: TTFT {r['median_ttft_ms']:,.1f} ms, ITL {r['median_itl_ms']:,.2f} ms"
            for r in _runs(data)]
    table = Table(title="Server overhead (host, in-process)",
                  caption=f"{render.environment_line(env)} · load average {load[0]:.2f} · median of "
                          f"{cfg['repeats']} rounds of {cfg['inner']} calls after {cfg['warmup']} warm-up rounds"
                          + ("".join(f" · {run}" for run in runs) + ": per request of TTFT, per token × tokens "
                             "per step, per step and scrape of ITL" if runs else ""))
    for i, column in enumerate(_header(data, lambda r: f"% c{r['concurrency']}", what=False)):
        table.add_column(column, justify="left" if i < 2 else "right")
    for row in _rows(data, what=False):
        table.add_row(*row)
    return table


def overhead_markdown(data: dict) -> str:
    cfg, env = data["config"], data["environment"]
    before, after = data["load_average"]["before"], data["load_average"]["after"]
    header = _header(data, _run_label, what=True)
    packages = ", ".join(f"{k} {v}" for k, v in env["server_packages"].items())
    machine = (f"{render.environment_line(env)}; {packages}; {env['cpu_count']} CPUs, load average "
               f"{before[0]:.2f} / {before[1]:.2f} / {before[2]:.2f} before, {after[0]:.2f} after.")
    method = (f"Median of {cfg['repeats']} rounds of {cfg['inner']} calls each, after {cfg['warmup']} warm-up "
              f"rounds; a cost measured against a baseline is the median of the round-by-round differences, and "
              f"'noise' is half the interquartile range of the rounds (a cost within it is not distinguishable "
              f"from zero). Body {cfg['body_bytes']} bytes, {cfg['request_headers']} headers; engine-thread "
              f"costs over a fake step of {cfg['batch']} outputs.")
    lines = [f"# Server overhead: {env['device']}", "",
             f"`{data.get('command', 'cli.py benchmark server-overhead')}`", "", machine, "", method, ""]
    relative = data.get("relative_to")
    if relative:
        batch = (f"max batch {relative['max_batch_size']}" if relative["max_batch_size"]
                 else "its max batch not recorded, so the tokens of a step are taken to be the concurrency")
        device = (relative.get("environment") or {}).get("device", "a device it did not record")
        lines += [(f"Percentages against `{relative['path']}` ({relative['model']}, {batch}; served on {device}): "
                   f"per request, of the median TTFT; per token, times the tokens of one step, of the median "
                   f"ITL; per step and per scrape, of the median ITL."), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 3) + ["---"])
              + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(data, what=True)]
    return "\n".join(lines) + "\n"
