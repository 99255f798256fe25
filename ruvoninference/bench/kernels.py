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

from ruvoninference.config import dtype_name
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
            "dtype": dtype_name(dtype), "tokens_per_batch": TOKENS_PER_BATCH,
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


# == Paged attention: decode against FlashAttention-2 and SDPA, prefill over pages against contiguous ==
#
# Decode reads every cached K and V element once, so it is measured in achieved bandwidth: the K and V bytes
# of the cell (batch × kv_len × heads_kv × head_dim × 2 tensors × 2 bytes) over the median time, beside a
# device-to-device copy measured in the same run ((read + written bytes) / time, the practical ceiling).
# Every provider is captured in a CUDA graph and timed by replays (`do_bench_cudagraph`): a decode call is a
# few microseconds of GPU work, and eager launches would time Python instead. Providers:
#   triton_paged_16, triton_paged_256   ours, pages of 16 and 256 tokens, shuffled block tables
#   flash_attn_paged_256                flash_attn_with_kvcache on the same 256-token pages (FA2's paged
#                                       kernels need a block size that is a multiple of 256)
#   sdpa_contiguous                     scaled_dot_product_attention over K/V already gathered into contiguous
#                                       [batch, heads_kv, kv_len, d] (the gather is not timed; enable_gqa)

DECODE_BATCHES = [1, 8, 64, 256]
DECODE_KV_LENS = [1024, 4096, 16384, 65536, 131072]
DECODE_HEADS = [(32, 8, 128), (9, 3, 64)]  # (heads_q, heads_kv, head_dim): Llama-8B-like, SmolLM2-135M
MAX_CELL_TOKENS = 4 * 2**20  # batch × kv_len per cell: 17 GB of K/V at 8 × 128 heads, bf16
PREFILL_SEQ_LENS = [1024, 4096, 16384]
SHORT_SEQ_LENS = [256, 512, 1024, 2048]  # batch-1 prompts, where a reader first meets the prefill kernel
SHORT_HEADS = [(12, 12, 64), (9, 3, 64), (16, 8, 128)]  # gpt2, smollm2-135m, qwen3-0.6b
SHORT_PROVIDERS = ["ours_contiguous", "ours_paged_256", "flash_attn", "flash_attn_varlen", "sdpa"]
DECODE_PROVIDERS = ["triton_paged_16", "triton_paged_256", "flash_attn_paged_256", "sdpa_contiguous"]


@dataclass
class DecodeRow:
    provider: str
    batch: int
    kv_len: int
    heads_q: int
    heads_kv: int
    head_dim: int
    us: float | None
    gbps: float | None  # K and V bytes read per second, GB/s
    status: str
    splits: int | None = None  # ours: the split count the heuristic chose
    tokens: int | None = None  # cached tokens read (batch × kv_len, or the sum of ragged lengths)


@dataclass
class PagedPrefillRow:
    provider: str  # "triton_paged_16", "triton_paged_256" or "triton_contiguous"
    batch: int
    seq_len: int
    heads_q: int
    heads_kv: int
    head_dim: int
    ms: float | None
    tflops: float | None
    status: str


@dataclass
class ShortPrefillRow:
    """One batch-1 prompt of seq_len tokens (causal): a provider's kernel time in a CUDA graph and per eager call."""

    provider: str  # "ours_contiguous", "ours_paged_256", "flash_attn", "flash_attn_varlen", "sdpa"
    seq_len: int
    heads_q: int
    heads_kv: int
    head_dim: int
    graph_us: float | None  # median of CUDA-graph replays: the GPU work alone
    eager_us: float | None  # median of do_bench over eager calls: launches included, as a model calls it
    status: str


@dataclass
class PagedReport:
    environment: dict
    config: dict
    copy_gbps: float | None = None
    decode: list[DecodeRow] = field(default_factory=list)
    prefill: list[PagedPrefillRow] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)  # provider -> relative error vs float64
    unavailable: dict[str, str] = field(default_factory=dict)
    prefill_short: list[ShortPrefillRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"environment": self.environment, "config": self.config, "copy_gbps": self.copy_gbps,
                "decode": [asdict(r) for r in self.decode], "prefill": [asdict(r) for r in self.prefill],
                "prefill_short": [asdict(r) for r in self.prefill_short],
                "decode_ratios": decode_ratios(self), "prefill_ratios": prefill_ratios(self),
                "prefill_short_ratios": prefill_short_ratios(self),
                "errors": self.errors, "unavailable": self.unavailable}


def paged_report_from_dict(data: dict) -> PagedReport:
    return PagedReport(data["environment"], data["config"], data.get("copy_gbps"),
                       [DecodeRow(**r) for r in data["decode"]], [PagedPrefillRow(**r) for r in data["prefill"]],
                       data.get("errors", {}), data.get("unavailable", {}),
                       [ShortPrefillRow(**r) for r in data.get("prefill_short", [])])


PARTS = {"decode": ("decode",), "prefill": ("prefill",), "short": ("short",), "both": ("decode", "prefill"),
         "all": ("decode", "prefill", "short")}


