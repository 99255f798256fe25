"""The block manager: who owns which page of the KV cache, and which pages hold a known prefix.

The cache is cut into `num_blocks` blocks of `block_size` tokens. A sequence holds a list of block ids (its
block table); its token i lives in block `block_table[i // block_size]` at offset `i % block_size`. Blocks
are handed out when a sequence is admitted (enough for all its tokens so far), one more whenever a decode
step crosses a block boundary, and returned when it finishes, is aborted or is preempted. No sequence
reserves room for tokens it has not produced yet: that is the whole point of paging.

Prefix caching: once a block is full and its keys and values are computed, it is registered under a hash of
its tokens chained with the hash of the block before it, so the hash names the whole prefix up to that
block. A new sequence whose first blocks hash the same reuses them (reference-counted) instead of
recomputing them. A freed block keeps its hash until it is handed out again, so a prompt repeated after the
first request finished still hits; free blocks are reused least-recently-freed first to keep them longer.
A sequence that asks for prompt log-probabilities computes every prompt position, so it takes no hit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ruvoninference.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = field(default_factory=tuple)


def chain_hash(prefix_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """A block's identity: its tokens and everything before them (through the previous block's hash)."""
    return hash((prefix_hash, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._by_hash: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache ---------------------------------------------------------------------------------

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding this sequence's longest cached prefix of full blocks.

        At least one token is left to compute, since the step that computes it produces the next token. A
        sequence that still wants prompt log-probabilities takes no hit: the positions a hit skips would have
        no logits (its own blocks are still registered for others as they fill).
        """
        if not self.enable_prefix_caching or seq.needs_prompt_logprobs:
            return []
        hits, prefix_hash = [], None
        for i in range((seq.num_tokens - 1) // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            prefix_hash = chain_hash(prefix_hash, tokens)
            block_id = self._by_hash.get(prefix_hash)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the sequence's blocks that became full and computed since the last call.

        A block is registered only once every token in it is known on the host (overlapped steps read a
        drawn token's value one step after it is computed)."""
        if not self.enable_prefix_caching:
            return
        full = min(seq.num_computed_tokens, len(seq.token_ids) - seq.num_pending) // self.block_size
        for i in range(seq.num_hashed_blocks, full):
            block = self.blocks[seq.block_table[i]]
            prefix_hash = self.blocks[seq.block_table[i - 1]].hash if i else None
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            block.hash, block.token_ids = chain_hash(prefix_hash, tokens), tokens
            self._by_hash.setdefault(block.hash, block.block_id)
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, full)

    # -- allocation -----------------------------------------------------------------------------------

    def _take_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self._by_hash.get(block.hash) == block_id:
            del self._by_hash[block.hash]  # its old contents are about to be overwritten
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._cached_prefix(seq)
        in_use = sum(1 for b in hits if self.blocks[b].ref_count > 0)  # shared: costs no free block
        return self.blocks_for(seq.num_tokens) - in_use <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give an admitted sequence blocks for all its tokens, reusing cached prefix blocks."""
        assert not seq.block_table, "a sequence is allocated once per admission"
        hits = self._cached_prefix(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]  # revive a freed block whose contents are still valid
            block.ref_count += 1
        fresh = [self._take_free() for _ in range(self.blocks_for(seq.num_tokens) - len(hits))]
        seq.block_table = hits + fresh
        seq.num_cached_tokens = seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_hashed_blocks = len(hits)

    def free(self, seq: Sequence) -> None:
        # Last block first: a later allocation takes free blocks from the front, so a prefix's first blocks,
        # the ones most likely to be shared, are the last to be overwritten.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def can_append(self, seq: Sequence) -> bool:
        """Whether the sequence's next token has a slot (a new block is needed at a block boundary)."""
        return len(seq.block_table) * self.block_size >= seq.num_tokens or self.num_free_blocks > 0

    def append_slot(self, seq: Sequence) -> None:
        if len(seq.block_table) * self.block_size < seq.num_tokens:
            seq.block_table.append(self._take_free())

    def reserve(self, seq: Sequence, num_tokens: int) -> None:
        """Slots for num_tokens tokens (speculative decoding: the step also computes guessed tokens)."""
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take_free())

    def trim(self, seq: Sequence) -> None:
        """Give back the blocks past the sequence's tokens (reserved for guesses that were rejected)."""
        keep = self.blocks_for(seq.num_tokens)
        for block_id in reversed(seq.block_table[keep:]):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        del seq.block_table[keep:]
