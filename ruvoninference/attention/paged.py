"""Attention over the paged KV cache, one function per backend.

The model calls `attention(layer, q, k, v)` (see `models.layers.AttentionFn`) with the step's new tokens
flattened, q `[T, Hq, D]` and k, v `[T, Hkv, D]`. Every backend does the same two things:

1. store the new keys and values into the cache, at `slot_mapping[t]` for token t;
2. attend each new query to its sequence's cached keys and values (the new ones included), causally.

The step's `AttentionMetadata` says where each sequence's tokens are. A step holds up to two parts, prefill
rows first, then decode rows (a *mixed* step has both); each part goes to the kernel made for it:

- prefill: each sequence brings `query_len` new tokens (a prompt, or a chunk of it) after `context_len -
  query_len` cached ones (a prefix-cache hit or earlier chunks). Causality is bottom-right: new token i of a
  sequence sees keys 0 .. context_len - query_len + i.
- decode: each sequence brings one token and sees its whole cache, `seq_lens[b]` tokens.

The backends:

- `eager` and `sdpa`, the references: gather the sequence's pages into a contiguous tensor, then matmul,
  softmax, matmul (eager) or `scaled_dot_product_attention` (sdpa). Simple and exact; the gather costs a
  copy of the cache each step. sdpa may use FlashAttention, memory-efficient attention or the math kernel,
  never cuDNN's: on an H200 (torch 2.11) PyTorch picks cuDNN for these shapes, and cuDNN spends about 60 µs of
  host time per call on a causal prompt and about 2.5 ms on a masked decode whose shape it has not seen, for
  a kernel that runs 6 µs; every eager step with a prefill paid that once per layer and sequence
  (`docs/benchmarks/h200-serve-isolation/`).
- `flash_attention_2`: `flash_attn_varlen_func` for prefill (reading pages through `block_table` when a
  prefix is cached) and `flash_attn_with_kvcache` for decode. Its paged mode needs blocks of 256 tokens.
- `triton`: our kernels over the pages (`kernels.paged_attention`), split-KV decode and varlen prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ruvoninference.attention import AttentionImplementation

# sdpa's kernels, cuDNN's left out (see above); PyTorch takes the first that supports the call.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

FLASH_ATTENTION_BLOCK_SIZE = 256  # flash_attn's paged KV needs a block size divisible by 256
DEFAULT_BLOCK_SIZE = 16


def default_block_size(implementation: AttentionImplementation) -> int:
    """FA2 needs pages of 256; our Triton kernels take any power of two and use 256 too: the same block count
    as FA2 (pages of 16 made 16x the blocks and block-table columns), prefill within 10% of contiguous at 256
    where 16 was not (docs/benchmarks/h200-paged/paged.md), and decode equal at both sizes."""
    if implementation in (AttentionImplementation.FLASH_ATTENTION_2, AttentionImplementation.TRITON):
        return FLASH_ATTENTION_BLOCK_SIZE
    return DEFAULT_BLOCK_SIZE


@dataclass
class PrefillMetadata:
    """The step's first sequences: each brings `query_len` tokens after `context_len - query_len` cached."""

    cu_seqlens_q: torch.Tensor  # [P + 1] int32: offsets of each sequence's new tokens
    cu_seqlens_k: torch.Tensor  # [P + 1] int32: offsets of each sequence's whole context
    max_seqlen_q: int
    max_seqlen_k: int
    block_tables: torch.Tensor  # [P, W] int32
    seq_lens: torch.Tensor  # [P] int32: tokens in the cache after this step (the context length)
    query_lens: list[int]  # host copies, for the reference paths
    context_lens: list[int]

    @property
    def has_prefix(self) -> bool:
        """Whether some sequence attends to keys computed in an earlier step (cached prefix, earlier chunk)."""
        return self.query_lens != self.context_lens


@dataclass
class DecodeMetadata:
    """The step's last sequences: one new token each, attending to its whole cache."""

    block_tables: torch.Tensor  # [D, W] int32
    seq_lens: torch.Tensor  # [D] int32: tokens in the cache including the new one (0 = padding row)
    max_seqlen_k: int


@dataclass
class AttentionMetadata:
    """Where the step's T new tokens go and what they attend to: prefill rows first, then decode rows."""

    slot_mapping: torch.Tensor  # [T] int64: where each new token's k, v go
    num_prefill_tokens: int  # the first rows are prefill tokens, the rest one token per decode
    prefill: PrefillMetadata | None = None
    decode: DecodeMetadata | None = None


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write the new tokens' k, v [T, Hkv, D] into their cache slots."""
    heads, dim = k.shape[1], k.shape[2]
    k_cache.view(-1, heads, dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, heads, dim).index_copy_(0, slot_mapping, v)


