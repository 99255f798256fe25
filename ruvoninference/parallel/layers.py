"""The parallel layers: how one matmul is cut over N ranks, and what it costs to put it back together.

A linear layer y = x W^T (W is [out, in]) can be cut two ways:

- column-parallel: each rank holds a slice of the OUTPUT features, W[rows of rank r], and computes its slice
  of y from the whole x. No communication: the rank simply has fewer outputs. Used where the outputs split
  into independent pieces: the q/k/v projection (a rank's slice is its attention heads) and the MLP's
  gate/up projection (a rank's slice is its share of the MLP's width).
- row-parallel: each rank holds a slice of the INPUT features, W[:, columns of rank r], takes the matching
  slice of x (exactly what the column-parallel layer before it produced) and computes a PARTIAL y: the sum
  over its columns only. The full y is the sum of every rank's partial y, one all-reduce. Used for the
  attention output projection and the MLP's down projection.

Column then row is the trick (Megatron-LM's): between the two, each rank works on its own heads or its own
MLP slice with no communication at all, so a transformer layer costs two all-reduces of [T, C], one per
half-layer. Everything else (norms, RoPE, residual adds) is cheap and repeated on every rank.

The vocabulary is cut the same way: the embedding table by rows (each rank looks up the ids it owns and
writes zeros for the rest; an all-reduce fills them in) and the output head by rows too (each rank scores
its slice of the vocabulary; an all-gather puts the [N, V] logits together for the sampler).

At world size 1 every collective is skipped (the sum over one rank is the tensor itself), so the sharded
model at size 1 runs exactly today's kernels.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ruvoninference.parallel.group import TPGroup

_SKIP_COLLECTIVES = False


def all_reduce(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """Sum x over the ranks, in place (every rank ends with the same tensor)."""
    if tp.world_size > 1 and not _SKIP_COLLECTIVES:
        dist.all_reduce(x, group=tp.group)
    return x


@contextmanager
def without_collectives():
    """For measurement only: the sharded model skips its all-reduces and all-gathers (its outputs are then
    wrong), so a step timed inside minus the same step timed outside is what the communication costs."""
    global _SKIP_COLLECTIVES
    _SKIP_COLLECTIVES = True
    try:
        yield
    finally:
        _SKIP_COLLECTIVES = False


class ColumnParallelLinear(nn.Module):
    """y_r = x W_r^T + b_r: this rank's output features, from the whole input. No communication."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out / N, in]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # (T, in) -> (T, out / N)


class RowParallelLinear(nn.Module):
    """y = sum over ranks of x_r W_r^T, then + b: one all-reduce of [T, out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, tp: TPGroup):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in / N]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # [out], whole
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return F.linear(x, self.weight, self.bias)
        y = all_reduce(F.linear(x, self.weight), self.tp)  # (T, in / N) -> partial (T, out) -> summed
        # The bias is added once, after the sum (added on every rank before it, it would count N times).
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Rank r holds the embedding rows of token ids [start, start + rows); an all-reduce assembles the lookup.

    The vocabulary is split into N equal slices of ceil(V / N) rows; the last rank's slice is padded with
    zero rows when N does not divide V (GPT-2's 50,257). The output head reuses `weight` when tied.
    """

    def __init__(self, weight: torch.Tensor, start: int, vocab_size: int, tp: TPGroup):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [ceil(V / N), C]
        self.start, self.end = start, min(start + weight.shape[0], vocab_size)
        self.tp = tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return F.embedding(ids, self.weight)
        # Ids outside this rank's slice read row 0 and are then zeroed: no data-dependent shape, so the
        # lookup is the same kernels every step (CUDA graphs need that).
        outside = (ids < self.start) | (ids >= self.end)  # (T,)
        local = torch.where(outside, 0, ids - self.start)
        x = F.embedding(local, self.weight).masked_fill_(outside.unsqueeze(-1), 0)  # (T, C), zeros elsewhere
        return all_reduce(x, self.tp)


class VocabGather(nn.Module):
    """[N, V / ranks] logits of every rank -> [N, V] (an all-gather, then the padding columns dropped).

    Rank 0 samples from them; the other ranks receive the same tensor and drop it. An all-gather rather
    than a gather to rank 0: it is one NCCL collective that CUDA graphs capture like the all-reduces.
    """

    def __init__(self, vocab_size: int, tp: TPGroup):
        super().__init__()
        self.vocab_size, self.tp = vocab_size, tp

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1 or _SKIP_COLLECTIVES:
            return logits
        if logits.shape[0] == 0:  # a step that samples nothing (every rank knows: the row count is broadcast)
            return logits.new_empty(0, self.vocab_size)
        gathered = logits.new_empty(self.tp.world_size * logits.shape[0], logits.shape[1])  # (ranks·N, V/ranks)
        dist.all_gather_into_tensor(gathered, logits.contiguous(), group=self.tp.group)
        # (ranks, N, V/ranks) -> (N, ranks, V/ranks) -> (N, V_padded) -> (N, V)
        full = gathered.view(self.tp.world_size, *logits.shape).transpose(0, 1).flatten(1)
        return full[:, : self.vocab_size]
