"""Cutting a model over the ranks: which rows and columns of each weight a rank keeps.

`shard_model(model, tp)` swaps the linear layers of a GPT-2, Llama or Qwen3 model (ours, in models/) for the
parallel ones in layers.py, in place; the model files are not forked, their forward passes run unchanged on
fewer heads. Per transformer layer, with N ranks and rank r:

    q/k/v projection   column-parallel: rank r's query heads, then its KV heads (rows of W)
    output projection  row-parallel: the columns of rank r's query heads, one all-reduce
    MLP up (gate/up)   column-parallel: rank r's 1/N of the MLP width (of gate and of up)
    MLP down           row-parallel: the same 1/N as columns, one all-reduce
    embedding, head    vocabulary-parallel: rank r's 1/N of the token ids

Attention heads are independent (each attends on its own, the output projection then mixes them), so a
rank with heads [r·Hq/N, (r+1)·Hq/N) computes them alone. With grouped-query attention several query heads
read one KV head; a rank needs the KV heads its query heads read. When there are at least N KV heads, each
rank takes Hkv/N of them. When there are fewer (SmolLM2 has 3 KV heads; at N = 9 each KV head serves three
ranks), each rank keeps a copy of the one KV head its query heads read: the cache of that head is then stored
N/Hkv times over the group, memory that tensor parallelism cannot split.

Each function here also returns, per parameter name, how to cut a full tensor into this rank's slice, so a
loader that makes its weights one at a time (the seeded random models) keeps only its slice of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from ruvoninference.errors import RuvonError
from ruvoninference.models.config import ModelConfig
from ruvoninference.parallel.group import TPGroup
from ruvoninference.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabGather,
    VocabParallelEmbedding,
)

Slicer = Callable[[torch.Tensor], torch.Tensor]


def check_shardable(config: ModelConfig, world_size: int) -> None:
    """One sentence when `world_size` cannot cut this model's heads or MLP evenly."""
    if world_size < 1:
        raise RuvonError(f"The tensor-parallel size must be at least 1, not {world_size}.")
    if config.num_heads % world_size:
        sizes = [n for n in range(1, config.num_heads + 1) if config.num_heads % n == 0]
        raise RuvonError(
            f"A tensor-parallel size of {world_size} does not divide this model's {config.num_heads} query heads; "
            f"use one of {', '.join(map(str, sizes))}."
        )
    kv, n = config.num_kv_heads, world_size
    if (kv >= n and kv % n) or (kv < n and n % kv):
        raise RuvonError(
            f"A tensor-parallel size of {n} can neither split nor evenly replicate this model's {kv} KV heads; "
            f"use a size that divides {kv} or that {kv} divides."
        )
    if config.intermediate_size % n:
        raise RuvonError(
            f"A tensor-parallel size of {n} does not divide this model's MLP width ({config.intermediate_size}); "
            f"use a size that does."
        )


def head_ranges(config: ModelConfig, tp: TPGroup) -> tuple[range, range]:
    """The query heads and the KV heads rank `tp.rank` holds."""
    n, r = tp.world_size, tp.rank
    q = config.num_heads // n
    if config.num_kv_heads >= n:
        kv = config.num_kv_heads // n
        return range(r * q, (r + 1) * q), range(r * kv, (r + 1) * kv)
    shared = r * config.num_kv_heads // n  # the one KV head this rank's query heads read (replicated)
    return range(r * q, (r + 1) * q), range(shared, shared + 1)