def gather_pages(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """[num_blocks, bs, Hkv, D] through [B, M] block tables -> [B, M * bs, Hkv, D] (contiguous copies)."""
    pages = cache[block_tables.long()]  # [B, M, bs, Hkv, D]
    return pages.flatten(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
            use_sdpa: bool, is_causal: bool = False) -> torch.Tensor:
    """q [.., Hq, n, D], k/v [.., Hq, S, D], mask broadcastable to [.., n, S] (True = attend)."""
    if use_sdpa:  # PagedAttention calls this inside sdpa_kernel(SDPA_BACKENDS)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    scores = (q @ k.transpose(-1, -2)) * scale
    if is_causal:
        n, s = scores.shape[-2:]
        mask = torch.ones(n, s, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1, dtype=torch.float32).to(q.dtype) @ v


def _reference_prefill(q, k, v, k_cache, v_cache, meta: PrefillMetadata, scale: float, use_sdpa: bool):
    """Sequence by sequence: gather its keys (or take this step's when nothing is cached), attend causally."""
    out = torch.empty_like(q)
    group = q.shape[1] // k.shape[1]
    start = 0
    for b, (n, context) in enumerate(zip(meta.query_lens, meta.context_lens)):
        qb = q[start:start + n].transpose(0, 1)[None]  # [1, Hq, n, D]
        if context == n:
            kb, vb = k[start:start + n], v[start:start + n]  # [n, Hkv, D]
        else:
            blocks = meta.block_tables[b:b + 1, : -(-context // k_cache.shape[1])]
            kb, vb = gather_pages(k_cache, blocks)[0, :context], gather_pages(v_cache, blocks)[0, :context]
        kb = kb.repeat_interleave(group, dim=1).transpose(0, 1)[None]  # [1, Hq, context, D]
        vb = vb.repeat_interleave(group, dim=1).transpose(0, 1)[None]
        if context == n:
            ob = _attend(qb, kb, vb, None, scale, use_sdpa, is_causal=True)
        else:
            # bottom-right causal: new token i (absolute position context - n + i) sees keys up to itself
            rows = torch.arange(n, device=q.device)[:, None] + (context - n)
            mask = torch.arange(context, device=q.device)[None, :] <= rows
            ob = _attend(qb, kb, vb, mask, scale, use_sdpa)
        out[start:start + n] = ob[0].transpose(0, 1)
        start += n
    return out


def _reference_decode(q, k_cache, v_cache, meta: DecodeMetadata, scale: float, use_sdpa: bool):
    """All sequences at once: gather [B, M * bs] keys, mask what lies beyond each sequence's length."""
    batch, q_heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    k = gather_pages(k_cache, meta.block_tables).permute(0, 2, 1, 3)  # [B, Hkv, S, D]
    v = gather_pages(v_cache, meta.block_tables).permute(0, 2, 1, 3)
    # The query heads sharing a key/value head become that head's "query rows": [B, Hkv, group, D].
    qg = q.view(batch, kv_heads, q_heads // kv_heads, dim)
    positions = torch.arange(k.shape[2], device=q.device)
    mask = (positions[None, :] < meta.seq_lens[:, None])[:, None, None, :]  # [B, 1, 1, S]
    return _attend(qg, k, v, mask, scale, use_sdpa).reshape(batch, q_heads, dim)


class PagedAttention:
    """The attention callable a model runs with: stores k, v, then attends with the chosen backend."""

    def __init__(self, implementation: AttentionImplementation, k_caches: list[torch.Tensor],
                 v_caches: list[torch.Tensor], scale: float):
        self.implementation = implementation
        self.k_caches, self.v_caches = k_caches, v_caches
        self.scale = scale
        self.meta: AttentionMetadata | None = None
        if implementation is AttentionImplementation.FLASH_ATTENTION_2:
            from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

            self._fa_varlen, self._fa_kvcache = flash_attn_varlen_func, flash_attn_with_kvcache
        elif implementation is AttentionImplementation.TRITON:
            from ruvoninference.kernels.paged_attention import paged_decode_attention, paged_prefill_attention

            self._triton_decode, self._triton_prefill = paged_decode_attention, paged_prefill_attention

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.implementation is AttentionImplementation.SDPA:
            with sdpa_kernel(SDPA_BACKENDS):  # once per layer, not per sequence: entering it costs µs
                return self._store_and_attend(layer, q, k, v)
        return self._store_and_attend(layer, q, k, v)

    def _store_and_attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        meta, k_cache, v_cache = self.meta, self.k_caches[layer], self.v_caches[layer]
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.prefill is None:
            return self._decode(q, k_cache, v_cache, meta.decode)
        p = meta.num_prefill_tokens
        if meta.decode is None:
            return self._prefill(q, k, v, k_cache, v_cache, meta.prefill)
        # A mixed step: each part goes to the kernel made for it.
        out = torch.empty_like(q)
        out[:p] = self._prefill(q[:p], k[:p], v[:p], k_cache, v_cache, meta.prefill)
        out[p:] = self._decode(q[p:], k_cache, v_cache, meta.decode)
        return out

    def _prefill(self, q, k, v, k_cache, v_cache, meta: PrefillMetadata) -> torch.Tensor:
        impl = self.implementation
        if impl in (AttentionImplementation.EAGER, AttentionImplementation.SDPA):
            return _reference_prefill(q, k, v, k_cache, v_cache, meta, self.scale,
                                      impl is AttentionImplementation.SDPA)
        if impl is AttentionImplementation.FLASH_ATTENTION_2:
            if not meta.has_prefix:
                return self._fa_varlen(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_q, meta.max_seqlen_q,
                                       meta.max_seqlen_q, softmax_scale=self.scale, causal=True)
            return self._fa_varlen(q, k_cache, v_cache, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q,
                                   meta.max_seqlen_k, softmax_scale=self.scale, causal=True,
                                   block_table=meta.block_tables)
        return self._triton_prefill(q, k_cache, v_cache, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables,
                                    causal=True, sm_scale=self.scale)

    def _decode(self, q, k_cache, v_cache, meta: DecodeMetadata) -> torch.Tensor:
        impl = self.implementation
        if impl in (AttentionImplementation.EAGER, AttentionImplementation.SDPA):
            return _reference_decode(q, k_cache, v_cache, meta, self.scale, impl is AttentionImplementation.SDPA)
        if impl is AttentionImplementation.FLASH_ATTENTION_2:
            return self._fa_kvcache(q[:, None], k_cache, v_cache, cache_seqlens=meta.seq_lens,
                                    block_table=meta.block_tables, softmax_scale=self.scale, causal=True)[:, 0]
        return self._triton_decode(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, sm_scale=self.scale)
