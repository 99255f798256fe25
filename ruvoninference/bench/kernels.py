"""Attention kernels head to head: time, TFLOP/s and peak memory, on one GPU, in one run.

Providers (each measured on the same fresh random bf16 inputs):

- `standard`: matmul, softmax, matmul in PyTorch; materializes the [b, h, n, n] scores.
- `sdpa_flash`, `sdpa_cudnn`, `sdpa_efficient`: `scaled_dot_product_attention` pinned to one backend each.
- `flash_attn`: `flash_attn_func` from the flash-attn package (FlashAttention-2), when installed.
- `triton`: ours (`ruvoninference.kernels.flash_attention`).

FLOPs of a forward pass: two matmuls of 2·n·n·d each per head, so 4·b·h·n²·d, halved when causal (half of
the score matrix is skipped). Time is the median of `triton.testing.do_bench`, which warms up first and times
with CUDA events. Memory is the peak allocated during one call above what was allocated before it, batch 1.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from ruvoninference.stats import is_out_of_memory
from ruvoninference.environment import describe
from ruvoninference.kernels.flash_attention import flash_attention_triton, tma_requested

DEFAULT_SEQ_LENS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
DEFAULT_HEAD_DIMS = [64, 128]
TOKENS_PER_BATCH = 16384  # batch x seq_len, as in the FlashAttention papers' benchmarks
HIDDEN = 2048  # heads = HIDDEN // head_dim
PROVIDERS = ["standard", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flash_attn", "triton"]


@dataclass
class KernelRow:
    provider: str
    seq_len: int
    batch: int
    heads: int
    head_dim: int
    causal: bool
    ms: float | None
    tflops: float | None
    status: str  # "ok", "OOM" or "error: ..."
    rel_err_vs_fp64_sample: float | None = None
    config: str | None = None  # the tile the autotuner chose (ours only)


@dataclass
class MemoryRow:
    provider: str
    seq_len: int
    heads: int
    head_dim: int
    causal: bool
    peak_extra_bytes: int | None
    status: str


@dataclass
class KernelReport:
    environment: dict
    config: dict
    rows: list[KernelRow] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "config": self.config,
            "rows": [asdict(r) for r in self.rows],
            "memory": [asdict(r) for r in self.memory],
            "ratios": ratios(self),
            "unavailable": self.unavailable,
        }


def report_from_dict(data: dict) -> KernelReport:
    """A saved report (the --json output) back as objects, to render it again."""
    return KernelReport(
        environment=data["environment"],
        config=data["config"],
        rows=[KernelRow(**r) for r in data["rows"]],
        memory=[MemoryRow(**m) for m in data["memory"]],
        unavailable=data.get("unavailable", {}),
    )


def flops(batch: int, heads: int, seq_len: int, head_dim: int, causal: bool) -> float:
    total = 4.0 * batch * heads * seq_len * seq_len * head_dim
    return total / 2 if causal else total


def standard_attention(q, k, v, causal: bool) -> torch.Tensor:
    """The textbook version, in the input dtype: scores, mask, softmax, weighted sum."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        n = q.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _sdpa(backend_name: str) -> Callable:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[backend_name]

    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def available_providers() -> tuple[dict[str, Callable], dict[str, str]]:
    """Callables taking (q, k, v, causal) in [b, h, n, d], and why any provider is missing."""
    providers: dict[str, Callable] = {"standard": standard_attention}
    for name in ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient"):
        providers[name] = _sdpa(name)
    unavailable: dict[str, str] = {}
    try:
        from flash_attn import flash_attn_func

        # flash-attn wants [b, n, h, d]; the transposes are views, and its own layout check makes them
        # contiguous, so the benchmark passes pre-transposed copies instead (see `_inputs`).
        providers["flash_attn"] = lambda q, k, v, causal: flash_attn_func(q, k, v, causal=causal)
    except ImportError:
        unavailable["flash_attn"] = "flash-attn is not installed (uv sync --group flash)"
    providers["triton"] = lambda q, k, v, causal: flash_attention_triton(q, k, v, causal=causal)
    return providers, unavailable


