"""Tensor parallelism: one model cut over several processes (GPUs), combined by collectives.

    group.py    the process group: spawned by the engine or by torchrun, NCCL on CUDA, gloo on the CPU
    layers.py   column-, row- and vocabulary-parallel layers: where the all-reduces are
    shard.py    which rows and columns of each weight a rank keeps (heads, MLP width, vocabulary)
    launch.py   starting the worker processes and making sure none outlives the run

    tp = init_group(rank, world_size, device, "env://")        # or spawn(fn, N, device) / torchrun
    bundle = load_shard("qwen3-8b-random", device, torch.bfloat16, tp)
    hidden = bundle.model(input_ids, positions, attention)       # every rank, its heads only
    logits = bundle.model.compute_logits(hidden[rows])           # [N, V] on every rank (rank 0 samples)
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch

from ruvoninference.models import ModelBundle, load_model, model_config
from ruvoninference.parallel.group import (
    SINGLE,
    TPGroup,
    init_from_torchrun,
    init_group,
    launched_by_torchrun,
)
from ruvoninference.parallel.launch import spawn, start_workers
from ruvoninference.parallel.shard import check_shardable, local_config, shard_model

__all__ = [
    "SINGLE",
    "TPGroup",
    "check_shardable",
    "init_from_torchrun",
    "init_group",
    "launched_by_torchrun",
    "load_shard",
    "shard_model",
    "spawn",
    "start_workers",
]  # fmt: skip


def load_shard(name: str, device: torch.device, dtype: torch.dtype, tp: TPGroup, progress=None) -> ModelBundle:
    """Load rank `tp.rank`'s share of a model: its config says which heads and MLP width the rank holds.

    The sizes are checked from the config before any weight is read. The sharded layers are used at size 1
    too (they then hold whole tensors and skip every collective), so size 1 runs the same code.
    """
    check_shardable(model_config(name), tp.world_size)
    bundle = load_model(name, device, dtype, progress, shard=partial(shard_model, tp=tp))
    return replace(bundle, config=local_config(bundle.config, tp))
