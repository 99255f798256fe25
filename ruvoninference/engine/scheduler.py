"""The scheduler: each step, which sequences run, and how many of their tokens.

Two queues: `waiting` (admitted by `add`, or preempted) and `running` (holding cache blocks). A step has a
token budget (`max_num_batched_tokens`) and a batch size (`max_num_seqs`), and is filled in this order:

1. **decodes**: every running sequence whose prompt is fully computed advances by one token. A sequence
   whose next token crosses into a new block needs a free block; when none is left, the newest running
   sequence is preempted: its blocks are freed and it goes back to the front of `waiting`, to be recomputed
   (prompt and generated tokens alike) when blocks are free again.
2. **prefill chunks** with what is left of the budget: first the running sequences whose prompt is only
   partly computed, then newcomers from the front of `waiting`, while the budget, the batch size and the
   free blocks allow. A long prompt is cut into chunks of at most what is left, one chunk per step.

So decodes ride along in a prefill's step (a *mixed batch*, as Sarathi-Serve and vLLM do it): a long
prompt arriving does not stall the running sequences for the steps its prefill takes, it slows each of
those steps a little. With `mixed=False` a step is either all prefill or all decode (prefill first), the
way the engine worked before: simpler, and every running sequence waits while a prompt is prefilled.

Sequences leave `running` the step they finish. The policy decides when newcomers may join:

- `continuous` (default): whenever there is room, so the batch refills as sequences finish. Mixes.
- `static`: only once the whole batch has finished; a batch is formed (over as many prefill steps as the
  budget needs) and runs to completion, as a simple batched server does. Never needs to mix.
- `sequential`: one sequence at a time. Nothing to mix with.

The batch lists the prefill chunks first and the decodes after them (`num_prefill` tells where they
split), so the model runner sends each part to the attention kernel made for it.

**Prompt log-probabilities** (`SamplingParams.prompt_logprobs`): such a sequence's prefill chunks also
compute a logits row for every prompt position they cover (the row of position p scores token p + 1), listed
in `ScheduledBatch.prompt_rows`. Those rows are `[rows, V]` logits plus a float32 log-softmax of them: with an
8192-token budget and a 152k vocabulary, one step's worth would be gigabytes. So one step computes at most
`PROMPT_LOGPROB_ROWS` of them, all sequences together, and a chunk that wants more is cut shorter (a long
prompt is scored over several steps, the way chunked prefill already spreads it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from ruvoninference.engine.block_manager import BlockManager
from ruvoninference.engine.sequence import Sequence, SequenceStatus
from ruvoninference.errors import RuvonError

POLICIES = ("continuous", "static", "sequential")
# Prompt-logprob rows one step computes at most: 512 x 152k logits in float32 is 300 MiB (and the log-softmax
# as much again); a whole 8192-token budget of them would be 5 GiB, beyond what the cache sizing left free.
PROMPT_LOGPROB_ROWS = 512


class PromptChunk(NamedTuple):
    """The prompt-logprob rows of one prefill chunk: positions first .. first + count - 1."""

    seq: Sequence
    first: int
    count: int


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]  # prefill chunks first, then decodes
    num_new_tokens: list[int]  # tokens each sequence computes this step (1 for each decode)
    num_prefill: int  # seqs[:num_prefill] are prefill chunks (or several tokens to verify)
    # Rows whose logits give prompt log-probabilities, in this order before the sampled rows; empty (the
    # common case) when no chunk of the step asked for them.
    prompt_rows: list[PromptChunk] = field(default_factory=list)

    @property
    def num_prompt_rows(self) -> int:
        return sum(c.count for c in self.prompt_rows)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_prefill(self) -> bool:
        """Whether the step computes some prompt (possibly with decodes riding along)."""
        return self.num_prefill > 0

    @property
    def is_decode_only(self) -> bool:
        return self.num_prefill == 0


class Scheduler:
    def __init__(self, block_manager: BlockManager, policy: str = "continuous", max_num_seqs: int = 32,
                 max_num_batched_tokens: int = 2048, mixed: bool = True):
        if policy not in POLICIES:
            raise RuvonError(f"Unknown scheduler '{policy}'; choose one of: {', '.join(POLICIES)}.")
        if max_num_seqs < 1:
            raise RuvonError(f"The maximum batch size must be at least 1, not {max_num_seqs}.")
        if max_num_batched_tokens < 1:
            raise RuvonError(f"The step's token budget must be at least 1, not {max_num_batched_tokens}.")
        self.block_manager = block_manager
        self.policy = policy
        self.mixed = mixed and policy == "continuous"
        self.max_num_seqs = 1 if policy == "sequential" else max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0
        self._forming = True  # static policy: a batch is still being formed (no decode step yet)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _admissions_open(self) -> bool:
        if self.policy == "static":
            return self._forming or not self.running
        return True

    def schedule(self) -> ScheduledBatch | None:
        decodes = self._schedule_decodes() if self.mixed else []
        verify, decodes = _split_speculative(decodes)
        budget = self.max_num_batched_tokens - len(decodes) - sum(1 + len(s.spec_token_ids) for s in verify)
        seqs, counts, prompt_rows = self._schedule_prefills(budget)
        if seqs or decodes or verify:
            return _batch(verify, seqs, counts, decodes, prompt_rows)
        if self.mixed or not self.running:
            return None
        self._forming = False
        verify, decodes = _split_speculative(self._schedule_decodes())
        if not decodes and not verify:
            if self.running:  # overlapped steps: every running sequence's last token is still on its way
                return None
            return self.schedule()  # everything was preempted: admit again (the oldest fits alone)
        return _batch(verify, [], [], decodes)

    @staticmethod
    def _prefilling(seq: Sequence) -> bool:
        # One uncomputed token is decode-ready: a 1-token last chunk and a decode step are the same work.
        return seq.num_uncomputed_tokens > 1

    def _schedule_decodes(self) -> list[Sequence]:
        """Every running sequence past its prefill gets a slot for one more token; preempt when none is left."""
        decodes: list[Sequence] = []
        manager, block_size, running = self.block_manager, self.block_manager.block_size, SequenceStatus.RUNNING
        for seq in list(self.running):
            if seq.status is not running or len(seq.token_ids) - seq.num_computed_tokens > 1:
                continue  # preempted below while making room for an older sequence, or still prefilling
            if seq.num_pending and len(seq.token_ids) - seq.num_prompt_tokens >= seq.sampling.max_tokens:
                continue  # overlapped steps: its last token is already drawn, only its value is on the way
            if len(seq.block_table) * block_size >= len(seq.token_ids):  # the hot path: room in its last block
                decodes.append(seq)
                continue
            while not manager.can_append(seq):
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                manager.append_slot(seq)
                decodes.append(seq)
        if decodes and self.policy == "static":
            self._forming = False
        return decodes

    def _schedule_prefills(self, budget: int) -> tuple[list[Sequence], list[int], list[PromptChunk]]:
        seqs, counts, prompt_rows = [], [], []
        rows_left = PROMPT_LOGPROB_ROWS
        # 1. Running sequences whose prefill is unfinished continue it first.
        for seq in self.running:
            if budget <= 0:
                break
            if self._prefilling(seq):
                n = min(seq.num_uncomputed_tokens, budget)
                if seq.needs_prompt_logprobs:
                    n, rows_left = _prompt_chunk(seq, n, rows_left, prompt_rows)
                    if not n:
                        continue
                seqs.append(seq), counts.append(n)
                budget -= n
        # 2. Newcomers, in arrival order, while the budget, the batch size and the cache allow.
        if self._admissions_open():
            if not self.running:
                self._forming = True
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                seq = self.waiting[0]
                if seq.num_pending or not self.block_manager.can_allocate(seq):
                    break  # (a preempted sequence whose last token's value is still on the device waits for it)
                if seq.needs_prompt_logprobs and not rows_left:
                    break  # this step's prompt-logprob rows are spent: it starts next step, still in order
                self.waiting.popleft()
                self.block_manager.allocate(seq)
                seq.status = SequenceStatus.RUNNING
                self.running.append(seq)
                n = min(seq.num_uncomputed_tokens, budget)
                if seq.needs_prompt_logprobs:
                    n, rows_left = _prompt_chunk(seq, n, rows_left, prompt_rows)
                seqs.append(seq), counts.append(n)
                budget -= n
        return seqs, counts, prompt_rows

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.spec_token_ids = []
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = seq.num_cached_tokens = 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take a sequence out of whichever queue holds it and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.block_manager.free(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = seq.finish_reason or reason


def _split_speculative(decodes: list[Sequence]) -> tuple[list[Sequence], list[Sequence]]:
    """Decodes carrying guesses (speculative decoding) verify 1 + k tokens: they run with the varlen chunks."""
    return [s for s in decodes if s.spec_token_ids], [s for s in decodes if not s.spec_token_ids]


def _prompt_chunk(seq: Sequence, n: int, rows_left: int, prompt_rows: list[PromptChunk]) -> tuple[int, int]:
    """Cut a chunk of n tokens of a sequence that wants prompt logprobs so its rows fit in `rows_left`; note
    its rows. Returns the chunk's tokens (maybe 0: none fit this step) and the rows left."""
    start = seq.num_computed_tokens
    first = max(start, seq.prompt_logprob_next)  # after a preemption, the rows already computed are not again
    n = min(n, first + rows_left - start)
    count = max(0, min(start + n, seq.num_prompt_tokens - 1) - first)
    if count:
        prompt_rows.append(PromptChunk(seq, first, count))
    return n, rows_left - count


def _batch(verify, seqs, counts, decodes, prompt_rows: list[PromptChunk] | None = None) -> ScheduledBatch:
    return ScheduledBatch(verify + seqs + decodes, [1 + len(s.spec_token_ids) for s in verify] + counts
                          + [1] * len(decodes), len(verify) + len(seqs), prompt_rows or [])
