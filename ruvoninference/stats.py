"""What a generation run measured.

Prefill (all prompt tokens in one forward pass) is compute-bound and fast per token; decode (one token per
forward pass) is memory-bound and slow per token. Reporting them apart is the first lesson of inference
performance, so every run splits them.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class GenerationStats:
    prompt_tokens: int  # real (unpadded) prompt tokens, summed over the batch
    generated_tokens: int  # summed over the batch
    time_to_first_token_s: float  # prefill plus the first sample, as a user waits for it
    decode_time_s: float  # every step after the first token
    total_time_s: float
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda_allocated" or "process_rss"
    sequences: int = 1  # each sequence's first token comes out of prefill, not decode

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.time_to_first_token_s if self.time_to_first_token_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # The first token of each sequence came out of prefill, so decode produced the rest.
        decoded = self.generated_tokens - self.sequences
        return decoded / self.decode_time_s if self.decode_time_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.total_time_s if self.total_time_s > 0 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(
            prefill_tokens_per_s=self.prefill_tokens_per_s,
            decode_tokens_per_s=self.decode_tokens_per_s,
            tokens_per_s=self.tokens_per_s,
        )
        return data


def generation_stats(outputs, start: float, end: float, peak: int, kind: str) -> GenerationStats:
    """A run's statistics from the engine's request outputs (times from `time.perf_counter`)."""
    first = min(o.first_token_time for o in outputs)
    return GenerationStats(
        prompt_tokens=sum(len(o.prompt_token_ids) for o in outputs),
        generated_tokens=sum(len(o.token_ids) for o in outputs),
        time_to_first_token_s=first - start,
        decode_time_s=end - first,
        total_time_s=end - start,
        peak_memory_bytes=peak,
        peak_memory_kind=kind,
        sequences=len(outputs),
    )


def kv_cache_use(pool_bytes: int, pool_tokens: int, bytes_per_token: int, outputs) -> dict:
    """What the KV-cache pool reserves (allocated up front, counted in the peak memory) beside what this run's
    tokens fill of it (prompt plus generated, summed over the sequences)."""
    tokens = sum(len(o.prompt_token_ids) + len(o.token_ids) for o in outputs)
    return {"kv_pool_bytes": pool_bytes, "kv_pool_tokens": pool_tokens,
            "kv_used_tokens": tokens, "kv_used_bytes": tokens * bytes_per_token}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak CUDA memory allocated since the last reset, or the process's peak resident set on the CPU.

    The CPU number is the whole process's high-water mark (model weights included, since process start):
    the operating system keeps no resettable counter.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device), "cuda_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "process_rss"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a failure was the device running out of memory (benchmarks report it as an OOM row)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@contextlib.contextmanager
def native_stderr_silenced():
    """The profiler's C++ side logs start/stop lines straight to file descriptor 2; hide them."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_peak_allocated(fn: Callable[[], object]) -> int:
    """Peak bytes of live PyTorch CPU tensors while `fn` runs, above what was live before it.

    The CPU has no resettable allocator peak like CUDA's, and the process's resident memory keeps freed
    pages, so we replay the allocator's own events: PyTorch's profiler records each operator's allocations
    and each free, in order; a running sum gives the live bytes and its maximum the peak (at operator
    granularity: a temporary allocated and freed inside one operator is not seen).
    """
    from torch.profiler import ProfilerActivity, profile

    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