def _inputs(provider: str, batch: int, heads: int, seq_len: int, head_dim: int, dtype, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (batch, seq_len, heads, head_dim) if provider == "flash_attn" else (batch, heads, seq_len, head_dim)
    return [torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for _ in range(3)]



def _spot_check(fn: Callable, provider: str, head_dim: int, causal: bool, dtype) -> float:
    """Relative error against float64 on a small slice: a fast kernel must still be right on this device."""
    q, k, v = _inputs(provider, 1, 2, 257, head_dim, dtype, seed=1234)
    out = fn(q, k, v, causal).double()
    if provider == "flash_attn":
        q, k, v, out = (t.transpose(1, 2) for t in (q, k, v, out))
    from ruvoninference.kernels.flash_attention import reference_attention

    ref = reference_attention(q, k, v, causal=causal)
    return float((out - ref).norm() / ref.norm())


def run_benchmark(
    seq_lens: list[int] = DEFAULT_SEQ_LENS,  # noqa: B006 - read only
    head_dims: list[int] = DEFAULT_HEAD_DIMS,  # noqa: B006 - read only
    causal_modes: tuple[bool, ...] = (False, True),
    providers: list[str] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    progress: Callable[[str, int, int], None] | None = None,
) -> KernelReport:
    import triton.testing

    if not torch.cuda.is_available():
        from ruvoninference.errors import RuvonError

        raise RuvonError("The kernel benchmark needs a CUDA GPU and none is visible; run it on a GPU machine.")
    table, unavailable = available_providers()
    names = [p for p in (providers or PROVIDERS) if p in table]
    report = KernelReport(
        environment=describe("cuda"),
        config={
            "seq_lens": seq_lens, "head_dims": head_dims, "causal": list(causal_modes),
            "dtype": str(dtype).removeprefix("torch."), "tokens_per_batch": TOKENS_PER_BATCH,
            "hidden": HIDDEN, "providers": names, "timing": "triton.testing.do_bench median, ms",
            "memory_batch": 1,
            "triton_tma": tma_requested(),
        },
        unavailable=unavailable,
    )
    cells = [(d, c, n) for d in head_dims for c in causal_modes for n in seq_lens]
    checked: dict[tuple, float] = {}
    for i, (head_dim, causal, seq_len) in enumerate(cells):
        if progress:
            progress(f"d={head_dim} causal={causal} n={seq_len}", i, len(cells))
        heads = HIDDEN // head_dim
        batch = max(1, TOKENS_PER_BATCH // seq_len)
        for name in names:
            fn = table[name]
            row = KernelRow(name, seq_len, batch, heads, head_dim, causal, None, None, "ok")
            try:
                if (name, head_dim, causal) not in checked:
                    checked[(name, head_dim, causal)] = _spot_check(fn, name, head_dim, causal, dtype)
                row.rel_err_vs_fp64_sample = checked[(name, head_dim, causal)]
                q, k, v = _inputs(name, batch, heads, seq_len, head_dim, dtype, seed=i)
                ms = triton.testing.do_bench(lambda: fn(q, k, v, causal), return_mode="median")
                row.ms, row.tflops = ms, flops(batch, heads, seq_len, head_dim, causal) / (ms * 1e-3) / 1e12
                if name == "triton":
                    row.config = _chosen_tile()
            except Exception as exc:  # a provider's failure is a row, not the end of the run
                row.status = "OOM" if is_out_of_memory(exc) else f"error: {type(exc).__name__}: {str(exc)[:160]}"
            finally:
                q = k = v = None
                torch.cuda.empty_cache()
            report.rows.append(row)
            report.memory.append(_memory_row(name, fn, seq_len, heads, head_dim, causal, dtype))
    if progress:
        progress("done", len(cells), len(cells))
    return report


def _chosen_tile() -> str | None:
    from ruvoninference.kernels.flash_attention import _flash_attention_forward

    best = getattr(_flash_attention_forward, "best_config", None)
    if best is None:
        return None
    return f"BLOCK_M={best.kwargs['BLOCK_M']} BLOCK_N={best.kwargs['BLOCK_N']} warps={best.num_warps} stages={best.num_stages}"


def _memory_row(name, fn, seq_len, heads, head_dim, causal, dtype) -> MemoryRow:
    row = MemoryRow(name, seq_len, heads, head_dim, causal, None, "ok")
    try:
        q, k, v = _inputs(name, 1, heads, seq_len, head_dim, dtype, seed=7)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(q, k, v, causal)
        torch.cuda.synchronize()
        # The output itself is counted: every provider must allocate it.
        row.peak_extra_bytes = torch.cuda.max_memory_allocated() - before
        del out
    except Exception as exc:
        row.status = "OOM" if is_out_of_memory(exc) else f"error: {type(exc).__name__}"
    finally:
        q = k = v = None
        torch.cuda.empty_cache()
    return row


def ratios(report: KernelReport) -> list[dict]:
    """Ours over FlashAttention-2 and over cuDNN, TFLOP/s against TFLOP/s, cell by cell."""
    by_cell: dict[tuple, dict[str, float | None]] = {}
    for r in report.rows:
        by_cell.setdefault((r.head_dim, r.causal, r.seq_len), {})[r.provider] = r.tflops
    out = []
    for (d, c, n), cell in by_cell.items():
        ours = cell.get("triton")
        entry = {"head_dim": d, "causal": c, "seq_len": n, "triton_tflops": ours}
        for other in ("flash_attn", "sdpa_cudnn"):
            theirs = cell.get(other)
            entry[f"vs_{other}"] = ours / theirs if ours and theirs else None
        out.append(entry)
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _provider_values(cell: dict, providers: list[str], value: Callable, spec: str) -> list[str]:
    """One table row's cells: the measured value, or the status (OOM, error) where there is none."""
    values = []
    for p in providers:
        row = cell.get(p)
        if row is None:
            values.append("—")
        else:
            values.append(_fmt(value(row), spec) if row.status == "ok" else row.status)
    return values


def to_markdown(report: KernelReport, command: str) -> str:
    env = report.environment
    lines = [
        f"# Attention kernels: {env['device']}",
        "",
        f"Command: `{command}`",
        "",
        f"torch {env['torch']}, triton {env['triton']}, flash-attn {env['flash_attn']}, "
        f"transformers {env['transformers']}, CUDA {env['cuda']}. {report.config['dtype']}, "
        f"batch x seq = {TOKENS_PER_BATCH} tokens, heads = {HIDDEN} / head_dim; median of do_bench.",
        "",
        "## TFLOP/s (forward; 4·b·h·n²·d FLOPs, halved when causal)",
        "",
    ]
    providers = report.config["providers"]
    lines.append("| head_dim | causal | seq_len | " + " | ".join(providers) + " | ours/FA2 | ours/cuDNN |")
    lines.append("|" + "---|" * (len(providers) + 5))
    ratio_by_cell = {(r["head_dim"], r["causal"], r["seq_len"]): r for r in ratios(report)}
    cells: dict[tuple, dict[str, KernelRow]] = {}
    for r in report.rows:
        cells.setdefault((r.head_dim, r.causal, r.seq_len), {})[r.provider] = r
    for key, cell in cells.items():
        values = _provider_values(cell, providers, lambda r: r.tflops, ".0f")
        ratio = ratio_by_cell[key]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(values)
            + f" | {_fmt(ratio['vs_flash_attn'], '.2f')} | {_fmt(ratio['vs_sdpa_cudnn'], '.2f')} |"
        )
    lines += ["", "## Milliseconds per call (median)", ""]
    lines.append("| head_dim | causal | seq_len | batch | heads | " + " | ".join(providers) + " | our tile |")
    lines.append("|" + "---|" * (len(providers) + 6))
    for key, cell in cells.items():
        first = next(iter(cell.values()))
        values = _provider_values(cell, providers, lambda r: r.ms, ".3f")
        tile = cell["triton"].config if "triton" in cell and cell["triton"].config else "—"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {first.batch} | {first.heads} | "
                     + " | ".join(values) + f" | {tile} |")
    lines += ["", "## Peak extra memory of one call, batch 1 (MiB; output included)", ""]
    lines.append("| head_dim | causal | seq_len | " + " | ".join(providers) + " |")
    lines.append("|" + "---|" * (len(providers) + 3))
    mem: dict[tuple, dict[str, MemoryRow]] = {}
    for m in report.memory:
        mem.setdefault((m.head_dim, m.causal, m.seq_len), {})[m.provider] = m
    for key, cell in mem.items():
        values = _provider_values(cell, providers, lambda m: m.peak_extra_bytes / 2**20, ".0f")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(values) + " |")
    if report.unavailable:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in report.unavailable.items())]
    return "\n".join(lines) + "\n"


