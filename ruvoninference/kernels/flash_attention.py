"""FlashAttention forward in Triton, read top to bottom.

Standard attention for one head computes S = Q Kᵀ · scale  [n_q, n_kv], P = softmax(S), O = P V  [n_q, d].
S and P are n_q × n_kv: at 8k tokens that is 64M numbers per head, written to and read back from device
memory. FlashAttention never forms them. Each program owns a tile of BLOCK_M query rows and walks over the
keys and values BLOCK_N at a time, keeping in registers only

    acc [BLOCK_M, d]   the unnormalized output Σ_j exp(s_j - m) v_j
    m   [BLOCK_M]      the running maximum of the scores seen so far
    l   [BLOCK_M]      the running sum Σ_j exp(s_j - m)

When a new block raises the maximum from m to m', everything accumulated so far was scaled by exp(-m) and
must be rescaled by alpha = exp(m - m'): that one multiplication is the "online softmax". At the end,
O = acc / l. Memory traffic drops from O(n²) to O(n·d) per head, and the extra memory is zero.

Three refinements follow the FlashAttention-2 paper and Triton's fused-attention tutorial:

- exp2 instead of exp: the hardware has a native base-2 exponential, so we fold log2(e) into the softmax
  scale once (`qk_scale = sm_scale · log2 e`) and exp2(x · log2 e) = exp(x) costs nothing extra.
- Causal block skipping: with a causal mask, key blocks entirely to the right of a query tile's diagonal
  contribute nothing and are never loaded, which halves the work. Key blocks entirely left of the diagonal
  need no mask at all, so the loop is split in two: an unmasked loop (the fast common case) and a masked loop
  over the few blocks that straddle the diagonal or the ragged end of the sequence.
- Grouped-query attention by indexing, not copying: query head h reads key/value head h // (H_q / H_kv).

The causal diagonal is aligned to the bottom right: query row i (of n_q) sees key j (of n_kv) when
j <= i + (n_kv - n_q). With n_q = n_kv this is the usual lower triangle; with n_q < n_kv (new tokens
attending to a KV cache) the queries are the last n_q positions, as in decoding.

Shapes: q [batch, heads_q, n_q, d], k and v [batch, heads_kv, n_kv, d], any strides whose last one is 1 for
fast loads (others are correct, just slower).

What we measured on an H200 (Triton 3.6; docs/benchmarks/kernel-notes.md has the numbers): block sizes and
pipelining depth are autotuned per shape; launching causal tiles bottom-first gained up to 6%; loading
through tensor descriptors (TMA, `RUVON_FLASH_TMA=1`) was up to 19% slower than plain pointer loads (which
Triton already turns into asynchronous copies) and never faster; a lazy rescale of the accumulator (skip it
unless the maximum grew by 2^8) was 6-12% slower; issuing the next block's Q K^T before this block's softmax
was 10-13% slower; Triton's warp specialization failed to compile this kernel for Hopper. So the kernel keeps
pointer loads, and TMA stays as an option for readers to measure.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

SUPPORTED_HEAD_DIMS = (32, 64, 96, 128, 256)
LOG2_E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _configs() -> list[triton.Config]:
    if _interpreting():
        # Small tiles under the interpreter: fast on a CPU, and short sequences still cross several blocks,
        # so the masked tails and the causal split are exercised.
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    if os.environ.get("RUVON_FLASH_AUTOTUNE", "1") == "0":
        # Tests: one tile per shape class, so a few hundred shapes compile a handful of kernels. Every tile
        # of the full list is checked for correctness separately (tests/test_flash_attention_kernel.py).
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                for bm, bn, w, st in [(128, 64, 4, 3), (64, 32, 4, 2), (16, 64, 4, 3)]]
    return all_configs()


def all_configs() -> list[triton.Config]:
    """Every tile the autotuner may choose on a GPU."""
    configs = []
    # Tiles for prefill-sized n_q. 128 x 64 with 4 warps is the FlashAttention-2 classic; 8 warps (two
    # Hopper warpgroups) and 128-wide key blocks feed wgmma larger tiles; stages set how many K/V tiles are
    # in flight while the current one is being multiplied.
    for bm, bn, warps, stages in [
        (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3),
        (64, 64, 4, 3), (64, 64, 4, 4), (128, 32, 4, 3), (64, 32, 4, 2), (128, 64, 8, 4),
    ]:
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    # Decode-sized n_q (one or a few new tokens): a 16-row tile wastes less work than a 128-row one.
    for bn, stages in [(64, 3), (128, 2), (128, 3)]:
        configs.append(triton.Config({"BLOCK_M": 16, "BLOCK_N": bn}, num_warps=4, num_stages=stages))
    return configs


def _prune(configs, named_args, **kwargs):
    """Keep the tiles that fit this call: 16-row tiles only for short queries, small tiles for d = 256."""
    n_q, head_dim = named_args["N_Q_BUCKET"], kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    kept = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if (bm == 16) != (n_q <= 16) and not _interpreting():
            continue
        # Shared memory: the Q tile plus `stages` K and V tiles must fit the 228 KB a Hopper SM offers.
        if (bm * head_dim + 2 * c.num_stages * bn * head_dim) * 2 > 200 * 1024:
            continue
        kept.append(c)
    return kept or configs[-1:]


@triton.jit
def _attend_kv_range(
    acc, l_i, m_i, q,
    k_base, v_base, k_desc, v_desc, mask_base,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
    offs_m, offs_n, offs_d,
    lo, hi, diagonal, N_Q, N_KV, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, USE_TMA: tl.constexpr,
):
    """Fold key/value blocks [lo, hi) into the running (acc, l, m) of one query tile."""
    for start_n in range(lo, hi, BLOCK_N):  # Triton pipelines this loop: num_stages K/V tiles in flight
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n  # [BLOCK_N] key positions
        # K is loaded transposed, [d, BLOCK_N], so Q K^T is a plain [BLOCK_M, d] x [d, BLOCK_N] product.
        k_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if USE_TMA:
            # The bulk tensor copy engine fetches the tile; rows past N_KV and columns past HEAD_DIM
            # arrive as zeros, so even the ragged last block needs no predicates here.
            k = k_desc.load([start_n, 0]).T
        elif MASKED or BLOCK_D != HEAD_DIM:
            k = tl.load(k_ptrs, mask=(cols[None, :] < N_KV) & (offs_d[:, None] < HEAD_DIM), other=0.0)
        else:
            k = tl.load(k_ptrs)  # every column is in bounds: no predicates on the hot path
        qk = tl.dot(q, k)  # [BLOCK_M, BLOCK_N] raw scores, fp32 accumulation

        if MASKED:
            keep = cols[None, :] < N_KV
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diagonal)
            if HAS_MASK:
                in_bounds = (offs_m[:, None] < N_Q) & (cols[None, :] < N_KV)
                user = tl.load(mask_base + offs_m[:, None] * stride_mm + cols[None, :] * stride_mn,
                               mask=in_bounds, other=0)
                keep = keep & (user != 0)
            qk = tl.where(keep, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            # A row that has seen no visible key yet keeps m = -inf; subtracting 0 instead keeps
            # exp2(-inf - (-inf)) = NaN out: its p and alpha are then exactly 0.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
        # Scale and shift in one fused multiply-add, then the base-2 exponential.
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        # The online-softmax correction: what was accumulated under the old maximum is rescaled.
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if USE_TMA:
            v = v_desc.load([start_n, 0])
        elif MASKED or BLOCK_D != HEAD_DIM:
            v = tl.load(v_ptrs, mask=(cols[:, None] < N_KV) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            v = tl.load(v_ptrs)
        # P goes back to fp16/bf16 for the tensor cores; the sum stays in fp32.
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(
    configs=_configs(),
    key=["N_Q_BUCKET", "N_KV_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_MASK", "USE_TMA"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _flash_attention_forward(
    Q, K, V, Out, Mask,
    qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mh, stride_mm, stride_mn,
    HEADS_Q, N_Q, N_KV, QUERIES_PER_KV,
    N_Q_BUCKET, N_KV_BUCKET,  # powers of two, read only by the autotuner's key
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # -- which tile is ours: query rows [start_m * BLOCK_M, +BLOCK_M) of (batch, head) ------------------
    start_m = tl.program_id(0)
    if CAUSAL:
        # Causal tiles near the bottom do the most work: launch them first, so the last wave of the grid
        # is made of short tiles instead of leaving most SMs idle behind one long one (up to +6% measured).
        start_m = tl.num_programs(0) - 1 - start_m
    batch_head = tl.program_id(1)
    batch = batch_head // HEADS_Q
    head = batch_head % HEADS_Q
    kv_head = head // QUERIES_PER_KV  # grouped-query attention: shared K/V, nothing copied
    # 64-bit offsets: batch x heads x 65536 positions x d overflows 32 bits.
    q_base = Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    o_base = Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    mask_base = Mask + batch.to(tl.int64) * stride_mb + head.to(tl.int64) * stride_mh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    # Tiles must be powers of two: head_dim 96 runs in a 128-wide tile whose last 32 columns are masked.
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)

    # -- the query tile stays in registers for the whole walk over the keys ---------------------------
    if USE_TMA:
        # Hopper: tensor descriptors (TMA) for this (batch, head)'s [n, d] slices. Made on the device, so
        # any batch/head strides work; the last stride must be 1 (the wrapper checks).
        q_desc = tl.make_tensor_descriptor(q_base, shape=[N_Q, HEAD_DIM], strides=[stride_qm, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
        k_desc = tl.make_tensor_descriptor(k_base, shape=[N_KV, HEAD_DIM], strides=[stride_kn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[N_KV, HEAD_DIM], strides=[stride_vn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        q = q_desc.load([start_m * BLOCK_M, 0])
    else:
        k_desc = k_base
        v_desc = v_base
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=row_ok, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # -- which key blocks to visit, and which of them need a mask -------------------------------------
    diagonal = N_KV - N_Q  # bottom-right alignment: row i sees keys j <= i + diagonal
    full_blocks_end = (N_KV // BLOCK_N) * BLOCK_N  # past here the last block is ragged
    if CAUSAL:
        # Keys every row of this tile sees: j <= start_m * BLOCK_M + diagonal.
        first_row_sees = tl.maximum(start_m * BLOCK_M + diagonal + 1, 0)
        unmasked_end = tl.minimum((first_row_sees // BLOCK_N) * BLOCK_N, full_blocks_end)
        # Keys no row of this tile sees start after the last row's diagonal: those blocks are skipped.
        end = tl.minimum(tl.maximum(start_m * BLOCK_M + BLOCK_M + diagonal, 0), N_KV)
    else:
        unmasked_end = full_blocks_end
        end = N_KV
    if HAS_MASK:
        unmasked_end = 0  # an arbitrary (padding) mask can hide any key: every block is checked

    acc, l_i, m_i = _attend_kv_range(
        acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, mask_base,
        stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
        offs_m, offs_n, offs_d, 0, unmasked_end, diagonal, N_Q, N_KV, qk_scale,
        HEAD_DIM, CAUSAL, HAS_MASK, False, BLOCK_N, BLOCK_D, USE_TMA,
    )
    acc, l_i, m_i = _attend_kv_range(
        acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, mask_base,
        stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
        offs_m, offs_n, offs_d, unmasked_end, end, diagonal, N_Q, N_KV, qk_scale,
        HEAD_DIM, CAUSAL, HAS_MASK, True, BLOCK_N, BLOCK_D, USE_TMA,
    )

    # -- normalize once at the end; a row that saw no key at all (l = 0) outputs zeros, not NaN ---------
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    if USE_TMA:
        o_desc = tl.make_tensor_descriptor(o_base, shape=[N_Q, HEAD_DIM], strides=[stride_om, 1],
                                           block_shape=[BLOCK_M, BLOCK_D])
        o_desc.store([start_m * BLOCK_M, 0], out.to(Out.dtype.element_ty))  # clipped to [N_Q, HEAD_DIM]
    else:
        tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                 out.to(Out.dtype.element_ty), mask=row_ok)


def _tma_allocator(size: int, alignment: int, stream) -> torch.Tensor:
    # Device-side tensor descriptors live in a small global scratch buffer that Triton asks us for.
    return torch.empty(size, dtype=torch.int8, device="cuda")


def tma_requested() -> bool:
    """`RUVON_FLASH_TMA=1` opts into tensor-descriptor (TMA) loads; measured slower here, see the module notes."""
    return os.environ.get("RUVON_FLASH_TMA", "0") == "1"


def _can_use_tma(*tensors: torch.Tensor) -> bool:
    """TMA needs Hopper or newer, a unit last stride, and 16-byte aligned rows and base addresses."""
    if _interpreting() or not tma_requested() or not tensors[0].is_cuda:
        return False
    if torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return False
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or any((s * size) % 16 for s in t.stride()[:-1]) or t.data_ptr() % 16:
            return False
    triton.set_allocator(_tma_allocator)
    return True


# The autotuner's choice per key, kept here so later calls launch the chosen tile directly: Triton's Autotuner
# spends about 20 µs of host time per call before the launch (measured on an H200 host: 60 µs per call
# through it, 40 µs straight to the kernel; docs/benchmarks/h200-kernel-sweep/explore-prefill-short.jsonl),
# which at batch 1 and a few hundred tokens is longer than the kernel itself.
_TUNED: dict[tuple, triton.Config] = {}


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def flash_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    mask: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · sm_scale [+ causal mask] [+ mask]) v, computed tile by tile without materializing scores.

    q [b, h_q, n_q, d], k and v [b, h_kv, n_kv, d] in fp16 or bf16, h_q a multiple of h_kv.
    `mask` (optional) is boolean, broadcastable to [b, h_q, n_q, n_kv], True where a key may be attended.
    `out` (optional) receives the result; it may be any [b, h_q, n_q, d] view, e.g. one whose memory is
    [b, n_q, h_q, d], the layout a model's output projection reads. Returns `out`.
    Rows that may attend to no key at all return zeros. `config` pins one tile instead of autotuning.
    """
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"flash_attention_triton supports float16 and bfloat16, not {q.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError("q, k and v must share one dtype")
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError("expected q [b, h_q, n_q, d] and k, v [b, h_kv, n_kv, d]")
    batch, heads_q, n_q, head_dim = q.shape
    _, heads_kv, n_kv, _ = k.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError("q, k and v must agree in batch and head_dim")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if heads_q % heads_kv:
        raise ValueError(f"query heads ({heads_q}) must be a multiple of key/value heads ({heads_kv})")
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    if out is None:
        out = torch.empty_like(q)  # keeps q's strides, so a [b, n, h, d]-backed q gets a matching out
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError("mask must be boolean (True = attend)")
        mask = mask.expand(batch, heads_q, n_q, n_kv).view(torch.int8)  # a stride-0 view, no copy
        mask_args = (mask, *mask.stride())
    else:
        mask_args = (q, 0, 0, 0, 0)  # never read: HAS_MASK is a compile-time False
    if n_q == 0 or n_kv == 0:
        return out.zero_()

    use_tma = _can_use_tma(q, k, v, out)

    def grid(meta):
        return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads_q)

    key = (_bucket(n_q), _bucket(n_kv), head_dim, bool(causal), mask is not None, use_tma, q.dtype, k.dtype)
    config = config or _TUNED.get(key)
    if config is None:
        kernel, tile = _flash_attention_forward, {}
    else:
        kernel = _flash_attention_forward.fn
        tile = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    kernel[grid](
        q, k, v, out, mask_args[0],
        sm_scale * LOG2_E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *mask_args[1:],
        heads_q, n_q, n_kv, heads_q // heads_kv,
        _bucket(n_q), _bucket(n_kv),
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), CAUSAL=bool(causal), HAS_MASK=mask is not None,
        USE_TMA=use_tma,
        **tile,
    )
    if not tile and getattr(_flash_attention_forward, "best_config", None) is not None:
        _TUNED[key] = _flash_attention_forward.best_config  # what the autotuner chose for this key
    return out


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
    sm_scale: float | None = None, mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The float64 definition the kernel is tested against (same conventions, rows with no key give 0)."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k64, v64 = k64.repeat_interleave(groups, dim=1), v64.repeat_interleave(groups, dim=1)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = q64 @ k64.transpose(-1, -2) * scale
    n_q, n_kv = q.shape[2], k.shape[2]
    keep = torch.ones(n_q, n_kv, dtype=torch.bool, device=q.device)
    if causal:
        keep = torch.ones_like(keep).tril(diagonal=n_kv - n_q)
    keep = keep.expand_as(scores)
    if mask is not None:
        keep = keep & mask
    scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows: 0/0 -> 0
    return weights @ v64

