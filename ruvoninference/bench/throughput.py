"""Offline throughput: many requests of random lengths through the engine's scheduler.

Workloads (every request ignores EOS, so each generates exactly its output length):
- `nano-vllm` (the default): exactly nano-vllm's `bench.py`. Python's `random` seeded with 0 draws, for
  each of 256 prompts, a length `randint(100, 1024)` and then that many token ids `randint(0, 10000)`;
  after all prompts, each request's `max_tokens` `randint(100, 1024)`. With its defaults our numbers line
  up with nano-vllm's printed throughput on the same model.
- `random`: `vllm bench throughput`'s random dataset: lengths uniform in the given ranges, ids uniform in
  the vocabulary, drawn with a seeded torch generator.

The protocol is nano-vllm's: one warm-up generate (a short prompt), then one timed generate of the whole
workload; throughput = output tokens / wall time of the timed generate (adding the requests included).
Ours runs at `temperature` (nano-vllm's 0.6: top-k and top-p off) and, when that is above 0, again
greedy on the same prompts and lengths, each in a fresh engine on the same weights (so the second run
finds no prompt in the prefix cache); the ratio sampled / greedy is what sampling costs.

Decode steps are bound by memory traffic: each reads every weight once and every cached key and value of
the batch once. We sum those bytes over the decode steps and divide by their time, and measure a
device-to-device copy in the same run, so the achieved bandwidth is a fraction of what the device moves.

Tensor-parallel engines (`make_engine` gives `Engine(name, ..., tensor_parallel_size=N)`): the bytes counted
are rank 0's shard of the weights and of the KV cache and the copy runs on rank 0's device, so the fraction
is per GPU. Processes cannot share loaded weights, so each fresh engine loads its shards by name again, and
the previous engine's workers are stopped first (`parallel.engine.shutdown`), also when a run fails.

Baseline (`baseline_hf=True`), with the same prompts, lengths and sampling, warmed before it is timed:
on CUDA, transformers' own continuous batching (`paged|flash_attention_2` or `paged|sdpa`) given the
workload's hints, its CUDA graphs pre-captured by `manager.warmup()` and a warm-up batch through the same
manager, everything else as transformers picks it (KV blocks and batch tokens from free memory, CUDA graphs,
async batching); every resolved setting goes into the result. On a CPU, where that is unavailable, padded
batches of `max_batch_size` through `generate`, each running to its longest request (the padding is its
cost), after one warm-up `generate`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ruvoninference.config import dtype_name
from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.environment import describe
from ruvoninference.errors import RuvonError
from ruvoninference.models import ModelBundle
from ruvoninference.parallel.engine import shutdown
from ruvoninference.weights import ProgressCallback

WORKLOADS = ("nano-vllm", "random")
NANO_VLLM_MAX_TOKEN_ID = 10_000  # bench.py draws prompt ids with randint(0, 10000)
WARMUP_PROMPT = "Benchmark: "  # nano-vllm's warm-up generate: this prompt, SamplingParams' 64 new tokens
WARMUP_MAX_TOKENS = 64
HF_WARMUP_REQUESTS = 32  # the transformers baseline's warm-up batch: requests drawn like the workload's


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]
    spec: dict = field(default_factory=dict)  # how it was drawn, for the JSON

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


def nano_vllm_workload(num_seqs: int = 256, input_lens: tuple[int, int] = (100, 1024),
                       output_lens: tuple[int, int] = (100, 1024), seed: int = 0,
                       max_token_id: int = NANO_VLLM_MAX_TOKEN_ID) -> Workload:
    """nano-vllm's bench.py draws, in its order: per prompt a length then its ids; then every max_tokens."""
    rng = random.Random(seed)  # the same stream as bench.py's random.seed(seed)
    prompts = []
    for _ in range(num_seqs):
        length = rng.randint(*input_lens)
        prompts.append([rng.randint(0, max_token_id) for _ in range(length)])
    outs = [rng.randint(*output_lens) for _ in range(num_seqs)]
    spec = {"workload": "nano-vllm", "token_ids": [0, max_token_id], "generator": "python random.Random(seed)"}
    return Workload(prompts, outs, spec)