def local_config(config: ModelConfig, tp: TPGroup) -> ModelConfig:
    """What one rank holds: its heads and its MLP width (the KV cache of a rank is sized from this)."""
    q, kv = head_ranges(config, tp)
    return replace(config, num_heads=len(q), num_kv_heads=len(kv),
                   intermediate_size=config.intermediate_size // tp.world_size)


def _own(t: torch.Tensor) -> torch.Tensor:
    """A slice in its own storage, so the full tensor it came from can be freed."""
    return t.clone() if t.untyped_storage().nbytes() > t.nbytes else t


def rows(*spans: tuple[int, int]) -> Slicer:
    """Rows [a, b) of each span, stacked: the output features a column-parallel rank keeps."""
    return lambda w: _own(torch.cat([w[a:b] for a, b in spans]) if len(spans) > 1 else w[spans[0][0]:spans[0][1]])


def cols(a: int, b: int) -> Slicer:
    """Columns [a, b): the input features a row-parallel rank keeps."""
    return lambda w: w[:, a:b].contiguous()


def whole(w: torch.Tensor) -> torch.Tensor:
    return w


def vocab_rows(config: ModelConfig, tp: TPGroup) -> tuple[int, Slicer]:
    """The first token id of this rank's vocabulary slice, and how to cut (and zero-pad) a [V, C] table."""
    per = -(-config.vocab_size // tp.world_size)
    start = tp.rank * per

    def cut(w: torch.Tensor) -> torch.Tensor:
        part = w[start:start + per]
        if part.shape[0] == per:
            return _own(part)
        return torch.cat([part, part.new_zeros(per - part.shape[0], *part.shape[1:])])

    return start, cut


class _Swapper:
    """Replace modules with parallel ones, recording each parameter's slicer under its full name."""

    def __init__(self, model: nn.Module, tp: TPGroup):
        self.model, self.tp = model, tp
        self.slicers: dict[str, Slicer] = {}

    def linear(self, path: str, kind: str, weight: Slicer, bias: Slicer = whole) -> None:
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path)
        old = getattr(parent, attr)
        w = weight(old.weight)
        b = None if old.bias is None else (bias(old.bias))
        new = ColumnParallelLinear(w, b) if kind == "column" else RowParallelLinear(w, b, self.tp)
        setattr(parent, attr, new)
        self.slicers[f"{path}.weight"] = weight
        if b is not None:
            self.slicers[f"{path}.bias"] = bias

    def parameter(self, path: str, cut: Slicer) -> None:
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path)
        setattr(parent, attr, nn.Parameter(cut(getattr(parent, attr)), requires_grad=False))
        self.slicers[path] = cut


@torch.no_grad()
def shard_model(model: nn.Module, tp: TPGroup) -> dict[str, Slicer]:
    """Cut `model` (a CausalLM of models/, real or on the meta device) to rank `tp.rank`'s share, in place.

    Returns, for every parameter that was cut, the function that cuts a full tensor of that name; parameters
    not listed are whole on every rank (norms, GPT-2's position table).
    """
    config: ModelConfig = model.config
    check_shardable(config, tp.world_size)
    q, kv = head_ranges(config, tp)
    D, C, n = config.head_dim, config.hidden_size, tp.world_size
    Hq, Hkv = config.num_heads, config.num_kv_heads
    width = config.intermediate_size // n
    i0, i1 = tp.rank * width, (tp.rank + 1) * width
    s = _Swapper(model, tp)

    start, cut_vocab = vocab_rows(config, tp)
    s.slicers["embed.weight"] = cut_vocab
    model.embed = VocabParallelEmbedding(cut_vocab(model.embed.weight), start, config.vocab_size, tp)
    if model.lm_head is not None:
        s.linear("lm_head", "column", cut_vocab)
    model.gather_logits = VocabGather(config.vocab_size, tp)

    if config.family == "gpt2":
        for i, block in enumerate(model.blocks):
            qkv = rows(*((p * C + q.start * D, p * C + q.stop * D) for p in range(3)))  # (3, H, D) layout
            s.linear(f"blocks.{i}.qkv", "column", qkv, qkv)
            s.linear(f"blocks.{i}.proj", "row", cols(q.start * D, q.stop * D))
            s.linear(f"blocks.{i}.mlp.fc", "column", rows((i0, i1)), rows((i0, i1)))
            s.linear(f"blocks.{i}.mlp.proj", "row", cols(i0, i1))
            block.heads = (3, len(q), D)
        return s.slicers

    for i, layer in enumerate(model.layers):  # Llama and Qwen3
        # [q heads | k heads | v heads] along the output rows
        qkv = rows((q.start * D, q.stop * D),
                   ((Hq + kv.start) * D, (Hq + kv.stop) * D),
                   ((Hq + Hkv + kv.start) * D, (Hq + Hkv + kv.stop) * D))  # fmt: skip
        s.linear(f"layers.{i}.qkv", "column", qkv, qkv)
        s.linear(f"layers.{i}.o_proj", "row", cols(q.start * D, q.stop * D))
        gate_up = rows((i0, i1), (config.intermediate_size + i0, config.intermediate_size + i1))
        s.linear(f"layers.{i}.mlp.gate_up", "column", gate_up, gate_up)
        s.linear(f"layers.{i}.mlp.down", "row", cols(i0, i1))
        if hasattr(layer, "qk_norm"):  # Qwen3: one row per query head, then per KV head
            s.parameter(f"layers.{i}.qk_norm", rows((q.start, q.stop), (Hq + kv.start, Hq + kv.stop)))
        layer.Hq, layer.Hkv = len(q), len(kv)
    return s.slicers
