"""One request's state, independent of how it is batched.

A `Sequence` is what a request becomes inside the engine: its tokens (prompt, then generated), how many of
them already have keys and values in the cache, the cache blocks that hold them, its sampling parameters and
random generator, and what it has produced so far (text, logprobs, finish reason).

Every step processes the tokens `[num_computed_tokens, num_tokens)` of the sequences it schedules: a prefill
processes the prompt (maybe in chunks, maybe after a prefix-cache hit); a decode processes the one token
sampled last. After a preemption `num_computed_tokens` falls back to 0 and the next prefill recomputes
prompt and generated tokens alike, so nothing a user was sent is lost.

Prompt log-probabilities (`SamplingParams.prompt_logprobs`): `prompt_logprobs` starts as `[None]` (the first
token has no context) and grows by one `TokenLogprob` per prompt position as the prefill chunks that compute
them land; `prompt_logprob_next` is the next prompt position whose logits row is still to be *scheduled*, so
a recomputation after a preemption (or a chunk still in flight) never computes or appends a row twice.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum

from ruvoninference.engine.detokenizer import IncrementalDetokenizer
from ruvoninference.sampling import SamplingParams, TokenLogprob


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_ids)}"


@dataclass
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    eos_token_ids: frozenset[int]
    token_ids: list[int] = field(default_factory=list)  # prompt + generated
    num_computed_tokens: int = 0  # tokens whose keys and values are in the cache
    num_cached_tokens: int = 0  # of those, how many came from the prefix cache at admission
    num_hashed_blocks: int = 0  # full blocks already registered in the prefix cache
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None  # "stop", "length" or "abort"
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    # Text: an IncrementalDetokenizer when someone reads text as it is produced (a stream, stop strings),
    # else None and the output is decoded once when the sequence finishes.
    detokenizer: IncrementalDetokenizer | None = None
    # Speculative decoding: guessed next tokens this step verifies (engine/speculative.py); never in token_ids.
    spec_token_ids: list[int] = field(default_factory=list)
    num_pending: int = 0  # pending tokens at the end of token_ids whose values are still on the device
    # Prompt logprobs: None when not asked for; else entry i is token i's (None for the first).
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_logprob_next: int = 0  # the row of position p scores token p + 1: the next p to schedule

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        if self.sampling.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = [None]

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Prompt positions whose logits rows are still to be computed (no prefix-cache hit may skip them)."""
        return self.prompt_logprobs is not None and self.prompt_logprob_next < len(self.prompt_token_ids) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token: int, logprob: TokenLogprob | None) -> str:
        """Record one sampled token, apply the stop rules; return the text it released (maybe "")."""
        self.token_ids.append(token)
        return self._took(len(self.token_ids) - 1, token, logprob)

    def append_pending(self) -> int:
        """Overlapped steps: a token drawn on the device whose value the host reads one step later.

        It counts as a token at once (positions, slots and blocks of the next step need it); its value is
        filled in by `resolve_token`. Returns its index in `token_ids`."""
        self.token_ids.append(-1)
        self.num_pending += 1
        return len(self.token_ids) - 1

    def resolve_token(self, index: int, token: int, logprob: TokenLogprob | None) -> str:
        """The value of the pending token at `index` arrived: the same rules as `append_token`."""
        self.token_ids[index] = token
        self.num_pending -= 1
        return self._took(index, token, logprob)

    def _took(self, index: int, token: int, logprob: TokenLogprob | None) -> str:
        if logprob is not None:
            self.logprobs.append(logprob)
        delta = ""
        if token in self.eos_token_ids:
            self.finish_reason = "stop"
            delta = self._flush()
        else:
            if self.detokenizer is not None:
                delta = self.detokenizer.add(token)
                if self.detokenizer.stopped:
                    self.finish_reason = "stop"
            if self.finish_reason is None and index + 1 - len(self.prompt_token_ids) >= self.sampling.max_tokens:
                self.finish_reason = "length"
                delta += self._flush()
        if self.finish_reason is not None and len(self.token_ids) > index + 1:
            del self.token_ids[index + 1:]  # tokens already drawn after the last one (overlapped steps)
            self.num_pending = 0
        return delta

    def _flush(self) -> str:
        """At the end: release any text held back for a stop string that never completed."""
        if self.detokenizer is None:
            return ""
        delta = self.detokenizer.flush()
        self.text = self.detokenizer.text
        return delta

    def finish_text(self, tokenizer) -> None:
        """The final text: what the detokenizer released, or the whole output decoded once."""
        if self.detokenizer is not None:
            self.text = self.detokenizer.text
        else:
            self.text = tokenizer.decode(self.output_token_ids, skip_special_tokens=True)
