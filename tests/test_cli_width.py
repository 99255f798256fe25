"""Every table the CLI prints fits an 80-column terminal: no line wider than 80, no header or cell cut to "…".

Two kinds of check, each a list that a new command extends by one line:

- `CLI_RUNS`: the real cli.py in a subprocess with COLUMNS=80, on what this CPU machine can run (a random-weight
  GPT-2, a few tokens). Add your command's arguments here.
- `SAVED_RESULTS`: the renderers fed the committed GPU results, which have more rows and backends than a
  CPU run produces (FlashAttention-2, our kernel, OOM cells). Add (name, JSON file, function of the loaded
  dict returning a rich renderable).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ruvon_cli import render, throughput_cmd

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 80
BENCH = ROOT / "docs/benchmarks"
TINY = ["--model", "gpt2-random"]

CLI_RUNS = {
    "implementations": ["implementations"],
    "generate": ["generate", "--text", "Hello", *TINY, "--max-length", "3"],
    "benchmark --detailed --baseline hf": ["benchmark", *TINY, "--max-tokens", "2", "--warmup", "0", "--repeats", "1",
                                           "--detailed", "--baseline", "hf"],
    "flash --show-memory": ["flash", "--text", "test", *TINY, "--max-length", "2", "--repeats", "1", "--show-memory",
                            "--length", "16", "--length", "32"],
    "benchmark server-overhead": ["benchmark", "server-overhead", "--repeats", "3", "--warmup", "1", "--inner", "50"],
    # The GPU-only kernel commands, on the committed H200 results (--render: no GPU needed to show them).
    "kernel benchmark --render": ["kernel", "benchmark", "--render", str(BENCH / "h200-kernel/kernel.json")],
    "kernel benchmark --render --detailed": ["kernel", "benchmark", "--render", str(BENCH / "h200-kernel/kernel.json"),
                                             "--detailed"],
    "kernel paged --render": ["kernel", "paged", "--render", str(BENCH / "h200-paged/paged.json")],
}

SAVED_RESULTS = {
    "benchmark, H200": ("h200-engine/benchmark-smollm2.json", lambda d: render.benchmark_table(d, False)),
    "benchmark --detailed, H200": ("h200-engine/benchmark-smollm2.json", lambda d: render.benchmark_table(d, True)),
    "benchmark --detailed, CPU": ("cpu/benchmark-smollm2.json", lambda d: render.benchmark_table(d, True)),
    "flash --show-memory, H200": ("h200-engine/flash.json",
                                  lambda d: render.scaling_table(d["memory_scaling"]["rows"], d["memory_scaling"]["memory"])),
    "kernel benchmark, H200": ("h200-kernel/kernel.json", lambda d: render.kernel_table(d, False)),
    "engine benchmark --detailed --baseline hf, H200": ("h200-engine-core/batch1-smollm2-135m.json",
                                                       lambda d: render.benchmark_table(d, True)),
    "benchmark throughput --baseline hf, H200": ("h200-engine-core/throughput-qwen3-fa2.json",
                                                lambda d: throughput_cmd.render_table(d["runs"])),
    "benchmark throughput --scheduler x3, CPU": ("cpu-engine-core/schedulers-gpt2-random.json",
                                                lambda d: throughput_cmd.render_table(d["runs"])),
    "kernel benchmark --detailed, H200": ("h200-kernel/kernel.json", lambda d: render.kernel_table(d, True)),
    "kernel paged, H200 (p3)": ("h200-paged/paged-p3.json", render.paged_tables),
    "kernel paged, H200 (first p4 run)": ("h200-paged/run-p4a/paged.json", render.paged_tables),
    "kernel paged --part decode, H200": ("h200-paged/paged-decode-repeat.json", render.paged_tables),
}


def assert_fits(text: str, what: str) -> None:
    assert text.strip(), f"{what} printed nothing"
    for line in text.splitlines():
        assert len(line) <= WIDTH, f"{what}: a line of {len(line)} columns:\n{line}"
        assert "…" not in line, f"{what}: a header or cell was cut:\n{line}"


@pytest.mark.parametrize("name", list(CLI_RUNS))
def test_cli_output_fits_80_columns(name):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": str(WIDTH), "TERM": "dumb"}
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *CLI_RUNS[name]], capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert any(rule in r.stdout for rule in "┃│─"), f"{name} printed no table:\n{r.stdout}"
    assert_fits(r.stdout, name)


@pytest.mark.parametrize("name", list(SAVED_RESULTS))
def test_saved_results_render_in_80_columns(name):
    path, view = SAVED_RESULTS[name]
    console = Console(width=WIDTH, record=True, file=open(os.devnull, "w"), color_system=None)
    console.print(view(json.loads((BENCH / path).read_text())))
    assert_fits(console.export_text(), name)


def test_a_cut_header_is_caught():
    """The check itself: a table squeezed below its headers' words must fail it."""
    from rich.table import Table

    table = Table()
    for header in ("implementation", "tokens/s (median)", "peak memory", "tokens = eager") * 3:
        table.add_column(header)
    console = Console(width=WIDTH, record=True, file=open(os.devnull, "w"), color_system=None)
    console.print(table)
    with pytest.raises(AssertionError, match="cut"):
        assert_fits(console.export_text(), "a 12-column table")
