"""Attention over a paged KV cache in Triton: split-KV decode and variable-length prefill, read top to bottom.

A serving engine does not keep each sequence's keys and values in one contiguous tensor. It cuts the cache
into fixed-size blocks (pages) of `block_size` tokens, `[num_blocks, block_size, heads_kv, d]` (the layout
flash-attn's paged kernels read), and gives each sequence a block table: token i of sequence b lives in
page `block_tables[b, i // block_size]`, row `i % block_size`. Pages are handed out and freed one at a time,
so memory is never reserved for tokens that are not generated, and sequences that share a prompt prefix can
share its pages. What it costs a kernel is one indirection: before loading a tile of keys, look up which
page it is in. That is one small integer load per tile (L1-resident, the table row is tiny) and nothing else:
a page of 16 or more tokens is still read as whole 256-byte rows (d = 128, 16-bit), fully coalesced.

## Decode: one query row per sequence starves the GPU

Decoding generates one token per sequence per step, so each (sequence, head) has ONE query row against the
whole cache. Attention is then pure streaming: every cached K and V element is read once and used for two
multiply-adds. The kernel's speed is the memory bandwidth it achieves, and that needs enough loads in
flight on every one of the GPU's ~132 multiprocessors. A prefill-style grid gives one program per (sequence,
query head): at batch 1 with 32 heads that is 32 programs for 132 SMs, each walking 8k keys alone. Most of
the chip idles, and the busy SMs hold too few loads in flight.

Two fixes, both from FlashAttention's "flash-decoding":

- Split the KV sequence. Program (b, kv_head, s) handles only keys [s·len/S, (s+1)·len/S) of sequence b,
  producing a partial output o_s (normalized over its keys) and the log-sum-exp of its scores, lse_s. A
  second, tiny kernel merges the S partials exactly: with w_s = exp(lse_s − max lse), the output is
  Σ w_s o_s / Σ w_s. This is the same online-softmax algebra as inside one program, applied across programs.
  S is chosen on the host from shapes alone (batch × kv heads against the SM count, capped by the longest
  sequence the caller allows), never from the lengths on the device: the call does no host sync and can be
  captured in a CUDA graph, whose replays then see new lengths.
- Pack grouped-query heads. With GQA, `heads_q / heads_kv` query heads read the same K and V. Giving each its
  own program reads every K/V tile once per query head. Instead, one program takes all the query heads of a
  KV head as the rows of its query tile: each K/V tile is loaded once and multiplied against the whole group
  (tl.dot wants at least 16 rows, so a group of 4 sits in a 16-row tile; the spare rows cost tensor-core
  time, which is free here, not bytes).

## Prefill over pages

`paged_prefill_attention` is the FlashAttention forward of `flash_attention.py` with two changes: keys and
values are gathered through the block table, and the queries are packed, `[total_tokens, heads, d]` with
`cu_seqlens_q` marking where each sequence's chunk starts (no padding). A chunk of n new tokens attends to
the sequence's whole context of L keys with the causal diagonal aligned bottom-right: query i of the chunk
sees keys 0 .. L − n + i. That serves chunked prefill and prefix-cache hits with one kernel.

The grid is flat over query tiles. Sequence b's tiles are numbered from `cu_seqlens_q[b] // BLOCK_M + b`:
a count that never under-allocates (each sequence gets at least ceil(n_b / BLOCK_M) slots) and needs no
prefix sum over the lengths, so the launch size `total_tokens // BLOCK_M + batch` is known on the host. Each
program finds its sequence by counting how many of these starts are at or below its own index.

Conventions of both kernels: fp16 or bf16, head_dim 32 to 256, block_size a power of two, GQA by indexing.
A row with no key (seq_len 0 in decode, or a query that sees nothing) outputs zeros. Prefill writes only the
rows `cu_seqlens_q` covers; rows past `cu_seqlens_q[-1]` (padding) are left untouched.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ruvoninference.kernels.flash_attention import LOG2_E, SUPPORTED_HEAD_DIMS, _interpreting, reference_attention

# How many splits, from the H200 sweep over every benchmark cell (docs/benchmarks/h200-paged/explore-decode.jsonl):
# the fastest count gave about 4 programs per SM at head_dim 128 and 6 at head_dim 64 (smaller tiles, more
# of them resident), and splits of about 2·sqrt(length) tokens, never under one 64-key tile. The square root
# is the balance of two costs: each split adds fixed work (loading q, writing a partial, merging it), each
# token in a split adds streaming time, and S·fixed + length/S is smallest at S ∝ sqrt(length).
MIN_TOKENS_PER_SPLIT = 64
MAX_SPLITS = 512  # partials are [batch, heads_q, splits, d] fp32: bounded so a typo cannot ask for gigabytes
MERGE_CHUNK = 64  # splits the merge kernel holds in registers at once ([64, d] fp32)


@dataclass(frozen=True)
class Tile:
    """One launch configuration. `block_m` is the query rows per program (prefill only)."""

    block_n: int
    num_warps: int
    num_stages: int
    block_m: int = 16

    def describe(self) -> str:
        return f"BLOCK_M={self.block_m} BLOCK_N={self.block_n} warps={self.num_warps} stages={self.num_stages}"


def decode_tile(head_dim: int) -> Tile:
    """The decode kernel's tile: 64 keys per step (32 at d = 256 to fit shared memory), 4 warps, 2 in flight."""
    if _interpreting():
        return Tile(block_n=16, num_warps=4, num_stages=1)
    return Tile(block_n=32 if head_dim > 128 else 64, num_warps=4, num_stages=2)


