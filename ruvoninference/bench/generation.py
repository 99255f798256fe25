"""Side-by-side generation benchmarks: every backend on the same model, prompt, device and dtype.

For each implementation: build an engine with it (all engines share one copy of the weights), run the
generation `warmup` times untimed (kernel compilation, autotuning, CUDA-graph capture and allocator growth
stay out of the numbers), then `repeats` timed runs, each generating exactly `max_tokens` greedy tokens
(EOS ignored, so every run does the same work). We report medians, the min/max spread of tokens/s, and
whether the greedy tokens equal eager's: a fast backend that changes the answer is not a speedup.

`baseline_hf=True` adds Hugging Face `model.generate` as a row for each implementation transformers can
run it with, so the engine is measured against the library with the same attention backend.

The engine's KV cache is sized to this run (prompt plus new tokens, rounded up to blocks), so the peak
memory it reports is comparable with Hugging Face's growing cache rather than a preallocated pool.

`tensor_parallel_size=N` runs each of our rows on an engine cut over N processes. Processes cannot share
weights loaded here, so each row's engine loads its shards by name (and is stopped before the next row
starts); the prompt is tokenized by that engine, and the cache is sized before it from the prompt's UTF-8
bytes plus one (no byte-level or SentencePiece token is shorter than a byte) with rank 0's KV heads. Peak
memory is rank 0's (its process, or its GPU).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from ruvoninference.attention import AttentionImplementation, load_model_with_attention
from ruvoninference.config import dtype_name, resolve_device, resolve_dtype
from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.environment import describe
from ruvoninference.models import load_model, model_config
from ruvoninference.parallel import TPGroup
from ruvoninference.parallel.engine import shutdown
from ruvoninference.parallel.shard import local_config
from ruvoninference.stats import peak_memory, reset_peak_memory
from ruvoninference.weights import ProgressCallback

HF_PREFIX = "hf_generate:"
HF_IMPLEMENTATIONS = (AttentionImplementation.EAGER, AttentionImplementation.SDPA,
                      AttentionImplementation.FLASH_ATTENTION_2)


@dataclass
class BenchmarkRow:
    implementation: str
    median_time_s: float
    tokens_per_s_median: float
    tokens_per_s_min: float
    tokens_per_s_max: float
    ttft_median_s: float
    prefill_tokens_per_s: float | None
    decode_tokens_per_s: float | None
    peak_memory_bytes: int
    peak_memory_kind: str
    token_ids: list[int]
    speedup_vs_eager: float | None = None
    matches_eager: bool | None = None
    first_mismatch: int | None = None  # index of the first token that differs from eager's
    speedup_vs_hf: float | None = None  # ours over Hugging Face generate with the same backend
    kv_pool_bytes: int | None = None  # ours: the KV cache it reserved (sized to this run: what the run needs)


@dataclass
class BenchmarkReport:
    environment: dict
    config: dict
    rows: list[BenchmarkRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "environment": self.environment,
            "config": self.config,
            "rows": [asdict(r) for r in self.rows],
            "skipped": self.skipped,
        }


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time_runs(run: Callable[[], dict], warmup: int, repeats: int) -> list[dict]:
    for _ in range(warmup):
        run()
    return [run() for _ in range(repeats)]


def _row(name: str, runs: list[dict], token_ids: list[int]) -> BenchmarkRow:
    rates = [r["tokens"] / r["total"] for r in runs]
    prefill = [r["prefill_tps"] for r in runs if r.get("prefill_tps") is not None]
    decode = [r["decode_tps"] for r in runs if r.get("decode_tps") is not None]
    return BenchmarkRow(
        implementation=name,
        median_time_s=statistics.median(r["total"] for r in runs),
        tokens_per_s_median=statistics.median(rates),
        tokens_per_s_min=min(rates),
        tokens_per_s_max=max(rates),
        ttft_median_s=statistics.median(r["ttft"] for r in runs),
        prefill_tokens_per_s=statistics.median(prefill) if prefill else None,
        decode_tokens_per_s=statistics.median(decode) if decode else None,
        peak_memory_bytes=max(r["peak"] for r in runs),
        peak_memory_kind=runs[0]["peak_kind"],
        token_ids=token_ids,
    )


def _ours(engine: Engine, prompt_ids: list[int], max_tokens: int, warmup: int, repeats: int):
    sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    last = {}

    def run() -> dict:
        reset_peak_memory(engine.device)
        out = engine.generate([prompt_ids], sampling)[0]
        peak, kind = peak_memory(engine.device)
        last["ids"] = out.token_ids
        total = out.finish_time - out.arrival_time
        ttft = out.time_to_first_token_s
        decode_time = out.finish_time - out.first_token_time
        return {
            "total": total, "tokens": len(out.token_ids), "ttft": ttft,
            "prefill_tps": len(prompt_ids) / ttft,
            "decode_tps": (len(out.token_ids) - 1) / decode_time if decode_time > 0 else None,
            "peak": peak, "peak_kind": kind,
        }

    runs = _time_runs(run, warmup, repeats)
    return runs, last["ids"]


@torch.inference_mode()
def _hf_generate(loaded, prompt_ids: list[int], max_new_tokens: int, warmup: int, repeats: int):
    ids = torch.tensor([prompt_ids], device=loaded.device)
    mask = torch.ones_like(ids)
    last = {}

    def run() -> dict:
        reset_peak_memory(loaded.device)
        start = time.perf_counter()
        out = loaded.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id,
        )
        total = time.perf_counter() - start  # .generate returns host-visible tokens: already synchronized
        peak, kind = peak_memory(loaded.device)
        last["ids"] = out[0, len(prompt_ids):].tolist()
        # HF's generate does not expose its time to first token: measure it as a 1-token generate.
        start = time.perf_counter()
        loaded.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False,
                              pad_token_id=loaded.tokenizer.pad_token_id)
        ttft = time.perf_counter() - start
        return {"total": total, "tokens": len(last["ids"]), "ttft": ttft, "peak": peak, "peak_kind": kind}

    runs = _time_runs(run, warmup, repeats)
    return runs, last["ids"]


def compare_implementations(
    model: str,
    prompt: str,
    max_tokens: int,
    implementations: list[AttentionImplementation],
    device: str | None = None,
    dtype: str | None = None,
    warmup: int = 1,
    repeats: int = 3,
    baseline_hf: bool = False,
    skipped: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
    enforce_eager: bool = False,
    tensor_parallel_size: int = 1,
) -> BenchmarkReport:
    """Benchmark the engine under each implementation (and optionally HF generate) side by side."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    report = BenchmarkReport(
        environment=describe(dev),
        config={
            "model": model, "prompt": prompt, "max_tokens": max_tokens, "device": str(dev),
            "dtype": dtype_name(torch_dtype), "tensor_parallel_size": tensor_parallel_size, "warmup": warmup,
            "repeats": repeats,
            "implementations": [str(i) for i in implementations], "baseline_hf": baseline_hf,
            "cuda_graphs": dev.type == "cuda" and not enforce_eager,
            "decoding": "greedy, EOS ignored (every run generates max_tokens)",
        },
        skipped=dict(skipped or {}),
    )
    jobs: list[tuple[str, AttentionImplementation]] = [(str(i), i) for i in implementations]
    if baseline_hf:
        jobs += [(HF_PREFIX + str(i), i) for i in implementations if i in HF_IMPLEMENTATIONS]
    if progress:
        progress(f"Loading {model}", 0, len(jobs))
    if tensor_parallel_size == 1:
        bundle = load_model(model, dev, torch_dtype)
        prompt_ids = bundle.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        kv_bytes = _run_cache(len(prompt_ids), max_tokens, bundle.config.kv_bytes_per_token(torch_dtype))
    else:  # every row's engine loads its own shards (see the module docstring)
        bundle, prompt_ids = None, None
        rank0 = local_config(model_config(model), TPGroup(0, tensor_parallel_size))
        kv_bytes = _run_cache(len(prompt.encode("utf-8")) + 1, max_tokens, rank0.kv_bytes_per_token(torch_dtype))
    for step, (name, impl) in enumerate(jobs):
        if progress:
            progress(f"Benchmarking {name}", step, len(jobs))
        if name.startswith(HF_PREFIX):
            subject = load_model_with_attention(model, impl, dev, torch_dtype)
            runs, token_ids = _hf_generate(subject, prompt_ids, max_tokens, warmup, repeats)
        else:
            subject = Engine(bundle or model, impl, dev, torch_dtype, max_batch_size=1, kv_cache_memory=kv_bytes,
                             enforce_eager=enforce_eager, tensor_parallel_size=tensor_parallel_size)
            try:
                if prompt_ids is None:
                    prompt_ids = subject.tokenizer(prompt, add_special_tokens=False)["input_ids"]
                subject.check_request(prompt_ids, SamplingParams(max_tokens=max_tokens))
                runs, token_ids = _ours(subject, prompt_ids, max_tokens, warmup, repeats)
            finally:
                shutdown(subject)  # a tensor-parallel engine's workers end before the next row's start
        report.config["prompt_tokens"] = len(prompt_ids)
        report.rows.append(_row(name, runs, token_ids))
        if not name.startswith(HF_PREFIX):
            report.rows[-1].kv_pool_bytes = subject.kv_cache.nbytes
        del subject
        _free(dev)
    if progress:
        progress("Done", len(jobs), len(jobs))
    _compare_with_eager(report.rows)
    _compare_with_hf(report.rows)
    return report


