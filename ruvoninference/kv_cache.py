"""The key/value cache: why decode is cheap, and what it costs in memory.

Without a cache, producing token t re-runs attention over all t previous tokens, for every layer. With one,
each layer keeps the keys and values it already computed, [batch, kv_heads, seq, head_dim] each, and a decode
step only computes the new token's q, k, v and attends over the stored ones.

We use transformers' `DynamicCache` as the storage (it is what the model code reads and appends to); this
module names the cost. Grouped-query attention shows up here: SmolLM2 has 9 query heads but 3 key/value heads,
so its cache is a third of what multi-head attention would need.
"""

from __future__ import annotations

import torch


def new_cache(config):
    """An empty cache for one generation run."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


def kv_heads_and_head_dim(config) -> tuple[int, int]:
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return kv_heads, head_dim


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """Cache bytes one token adds: keys and values, every layer, every key/value head."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    kv_heads, head_dim = kv_heads_and_head_dim(config)
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * kv_heads * head_dim * element
