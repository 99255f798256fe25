"""The sampler's draw as one Triton kernel: a whole batch of tokens in one launch and one read of the logits.

`engine/sampler.py` explains the draw: with E_i ~ Exp(1), `argmax_i p_i / E_i` is a sample from p. Taking logs,
and since softmax only adds a per-row constant to log p,

    token = argmax_i ( logits_i / T  -  log E_i )        (the Gumbel-max trick: -log E is Gumbel noise)

so no softmax, no division by a noise tensor, no second pass: each program takes one row, walks the vocabulary
in tiles, makes each entry's noise from a hash of (the row's key, the vocabulary id), and keeps a running
maximum. The noise is the same counter-based hash `engine/sampler.py` uses (`_mix32`): a row's key comes from
its seed and the position being drawn (or from the engine's generator for unseeded rows), so a seeded row
draws the same token whatever else runs in its batch. Greedy rows use a noise scale of 0: a plain argmax.

In PyTorch the same draw takes about eight passes over a [batch, vocabulary] float32 tensor (upcast, scale,
softmax, noise, clamp, divide, argmax); at 256 rows of Qwen3's 151,936 entries each pass is 155 MB. Here the
logits are read once, in their own dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_SALT = tl.constexpr(0x1B873593)  # must match engine/sampler.py's uniforms(salt=0)


@triton.jit
def _mix32(x):
    """engine/sampler.py's _mix32 on uint32 lanes (products wrap at 2**32, the same bits)."""
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@triton.jit
def _gumbel_argmax_kernel(logits_ptr, row_stride, inv_temp_ptr, noise_scale_ptr, keys_ptr, out_ptr, vocab,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0)
    inv_temp = tl.load(inv_temp_ptr + row)  # 1 / T (1 on greedy rows)
    scale = tl.load(noise_scale_ptr + row)  # 1 to sample, 0 for greedy
    key = tl.load(keys_ptr + row).to(tl.uint32)
    best = tl.full((), float("-inf"), tl.float32)
    best_id = tl.full((), 0, tl.int32)
    for start in range(0, vocab, BLOCK):
        ids = start + tl.arange(0, BLOCK)
        inside = ids < vocab
        x = tl.load(logits_ptr + row * row_stride + ids, mask=inside, other=float("-inf")).to(tl.float32)
        # uniform in (0, 1) from 24 bits of the hash, then Gumbel noise -log(E), E = -log(u) ~ Exp(1)
        h = _mix32(key ^ _mix32(ids.to(tl.uint32) ^ _SALT))
        u = ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        score = x * inv_temp - scale * tl.log(-tl.log(u))
        score = tl.where(inside, score, float("-inf"))
        tile_best = tl.max(score, axis=0)
        tile_id = tl.argmax(score, axis=0).to(tl.int32) + start
        better = tile_best > best  # strictly: the first maximum wins, as torch.argmax
        best_id = tl.where(better, tile_id, best_id)
        best = tl.where(better, tile_best, best)
    tl.store(out_ptr + row, best_id.to(tl.int64))


def gumbel_argmax(logits: torch.Tensor, inv_temperature: torch.Tensor, noise_scale: torch.Tensor,
                  keys: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """One token per row of `logits` [N, V] (any float dtype, rows contiguous): argmax(logits * inv_temperature
    - noise_scale * log(E)) with E ~ Exp(1) from each row's 32-bit key. inv_temperature, noise_scale: [N]
    float32; keys: [N] int64 holding values in [0, 2**32). Returns [N] int64."""
    n, vocab = logits.shape
    assert logits.stride(1) == 1, "the vocabulary must be contiguous"
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    if n:
        _gumbel_argmax_kernel[(n,)](logits, logits.stride(0), inv_temperature, noise_scale, keys, out, vocab,
                                    BLOCK=min(block, triton.next_power_of_2(vocab)), num_warps=8)
    return out
