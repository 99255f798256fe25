"""What a request asks for: `SamplingParams`, and the shape of a reported log-probability.

Every sequence in a batch carries its own `SamplingParams`, so a server can batch a greedy request with a
creative one. Turning a batch of logits into tokens is `engine/sampler.py`'s job; this module only says
what may be asked for and refuses, in one sentence, what cannot be honoured. The fields follow OpenAI's
API (temperature, top_p, presence/frequency penalties, logit_bias, seed, max_tokens, stop, logprobs) and
vLLM's additions (top_k, repetition_penalty, min_tokens, ignore_eos, prompt_logprobs), with their ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ruvoninference.errors import RuvonError

MAX_LOGPROBS = 20
MAX_SEED = 2**64 - 1  # seeds are unsigned 64-bit integers, as in OpenAI's and vLLM's APIs
# Below this temperature a draw is the argmax (vLLM's threshold): dividing logits by 1e-40 overflows to inf
# and a softmax of infinities is NaN, so a "temperature" this small can only mean greedy.
MIN_TEMPERATURE = 1e-5
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values


def _check_number(name: str, value: float, low: float, high: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise RuvonError(f"{name} must be {what}, not {value!r}.")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 (or anything below MIN_TEMPERATURE) means greedy
    top_k: int = 0  # 0 means no top-k filter
    top_p: float = 1.0  # 1 means no nucleus filter
    seed: int | None = None
    max_tokens: int = 16  # new tokens at most (OpenAI's and vLLM's name and default)
    stop: tuple[str, ...] = ()  # stop before any of these strings; they are not part of the text
    ignore_eos: bool = False  # keep going past EOS (benchmarks: every run does the same work)
    logprobs: int | None = None  # None: no logprobs; 0: the chosen token's; n: also the n most likely
    presence_penalty: float = 0.0  # OpenAI: subtract this from every token already generated once or more
    frequency_penalty: float = 0.0  # OpenAI: subtract this times the number of times it was generated
    repetition_penalty: float = 1.0  # vLLM/CTRL: divide positive (multiply negative) logits of seen tokens
    min_tokens: int = 0  # vLLM: EOS cannot be drawn before this many new tokens
    logit_bias: dict[int, float] = field(default_factory=dict)  # OpenAI: token id -> added to its logit
    # vLLM: None: none; k: each prompt token's logprob given the tokens before it, and the k most likely
    # (the first token has none). With it, max_tokens may be 0: score the prompt, generate nothing.
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise RuvonError("Every stop string must be a non-empty string; leave out the empty one.")
        _check_number("Temperature", self.temperature, 0.0, math.inf, "a number >= 0 (0 means greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise RuvonError(f"top-k must be an integer >= 0 (0 turns it off), not {self.top_k!r}.")
        if not (isinstance(self.top_p, (int, float)) and math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise RuvonError(f"top-p must be in (0, 1] (1 turns it off), not {self.top_p!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise RuvonError(f"The seed must be an integer from 0 to 2**64 - 1, not {self.seed!r}.")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value <= MAX_LOGPROBS):
                raise RuvonError(f"{name} must be between 0 and {MAX_LOGPROBS}, not {value!r}.")
        least = 0 if self.prompt_logprobs is not None else 1  # 0: only the prompt's logprobs are wanted
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < least:
            raise RuvonError(f"The number of tokens to generate must be at least 1 (0 only with "
                             f"prompt_logprobs), not {self.max_tokens!r}.")
        _check_number("presence_penalty", self.presence_penalty, -2.0, 2.0, "between -2 and 2")
        _check_number("frequency_penalty", self.frequency_penalty, -2.0, 2.0, "between -2 and 2")
        _check_number("repetition_penalty", self.repetition_penalty, 1e-2, 1e2,
                      "between 0.01 and 100 (1 turns it off)")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) \
                or not 0 <= self.min_tokens <= self.max_tokens:
            raise RuvonError(f"min_tokens must be an integer from 0 to max_tokens ({self.max_tokens}), "
                             f"not {self.min_tokens!r}.")
        bias = {}
        for token, value in dict(self.logit_bias or {}).items():
            try:
                token_id = int(token)
            except (TypeError, ValueError):
                raise RuvonError(f"logit_bias keys must be token ids, not {token!r}.") from None
            if token_id < 0:
                raise RuvonError(f"logit_bias has a negative token id ({token_id}).")
            _check_number(f"The logit_bias of token {token_id}", value, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS,
                          "between -100 and 100")
            bias[token_id] = float(value)
        object.__setattr__(self, "logit_bias", bias)
        # Only a temperature: the sampler's fast path (no per-row filters, penalties, bias or logprobs).
        object.__setattr__(self, "plain", self.seed is None and not self.top_k and self.top_p == 1.0
                           and not self.has_penalties and not bias and self.min_tokens == 0
                           and self.logprobs is None)

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def check_vocabulary(self, vocab_size: int) -> None:
        """The checks that need the model: logit_bias token ids must exist."""
        bad = [t for t in self.logit_bias if t >= vocab_size]
        if bad:
            raise RuvonError(f"logit_bias names token {bad[0]}, outside the model's vocabulary "
                             f"(0 to {vocab_size - 1}).")


@dataclass
class TokenLogprob:
    """One generated token's log-probability, and the most likely alternatives (most likely first)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