def prefill_tile(head_dim: int, avg_query_len: float) -> Tile:
    """The prefill kernel's tile, from the H200 sweep of version p4 (docs/benchmarks/h200-paged/explore-p4.jsonl).

    The same for every page size: once the paging cost only its table lookups (p4), the page size stopped
    deciding the tile. head_dim 64 and prompts of ~1k tokens or fewer favour 64-row tiles (more programs to
    fill the GPU, as in the contiguous kernel's autotuned choices); longer prompts at head_dim 128 take 128
    query rows and 128 keys per step on two warpgroups.
    """
    if _interpreting():
        return Tile(block_m=16, block_n=16, num_warps=4, num_stages=1)
    if avg_query_len <= 16:  # decode-like chunks: a 128-row tile would be mostly padding
        return Tile(block_m=16, block_n=64, num_warps=4, num_stages=3)
    if head_dim > 128:
        return Tile(block_m=64, block_n=32, num_warps=4, num_stages=2)
    if head_dim <= 64 or avg_query_len <= 1024:
        return Tile(block_m=64, block_n=64, num_warps=4, num_stages=3)
    return Tile(block_m=128, block_n=128, num_warps=8, num_stages=3)


@triton.jit
def _warp_uniform(x, ON: tl.constexpr):
    """`x`, a 32-bit integer every thread of the program holds the same value of, marked as warp-uniform.

    Why this matters: Hopper has a second, "uniform" datapath (one register per warp instead of per
    thread) that runs loop counters, shared-memory addresses and the tensor-core descriptors of `tl.dot`
    beside the vector math. The compiler puts a value there only when it can prove every thread of the
    warp agrees on it. Kernel arguments and program ids qualify; a value loaded from memory (a sequence
    length, a block-table entry) does not, even when every thread loaded the same address. With the loop
    bounds loaded, every per-iteration counter fell back to vector registers and each tile's descriptors
    were moved across one by one: 10% more instructions in the prefill loop (read in the SASS, see
    docs/benchmarks/kernel-notes.md, p4). `redux.sync.max` over the warp returns the same value, but into a
    uniform register, and that is the whole trick. Off under the interpreter, which runs no PTX.
    """
    if ON:
        return tl.inline_asm_elementwise("redux.sync.max.s32 $0, $1, -1;", "=r,r", [x], dtype=tl.int32,
                                         is_pure=True, pack=1)
    else:
        return x