def _run_cache(prompt_tokens: int, max_tokens: int, kv_bytes_per_token: int) -> int:
    """Enough KV cache for this run and no more: whole blocks for any block size up to 256."""
    return -(-(prompt_tokens + max_tokens) // 256) * 256 * kv_bytes_per_token


def _compare_with_hf(rows: list[BenchmarkRow]) -> None:
    by_name = {r.implementation: r for r in rows}
    for row in rows:
        hf = by_name.get(HF_PREFIX + row.implementation)
        if hf is not None:
            row.speedup_vs_hf = row.tokens_per_s_median / hf.tokens_per_s_median


def _compare_with_eager(rows: list[BenchmarkRow]) -> None:
    eager = next((r for r in rows if r.implementation == AttentionImplementation.EAGER.value), None)
    if eager is None:
        return
    for row in rows:
        row.speedup_vs_eager = row.tokens_per_s_median / eager.tokens_per_s_median
        mismatch = next((i for i, (a, b) in enumerate(zip(row.token_ids, eager.token_ids)) if a != b), None)
        if mismatch is None and len(row.token_ids) != len(eager.token_ids):
            mismatch = min(len(row.token_ids), len(eager.token_ids))
        row.matches_eager, row.first_mismatch = mismatch is None, mismatch


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f}"


