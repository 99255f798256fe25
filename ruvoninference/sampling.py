"""Turning the last position's logits into the next token.

Every sequence in a batch carries its own `SamplingParams`, so a server can batch a greedy request with a
creative one. The pipeline for one row is the textbook one:

    logits --/temperature--> top-k filter --> top-p (nucleus) filter --> softmax --> draw

Greedy (temperature 0) skips all of it and takes the argmax. Draws use a per-sequence `torch.Generator`, so a
seeded request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ruvoninference.errors import RuvonError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k filter
    top_p: float = 1.0  # 1 means no nucleus filter
    seed: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise RuvonError(f"Temperature must be a number >= 0 (0 means greedy), not {self.temperature}.")
        if self.top_k < 0:
            raise RuvonError(f"top-k must be >= 0 (0 turns it off), not {self.top_k}.")
        if not (0.0 < self.top_p <= 1.0):
            raise RuvonError(f"top-p must be in (0, 1] (1 turns it off), not {self.top_p}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def make_generator(self, device: torch.device) -> torch.Generator | None:
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply temperature, top-k and top-p to one row of logits [vocab]; filtered entries become -inf."""
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens strictly more likely than it already cover top_p: the most likely token
        # always stays, and the kept set is the smallest one whose mass reaches top_p.
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of `logits` [batch, vocab].

    Returns (tokens [batch] int64, logprobs [batch] float32): the log-probability of each chosen token under the
    model's own distribution (softmax of the raw logits), whatever filter chose it. Both stay on the device:
    the caller decides when to pay for the host sync.
    """
    logits = logits.float()
    tokens = logits.argmax(-1)
    for row, (p, gen) in enumerate(zip(params, generators)):
        if not p.greedy:
            probs = filter_logits(logits[row], p).softmax(-1)
            tokens[row] = torch.multinomial(probs, 1, generator=gen)[0]
    logprobs = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    return tokens, logprobs