def random_workload(vocab_size: int, num_seqs: int, input_lens: tuple[int, int], output_lens: tuple[int, int],
                    seed: int = 0) -> Workload:
    gen = torch.Generator().manual_seed(seed)
    ins = torch.randint(input_lens[0], input_lens[1] + 1, (num_seqs,), generator=gen).tolist()
    outs = torch.randint(output_lens[0], output_lens[1] + 1, (num_seqs,), generator=gen).tolist()
    prompts = [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in ins]
    spec = {"workload": "random", "token_ids": [0, vocab_size - 1], "generator": "torch.Generator(seed)"}
    return Workload(prompts, outs, spec)


def make_workload(name: str, vocab_size: int, num_seqs: int, input_lens: tuple[int, int],
                  output_lens: tuple[int, int], seed: int = 0) -> Workload:
    if name == "nano-vllm":
        # A vocabulary smaller than bench.py's id range keeps its order of draws, with ids clipped to it.
        return nano_vllm_workload(num_seqs, input_lens, output_lens, seed, min(NANO_VLLM_MAX_TOKEN_ID, vocab_size - 1))
    if name == "random":
        return random_workload(vocab_size, num_seqs, input_lens, output_lens, seed)
    raise RuvonError(f"Unknown workload '{name}'; use one of: {', '.join(WORKLOADS)}.")


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


