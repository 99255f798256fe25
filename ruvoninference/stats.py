"""What a generation run measured.

Prefill (all prompt tokens in one forward pass) is compute-bound and fast per token; decode (one token per
forward pass) is memory-bound and slow per token. Reporting them apart is the first lesson of inference
performance, so every run splits them.
"""

from __future__ import annotations

import resource
import sys
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
