"""The command line: parse arguments, call the library, render what it returns.

Each command lives in its own module (`generate_cmd`, `flash_cmd`, `kernel_cmd`, `serve_cmd`); this file
only assembles them into one Typer app.
"""

from __future__ import annotations

import typer

from ruvon_cli import flash_cmd, generate_cmd, kernel_cmd, overhead_cmd, serve_cmd, spec_cmd, throughput_cmd

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="ruvoninference: run and measure LLM inference optimizations on your own machine.",
)
generate_app = typer.Typer(invoke_without_command=True, pretty_exceptions_enable=False)
benchmark_app = typer.Typer(invoke_without_command=True, pretty_exceptions_enable=False)
kernel_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help="Our Triton kernels.")

generate_app.callback()(generate_cmd.generate)
benchmark_app.callback()(generate_cmd.benchmark)
for parent in (generate_app, app):
    parent.command("implementations")(generate_cmd.implementations)
    parent.add_typer(benchmark_app, name="benchmark",
                     help="Backends side by side (default); `throughput` and `serve` are workloads.")
app.add_typer(generate_app, name="generate", help="Generate text (default), list implementations, benchmark.")
app.add_typer(kernel_app, name="kernel")
app.command("flash")(flash_cmd.flash)
benchmark_app.command("throughput")(throughput_cmd.throughput)
kernel_app.command("benchmark")(kernel_cmd.kernel_benchmark)
kernel_app.command("paged")(kernel_cmd.kernel_paged)
app.command("serve")(serve_cmd.serve)
benchmark_app.command("serve")(serve_cmd.benchmark_serve)
benchmark_app.command("speculative")(spec_cmd.speculative)
benchmark_app.command("server-overhead")(overhead_cmd.server_overhead)


def main() -> None:
    app()