def sampling_settings(temperature: float) -> dict:
    """The sampling every measured run uses (ours and the baseline's): nano-vllm's, top-k and top-p off."""
    return {"temperature": temperature, "top_k": 0, "top_p": 1.0, "do_sample": temperature > 0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(engine: Engine, workload: Workload, temperature: float = 0.0,
               progress: ProgressCallback | None = None) -> dict:
    """One timed generate: every request added at once, stepped to completion; step times, decode traffic.

    No synchronization is added inside the loop (a step that overlaps the next one's host work keeps doing
    so); the clock stops after the device has finished.
    """
    config = engine.bundle.config
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.bundle.model.parameters())
    kv_per_token = config.kv_bytes_per_token(engine.dtype)
    total_out = workload.num_output_tokens
    prefill_times, decode_times, decode_bytes = [], [], 0
    done_tokens, peak_used, shown = 0, 0, 0.0
    preempt_before = engine.scheduler.num_preemptions
    _sync(engine.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    tokens: dict[str, list[int]] = {}  # request id -> its generated tokens, in the workload's order
    for prompt, n in zip(workload.prompts, workload.output_lens):
        # As generate() does for a caller that reads only the final outputs: no text decoded as it grows.
        request_id = engine.add_request(prompt, SamplingParams(temperature=temperature, max_tokens=n,
                                                               ignore_eos=True), stream_text=False)
        tokens[request_id] = []
    while engine.has_unfinished():
        step_start = time.perf_counter()
        running_tokens = sum(s.num_tokens for s in engine.scheduler.running)
        prefill_before = engine.num_prefill_tokens
        outputs = engine.step()
        step_end = time.perf_counter()
        if engine.num_prefill_tokens == prefill_before:
            decode_times.append(step_end - step_start)
            decode_bytes += weight_bytes + running_tokens * kv_per_token
        else:  # a prefill step, or one that mixes prefill chunks and decodes
            prefill_times.append(step_end - step_start)
        peak_used = max(peak_used, engine.block_manager.num_blocks - engine.block_manager.num_free_blocks)
        for o in outputs:
            tokens[o.request_id] += o.new_token_ids
            done_tokens += len(o.new_token_ids)
        if progress and (step_end - shown > 0.25 or not engine.has_unfinished()):
            progress(f"Generating (temperature {temperature:g})", done_tokens, total_out)
            shown = step_end
    _sync(engine.device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    decode_time = sum(decode_times)
    return {
        "temperature": temperature,
        "elapsed_s": elapsed,
        "output_tokens": done_tokens,
        "output_tokens_per_s": done_tokens / elapsed,
        "total_tokens_per_s": (done_tokens + workload.num_prompt_tokens) / elapsed,
        "requests_per_s": len(workload.prompts) / elapsed,
        # CPU time of this process (every thread): on a shared machine, work per CPU-second is what load
        # does not move much, where wall time is.
        "process_cpu_s": cpu,
        "output_tokens_per_cpu_s": done_tokens / cpu if cpu else None,
        "prefill_steps": _percentiles(prefill_times),
        "decode_steps": _percentiles(decode_times),
        "decode_bytes_per_s": decode_bytes / decode_time if decode_time else None,
        "kv_blocks_used_max": peak_used,
        "kv_blocks_total": engine.block_manager.num_blocks,
        "preemptions": engine.scheduler.num_preemptions - preempt_before,
        "engine_startup_s": getattr(engine, "startup_s", None),  # load, cache sizing, compiles, graph captures
        # Two runs with the same digest generated the same tokens (greedy: a check across engines and sizes).
        "token_ids_sha256": hashlib.sha256(json.dumps(list(tokens.values())).encode()).hexdigest(),
    }


def warm_up_engine(engine: Engine, temperature: float, max_tokens: int = WARMUP_MAX_TOKENS) -> dict:
    """nano-vllm's warm-up: one generate of a short prompt before the timed one."""
    start = time.perf_counter()
    engine.generate(WARMUP_PROMPT, SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True))
    _sync(engine.device)
    return {"prompt": WARMUP_PROMPT, "max_tokens": max_tokens, "temperature": temperature,
            "elapsed_s": time.perf_counter() - start}


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()  # not inference_mode: transformers' batching thread writes tensors its warm-up made
def run_hf_baseline(model: str, attn: str, device: torch.device, dtype: torch.dtype, workload: Workload,
                    warmup: Workload, temperature: float, max_batch_size: int, warmup_tokens: int = WARMUP_MAX_TOKENS,
                    progress: ProgressCallback | None = None) -> dict:
    """transformers' continuous batching on CUDA; padded `generate` batches on a CPU; both warmed first."""
    from ruvoninference.attention import load_model_with_attention

    loaded = load_model_with_attention(model, attn, device, dtype)
    if device.type == "cuda":
        return _hf_continuous(loaded.model, workload, warmup, temperature, progress)
    return _hf_padded(loaded.model, loaded.tokenizer, workload, temperature, max_batch_size, warmup_tokens, progress)


def _hf_sampling(temperature: float) -> dict:
    """`generate`'s arguments for our sampling (top_k=0 turns off the top-k filter a config may carry)."""
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    return {"do_sample": False}


def _hf_padded(hf, tokenizer, workload: Workload, temperature: float, max_batch_size: int, warmup_tokens: int,
               progress) -> dict:
    pad = tokenizer.pad_token_id
    sampling = _hf_sampling(temperature)

    def generate(prompts: list[list[int]], new_tokens: int) -> None:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=hf.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=hf.device)
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    pad_token_id=pad, **sampling)

    warm_start = time.perf_counter()
    generate([tokenizer.encode(WARMUP_PROMPT)], warmup_tokens)
    warm_s = time.perf_counter() - warm_start
    start, useful = time.perf_counter(), 0
    for first in range(0, len(workload.prompts), max_batch_size):
        lens = workload.output_lens[first:first + max_batch_size]
        generate(workload.prompts[first:first + max_batch_size], max(lens))
        useful += sum(lens)
        if progress:
            progress("Hugging Face generate (padded batches)", useful, workload.num_output_tokens)
    elapsed = time.perf_counter() - start
    return {"method": "generate, padded batches", "elapsed_s": elapsed, "output_tokens": useful,
            "output_tokens_per_s": useful / elapsed,
            "total_tokens_per_s": (useful + workload.num_prompt_tokens) / elapsed,
            "settings": {"batch_size": max_batch_size, "padding": "left, each batch runs to its longest request",
                         "eos": "min_new_tokens = max_new_tokens", **sampling},
            "warmup": {"what": "one generate", "prompt": WARMUP_PROMPT, "max_new_tokens": warmup_tokens,
                       "elapsed_s": warm_s}}