def parse_cell(spec: str) -> tuple[int, int]:
    """"4x32768" -> (4, 32768): a decode cell's batch and kv_len, as `--cell` takes it."""
    from ruvoninference.errors import RuvonError

    try:
        batch, kv_len = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise RuvonError(f"--cell takes BATCHxKV_LEN, like 4x32768, not {spec!r}.") from None
    if batch < 1 or kv_len < 256:
        raise RuvonError(f"--cell {spec}: batch must be at least 1 and kv_len at least 256.")
    return batch, kv_len


def parse_heads(spec: str) -> tuple[int, int, int]:
    """"28/4x128" -> (28, 4, 128): query heads / KV heads x head_dim, as `--heads` takes it."""
    from ruvoninference.errors import RuvonError

    try:
        heads, dim = spec.lower().split("x")
        hq, hkv = heads.split("/")
        shape = int(hq), int(hkv), int(dim)
    except ValueError:
        raise RuvonError(f"--heads takes QUERY/KV x HEAD_DIM, like 28/4x128, not {spec!r}.") from None
    if min(shape) < 1 or shape[0] % shape[1]:
        raise RuvonError(f"--heads {spec}: query heads must be a positive multiple of the KV heads.")
    from ruvoninference.kernels.flash_attention import SUPPORTED_HEAD_DIMS

    if shape[2] not in SUPPORTED_HEAD_DIMS:
        raise RuvonError(f"--heads {spec}: head_dim must be one of {', '.join(map(str, SUPPORTED_HEAD_DIMS))}.")
    return shape


def copy_bandwidth_gbps(nbytes: int = 2 * 2**30) -> float:
    """A device-to-device copy of `nbytes`: (bytes read + bytes written) / median time, GB/s."""
    import triton.testing

    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * nbytes / (ms * 1e-3) / 1e9


def decode_cells(batches, kv_lens, heads) -> list[tuple[int, int, int, int, int]]:
    """(heads_q, heads_kv, head_dim, batch, kv_len) for every cell within MAX_CELL_TOKENS."""
    return [(hq, hkv, d, b, n) for hq, hkv, d in heads for b in batches for n in kv_lens
            if b * n <= MAX_CELL_TOKENS]


def shuffled_tables(batch: int, kv_len: int, block_size: int, device) -> torch.Tensor:
    """Block tables over a pool of batch × kv_len tokens: every page used once, in random order."""
    per_seq = kv_len // block_size
    order = torch.randperm(batch * per_seq, device=device, dtype=torch.int64)
    return order.to(torch.int32).view(batch, per_seq)


