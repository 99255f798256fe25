"""`serve` (the OpenAI-compatible server) and `benchmark serve` (the load-test client that measures one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import (
    Device, Dtype, JsonPath, KvCacheMemory, MarkdownPath, Model, TensorParallelSize, check_listen, check_model,
    check_parallel, command_line, friendly, kv_cache_budget,
)
from ruvon_cli.render import console, err_console

SCHEDULERS = ("continuous", "static", "sequential")


@friendly
def serve(
    model: Model = "smollm2-135m",
    attn: Annotated[str, typer.Option(help="The default attention implementation (requests may ask for "
                                           "another on /completions).")] = "sdpa",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 exposes it to the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    scheduler: Annotated[str, typer.Option(help="continuous, static or sequential.")] = "continuous",
    max_batch_size: Annotated[int, typer.Option(help="Sequences in one batch at most.")] = 32,
    max_queue: Annotated[int, typer.Option(help="Requests waiting at most; more get HTTP 429.")] = 512,
    device: Device = None,
    dtype: Dtype = None,
    kv_cache_memory: KvCacheMemory = None,
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager", help="No CUDA graphs.")] = False,
    tensor_parallel_size: TensorParallelSize = 1,
    mixed_batches: Annotated[bool, typer.Option(help="Let decodes ride along in prefill steps (continuous "
                                                     "scheduler).")] = True,
    served_model_name: Annotated[Optional[str], typer.Option(
        help="The name clients use in `model` (default: --model).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every HTTP request.")] = False,
    api_key: Annotated[str | None, typer.Option(
        envvar="RUVON_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on every route but /health and /metrics.")] = None,
    max_request_bytes: Annotated[int, typer.Option(
        help="Largest request body accepted; larger ones get HTTP 413.")] = 8 * 2**20,
    shutdown_timeout: Annotated[float, typer.Option(
        help="Seconds running requests may take to finish after SIGTERM/SIGINT; then they end with an "
             "error. A second signal exits at once.")] = 30.0,
) -> None:
    """Serve the model over HTTP: /v1/completions, /v1/chat/completions, /completions, /metrics."""
    from ruvoninference.errors import RuvonError
    from ruvoninference.server import lifecycle
    from ruvoninference.server.app import create_app
    from ruvoninference.server.async_engine import EngineSettings

    if scheduler not in SCHEDULERS:
        raise RuvonError(f"Unknown scheduler '{scheduler}'; choose one of: {', '.join(SCHEDULERS)}.")
    if max_batch_size < 1 or max_queue < 1:
        raise RuvonError("--max-batch-size and --max-queue must each be at least 1.")
    if max_request_bytes < 1024:
        raise RuvonError(f"--max-request-bytes must be at least 1024, not {max_request_bytes}.")
    if shutdown_timeout < 0:
        raise RuvonError(f"--shutdown-timeout must be >= 0 seconds, not {shutdown_timeout}.")
    if not 0 <= port <= 65535:
        raise RuvonError(f"Port {port} is not a TCP port; use a number from 1 to 65535.")
    settings = EngineSettings(
        model=model, attn=attn, device=device, dtype=dtype, scheduler=scheduler, max_batch_size=max_batch_size,
        max_queue=max_queue, enforce_eager=enforce_eager, extra={} if mixed_batches else {"mixed_batches": False},
        kv_cache_memory=kv_cache_budget(kv_cache_memory, device), tensor_parallel_size=tensor_parallel_size,
    )
    app = create_app(settings, served_model_name, api_key=api_key, max_request_bytes=max_request_bytes)
    check_listen(host, port)  # before the banner: a busy port or unknown host is one sentence, exit 2
    check_model(model)  # a model that cannot load ends the server at start, not with 503s forever
    check_parallel(model, tensor_parallel_size, device)  # so does a size this machine or model cannot run
    cut = f", tensor-parallel over {tensor_parallel_size} processes" if tensor_parallel_size != 1 else ""
    err_console.print(f"[bold]Serving[/bold] {app.state.model_name} ({attn}, {scheduler} scheduler, batch "
                      f"{max_batch_size}{cut}) on http://{host}:{port}; the model loads in the background "
                      f"(503 until then){'; API key required' if api_key else ''}.", highlight=False)
    if lifecycle.run(app, host, port, shutdown_timeout, access_log):
        raise typer.Exit(1)  # a second signal: running requests were cut short


def _levels(text: str) -> list[int]:
    from ruvoninference.errors import RuvonError

    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RuvonError(f"--concurrency takes integers separated by commas, such as 1,8,32; not '{text}'.") from None
    if not levels or min(levels) < 1:
        raise RuvonError(f"--concurrency levels must be at least 1, not '{text}'.")
    return levels


COLUMNS = (  # (key, header, format)
    ("concurrency", "concurrency", "d"),
    ("completed", "ok", "d"),
    ("failed", "failed", "d"),
    ("aborted", "aborted", "d"),
    ("duration_s", "duration s", ",.2f"),
    ("request_throughput", "req/s", ",.2f"),
    ("output_throughput", "output tok/s", ",.1f"),
    ("total_token_throughput", "total tok/s", ",.1f"),
    ("mean_ttft_ms", "TTFT mean ms", ",.1f"),
    ("median_ttft_ms", "TTFT median ms", ",.1f"),
    ("p99_ttft_ms", "TTFT p99 ms", ",.1f"),
    ("mean_tpot_ms", "TPOT mean ms", ",.1f"),
    ("median_tpot_ms", "TPOT median ms", ",.1f"),
    ("p99_tpot_ms", "TPOT p99 ms", ",.1f"),
    ("mean_itl_ms", "ITL mean ms", ",.1f"),
    ("median_itl_ms", "ITL median ms", ",.1f"),
    ("p99_itl_ms", "ITL p99 ms", ",.1f"),
)


def _title(data: dict) -> str:
    c = data["config"]
    health = _server(data)
    who = f"{c['model']}" + (f", {health['scheduler']} scheduler" if health.get("scheduler") else "")
    leaving = f", {c['disconnect_fraction']:.0%} of clients leave" if c.get("disconnect_fraction") else ""
    return (f"Serving benchmark: {who}; {c['num_prompts']} prompts of {c['input_len']} tokens, {c['output_len']} "
            f"new tokens, temperature {c.get('temperature', 0.0):g}, request rate {c['request_rate']}{leaving}")


def _server(data: dict) -> dict:
    """The server's self-description (`/info`; runs saved before it existed have `/health`)."""
    server = data.get("server", {})
    return server.get("/info") or server.get("/health") or {}


