"""Offline throughput: many requests of random lengths through the engine's scheduler.

The workload is `vllm bench throughput`'s random dataset: `num_seqs` prompts of random token ids with
input and output lengths drawn uniformly (seeded) from the given ranges, EOS ignored so every request
generates exactly its output length. We add every request at once, step until all are done, and time each
step. Reported: output tokens/s, total (prompt + output) tokens/s, step-time percentiles for prefill and
decode steps, the most KV blocks in use, preemptions.

Decode steps are bound by memory traffic: each reads every weight once and every cached key and value of
the batch once. We sum those bytes over the decode steps and divide by their time, and measure a
device-to-device copy in the same run, so the achieved bandwidth is a fraction of what the device moves.

Baseline (`baseline_hf=True`): on CUDA, transformers' own continuous batching (`paged|flash_attention_2` or
`paged|sdpa`) on the same model, prompts and lengths; on a CPU, where that is unavailable, padded batches
of `max_batch_size` through `generate`, each running to its longest request (the padding is its cost).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ruvoninference.config import dtype_name
from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.environment import describe
from ruvoninference.weights import ProgressCallback


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


def random_workload(vocab_size: int, num_seqs: int, input_lens: tuple[int, int], output_lens: tuple[int, int],
                    seed: int = 0) -> Workload:
    gen = torch.Generator().manual_seed(seed)
    ins = torch.randint(input_lens[0], input_lens[1] + 1, (num_seqs,), generator=gen).tolist()
    outs = torch.randint(output_lens[0], output_lens[1] + 1, (num_seqs,), generator=gen).tolist()
    prompts = [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in ins]
    return Workload(prompts, outs)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes read plus written per second by a large device-to-device copy (the device's practical ceiling)."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
    return 2 * src.numel() / statistics.median(times)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    q = sorted(values)

    def at(p: float) -> float:
        return q[min(len(q) - 1, int(round(p / 100 * (len(q) - 1))))]

    return {"count": len(q), "mean_ms": 1000 * statistics.fmean(q), "p50_ms": 1000 * at(50),
            "p90_ms": 1000 * at(90), "p99_ms": 1000 * at(99)}


def run_engine(engine: Engine, workload: Workload, progress: ProgressCallback | None = None) -> dict:
    """Every request added at once, stepped to completion; per-step timings and decode traffic."""
    config = engine.bundle.config
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.bundle.model.parameters())
    kv_per_token = config.kv_bytes_per_token(engine.dtype)
    for prompt, n in zip(workload.prompts, workload.output_lens):
        engine.add_request(prompt, SamplingParams(max_tokens=n, ignore_eos=True))
    total_out = workload.num_output_tokens
    prefill_times, decode_times, decode_bytes = [], [], 0
    done_tokens, peak_used = 0, 0
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    preempt_before = engine.scheduler.num_preemptions
    start = time.perf_counter()
    while engine.has_unfinished():
        step_start = time.perf_counter()
        running_tokens = sum(s.num_tokens for s in engine.scheduler.running)
        prefill_before = engine.num_prefill_tokens
        outputs = engine.step()
        sync()
        elapsed = time.perf_counter() - step_start
        batch_is_decode = engine.num_prefill_tokens == prefill_before
        if batch_is_decode:
            decode_times.append(elapsed)
            decode_bytes += weight_bytes + running_tokens * kv_per_token
        else:
            prefill_times.append(elapsed)
        peak_used = max(peak_used, engine.block_manager.num_blocks - engine.block_manager.num_free_blocks)
        done_tokens += sum(len(o.new_token_ids) for o in outputs)
        if progress:
            progress("Generating", done_tokens, total_out)
    elapsed = time.perf_counter() - start
    decode_time = sum(decode_times)
    return {
        "elapsed_s": elapsed,
        "output_tokens": done_tokens,
        "output_tokens_per_s": done_tokens / elapsed,
        "total_tokens_per_s": (done_tokens + workload.num_prompt_tokens) / elapsed,
        "requests_per_s": len(workload.prompts) / elapsed,
        "prefill_steps": _percentiles(prefill_times),
        "decode_steps": _percentiles(decode_times),
        "decode_bytes_per_s": decode_bytes / decode_time if decode_time else None,
        "kv_blocks_used_max": peak_used,
        "kv_blocks_total": engine.block_manager.num_blocks,
        "preemptions": engine.scheduler.num_preemptions - preempt_before,
    }


@torch.inference_mode()
def run_hf_baseline(model: str, attn: str, device: torch.device, dtype: torch.dtype, workload: Workload,
                    max_batch_size: int, progress: ProgressCallback | None = None) -> dict:
    """transformers' continuous batching on CUDA; padded `generate` batches on a CPU."""
    from ruvoninference.attention import load_model_with_attention

    loaded = load_model_with_attention(model, attn, device, dtype)
    hf = loaded.model
    if device.type == "cuda":
        return _hf_continuous(hf, f"paged|{attn}", workload, progress)
    pad = loaded.tokenizer.pad_token_id
    start, useful = time.perf_counter(), 0
    for first in range(0, len(workload.prompts), max_batch_size):
        prompts = workload.prompts[first:first + max_batch_size]
        lens = workload.output_lens[first:first + max_batch_size]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(lens), min_new_tokens=max(lens),
                    do_sample=False, pad_token_id=pad)
        useful += sum(lens)
        if progress:
            progress("Hugging Face generate (padded batches)", useful, workload.num_output_tokens)
    elapsed = time.perf_counter() - start
    return {"method": "generate, padded batches", "elapsed_s": elapsed, "output_tokens": useful,
            "output_tokens_per_s": useful / elapsed,
            "total_tokens_per_s": (useful + workload.num_prompt_tokens) / elapsed}