@triton.jit
def _tile_pages(table_row, start_n, offs_n, seq_len, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                UNIFORM: tl.constexpr):
    """Which page holds each key of the tile [start_n, start_n + BLOCK_N): the paging indirection.

    Pages and tiles are powers of two and tiles start aligned, so when a page is at least a tile long the
    whole tile sits in one page: one table entry, the same for every thread. Smaller pages: one entry per
    key (repeats hit L1). Keys past seq_len get page 0, whose rows the caller never uses. Positions are
    never negative, so a tile's are divided as unsigned numbers: a shift per key, where signed division by
    a power of two takes three instructions to round towards zero.
    """
    if PAGE_SIZE >= BLOCK_N:
        page = tl.load(table_row + start_n // PAGE_SIZE, mask=start_n < seq_len, other=0)
        return _warp_uniform(page, UNIFORM)
    else:
        cols = start_n + offs_n
        return tl.load(table_row + cols.to(tl.uint32) // PAGE_SIZE, mask=cols < seq_len, other=0)


@triton.jit
def _attend_pages(
    acc, l_i, m_i, q,
    k_cache, v_cache, table_row,
    stride_kb, stride_kt, stride_kd,
    offs_m, offs_n, offs_d,
    lo, hi, diagonal, seq_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, PREFETCH_PAGES: tl.constexpr,
    WIDE_OFFSETS: tl.constexpr, UNIFORM: tl.constexpr,
):
    """Fold the keys [lo, hi) of one sequence, read through its block table, into (acc, l, m).

    `k_cache`/`v_cache` point at this KV head already; `table_row` at the sequence's block table. `offs_m`
    is each row's query position (used only when CAUSAL: row r sees keys j <= offs_m[r] + diagonal).

    PREFETCH_PAGES (prefill): the table entry for a tile is loaded one iteration ahead and carried in the
    loop. That is what lets Triton's software pipeliner load the next K/V tile while this one is multiplied:
    when the address of an iteration's K/V load came from a load in the same iteration, the pipeliner
    (Triton 3.6, Hopper) waited for every outstanding copy at the top of each iteration, so memory and math
    took turns (`scripts/pipeline_probe.py --before` shows the compiled loop's wait counts).
    Decode does not prefetch: there many small programs per SM hide the latency, and carrying the entries
    of 16-token pages across iterations made it up to a third slower (docs/benchmarks/kernel-notes.md, p2).

    WIDE_OFFSETS: a key's offset in the cache, page · stride + row · stride, is computed in 64 bits only
    when the cache spans 2^31 elements or more (the wrapper decides). In 32 bits it is one multiply-add per
    row; in 64 bits a multiply-add pair and a carry, per row, per iteration (p4).
    """
    d_ok = offs_d < HEAD_DIM
    if PREFETCH_PAGES:
        next_pages = _tile_pages(table_row, lo, offs_n, seq_len, PAGE_SIZE, BLOCK_N, UNIFORM)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n  # [BLOCK_N] token positions within the sequence
        if PREFETCH_PAGES:
            pages = next_pages
            next_pages = _tile_pages(table_row, start_n + BLOCK_N, offs_n, seq_len, PAGE_SIZE, BLOCK_N, UNIFORM)
        else:
            pages = _tile_pages(table_row, start_n, offs_n, seq_len, PAGE_SIZE, BLOCK_N, UNIFORM)
        if WIDE_OFFSETS:
            pages = pages.to(tl.int64)
        # Row within the page: BLOCK_N consecutive rows of one page, or each key's own row of a small page.
        if PAGE_SIZE >= BLOCK_N:
            in_page = tl.multiple_of(start_n.to(tl.uint32) % PAGE_SIZE, BLOCK_N).to(tl.int32) + offs_n
        else:
            in_page = (cols.to(tl.uint32) % PAGE_SIZE).to(tl.int32)
        rows = pages * stride_kb + in_page * stride_kt  # a scalar page base when the page spans the tile
        # K and V tiles are both loaded as [BLOCK_N, d], in one layout, so one set of row offsets (and, for
        # small pages, one set of table lookups) serves both; the tensor cores read K transposed for free.
        k_ptrs = k_cache + rows[:, None] + offs_d[None, :] * stride_kd
        v_ptrs = v_cache + rows[:, None] + offs_d[None, :] * stride_kd
        if MASKED:
            k = tl.load(k_ptrs, mask=(cols[:, None] < seq_len) & d_ok[None, :], other=0.0)
        elif BLOCK_D != HEAD_DIM:
            k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k))  # [M, d] x [d, BLOCK_N]: raw scores, fp32

        if MASKED:
            keep = cols[None, :] < seq_len
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diagonal)
            qk = tl.where(keep, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: p = alpha = 0
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
        p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASKED:
            v = tl.load(v_ptrs, mask=(cols[:, None] < seq_len) & d_ok[None, :], other=0.0)
        elif BLOCK_D != HEAD_DIM:
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _split_range(seq_len, split, NUM_SPLITS, MIN_SPLIT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [start, end) of split `split`: len/NUM_SPLITS rounded up to whole tiles, at least MIN_SPLIT.

    Computed on the device from the true length, so short sequences use fewer splits (the rest return at
    once) and every used split but the last covers whole tiles. The merge kernel calls this too.
    """
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    per_split = tl.maximum(per_split, MIN_SPLIT)
    start = split * per_split
    return start, tl.minimum(start + per_split, seq_len), per_split


# Triton compiles a kernel once per distinct set of "specializations" of its integer arguments (== 1, divisible
# by 16), besides its compile-time constants. Arguments that change from call to call in a serving engine
# (the split count, the block table's row stride = its width, the number of sequences) are exempted: one
# compiled kernel serves them all, so nothing compiles after the engine has warmed up (`warm_up`).
@triton.jit(do_not_specialize=["NUM_SPLITS", "stride_tb"])
def _paged_decode_split(
    Q, K, V, BlockTables, SeqLens, Out, PartOut, PartLse,
    qk_scale,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_tb,
    stride_ob, stride_oh, stride_od,
    NUM_SPLITS,
    QUERIES_PER_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, MIN_SPLIT: tl.constexpr, DIRECT: tl.constexpr,
    WIDE_OFFSETS: tl.constexpr, UNIFORM: tl.constexpr,
):
    # -- ours: split `split` of sequence `batch`, for all the query heads of KV head `kv_head` -----------
    # KV heads vary fastest across the grid: the programs running side by side read the neighbouring
    # head slices of the same pages (+0-2% measured at large batch).
    kv_head = tl.program_id(0)
    batch = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = _warp_uniform(tl.load(SeqLens + batch), UNIFORM)
    start, end, _ = _split_range(seq_len, split, NUM_SPLITS, MIN_SPLIT, BLOCK_N)
    if not DIRECT:
        if start >= seq_len:
            return  # an unused split of a short (or empty) sequence: the merge skips it too

    offs_g = tl.arange(0, BLOCK_G)  # rows = the query heads of this KV head's group (padded to 16)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kv_head * QUERIES_PER_KV + offs_g
    row_ok = (offs_g < QUERIES_PER_KV)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(Q + batch.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=row_ok, other=0.0)
    k_cache = K + kv_head.to(tl.int64) * stride_kh
    v_cache = V + kv_head.to(tl.int64) * stride_kh
    table_row = BlockTables + batch.to(tl.int64) * stride_tb

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    # Whole tiles without predicates, then the one ragged tile at the end of the sequence.
    full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attend_pages(
        acc, l_i, m_i, q, k_cache, v_cache, table_row, stride_kb, stride_kt, stride_kd,
        offs_g, offs_n, offs_d, start, full_end, 0, seq_len, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, False, False, False, WIDE_OFFSETS, UNIFORM,
    )
    acc, l_i, m_i = _attend_pages(
        acc, l_i, m_i, q, k_cache, v_cache, table_row, stride_kb, stride_kt, stride_kd,
        offs_g, offs_n, offs_d, full_end, end, 0, seq_len, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, False, True, False, WIDE_OFFSETS, UNIFORM,
    )

    safe_l = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / safe_l[:, None]  # normalized over this split's keys; zeros for an empty sequence
    if DIRECT:  # one split: this is the answer, no merge
        tl.store(Out + batch.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :] * stride_od,
                 out.to(Out.dtype.element_ty), mask=row_ok)
    else:
        # Partials are [batch, heads_q, splits, d] fp32, lse [batch, heads_q, splits], in base 2.
        part_row = (batch * tl.num_programs(0) * QUERIES_PER_KV + heads).to(tl.int64) * NUM_SPLITS + split
        tl.store(PartOut + part_row[:, None] * BLOCK_D + offs_d[None, :], out, mask=row_ok)
        tl.store(PartLse + part_row, m_i + tl.math.log2(safe_l), mask=offs_g < QUERIES_PER_KV)


@triton.jit(do_not_specialize=["NUM_SPLITS"])
def _paged_decode_merge(
    PartOut, PartLse, SeqLens, Out,
    stride_ob, stride_oh, stride_od,
    HEADS_Q, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_N: tl.constexpr, MIN_SPLIT: tl.constexpr,
):
    """out = Σ_s w_s o_s / Σ_s w_s with w_s = 2^(lse_s − max lse): the splits' softmaxes made one.

    The splits are visited BLOCK_S at a time with the same running-max rescale as the attention loop, so
    a sequence may be cut into hundreds of splits without holding them all in registers.
    """
    batch = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(SeqLens + batch)
    _, _, per_split = _split_range(seq_len, 0, NUM_SPLITS, MIN_SPLIT, BLOCK_N)
    used = tl.cdiv(seq_len, per_split)  # the splits the first kernel wrote; 0 for an empty sequence
    offs_d = tl.arange(0, BLOCK_D)
    base = (batch * HEADS_Q + head).to(tl.int64) * NUM_SPLITS
    m = tl.max(tl.full([BLOCK_S], float("-inf"), dtype=tl.float32), 0)  # running max of the lse, base 2
    total = tl.sum(tl.zeros([BLOCK_S], dtype=tl.float32), 0)  # running Σ w_s
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)  # running Σ w_s o_s
    for first in range(0, used, BLOCK_S):
        offs_s = first + tl.arange(0, BLOCK_S)
        s_ok = offs_s < used
        lse = tl.load(PartLse + base + offs_s, mask=s_ok, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.math.exp2(lse - m_use)  # exactly 0 for unused splits
        o = tl.load(PartOut + (base + offs_s)[:, None] * BLOCK_D + offs_d[None, :],
                    mask=s_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
        alpha = tl.math.exp2(m - m_use)
        acc = acc * alpha + tl.sum(w[:, None] * o, 0)
        total = total * alpha + tl.sum(w, 0)
        m = m_new
    out = acc / tl.where(total == 0.0, 1.0, total)
    tl.store(Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh + offs_d * stride_od,
             out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _has_redux(device_index: int) -> bool:
    """`redux.sync`, behind _warp_uniform, exists on NVIDIA GPUs of compute capability 8.0 and newer."""
    return torch.version.hip is None and torch.cuda.get_device_capability(device_index)[0] >= 8


def _uniform_hint(t: torch.Tensor) -> bool:
    """Whether the kernels may mark loaded lengths and page numbers warp-uniform (compiled, NVIDIA, sm_80+)."""
    return t.is_cuda and not _interpreting() and _has_redux(t.device.index if t.device.index is not None
                                                              else torch.cuda.current_device())


def needs_wide_offsets(cache: torch.Tensor) -> bool:
    """Whether an element's offset in the cache can reach 2^31: then the kernels compute offsets in 64 bits."""
    return sum((size - 1) * stride for size, stride in zip(cache.shape, cache.stride())) >= 2**31


def programs_per_sm(head_dim: int) -> int:
    """Resident split programs per SM that kept the memory busiest in the sweep (see MIN_TOKENS_PER_SPLIT)."""
    return 4 if head_dim >= 128 else 6


def min_tokens_per_split(max_seq_len: int, group: int = 1) -> int:
    """The shortest split worth its fixed costs for sequences up to max_seq_len tokens (see above).

    Three floors, the largest wins: one 64-key tile; 2·sqrt(length), where a split's fixed work (load q, write
    a partial, merge it) balances its streaming; and 16 tokens per query head of the group. The last is
    arithmetic, not a fit: a split writes `group` fp32 partial rows of d and the merge reads them back, 8·group·d
    bytes, against the 4·tokens·d bytes of K and V it streams, so 16·group tokens keep the partials at or
    under 1/8 of the traffic (it binds only for short caches with large groups, e.g. 7/1 at 1k tokens).
    """
    return max(MIN_TOKENS_PER_SPLIT, 2 * math.isqrt(max(1, max_seq_len)), 16 * group)


def choose_num_splits(batch: int, heads_kv: int, max_seq_len: int, device: torch.device, head_dim: int = 128,
                      group: int = 1) -> int:
    """How many programs share one sequence's keys, from host-known shapes only (CUDA-graph safe).

    The rule, in the order it reads its inputs:
    1. fill the GPU: (batch × heads_kv × splits) programs up to programs_per_sm(head_dim) per SM (rounding
       down: a batch that already fills the GPU is not split, because a second, partial wave of programs
       and the merge cost more than they save). Few KV heads at small batch is where this matters: 4 KV
       heads at batch 4 are 16 programs for 132 SMs without splitting, 528 with 33 splits.
    2. no split shorter than min_tokens_per_split(length, group) of the longest allowed sequence;
    3. at most MAX_SPLITS.
    Lengths below max_seq_len (ragged batches) use fewer of the splits: each split covers whole tiles of
    len / splits keys, computed on the device (`_split_range`).
    """
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    wanted = programs_per_sm(head_dim) * sms // max(1, batch * heads_kv)
    longest = max(1, max_seq_len)
    return max(1, min(wanted, triton.cdiv(longest, min_tokens_per_split(longest, group)), MAX_SPLITS))


def _check_cache_args(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      block_tables: torch.Tensor, lengths: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """Shapes, dtypes and strides (never values: that would sync). Returns (block_size, heads_kv, head_dim)."""
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"paged attention supports float16 and bfloat16, not {q.dtype}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError("q and the K/V caches must share one dtype")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must be [num_blocks, block_size, heads_kv, head_dim] "
                         "with the same shape and strides")
    _, block_size, heads_kv, head_dim = k_cache.shape
    heads_q = q.shape[-2]
    if q.shape[-1] != head_dim:
        raise ValueError(f"q's head_dim {q.shape[-1]} differs from the cache's {head_dim}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if heads_q % heads_kv:
        raise ValueError(f"query heads ({heads_q}) must be a multiple of key/value heads ({heads_kv})")
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two, not {block_size}")
    for name, t in {"block_tables": block_tables, **lengths}.items():
        if t.dtype != torch.int32 or t.device != q.device:
            raise ValueError(f"{name} must be int32 on {q.device} (got {t.dtype} on {t.device})")
    if block_tables.dim() != 2 or block_tables.stride(1) != 1:
        raise ValueError("block_tables must be [batch, max_blocks] with contiguous rows")
    return block_size, heads_kv, head_dim


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float | None = None,
    *,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    tile: Tile | None = None,
) -> torch.Tensor:
    """One new query token per sequence against its paged cache: out [B, Hq, D].

    q [B, Hq, D]; k_cache, v_cache [num_blocks, block_size, Hkv, D]; block_tables int32 [B, max_blocks];
    seq_lens int32 [B], the cached tokens (the new one included) each row attends to, 0 for a padding row
    (its output is zeros). `max_seq_len` bounds seq_lens for choosing the number of splits; it defaults to
    max_blocks × block_size, so a CUDA graph captured once stays right for any lengths the table can hold.
    `num_splits` overrides the choice; `out` receives the result. The split partials are allocated per call
    (inside a CUDA graph capture they come from the graph's private pool); nothing is read back to the host.
    """
    if q.dim() != 3 or block_tables.shape[0] != q.shape[0] or seq_lens.shape != (q.shape[0],):
        raise ValueError("expected q [batch, heads_q, head_dim], block_tables [batch, max_blocks], seq_lens [batch]")
    block_size, heads_kv, head_dim = _check_cache_args(q, k_cache, v_cache, block_tables, {"seq_lens": seq_lens})
    batch, heads_q, _ = q.shape
    group = heads_q // heads_kv
    if group > 64:
        raise ValueError(f"at most 64 query heads per KV head are supported, not {group}")
    if k_cache.stride(3) != 1:
        raise ValueError("the caches' last dimension must be contiguous")
    sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    tile = tile or decode_tile(head_dim)
    if max_seq_len is None:
        max_seq_len = block_tables.shape[1] * block_size
    splits = num_splits or choose_num_splits(batch, heads_kv, max_seq_len, q.device, head_dim, group)
    if not 1 <= splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be between 1 and {MAX_SPLITS}, not {splits}")
    block_d = triton.next_power_of_2(head_dim)
    min_split = max(MIN_TOKENS_PER_SPLIT, tile.block_n) if num_splits is None else tile.block_n
    direct = splits == 1
    if direct:
        part_out = part_lse = out  # never touched: DIRECT is a compile-time True
    else:
        part_out = torch.empty(batch, heads_q, splits, block_d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(batch, heads_q, splits, dtype=torch.float32, device=q.device)
    _paged_decode_split[(heads_kv, batch, splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_out, part_lse,
        sm_scale * LOG2_E,
        *q.stride(),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
        block_tables.stride(0),
        *out.stride(),
        splits,
        QUERIES_PER_KV=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_N=tile.block_n, PAGE_SIZE=block_size, MIN_SPLIT=min_split, DIRECT=direct,
        WIDE_OFFSETS=needs_wide_offsets(k_cache), UNIFORM=_uniform_hint(q),
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    if not direct:
        _paged_decode_merge[(batch, heads_q)](
            part_out, part_lse, seq_lens, out,
            *out.stride(),
            heads_q, splits,
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=min(MERGE_CHUNK, triton.next_power_of_2(splits)),
            BLOCK_N=tile.block_n, MIN_SPLIT=min_split,
            num_warps=4,
        )
    return out


@triton.jit(do_not_specialize=["NUM_SEQS", "stride_tb"])
def _paged_prefill(
    Q, K, V, CuSeqlensQ, SeqLensK, BlockTables, Out,
    qk_scale,
    stride_qt, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_tb,
    stride_ot, stride_oh, stride_od,
    NUM_SEQS, QUERIES_PER_KV,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr, PAGE_SIZE: tl.constexpr, CAUSAL: tl.constexpr,
    WIDE_OFFSETS: tl.constexpr, UNIFORM: tl.constexpr,
):
    # -- which sequence and which of its query tiles is ours ------------------------------------------
    tile = tl.program_id(0)
    if CAUSAL:
        # As in the contiguous kernel: the last tiles of a sequence see the most keys, so launch them first
        # and let the short ones fill the final wave.
        tile = tl.num_programs(0) - 1 - tile
    head = tl.program_id(1)
    seqs = tl.arange(0, BLOCK_B)
    cu = tl.load(CuSeqlensQ + seqs, mask=seqs < NUM_SEQS, other=1 << 30)
    first_tiles = cu // BLOCK_M + seqs  # sequence b's tiles are numbered from here (see the module notes)
    # Every thread agrees on these; saying so keeps the loop's bookkeeping uniform (see _warp_uniform).
    seq = _warp_uniform(tl.sum((first_tiles <= tile).to(tl.int32), 0) - 1, UNIFORM)
    q_start = _warp_uniform(tl.load(CuSeqlensQ + seq), UNIFORM)
    n_q = _warp_uniform(tl.load(CuSeqlensQ + seq + 1), UNIFORM) - q_start
    start_m = tile - (q_start // BLOCK_M + seq)  # our tile within the sequence's chunk
    if start_m * BLOCK_M >= n_q:
        return  # a spare slot of the numbering (or an empty chunk)
    seq_len = _warp_uniform(tl.load(SeqLensK + seq), UNIFORM)
    kv_head = head // QUERIES_PER_KV

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the chunk
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = (offs_m < n_q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tokens = (q_start + offs_m).to(tl.int64)
    q = tl.load(Q + tokens[:, None] * stride_qt + head.to(tl.int64) * stride_qh + offs_d[None, :] * stride_qd,
                mask=row_ok, other=0.0)
    k_cache = K + kv_head.to(tl.int64) * stride_kh
    v_cache = V + kv_head.to(tl.int64) * stride_kh
    table_row = BlockTables + seq.to(tl.int64) * stride_tb

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # -- the same split as the contiguous kernel: unmasked blocks, then the diagonal and the ragged end --
    diagonal = seq_len - n_q  # bottom-right: query i sees keys j <= i + diagonal
    full_blocks_end = (seq_len // BLOCK_N) * BLOCK_N
    if CAUSAL:
        first_row_sees = tl.maximum(start_m * BLOCK_M + diagonal + 1, 0)
        unmasked_end = tl.minimum((first_row_sees // BLOCK_N) * BLOCK_N, full_blocks_end)
        last_row = tl.minimum(start_m * BLOCK_M + BLOCK_M, n_q) - 1
        end = tl.minimum(tl.maximum(last_row + diagonal + 1, 0), seq_len)
    else:
        unmasked_end = full_blocks_end
        end = seq_len
    acc, l_i, m_i = _attend_pages(
        acc, l_i, m_i, q, k_cache, v_cache, table_row, stride_kb, stride_kt, stride_kd,
        offs_m, offs_n, offs_d, 0, unmasked_end, diagonal, seq_len, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, CAUSAL, False, True, WIDE_OFFSETS, UNIFORM,
    )
    acc, l_i, m_i = _attend_pages(
        acc, l_i, m_i, q, k_cache, v_cache, table_row, stride_kb, stride_kt, stride_kd,
        offs_m, offs_n, offs_d, unmasked_end, end, diagonal, seq_len, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, CAUSAL, True, True, WIDE_OFFSETS, UNIFORM,
    )
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(Out + tokens[:, None] * stride_ot + head.to(tl.int64) * stride_oh + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok)


def sequence_block(batch: int) -> int:
    """How many cu_seqlens entries a prefill program scans to find its sequence (a compile-time size).

    At least 64, so every batch under 64 sequences runs one compiled kernel (each size is a compilation,
    and an engine must not compile mid-run); above that, the next power of two. Scanning 64 entries is one
    256-byte load per program.
    """
    return max(64, triton.next_power_of_2(batch + 1))


def prefill_tiles(head_dim: int) -> list[Tile]:
    """Every tile `prefill_tile` can choose at this head_dim (decode-like chunks, short and long prompts)."""
    return list(dict.fromkeys(prefill_tile(head_dim, n) for n in (1, 64, 4096)))


def warm_up(k_cache: torch.Tensor, v_cache: torch.Tensor, heads_q: int, max_num_seqs: int,
            decode_shapes: list[tuple[int, int]] = (), progress=None) -> int:
    """Compile, before serving, every kernel variant a run over this cache can launch; returns the launches.

    Prefill: each tile `prefill_tile` can pick × each `sequence_block` size up to max_num_seqs. Decode: each
    (batch, table width) in `decode_shapes` (the split count, and so the merge kernel's size, follows from
    them), and one split plus each merge size (1-64 splits), which is what any other width can lead to (at
    head_dim <= 128, where a forced split count compiles the same kernels as the rule's). Every launch is
    real but harmless: tables point at page 0, lengths are 1, only `out` is written.
    """
    _, block_size, heads_kv, head_dim = k_cache.shape
    device, dtype = k_cache.device, k_cache.dtype
    blocks = sorted({sequence_block(b) for b in range(1, max(1, max_num_seqs) + 1)})
    jobs = [("prefill", tile, sb) for tile in prefill_tiles(head_dim) for sb in blocks]
    jobs += [("decode", batch, width) for batch, width in decode_shapes]
    # Any split count a table width can lead to: one split (no merge) and each merge chunk size.
    jobs += [("splits", s, None) for s in (1, 2, 4, 8, 16, 32, MERGE_CHUNK)]
    for i, (kind, a, b) in enumerate(jobs):
        if progress:
            progress("Compiling attention kernels", i, len(jobs))
        if kind == "prefill":
            batch = b // 2 if b > 64 else 1  # sequence_block(batch) == b
            q = torch.zeros(batch, heads_q, head_dim, device=device, dtype=dtype)
            cu = torch.arange(batch + 1, device=device, dtype=torch.int32)
            ones = torch.ones(batch, device=device, dtype=torch.int32)
            tables = torch.zeros(batch, 1, device=device, dtype=torch.int32)
            paged_prefill_attention(q, k_cache, v_cache, cu, ones, tables, tile=a)
        elif kind == "decode":
            q = torch.zeros(a, heads_q, head_dim, device=device, dtype=dtype)
            tables = torch.zeros(a, b, device=device, dtype=torch.int32)
            paged_decode_attention(q, k_cache, v_cache, tables, torch.ones(a, device=device, dtype=torch.int32))
        else:
            q = torch.zeros(1, heads_q, head_dim, device=device, dtype=dtype)
            tables = torch.zeros(1, 1, device=device, dtype=torch.int32)
            one = torch.ones(1, device=device, dtype=torch.int32)
            paged_decode_attention(q, k_cache, v_cache, tables, one, num_splits=a)
    if progress:
        progress("Compiled attention kernels", len(jobs), len(jobs))
    return len(jobs)


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens_k: torch.Tensor,
    block_tables: torch.Tensor,
    causal: bool = True,
    sm_scale: float | None = None,
    *,
    out: torch.Tensor | None = None,
    tile: Tile | None = None,
) -> torch.Tensor:
    """A packed chunk of new tokens per sequence against each sequence's paged cache: out [T, Hq, D].

    q [T, Hq, D] packed; cu_seqlens_q int32 [B+1] (sequence b's queries are rows cu[b] .. cu[b+1]);
    seq_lens_k int32 [B], each sequence's whole context after this chunk (its keys and values, the chunk's
    own included, are already in the cache); block_tables int32 [B, max_blocks]. Causal is bottom-right:
    query i of a chunk of n sees keys 0 .. seq_len_k - n + i. Rows past cu_seqlens_q[-1] are left untouched.
    """
    if q.dim() != 3 or cu_seqlens_q.dim() != 1:
        raise ValueError("expected q [total_tokens, heads_q, head_dim] and cu_seqlens_q [batch + 1]")
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 0 or seq_lens_k.shape != (batch,) or block_tables.shape[0] != batch:
        raise ValueError("cu_seqlens_q [batch + 1], seq_lens_k [batch] and block_tables [batch, ...] must agree")
    block_size, heads_kv, head_dim = _check_cache_args(
        q, k_cache, v_cache, block_tables, {"cu_seqlens_q": cu_seqlens_q, "seq_lens_k": seq_lens_k})
    total, heads_q, _ = q.shape
    if k_cache.stride(3) != 1:
        raise ValueError("the caches' last dimension must be contiguous")
    sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    if out is None:
        out = torch.empty_like(q)
    if batch == 0 or total == 0:
        return out
    tile = tile or prefill_tile(head_dim, total / batch)
    grid = (total // tile.block_m + batch, heads_q)
    _paged_prefill[grid](
        q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_tables, out,
        sm_scale * LOG2_E,
        *q.stride(),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
        block_tables.stride(0),
        *out.stride(),
        batch, heads_q // heads_kv,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
        BLOCK_B=sequence_block(batch), PAGE_SIZE=block_size, CAUSAL=bool(causal),
        WIDE_OFFSETS=needs_wide_offsets(k_cache), UNIFORM=_uniform_hint(q),
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )
    return out


# -- references: the same functions in float64, by gathering each sequence's pages into contiguous K/V --

def gather_pages(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence, [length, heads_kv, d], copied out of its pages."""
    block_size = cache.shape[1]
    pages = block_table[: triton.cdiv(length, block_size)].long()
    return cache[pages].reshape(-1, *cache.shape[2:])[:length]


def reference_paged_decode(q, k_cache, v_cache, block_tables, seq_lens, sm_scale=None) -> torch.Tensor:
    """float64 [B, Hq, D]; a zero-length row gives zeros."""
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    for b, length in enumerate(seq_lens.tolist()):
        if length == 0:
            continue
        k = gather_pages(k_cache, block_tables[b], length).transpose(0, 1)[None]  # [1, Hkv, L, D]
        v = gather_pages(v_cache, block_tables[b], length).transpose(0, 1)[None]
        out[b] = reference_attention(q[b][None, :, None], k, v, sm_scale=sm_scale)[0, :, 0]
    return out


def reference_paged_prefill(q, k_cache, v_cache, cu_seqlens_q, seq_lens_k, block_tables, causal=True,
                            sm_scale=None) -> torch.Tensor:
    """float64 [T, Hq, D] for the rows cu_seqlens_q covers (others zero)."""
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    cu = cu_seqlens_q.tolist()
    for b, length in enumerate(seq_lens_k.tolist()):
        if cu[b + 1] == cu[b]:
            continue
        k = gather_pages(k_cache, block_tables[b], length).transpose(0, 1)[None]
        v = gather_pages(v_cache, block_tables[b], length).transpose(0, 1)[None]
        chunk = q[cu[b]: cu[b + 1]].transpose(0, 1)[None]  # [1, Hq, n, D]
        out[cu[b]: cu[b + 1]] = reference_attention(chunk, k, v, causal=causal, sm_scale=sm_scale)[0].transpose(0, 1)
    return out