def _hf_run_batch(manager, workload: Workload, tag: str, progress) -> int:
    """Add every request to a started manager and wait for all of them; the output tokens it produced."""
    for i, (prompt, n) in enumerate(zip(workload.prompts, workload.output_lens)):
        manager.add_request(prompt, request_id=f"{tag}{i}", max_new_tokens=n, eos_token_id=-1)
    got, tokens, waited = 0, 0, 0.0
    while got < len(workload.prompts):
        result = manager.get_result(timeout=1)
        if result is None:
            waited += 1
            if not manager.is_running() or waited > 120:
                raise RuntimeError("transformers' continuous batching stopped returning results")
            continue
        waited = 0.0
        if result.is_finished():
            got += 1
            tokens += len(result.generated_tokens)
            if progress:
                progress(f"transformers continuous batching ({tag})", got, len(workload.prompts))
    return tokens


def _hf_continuous(hf, workload: Workload, warmup: Workload, temperature: float, progress) -> dict:
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    sampling = _hf_sampling(temperature)
    config = GenerationConfig(max_new_tokens=max(workload.output_lens), eos_token_id=-1, pad_token_id=0, **sampling)
    hints = WorkloadHints(max_prompt_length=max(len(p) for p in workload.prompts),
                          max_generated_length=max(workload.output_lens), num_requests=len(workload.prompts))
    manager = hf.init_continuous_batching(generation_config=config, workload_hints=hints)  # it switches to paged|
    implementation = hf.config._attn_implementation
    warm_start = time.perf_counter()
    manager.warmup()  # pre-captures the CUDA graphs transformers chose, as generate_batch does
    captured_s = time.perf_counter() - warm_start
    manager.start()
    try:
        _hf_run_batch(manager, warmup, "warmup", progress)
        warm_s = time.perf_counter() - warm_start
        _sync(hf.device)
        start = time.perf_counter()
        tokens = _hf_run_batch(manager, workload, "r", progress)
        _sync(hf.device)
        elapsed = time.perf_counter() - start
        resolved = _resolved_settings(manager.continuous_batching_config)
    finally:
        manager.stop(block=True)
        manager.destroy()
    return {"method": f"transformers continuous batching ({implementation})", "elapsed_s": elapsed,
            "output_tokens": tokens, "output_tokens_per_s": tokens / elapsed,
            "total_tokens_per_s": (tokens + workload.num_prompt_tokens) / elapsed,
            "settings": {"attn_implementation": implementation, **sampling, "eos_token_id": -1,
                         "workload_hints": vars(hints), **resolved},
            "warmup": {"what": f"manager.warmup() then a batch of {len(warmup.prompts)} requests drawn like the "
                               "workload (another seed) through the same manager",
                       "requests": len(warmup.prompts), "graph_warmup_s": captured_s, "elapsed_s": warm_s}}


def _resolved_settings(cb_config) -> dict:
    """What transformers resolved for its continuous batching (after the cache was sized), JSON-ready."""
    names = ("block_size", "num_blocks", "max_batch_tokens", "max_memory_percent", "max_requests_per_batch",
             "max_blocks_per_request", "allow_block_sharing", "use_async_batching", "use_cuda_graph",
             "q_padding_interval_size", "kv_padding_interval_size", "varlen_compile_config",
             "decode_compile_config", "default_compile_level", "scheduler_type")
    out = {}
    for name in names:
        value = getattr(cb_config, name, None)
        if isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            value = value.to_dict() if hasattr(value, "to_dict") else str(value)
        out[name] = value
    return out


EngineFactory = Callable[[ModelBundle | None, ProgressCallback | None], Engine]


def benchmark_throughput(make_engine: EngineFactory, model: str, workload_name: str, num_seqs: int,
                         input_lens: tuple[int, int], output_lens: tuple[int, int], seed: int = 0,
                         temperature: float = 0.6, baseline_hf: bool = False, warmup_tokens: int = WARMUP_MAX_TOKENS,
                         describe_engine: Callable[[Engine], dict] | None = None,
                         progress: ProgressCallback | None = None) -> dict:
    """Ours at `temperature` and (when above 0) greedy, then the baseline; see the module's docstring.

    `make_engine(None, progress)` loads the model; `make_engine(bundle, progress)` builds another engine on
    the same weights (a tensor-parallel factory loads them by name again).
    """
    if not temperature >= 0:  # also NaN
        raise RuvonError(f"The temperature must be a number >= 0 (0 means greedy), not {temperature}.")
    current = [make_engine(None, progress)]  # the engine alive now (a fresh one replaces it for greedy)
    try:
        return _benchmark(current, make_engine, model, workload_name, num_seqs, input_lens, output_lens, seed,
                          temperature, baseline_hf, warmup_tokens, describe_engine, progress)
    finally:
        if current[0] is not None:  # a tensor-parallel engine's workers, also on an error (nothing for one process)
            shutdown(current[0])