def _hf_continuous(hf, implementation: str, workload: Workload, progress) -> dict:
    from transformers import GenerationConfig

    hf.set_attn_implementation(implementation)
    config = GenerationConfig(max_new_tokens=max(workload.output_lens), do_sample=False, eos_token_id=-1,
                              pad_token_id=0, max_batch_tokens=8192)
    manager = hf.init_continuous_batching(generation_config=config)
    manager.start()
    start = time.perf_counter()
    for i, (prompt, n) in enumerate(zip(workload.prompts, workload.output_lens)):
        manager.add_request(prompt, request_id=f"r{i}", max_new_tokens=n)
    got, tokens = 0, 0
    while got < len(workload.prompts):
        result = manager.get_result(timeout=60)
        if result is None:
            raise RuntimeError("transformers' continuous batching returned no result for 60 s")
        if result.is_finished():
            got += 1
            tokens += len(result.generated_tokens)
            if progress:
                progress("transformers continuous batching", got, len(workload.prompts))
    elapsed = time.perf_counter() - start
    manager.stop(block=True)
    return {"method": f"transformers continuous batching ({implementation})", "elapsed_s": elapsed,
            "output_tokens": tokens, "output_tokens_per_s": tokens / elapsed,
            "total_tokens_per_s": (tokens + workload.num_prompt_tokens) / elapsed}


def benchmark_throughput(engine: Engine, model: str, num_seqs: int, input_lens: tuple[int, int],
                         output_lens: tuple[int, int], seed: int = 0, baseline_hf: bool = False,
                         progress: ProgressCallback | None = None) -> dict:
    workload = random_workload(engine.bundle.config.vocab_size, num_seqs, input_lens, output_lens, seed)
    for prompt, n in zip(workload.prompts, workload.output_lens):
        engine.check_request(prompt, SamplingParams(max_tokens=n))
    # A short warm-up (a few requests) so compilation and graph capture stay out of the timing.
    run_engine(engine, random_workload(engine.bundle.config.vocab_size, min(4, num_seqs), (16, 32), (8, 16), seed + 1))
    ours = run_engine(engine, workload, progress)
    copy = copy_bandwidth(engine.device)
    ours["copy_bytes_per_s"] = copy
    if ours["decode_bytes_per_s"]:
        ours["decode_bandwidth_vs_copy"] = ours["decode_bytes_per_s"] / copy
    result = {
        "environment": describe(engine.device),
        "config": {"model": model, "attn": str(engine.attn), "device": str(engine.device),
                   "dtype": dtype_name(engine.dtype), "num_seqs": num_seqs, "input_lens": list(input_lens),
                   "output_lens": list(output_lens), "seed": seed, "prompt_tokens": workload.num_prompt_tokens,
                   "output_tokens": workload.num_output_tokens, "ignore_eos": True},
        "engine": ours,
    }
    if baseline_hf:
        # transformers pages its cache for sdpa and flash_attention_2 only; our other backends meet sdpa's.
        hf_attn = str(engine.attn) if str(engine.attn) in ("sdpa", "flash_attention_2") else "sdpa"
        hf = run_hf_baseline(model, hf_attn, engine.device, engine.dtype, workload, engine.max_batch_size, progress)
        result["hf"] = hf
        result["speedup_vs_hf"] = ours["output_tokens_per_s"] / hf["output_tokens_per_s"]
    return result