def ragged_lengths(batch: int, kv_len: int, device, seed: int = 0) -> torch.Tensor:
    """int32 [batch] lengths drawn uniformly from [kv_len / 2, kv_len] (seeded): a serving batch's spread."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(kv_len // 2, kv_len + 1, (batch,), generator=gen, dtype=torch.int32).to(device)


def _graph_time_us(fn: Callable, rep: int = 50) -> float:
    import triton.testing

    fn()  # compile and allocate outside the capture
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median") * 1e3


def _decode_providers(q, pool_k, pool_v, seq_lens, tables, heads_kv, head_dim, unavailable, sdpa=True):
    """Callables for one cell. The pool is [tokens, heads_kv, d]; each provider views it its own way."""
    from ruvoninference.kernels.paged_attention import paged_decode_attention

    batch, kv_len = tables[256].shape[0], tables[256].shape[1] * 256
    fns = {}
    for size in (16, 256):
        k = pool_k.view(-1, size, heads_kv, head_dim)
        v = pool_v.view(-1, size, heads_kv, head_dim)
        out = torch.empty_like(q)
        fns[f"triton_paged_{size}"] = (
            lambda k=k, v=v, t=tables[size], o=out: paged_decode_attention(q, k, v, t, seq_lens, out=o))
    try:
        from flash_attn import flash_attn_with_kvcache

        k256 = pool_k.view(-1, 256, heads_kv, head_dim)
        v256 = pool_v.view(-1, 256, heads_kv, head_dim)
        q4 = q.unsqueeze(1)  # [batch, 1, heads_q, d]
        fns["flash_attn_paged_256"] = lambda: flash_attn_with_kvcache(
            q4, k256, v256, cache_seqlens=seq_lens, block_table=tables[256])
    except ImportError:
        unavailable["flash_attn_paged_256"] = "flash-attn is not installed (uv sync --group flash)"
    if not sdpa:
        return fns
    # SDPA: the same keys, gathered once (not timed) into [batch, heads_kv, kv_len, d].
    rows = (tables[256].long()[:, :, None] * 256 + torch.arange(256, device=q.device)).view(batch, kv_len)
    kc = pool_k[rows].transpose(1, 2).contiguous()
    vc = pool_v[rows].transpose(1, 2).contiguous()
    q_sdpa = q.unsqueeze(2)  # [batch, heads_q, 1, d]
    fns["sdpa_contiguous"] = lambda: torch.nn.functional.scaled_dot_product_attention(
        q_sdpa, kc, vc, enable_gqa=True)
    return fns


def decode_errors(heads_q: int, heads_kv: int, head_dim: int, dtype, unavailable, device="cuda",
                  batch: int = 4, kv_len: int = 2048) -> dict[str, float]:
    """Each provider on one cell against the float64 reference: fast must still be right."""
    from ruvoninference.kernels.paged_attention import reference_paged_decode

    gen = torch.Generator(device=device).manual_seed(3)
    pool_k = torch.randn(batch * kv_len, heads_kv, head_dim, device=device, dtype=dtype, generator=gen)
    pool_v = torch.randn_like(pool_k)
    q = torch.randn(batch, heads_q, head_dim, device=device, dtype=dtype, generator=gen)
    seq_lens = torch.full((batch,), kv_len, dtype=torch.int32, device=device)
    tables = {s: shuffled_tables(batch, kv_len, s, device) for s in (16, 256)}
    # Each page size has its own shuffled table over the one pool, so each has its own reference (SDPA
    # gathers through the 256-token table).
    refs = {size: reference_paged_decode(q, pool_k.view(-1, size, heads_kv, head_dim),
                                         pool_v.view(-1, size, heads_kv, head_dim), tables[size], seq_lens)
            for size in (16, 256)}
    errors = {}
    for name, fn in _decode_providers(q, pool_k, pool_v, seq_lens, tables, heads_kv, head_dim, unavailable).items():
        out = fn().reshape(batch, heads_q, head_dim).double()
        ref = refs[16 if name.endswith("_16") else 256]
        errors[f"{name} {heads_q}/{heads_kv}x{head_dim}"] = float((out - ref).norm() / ref.norm())
    return errors


def run_decode_benchmark(report: PagedReport, cells, dtype, progress=None, ragged: bool = False) -> None:
    """Every cell's providers. `ragged`: sequence lengths drawn between kv_len / 2 and kv_len (seeded per cell)
    in one table sized for kv_len; bandwidth counts the tokens actually read. SDPA is then left out: over
    contiguous K/V it has no per-sequence lengths without a mask, which would time another kernel."""
    from ruvoninference.kernels.paged_attention import choose_num_splits

    for hq, hkv, d in sorted({c[:3] for c in cells}):
        report.errors.update(decode_errors(hq, hkv, d, dtype, report.unavailable))
    for i, (hq, hkv, d, batch, kv_len) in enumerate(cells):
        if progress:
            progress(f"decode {hq}/{hkv}x{d} b={batch} kv={kv_len}", i, len(cells))
        try:
            gen = torch.Generator(device="cuda").manual_seed(i)
            pool_k = torch.randn(batch * kv_len, hkv, d, device="cuda", dtype=dtype, generator=gen)
            pool_v = torch.randn_like(pool_k)
            q = torch.randn(batch, hq, d, device="cuda", dtype=dtype, generator=gen)
            seq_lens = (ragged_lengths(batch, kv_len, "cuda", seed=i) if ragged
                        else torch.full((batch,), kv_len, dtype=torch.int32, device="cuda"))
            tokens = int(seq_lens.sum())
            kv_bytes = 2 * tokens * hkv * d * torch.finfo(dtype).bits // 8
            tables = {s: shuffled_tables(batch, kv_len, s, "cuda") for s in (16, 256)}
            fns = _decode_providers(q, pool_k, pool_v, seq_lens, tables, hkv, d, report.unavailable,
                                    sdpa=not ragged)
        except Exception as exc:
            status = "OOM" if is_out_of_memory(exc) else f"error: {type(exc).__name__}: {str(exc)[:120]}"
            report.decode += [DecodeRow(p, batch, kv_len, hq, hkv, d, None, None, status) for p in DECODE_PROVIDERS]
            continue
        for name in DECODE_PROVIDERS:
            row = DecodeRow(name, batch, kv_len, hq, hkv, d, None, None, "ok", tokens=tokens)
            if name not in fns:
                row.status = "not run (ragged)" if ragged and name == "sdpa_contiguous" else "unavailable"
            else:
                try:
                    row.us = _graph_time_us(fns[name], rep=30)
                    row.gbps = kv_bytes / (row.us * 1e-6) / 1e9
                    if name.startswith("triton"):
                        row.splits = choose_num_splits(batch, hkv, kv_len, q.device, d, hq // hkv)
                except Exception as exc:
                    row.status = "OOM" if is_out_of_memory(exc) else f"error: {type(exc).__name__}: {str(exc)[:120]}"
            report.decode.append(row)
        del fns, pool_k, pool_v
        torch.cuda.empty_cache()


def run_paged_prefill_benchmark(report: PagedReport, seq_lens, heads, dtype, progress=None) -> None:
    """Fresh causal prompts, batch × seq_len = TOKENS_PER_BATCH: our kernel over pages and over contiguous K/V."""
    import triton.testing

    from ruvoninference.kernels.paged_attention import paged_prefill_attention

    cells = [(hq, hkv, d, n) for hq, hkv, d in heads for n in seq_lens]
    for i, (hq, hkv, d, n) in enumerate(cells):
        if progress:
            progress(f"prefill {hq}/{hkv}x{d} n={n}", i, len(cells))
        batch = max(1, TOKENS_PER_BATCH // n)
        gen = torch.Generator(device="cuda").manual_seed(100 + i)
        q = torch.randn(batch * n, hq, d, device="cuda", dtype=dtype, generator=gen)
        pool_k = torch.randn(batch * n, hkv, d, device="cuda", dtype=dtype, generator=gen)
        pool_v = torch.randn_like(pool_k)
        cu = torch.arange(0, batch * n + 1, n, dtype=torch.int32, device="cuda")
        lens = torch.full((batch,), n, dtype=torch.int32, device="cuda")
        fns: dict[str, Callable] = {}
        for size in (16, 256):
            t = shuffled_tables(batch, n, size, "cuda")
            k, v = pool_k.view(-1, size, hkv, d), pool_v.view(-1, size, hkv, d)
            fns[f"triton_paged_{size}"] = lambda k=k, v=v, t=t: paged_prefill_attention(q, k, v, cu, lens, t)
        # The contiguous kernel on the same numbers, [batch, heads, n, d] views of the packed tensors.
        qc = q.view(batch, n, hq, d).transpose(1, 2)
        kc = pool_k.view(batch, n, hkv, d).transpose(1, 2).contiguous()
        vc = pool_v.view(batch, n, hkv, d).transpose(1, 2).contiguous()
        fns["triton_contiguous"] = lambda: flash_attention_triton(qc, kc, vc, causal=True)
        for name, fn in fns.items():
            row = PagedPrefillRow(name, batch, n, hq, hkv, d, None, None, "ok")
            try:
                row.ms = triton.testing.do_bench(fn, return_mode="median")
                row.tflops = flops(batch, hq, n, d, causal=True) / (row.ms * 1e-3) / 1e12
            except Exception as exc:
                row.status = "OOM" if is_out_of_memory(exc) else f"error: {type(exc).__name__}: {str(exc)[:120]}"
            report.prefill.append(row)
        del fns, q, pool_k, pool_v, kc, vc
        torch.cuda.empty_cache()


def run_paged_benchmark(
    batches: list[int] = DECODE_BATCHES,  # noqa: B006 - read only
    kv_lens: list[int] = DECODE_KV_LENS,  # noqa: B006 - read only
    heads: list[tuple[int, int, int]] = DECODE_HEADS,  # noqa: B006 - read only
    prefill_seq_lens: list[int] = PREFILL_SEQ_LENS,  # noqa: B006 - read only
    parts: tuple[str, ...] = ("decode", "prefill"),
    dtype: torch.dtype = torch.bfloat16,
    progress: Callable[[str, int, int], None] | None = None,
    ragged: bool = False,
    pairs: list[tuple[int, int]] | None = None,
    short_seq_lens: list[int] = SHORT_SEQ_LENS,  # noqa: B006 - read only
) -> PagedReport:
    """parts: "decode", "prefill" (batch × seq_len = TOKENS_PER_BATCH, paged against contiguous) and "short"
    (batch-1 prompts against FA2 and SDPA). `pairs` (batch, kv_len) replaces the batches × kv_lens grid."""
    if not torch.cuda.is_available():
        from ruvoninference.errors import RuvonError

        raise RuvonError("The paged kernel benchmark needs a CUDA GPU and none is visible; run it on a GPU machine.")
    if pairs:
        kv_lens = sorted({n for _, n in pairs})
    bad = [n for n in kv_lens + prefill_seq_lens + short_seq_lens if n % 256]
    if bad:
        from ruvoninference.errors import RuvonError

        raise RuvonError(f"Lengths must be multiples of 256 (the largest page size compared), not {bad}.")
    from ruvoninference.kernels import paged_attention as pa

    if pairs:
        cells = [(hq, hkv, d, b, n) for hq, hkv, d in heads for b, n in pairs if b * n <= MAX_CELL_TOKENS]
        batches = sorted({b for b, _ in pairs})
    else:
        cells = decode_cells(batches, kv_lens, heads)
    cells = cells if "decode" in parts else []
    report = PagedReport(describe("cuda"), {
        "parts": list(parts), "ragged": ragged, "pairs": [list(p) for p in pairs] if pairs else None,
        "short_seq_lens": short_seq_lens if "short" in parts else None, "dtype": dtype_name(dtype), "batches": batches, "kv_lens": kv_lens,
        "heads": [list(h) for h in heads], "max_cell_tokens": MAX_CELL_TOKENS, "decode_cells": len(cells),
        "prefill_seq_lens": prefill_seq_lens, "tokens_per_batch": TOKENS_PER_BATCH,
        "decode_timing": "triton.testing.do_bench_cudagraph median (CUDA-graph replays), microseconds",
        "prefill_timing": "triton.testing.do_bench median, ms",
        "decode_tile": {d: pa.decode_tile(d).describe() for d in sorted({h[2] for h in heads})},
        "prefill_tile": {f"d={d} seq_len={n}": pa.prefill_tile(d, n).describe()
                         for d in sorted({h[2] for h in heads}) for n in prefill_seq_lens},
        "split_policy": {"programs_per_sm": {d: pa.programs_per_sm(d) for d in sorted({h[2] for h in heads})},
                         "min_tokens_per_split": "max(64, 2*sqrt(max_seq_len), 16*group)",
                         "max_splits": pa.MAX_SPLITS},
        "flash_attn_settings": "flash_attn_with_kvcache(q [b,1,hq,d], paged k/v (pages of 256), cache_seqlens, "
                               "block_table), its own split heuristic; short prompts: flash_attn_func and "
                               "flash_attn_varlen_func, causal, defaults",
        "l2_bytes": getattr(torch.cuda.get_device_properties(0), "L2_cache_size", None),
    })
    report.copy_gbps = copy_bandwidth_gbps()
    if "decode" in parts:
        run_decode_benchmark(report, cells, dtype, progress, ragged=ragged)
    if "prefill" in parts:
        run_paged_prefill_benchmark(report, prefill_seq_lens, heads, dtype, progress)
    if "short" in parts:
        run_short_prefill_benchmark(report, short_seq_lens, SHORT_HEADS if heads == DECODE_HEADS else heads,
                                    dtype, progress)
    if progress:
        progress("done", 1, 1)
    return report


def _short_providers(q, k, v, n: int) -> dict[str, Callable]:
    """Callables for one batch-1 causal prompt: q [n, hq, d], k and v [n, hkv, d] (n a multiple of 256)."""
    from ruvoninference.kernels.paged_attention import paged_prefill_attention

    hkv, d = k.shape[1:]
    cu = torch.tensor([0, n], dtype=torch.int32, device=q.device)
    lens = torch.tensor([n], dtype=torch.int32, device=q.device)
    table = shuffled_tables(1, n, 256, q.device)
    pk, pv = k.view(-1, 256, hkv, d), v.view(-1, 256, hkv, d)
    qc, kc, vc = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))  # [1, h, n, d] views
    fns = {
        "ours_contiguous": lambda: flash_attention_triton(qc, kc, vc, causal=True),
        "ours_paged_256": lambda: paged_prefill_attention(q, pk, pv, cu, lens, table),
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=True, enable_gqa=True),
    }
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func

        fns["flash_attn"] = lambda: flash_attn_func(q[None], k[None], v[None], causal=True)
        fns["flash_attn_varlen"] = lambda: flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True)
    except ImportError:
        pass
    return fns


def run_short_prefill_benchmark(report: PagedReport, seq_lens, heads, dtype, progress=None) -> None:
    """Batch 1, causal, fresh prompts of the embedded models' shapes: every provider in a CUDA graph and eagerly."""
    import triton.testing

    cells = [(hq, hkv, d, n) for hq, hkv, d in heads for n in seq_lens]
    for i, (hq, hkv, d, n) in enumerate(cells):
        if progress:
            progress(f"short prefill {hq}/{hkv}x{d} n={n}", i, len(cells))
        gen = torch.Generator(device="cuda").manual_seed(200 + i)
        q = torch.randn(n, hq, d, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(n, hkv, d, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn_like(k)
        fns = _short_providers(q, k, v, n)
        for name in SHORT_PROVIDERS:
            row = ShortPrefillRow(name, n, hq, hkv, d, None, None, "ok")
            if name not in fns:
                row.status = "unavailable"
            else:
                try:
                    row.graph_us = _graph_time_us(fns[name], rep=25)
                    row.eager_us = triton.testing.do_bench(fns[name], rep=25, return_mode="median") * 1e3
                except Exception as exc:
                    row.status = f"error: {type(exc).__name__}: {str(exc)[:120]}"
            report.prefill_short.append(row)


PROMPT_KEY = ("heads_q", "heads_kv", "head_dim", "seq_len")


def cells_by(rows, key: tuple[str, ...]) -> dict[tuple, dict[str, object]]:
    """Rows grouped into cells by the fields in `key`, each cell {provider: row}, in first-seen order."""
    cells: dict[tuple, dict[str, object]] = {}
    for r in rows:
        cells.setdefault(tuple(getattr(r, f) for f in key), {})[r.provider] = r
    return cells


def prefill_short_ratios(report: PagedReport) -> list[dict]:
    """Per prompt: FA2's time over ours (> 1: ours faster), CUDA-graph and eager, contiguous and paged."""
    out = []
    for key, cell in cells_by(report.prefill_short, PROMPT_KEY).items():
        entry = dict(zip(PROMPT_KEY, key))
        fa2 = cell.get("flash_attn")
        for ours in ("ours_contiguous", "ours_paged_256"):
            mine = cell.get(ours)
            for timing in ("graph_us", "eager_us"):
                a, b = getattr(fa2, timing, None) if fa2 else None, getattr(mine, timing, None) if mine else None
                entry[f"{ours}_vs_fa2_{timing.removesuffix('_us')}"] = a / b if a and b else None
        out.append(entry)
    return out


def decode_ratios(report: PagedReport) -> list[dict]:
    """Per cell: ours (block 16 and 256) over FA2's time, and ours' bandwidth as a fraction of the copy's."""
    decode_key = ("heads_q", "heads_kv", "head_dim", "batch", "kv_len")
    # The fastest K/V read any provider reached anywhere in the run: where FA2 already reads at more than
    # 1/1.2 of it, no kernel could be 1.2x faster than FA2 at that cell without out-reading every kernel here.
    best_read = max((r.gbps for r in report.decode if r.gbps), default=None)
    out = []
    for key, cell in cells_by(report.decode, decode_key).items():
        fa2 = cell.get("flash_attn_paged_256")
        entry = dict(zip(decode_key, key))
        entry["fa2_ceiling"] = best_read / fa2.gbps if best_read and fa2 and fa2.gbps else None
        for size in (16, 256):
            ours = cell.get(f"triton_paged_{size}")
            ok = ours is not None and ours.us is not None
            entry[f"speedup_vs_fa2_{size}"] = fa2.us / ours.us if ok and fa2 and fa2.us else None
            entry[f"copy_fraction_{size}"] = ours.gbps / report.copy_gbps if ok and report.copy_gbps else None
        out.append(entry)
    return out


def prefill_ratios(report: PagedReport) -> list[dict]:
    """Per cell: contiguous time over paged time (1.0 = paging costs nothing; the goal is >= 0.9)."""
    out = []
    for key, cell in cells_by(report.prefill, PROMPT_KEY).items():
        entry = dict(zip(PROMPT_KEY, key))
        base = cell.get("triton_contiguous")
        for size in (16, 256):
            ours = cell.get(f"triton_paged_{size}")
            ok = ours is not None and ours.ms and base is not None and base.ms
            entry[f"paged_{size}_vs_contiguous"] = base.ms / ours.ms if ok else None
        out.append(entry)
    return out


def paged_markdown(report: PagedReport, command: str) -> str:
    env = report.environment
    copy = report.copy_gbps
    lines = [
        f"# Paged attention kernels: {env['device']}", "",
        f"Command: `{command}`", "",
        f"torch {env['torch']}, triton {env['triton']}, flash-attn {env['flash_attn']}, CUDA {env['cuda']}; "
        f"{report.config['dtype']}. Device-to-device copy in this run: {_fmt(copy, ',.0f')} GB/s "
        "((read + written) / time).", "",
    ]
    if report.decode:
        providers = DECODE_PROVIDERS
        lines += [
            ("## Decode: one new token per sequence, lengths drawn between kv_len / 2 and kv_len (ragged; GB/s "
             "count the tokens read)" if report.config.get("ragged")
             else "## Decode: one new token per sequence, every sequence kv_len long"), "",
            "Microseconds per call (median of CUDA-graph replays) and GB/s of K and V read. ours/FA2 = FA2's "
            "time over ours (> 1: ours faster); copy% = our GB/s over the copy's; ceiling = the fastest K/V "
            f"read of any provider in this run ({_fmt(max((r.gbps for r in report.decode if r.gbps), default=None), ',.0f')} "
            "GB/s) over FA2's: the largest ours/FA2 any kernel reading at that rate could reach. Our tile: "
            + "; ".join(f"d={d}: {t}" for d, t in report.config["decode_tile"].items()) + ".", "",
            "| heads q/kv x d | batch | kv_len | splits | " + " | ".join(f"{p} µs" for p in providers)
            + " | ours 16 GB/s | ours 256 GB/s | FA2 GB/s | ours16/FA2 | ours256/FA2 | ceiling | copy% 16 | copy% 256 |",
            "|" + "---|" * (len(providers) + 12),
        ]
        ratio = {(r["heads_q"], r["heads_kv"], r["head_dim"], r["batch"], r["kv_len"]): r
                 for r in decode_ratios(report)}
        cells: dict[tuple, dict[str, DecodeRow]] = {}
        for r in report.decode:
            cells.setdefault((r.heads_q, r.heads_kv, r.head_dim, r.batch, r.kv_len), {})[r.provider] = r
        for key, cell in cells.items():
            rt = ratio[key]
            ours16, ours256, fa2 = (cell.get(p) for p in ("triton_paged_16", "triton_paged_256", "flash_attn_paged_256"))
            splits = ours16.splits if ours16 and ours16.splits else "—"
            lines.append(
                f"| {key[0]}/{key[1]} x {key[2]} | {key[3]} | {key[4]} | {splits} | "
                + " | ".join(_provider_values(cell, providers, lambda r: r.us, ".1f"))
                + " | " + " | ".join(_fmt(r.gbps if r else None, ",.0f") for r in (ours16, ours256, fa2))
                + f" | {_fmt(rt['speedup_vs_fa2_16'], '.2f')} | {_fmt(rt['speedup_vs_fa2_256'], '.2f')}"
                + f" | {_fmt(rt['fa2_ceiling'], '.2f')}"
                + f" | {_fmt(_pct(rt['copy_fraction_16']), '.0f')} | {_fmt(_pct(rt['copy_fraction_256']), '.0f')} |"
            )
        if report.errors:
            lines += ["", "Relative error against float64 (batch 4, kv_len 2048): "
                      + ", ".join(f"{k} {v:.1e}" for k, v in report.errors.items()) + "."]
    if report.prefill:
        lines += [
            "", "## Prefill over pages against our contiguous kernel (causal, fresh prompts)", "",
            f"batch × seq_len = {TOKENS_PER_BATCH} tokens; ms (median of do_bench) and TFLOP/s. The contiguous "
            "kernel autotunes its tile; the paged one uses a fixed tile per head_dim and prompt length, the same "
            "for both page sizes (`prefill_tile`): " + "; ".join(f"{k}: {t}" for k, t in report.config["prefill_tile"].items())
            + ".", "",
            "| heads q/kv x d | seq_len | batch | paged 16 ms | paged 256 ms | contiguous ms | paged 16 TFLOP/s "
            "| contiguous TFLOP/s | contiguous/paged 16 | contiguous/paged 256 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        ratio = {(r["heads_q"], r["heads_kv"], r["head_dim"], r["seq_len"]): r for r in prefill_ratios(report)}
        pcells: dict[tuple, dict[str, PagedPrefillRow]] = {}
        for r in report.prefill:
            pcells.setdefault((r.heads_q, r.heads_kv, r.head_dim, r.seq_len), {})[r.provider] = r
        for key, cell in pcells.items():
            vals = _provider_values(cell, ["triton_paged_16", "triton_paged_256", "triton_contiguous"],
                                    lambda r: r.ms, ".3f")
            tf = _provider_values(cell, ["triton_paged_16", "triton_contiguous"], lambda r: r.tflops, ".0f")
            rt = ratio[key]
            batch = next(iter(cell.values())).batch
            lines.append(f"| {key[0]}/{key[1]} x {key[2]} | {key[3]} | {batch} | " + " | ".join(vals + tf)
                         + f" | {_fmt(rt['paged_16_vs_contiguous'], '.2f')} | {_fmt(rt['paged_256_vs_contiguous'], '.2f')} |")
    if report.prefill_short:
        lines += short_prefill_markdown(report)
    if report.unavailable:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in report.unavailable.items())]
    return "\n".join(lines) + "\n"


def short_prefill_markdown(report: PagedReport) -> list[str]:
    lines = [
        "", "## Short prompts, batch 1 (causal): ours against FlashAttention-2 and SDPA", "",
        "µs per call: `graph` = median of CUDA-graph replays (the GPU work alone), `eager` = median of do_bench "
        "over eager calls (launch costs included, as a model calls it). ÷FA2 = flash_attn_func's time over ours.", "",
        "| heads q/kv x d | seq_len | " + " | ".join(f"{p} graph | {p} eager" for p in SHORT_PROVIDERS)
        + " | contiguous ÷FA2 graph | contiguous ÷FA2 eager | paged ÷FA2 graph | paged ÷FA2 eager |",
        "|" + "---|" * (2 + 2 * len(SHORT_PROVIDERS) + 4),
    ]
    ratio = {tuple(r[f] for f in PROMPT_KEY): r for r in prefill_short_ratios(report)}
    for key, cell in cells_by(report.prefill_short, PROMPT_KEY).items():
        vals = []
        for p in SHORT_PROVIDERS:
            r = cell.get(p)
            vals += ([_fmt(r.graph_us, ".1f"), _fmt(r.eager_us, ".1f")] if r and r.status == "ok"
                     else [r.status if r else "—"] * 2)
        rt = ratio[key]
        lines.append(f"| {key[0]}/{key[1]} x {key[2]} | {key[3]} | " + " | ".join(vals) + " | " + " | ".join(
            _fmt(rt[f"{o}_vs_fa2_{t}"], ".2f") for o in ("ours_contiguous", "ours_paged_256") for t in ("graph", "eager"))
            + " |")
    return lines


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def paged_plot(report: PagedReport, path: str) -> None:
    """Achieved GB/s against kv_len, one panel per (heads, batch), with the copy bandwidth as a line (a run
    over --cell pairs: `bandwidth_plot`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report.config.get("pairs"):
        return bandwidth_plot(report, path)

    panels = sorted({(r.heads_q, r.heads_kv, r.head_dim, r.batch) for r in report.decode})
    cols = max(1, len({p[3] for p in panels}))
    rows = max(1, len({p[:3] for p in panels}))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.5 * rows), squeeze=False)
    heads = sorted({p[:3] for p in panels})
    batches = sorted({p[3] for p in panels})
    for (hq, hkv, d, b) in panels:
        ax = axes[heads.index((hq, hkv, d))][batches.index(b)]
        for p in DECODE_PROVIDERS:
            pts = [(r.kv_len, r.gbps) for r in report.decode if r.provider == p and r.gbps
                   and (r.heads_q, r.heads_kv, r.head_dim, r.batch) == (hq, hkv, d, b)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=p)
        if report.copy_gbps:
            ax.axhline(report.copy_gbps, color="gray", linestyle="--", label="copy")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{hq}/{hkv} x {d}, batch {b}", fontsize=9)
        ax.set_xlabel("kv_len")
        ax.set_ylabel("GB/s of K and V")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Paged decode, {report.config['dtype']}, {report.environment['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bandwidth_plot(report: PagedReport, path: str) -> None:
    """Achieved GB/s against the MB of K and V one call reads, a panel per head_dim: ours (pages of 256,
    filled) and FlashAttention-2 (hollow), one colour per head shape, the copy rate as a dashed line. Bytes,
    not tokens, on the x axis: few KV heads make few bytes, and a call's fixed cost is a larger share of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r.head_dim for r in report.decode})
    fig, axes = plt.subplots(1, len(dims), figsize=(6.2 * len(dims), 4.8), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], dims):
        shapes = sorted({(r.heads_q, r.heads_kv) for r in report.decode if r.head_dim == d},
                        key=lambda s: (s[1], s[0]))
        for i, (hq, hkv) in enumerate(shapes):
            color = plt.cm.tab10.colors[i % 10]
            for provider, fill in (("triton_paged_256", color), ("flash_attn_paged_256", "none")):
                pts = [(r.gbps * r.us / 1e3, r.gbps) for r in report.decode
                       if (r.heads_q, r.heads_kv, r.head_dim, r.provider) == (hq, hkv, d, provider) and r.gbps]
                if pts:
                    ax.scatter(*zip(*pts), color=color, facecolors=fill, s=36,
                               label=f"{hq}/{hkv} " + ("ours" if provider.startswith("triton") else "FA2"))
        if report.copy_gbps:
            ax.axhline(report.copy_gbps, color="gray", linestyle="--", label="copy")
        ax.set_xscale("log")
        ax.set_title(f"head_dim {d}: ours filled, FlashAttention-2 hollow", fontsize=10)
        ax.set_xlabel("MB of K and V read per call")
        ax.set_ylabel("GB/s of K and V")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle(f"Paged decode, {report.config['dtype']}, {report.environment['device']}"
                 + (", ragged lengths" if report.config.get("ragged") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    """`python -m ruvoninference.bench.kernels [--paged]`: the options of `cli.py kernel benchmark` / `kernel paged`."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paged", action="store_true", help="The paged kernels (as `cli.py kernel paged`).")
    parser.add_argument("--seq-len", type=int, nargs="+", action="extend", help="Sequence lengths (repeatable).")
    parser.add_argument("--head-dim", type=int, nargs="+", action="extend", help="Head dims (repeatable).")
    parser.add_argument("--batch", type=int, nargs="+", action="extend", help="Decode batch sizes (--paged).")
    parser.add_argument("--kv-len", type=int, nargs="+", action="extend", help="Decode cache lengths (--paged).")
    parser.add_argument("--part", choices=list(PARTS), default="both", help="(--paged)")
    parser.add_argument("--heads", action="append", help="Head shape like 28/4x128 (--paged; repeatable).")
    parser.add_argument("--cell", action="append", help="Decode cell BATCHxKV_LEN, like 4x32768 (--paged; repeatable).")
    parser.add_argument("--ragged", action="store_true", help="Decode lengths between kv_len/2 and kv_len (--paged).")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--markdown")
    parser.add_argument("--plot")
    parser.add_argument("--render", metavar="JSON", help="Render a saved --json report instead of measuring.")
    args = parser.parse_args(argv)
    command = "python -m ruvoninference.bench.kernels " + " ".join(argv)
    saved = None
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        command = saved.get("command", "(not recorded)")
    if args.paged:
        if saved is not None:
            report = paged_report_from_dict(saved)
        else:
            report = run_paged_benchmark(args.batch or DECODE_BATCHES, args.kv_len or DECODE_KV_LENS,
                                         [parse_heads(h) for h in args.heads] if args.heads else DECODE_HEADS,
                                         args.seq_len or PREFILL_SEQ_LENS, PARTS[args.part], ragged=args.ragged,
                                         pairs=[parse_cell(c) for c in args.cell] if args.cell else None)
        text, draw = paged_markdown(report, command.strip()), paged_plot
    else:
        report = report_from_dict(saved) if saved is not None else run_benchmark(
            args.seq_len or DEFAULT_SEQ_LENS, args.head_dim or DEFAULT_HEAD_DIMS)
        text, draw = to_markdown(report, command.strip()), plot
    print(text)
    if args.json_path and saved is None:
        with open(args.json_path, "w") as f:
            json.dump({**report.to_dict(), "command": command.strip()}, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.plot:
        draw(report, args.plot)


if __name__ == "__main__":
    main()