def to_markdown(report: dict) -> str:
    """A markdown table of a `compare_implementations` report (as a dict), with where and how it ran."""
    env, cfg = report["environment"], report["config"]
    lines = [
        f"Device: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"triton {env['triton']}, flash-attn {env['flash_attn']}.",
        f"Model {cfg['model']}, {cfg['dtype']}, prompt of {cfg.get('prompt_tokens')} tokens, "
        f"{cfg['max_tokens']} new tokens ({cfg['decoding']}); median of {cfg['repeats']} runs "
        f"after {cfg['warmup']} warm-up.",
    ]
    if report.get("command"):
        lines.append(f"Command: `{report['command']}`")
    lines += [
        "",
        "| implementation | median time (s) | tokens/s (median) | min–max | TTFT (ms) | prefill tok/s "
        "| decode tok/s | peak memory (MiB) | vs eager | vs HF (same backend) | tokens = eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        match = "—" if r["matches_eager"] is None else ("yes" if r["matches_eager"] else f"no (from {r['first_mismatch']})")
        speed = "—" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x"
        vs_hf = "—" if r.get("speedup_vs_hf") is None else f"{r['speedup_vs_hf']:.2f}x"
        prefill = "—" if r["prefill_tokens_per_s"] is None else f"{r['prefill_tokens_per_s']:,.0f}"
        decode = "—" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:,.1f}"
        lines.append(
            f"| {r['implementation']} | {r['median_time_s']:.3f} | {r['tokens_per_s_median']:,.1f} "
            f"| {r['tokens_per_s_min']:,.1f}–{r['tokens_per_s_max']:,.1f} | {r['ttft_median_s'] * 1000:,.1f} "
            f"| {prefill} | {decode} | {_mib(r['peak_memory_bytes'])} ({r['peak_memory_kind']}) | {speed} | {vs_hf} | {match} |"
        )
    for name, why in report.get("skipped", {}).items():
        lines.append(f"\n{name}: not run ({why}).")
    return "\n".join(lines) + "\n"


def scaling_markdown(scaling: dict) -> str:
    """A markdown table of prefill time and memory against sequence length, per implementation."""
    rows = scaling["rows"]
    impls = list(dict.fromkeys(r["implementation"] for r in rows))
    cells = {(r["implementation"], r["sequence_length"]): r for r in rows}
    lines = [
        f"Prefill of n tokens (batch 1): median time (ms) and {scaling['memory']} (MiB).",
        "",
        "| n | " + " | ".join(f"{i} ms | {i} MiB" for i in impls) + " |",
        "|---|" + "---|---|" * len(impls),
    ]
    for n in sorted({r["sequence_length"] for r in rows}):
        out = []
        for impl in impls:
            r = cells.get((impl, n))
            if r is None or r["status"] != "ok":
                status = r["status"] if r else "—"
                out += [status, status]
            else:
                out += [f"{r['seconds'] * 1000:,.1f}", _mib(r["peak_memory_bytes"])]
        lines.append(f"| {n} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"