def _device(data: dict) -> str:
    env = _server(data).get("environment")
    return render.environment_line(env) if env else "server device not reported"


def serve_table(data: dict):
    """Metrics down, concurrency levels across (as `vllm bench serve` prints them): fits a narrow terminal."""
    from rich.table import Table

    table = Table(title=_title(data), caption=_device(data))
    table.add_column("metric")
    for run in data["runs"]:
        table.add_column(f"c={run['concurrency']}", justify="right")
    for key, header, spec in COLUMNS[1:]:
        table.add_row(header, *(format(run.get(key, 0), spec) for run in data["runs"]))
    return table


def serve_markdown(data: dict) -> str:
    lines = [f"# {_title(data)}", "", f"Server: {_device(data)}", "", f"Command: `{data.get('command', '')}`", "",
             "| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    for run in data["runs"]:
        lines.append("| " + " | ".join(format(run.get(k, 0), s) for k, _, s in COLUMNS) + " |")
    errors = sorted({e for run in data["runs"] for e in run.get("errors", [])})
    if errors:
        lines += ["", "Errors seen: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def comparison_markdown(paths: list[str]) -> str:
    """One table of several saved runs (one per scheduler), side by side per concurrency."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        scheduler = _server(data).get("scheduler", Path(path).stem)
        for run in data["runs"]:
            rows.append((run["concurrency"], scheduler, run))
    rows.sort(key=lambda r: (r[0], SCHEDULERS.index(r[1]) if r[1] in SCHEDULERS else 9))
    keys = [("output_throughput", "output tok/s", ",.1f"), ("request_throughput", "req/s", ",.2f"),
            ("median_ttft_ms", "TTFT median ms", ",.1f"), ("p99_ttft_ms", "TTFT p99 ms", ",.1f"),
            ("median_tpot_ms", "TPOT median ms", ",.1f"), ("median_itl_ms", "ITL median ms", ",.1f"),
            ("failed", "failed", "d")]
    lines = ["| concurrency | scheduler | " + " | ".join(h for _, h, _ in keys) + " |",
             "|---:|---|" + "---:|" * len(keys)]
    for concurrency, scheduler, run in rows:
        lines.append(f"| {concurrency} | {scheduler} | " + " | ".join(format(run[k], s) for k, _, s in keys) + " |")
    return "\n".join(lines) + "\n"


@friendly
def benchmark_serve(
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    concurrency: Annotated[str, typer.Option(help="Requests in flight at most; one run per level.")] = "1,8,32,64",
    num_prompts: Annotated[int, typer.Option(help="Requests per run.")] = 64,
    input_len: Annotated[int, typer.Option(help="Prompt tokens (random dataset).")] = 128,
    output_len: Annotated[int, typer.Option(help="New tokens per request.")] = 128,
    dataset: Annotated[str, typer.Option(help="Only 'random' (seeded common words, one token each).")] = "random",
    request_rate: Annotated[float, typer.Option(help="Requests per second, Poisson arrivals (inf: all at "
                                                     "once).")] = float("inf"),
    model: Annotated[Optional[str], typer.Option(help="The `model` field (default: the server's first "
                                                      "model).")] = None,
    ignore_eos: Annotated[bool, typer.Option(help="Generate exactly --output-len tokens.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for the prompts and arrival times.")] = 0,
    temperature: Annotated[float, typer.Option(help="The requests' temperature (1.0: what a client that sets "
                                                    "nothing gets).")] = 1.0,
    disconnect_fraction: Annotated[float, typer.Option(help="Fraction of clients that close the connection "
                                                            "mid-stream (counted as aborted).")] = 0.0,
    disconnect_after: Annotated[int, typer.Option(help="Chunks a leaving client reads first.")] = 4,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
) -> None:
    """Load-test an OpenAI-compatible server with streaming completions; report what `vllm bench serve` does."""
    from ruvoninference.bench.serve import run_serve_benchmark
    from ruvoninference.errors import RuvonError

    if dataset != "random":
        raise RuvonError(f"Unknown dataset '{dataset}'; the only dataset is 'random'.")
    if not 0.0 <= temperature <= 2.0:
        raise RuvonError(f"--temperature must be between 0 and 2 (OpenAI's range), not {temperature}.")
    if disconnect_after < 1:
        raise RuvonError(f"--disconnect-after must be at least 1 chunk, not {disconnect_after}.")
    if request_rate <= 0:
        raise RuvonError(f"--request-rate must be > 0 (or inf), not {request_rate}.")
    levels = _levels(concurrency)
    with render.progress_bar() as progress:
        data = run_serve_benchmark(url, levels, num_prompts, input_len, output_len, request_rate, model=model,
                                   ignore_eos=ignore_eos, seed=seed, progress=progress, temperature=temperature,
                                   disconnect_fraction=disconnect_fraction, disconnect_after=disconnect_after)
    data["command"] = command_line()
    console.print(serve_table(data))
    render.write_json(json_path, data)
    render.write_text(markdown_path, serve_markdown(data))
