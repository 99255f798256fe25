"""What a request asks for, and turning the last position's logits into its next token.

Every sequence in a batch carries its own `SamplingParams`, so a server can batch a greedy request with a
creative one. The pipeline for one row is the textbook one:

    logits --/temperature--> top-k filter --> top-p (nucleus) filter --> softmax --> draw

Greedy (temperature 0) skips all of it and takes the argmax. Draws use a per-sequence `torch.Generator`, so a
seeded request gives the same tokens whatever else shares its batch. The log-probabilities we report are
always the model's own (log-softmax of the raw logits), whatever filter chose the token, as OpenAI and vLLM
report them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ruvoninference.errors import RuvonError

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k filter
    top_p: float = 1.0  # 1 means no nucleus filter
    seed: int | None = None
    max_tokens: int = 16  # new tokens at most (OpenAI's and vLLM's name and default)
    stop: tuple[str, ...] = ()  # stop before any of these strings; they are not part of the text
    ignore_eos: bool = False  # keep going past EOS (benchmarks: every run does the same work)
    logprobs: int | None = None  # None: no logprobs; 0: the chosen token's; n: also the n most likely

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise RuvonError(f"Temperature must be a number >= 0 (0 means greedy), not {self.temperature}.")
        if self.top_k < 0:
            raise RuvonError(f"top-k must be >= 0 (0 turns it off), not {self.top_k}.")
        if not (0.0 < self.top_p <= 1.0):
            raise RuvonError(f"top-p must be in (0, 1] (1 turns it off), not {self.top_p}.")
        if self.max_tokens < 1:
            raise RuvonError(f"The number of tokens to generate must be at least 1, not {self.max_tokens}.")
        if self.logprobs is not None and not (0 <= self.logprobs <= MAX_LOGPROBS):
            raise RuvonError(f"logprobs must be between 0 and {MAX_LOGPROBS}, not {self.logprobs}.")

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


@dataclass
class TokenLogprob:
    """One generated token's log-probability, and the most likely alternatives (most likely first)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


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


@dataclass
class Sampled:
    """A step's draws, still on the device: the caller decides when to pay for the host sync."""

    tokens: torch.Tensor  # [batch] int64
    logprobs: torch.Tensor  # [batch] float32, the chosen tokens' log-probabilities
    top_ids: torch.Tensor | None  # [batch, n] int64 when some row asked for n > 0 alternatives
    top_logprobs: torch.Tensor | None  # [batch, n] float32


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> Sampled:
    """Pick one token per row of `logits` [batch, vocab]."""
    logits = logits.float()
    tokens = logits.argmax(-1)
    for row, (p, gen) in enumerate(zip(params, generators)):
        if not p.greedy:
            probs = filter_logits(logits[row], p).softmax(-1)
            tokens[row] = torch.multinomial(probs, 1, generator=gen)[0]
    logprobs_all = logits.log_softmax(-1)
    chosen = logprobs_all.gather(-1, tokens[:, None])[:, 0]
    n = max((p.logprobs or 0) for p in params)
    if n == 0:
        return Sampled(tokens, chosen, None, None)
    top = logprobs_all.topk(n, dim=-1)  # sorted, most likely first
    return Sampled(tokens, chosen, top.indices, top.values)
