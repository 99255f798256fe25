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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ruvoninference.engine.block_manager import BlockManager
from ruvoninference.engine.sequence import Sequence, SequenceStatus
from ruvoninference.errors import RuvonError

POLICIES = ("continuous", "static", "sequential")


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]  # prefill chunks first, then decodes
    num_new_tokens: list[int]  # tokens each sequence computes this step (1 for each decode)
    num_prefill: int  # seqs[:num_prefill] are prefill chunks (or several tokens to verify)

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
        seqs, counts = self._schedule_prefills(budget)
        if seqs or decodes or verify:
            return _batch(verify, seqs, counts, decodes)
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

    def _schedule_prefills(self, budget: int) -> tuple[list[Sequence], list[int]]:
        seqs, counts = [], []
        # 1. Running sequences whose prefill is unfinished continue it first.
        for seq in self.running:
            if budget <= 0:
                break
            if self._prefilling(seq):
                n = min(seq.num_uncomputed_tokens, budget)
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
                self.waiting.popleft()
                self.block_manager.allocate(seq)
                seq.status = SequenceStatus.RUNNING
                self.running.append(seq)
                n = min(seq.num_uncomputed_tokens, budget)
                seqs.append(seq), counts.append(n)
                budget -= n
        return seqs, counts

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


def _batch(verify, seqs, counts, decodes) -> ScheduledBatch:
    return ScheduledBatch(verify + seqs + decodes, [1 + len(s.spec_token_ids) for s in verify] + counts
                          + [1] * len(decodes), len(verify) + len(seqs))