def plot(report: KernelReport, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r.head_dim, r.causal) for r in report.rows})
    fig, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 4), squeeze=False)
    for ax, (d, c) in zip(axes[0], combos):
        for p in report.config["providers"]:
            pts = [(r.seq_len, r.tflops) for r in report.rows
                   if r.provider == p and r.head_dim == d and r.causal == c and r.tflops]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=p)
        ax.set_xscale("log", base=2)
        ax.set_title(f"head_dim={d}, causal={c}")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Attention forward, {report.config['dtype']}, {report.environment['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=DEFAULT_SEQ_LENS)
    parser.add_argument("--head-dims", type=int, nargs="+", default=DEFAULT_HEAD_DIMS)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--markdown")
    parser.add_argument("--plot")
    parser.add_argument("--render", metavar="JSON", help="Render a saved --json report instead of measuring.")
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        report = report_from_dict(saved)
        command = saved.get("command", "(not recorded)")
    else:
        report = run_benchmark(args.seq_lens, args.head_dims)
        command = "python -m ruvoninference.kernels.flash_attention " + " ".join(argv)
    print(to_markdown(report, command.strip()))
    if args.json_path and not args.render:
        with open(args.json_path, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(to_markdown(report, command.strip()))
    if args.plot:
        plot(report, args.plot)