def _benchmark(current: list[Engine], make_engine: EngineFactory, model: str, workload_name: str, num_seqs: int,
               input_lens: tuple[int, int], output_lens: tuple[int, int], seed: int, temperature: float,
               baseline_hf: bool, warmup_tokens: int, describe_engine: Callable[[Engine], dict] | None,
               progress: ProgressCallback | None) -> dict:
    engine = current[0]
    bundle, device, dtype = engine.bundle, engine.device, engine.dtype
    vocab_size = bundle.config.vocab_size  # whole on every tensor-parallel rank
    workload = make_workload(workload_name, vocab_size, num_seqs, input_lens, output_lens, seed)
    for prompt, n in zip(workload.prompts, workload.output_lens):
        engine.check_request(prompt, SamplingParams(max_tokens=n))
    result = {
        "environment": describe(device),
        "config": {"model": model, "attn": str(engine.attn), "device": str(device), "dtype": dtype_name(dtype),
                   **workload.spec, "num_seqs": num_seqs, "input_lens": list(input_lens),
                   "output_lens": list(output_lens), "seed": seed, "prompt_tokens": workload.num_prompt_tokens,
                   "output_tokens": workload.num_output_tokens, "ignore_eos": True,
                   "sampling": sampling_settings(temperature),
                   **(describe_engine(engine) if describe_engine else {})},
    }
    attn, max_batch_size = str(engine.attn), engine.max_batch_size
    for i, t in enumerate([temperature, 0.0] if temperature > 0 else [0.0]):
        if i:  # a fresh engine on the same weights: nothing of the first run in its prefix cache
            shutdown(engine)  # tensor-parallel: its workers end before the next engine's start
            current[0] = None
            del engine  # its KV cache is freed before the next engine sizes its own
            _release(device)
            engine = current[0] = make_engine(bundle, progress)
        warm = warm_up_engine(engine, t, warmup_tokens)
        ours = run_engine(engine, workload, t, progress)
        ours["warmup"] = warm
        result["engine" if i == 0 else "engine_greedy"] = ours
    shutdown(engine)
    current[0] = None
    del engine, bundle
    _release(device)
    copy = copy_bandwidth(device)
    for key in ("engine", "engine_greedy"):
        ours = result.get(key)
        if ours:
            ours["copy_bytes_per_s"] = copy
            if ours["decode_bytes_per_s"]:
                ours["decode_bandwidth_vs_copy"] = ours["decode_bytes_per_s"] / copy
    if "engine_greedy" in result:
        sampled, greedy = result["engine"], result["engine_greedy"]
        result["sampled_vs_greedy"] = sampled["output_tokens_per_s"] / greedy["output_tokens_per_s"]
        result["sampled_vs_greedy_per_cpu_s"] = greedy["process_cpu_s"] / sampled["process_cpu_s"]
    if baseline_hf:
        # transformers pages its cache for sdpa and flash_attention_2 only; our other backends meet sdpa's.
        hf_attn = attn if attn in ("sdpa", "flash_attention_2") else "sdpa"
        warmup = make_workload(workload_name, vocab_size, min(HF_WARMUP_REQUESTS, num_seqs), input_lens,
                               output_lens, seed + 1)
        try:
            hf = run_hf_baseline(model, hf_attn, device, dtype, workload, warmup, temperature, max_batch_size,
                                 warmup_tokens, progress)
        except Exception as exc:  # ours is measured already: keep it, and say how the baseline failed
            result["hf"] = {"method": f"transformers ({hf_attn})", "error": f"{type(exc).__name__}: {exc}"}
        else:
            result["hf"] = hf
            result["speedup_vs_hf"] = result["engine"]["output_tokens_per_s"] / hf["output_tokens_per_s"]
        _release(device)
    return result
