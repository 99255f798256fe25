"""The runner's CUDA-graph keys: every decode step that replays a graph finds one captured at start.

The keys are pure host arithmetic, so this runs on the CPU with a tiny GPT-2 (the buffers a graph would read
are allocated on the CPU; nothing is captured here: `graph_keys` is the list `capture_all` would capture).
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config

from ruvoninference.attention import AttentionImplementation
from ruvoninference.engine.kv_cache import allocate_kv_cache
from ruvoninference.engine.model_runner import GATHER_GRAPH_TOKENS, ModelRunner
from ruvoninference.models.config import ModelConfig
from ruvoninference.models.gpt2 import GPT2


def _runner(implementation: AttentionImplementation, max_model_len: int, block_size: int = 16,
            max_batch_size: int = 64) -> ModelRunner:
    config = ModelConfig.from_hf(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64,
                                            n_positions=max_model_len))
    bundle = SimpleNamespace(model=GPT2(config), config=config)
    cache = allocate_kv_cache(config, 8, block_size, torch.device("cpu"), torch.float32)
    return ModelRunner(bundle, implementation, cache, max_batch_size=max_batch_size, max_model_len=max_model_len,
                       use_cuda_graphs=True)


def _seqs(lengths_in_blocks: list[int]) -> list[SimpleNamespace]:
    return [SimpleNamespace(block_table=list(range(n))) for n in lengths_in_blocks]


@pytest.mark.parametrize("implementation", [AttentionImplementation.SDPA, AttentionImplementation.EAGER])
def test_every_gathering_key_a_step_can_ask_for_is_captured_at_start(implementation):
    runner = _runner(implementation, max_model_len=40960)  # Qwen3's context: 2560 blocks of 16
    keys = runner.graph_keys()
    assert len(keys) == len(set(keys))
    assert all(b * w * runner.block_size <= GATHER_GRAPH_TOKENS for b, w in keys)
    products = [b * w for b, w in keys]
    assert products == sorted(products, reverse=True)  # largest first: later captures fit in the pool
    rng = random.Random(0)
    replayed = eager = 0
    for _ in range(2000):
        batch = rng.randint(1, 80)
        longest = rng.choice([1, 2, 3, 5, 9, 17, 100, 257, 1000, 2560])
        key = runner._graph_key(_seqs([rng.randint(1, longest) for _ in range(batch - 1)] + [longest]))
        if key is None:
            eager += 1
            width = min(runner.max_blocks, 1 << (longest - 1).bit_length())
            assert batch > 64 or next(b for b in runner.buckets if b >= batch) * width * 16 > GATHER_GRAPH_TOKENS
        else:
            replayed += 1
            assert key in keys
            assert key[1] >= longest and key[0] >= batch
    assert replayed and eager  # both paths taken
    assert (1, runner.max_blocks) in keys  # one sequence of the whole context still replays a graph


def test_our_triton_kernels_capture_one_graph_per_bucket_at_full_width():
    runner = _runner(AttentionImplementation.TRITON, max_model_len=4096, max_batch_size=12)
    assert runner.graph_keys() == [(b, 256) for b in (12, 8, 4, 2, 1)]
    assert runner._graph_key(_seqs([3, 200, 1])) == (4, 256)
    assert runner._graph_key(_seqs([1] * 13)) is None  # more sequences than the largest bucket: eager
