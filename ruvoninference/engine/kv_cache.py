"""The paged KV cache: every layer's keys and values in fixed-size blocks, allocated once.

Without a cache, producing token t re-runs attention over all t previous tokens, for every layer. With one,
each layer keeps the keys and values it already computed and a decode step only computes the new token's.
A contiguous cache per sequence must reserve room for the longest possible output up front; a paged cache
hands out `block_size`-token blocks as sequences grow, so memory follows the tokens that exist.

Layout (FlashAttention's paged layout, so `flash_attn_with_kvcache` reads it directly):

    k[layer], v[layer]: [num_blocks + 1, block_size, kv_heads, head_dim]

The extra last block is scratch: the padding rows of a CUDA-graph batch write there, never into a block
that a sequence owns. All layers live in one tensor, allocated once at start-up and zeroed (a zero page
read through a mask gives 0, never NaN).

Grouped-query attention shows up here: SmolLM2 has 9 query heads but 3 key/value heads, so its cache is a
third of what multi-head attention would need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ruvoninference.models import ModelConfig


@dataclass
class PagedKVCache:
    k: list[torch.Tensor]  # per layer [num_blocks + 1, block_size, kv_heads, head_dim]
    v: list[torch.Tensor]
    num_blocks: int
    block_size: int

    @property
    def scratch_block(self) -> int:
        return self.num_blocks

    @property
    def scratch_slot(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    return block_size * config.kv_bytes_per_token(dtype)


def allocate_kv_cache(config: ModelConfig, num_blocks: int, block_size: int, device: torch.device,
                      dtype: torch.dtype) -> PagedKVCache:
    # [2, layers, blocks + 1, block_size, kv_heads, head_dim]: one allocation, contiguous per layer
    storage = torch.zeros(2, config.num_layers, num_blocks + 1, block_size, config.num_kv_heads,
                          config.head_dim, device=device, dtype=dtype)
    return PagedKVCache(list(storage[0].unbind(0)), list(storage[1].unbind(0)), num_blocks, block_size)
