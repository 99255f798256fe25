"""The tensor-parallel engine against the single-process one (run by test_tp_engine.py in a subprocess).

    python tests/parallel/tp_engine_check.py

gpt2-random, fp32 on the CPU, 2 ranks over gloo: greedy tokens for prompts of different lengths with a KV cache
small enough that the scheduler preempts, equal to one process's; rank 0's blocks all free at the end; after
`shutdown` no worker process is left. Prints one line per check; any failure exits non-zero.
"""

import multiprocessing
import sys

import torch

from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.engine.kv_cache import bytes_per_block
from ruvoninference.models import model_config
from ruvoninference.parallel import TPGroup
from ruvoninference.parallel.engine import DriverRunner, shutdown
from ruvoninference.parallel.shard import local_config

PROMPTS = [list(range(10, 10 + n)) for n in (5, 40, 23, 70, 9)]
GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)
BLOCKS = 12  # 16-token blocks: fewer than the 5 sequences need at once, so some are preempted


def main() -> int:
    config = model_config("gpt2-random")
    kw = {"attn": "sdpa", "max_batch_size": 4, "block_size": 16}
    one = Engine("gpt2-random", device="cpu", dtype="float32",
                 kv_cache_memory=BLOCKS * bytes_per_block(config, 16, torch.float32), **kw)
    expected = [o.token_ids for o in one.generate(PROMPTS, GREEDY)]
    del one
    half = local_config(config, TPGroup(0, 2))  # each rank caches 6 of the 12 KV heads
    engine = Engine("gpt2-random", device="cpu", dtype="float32", tensor_parallel_size=2,
                    kv_cache_memory=BLOCKS * bytes_per_block(half, 16, torch.float32), **kw)
    assert isinstance(engine.runner, DriverRunner)
    got = [o.token_ids for o in engine.generate(PROMPTS, GREEDY)]
    assert got == expected, (got, expected)
    print(f"greedy tokens equal TP=1 for {len(PROMPTS)} prompts, {engine.scheduler.num_preemptions} preemptions")
    assert engine.scheduler.num_preemptions > 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks == BLOCKS
    print(f"rank 0: {BLOCKS} of {BLOCKS} blocks free")
    shutdown(engine)
    assert not multiprocessing.active_children(), multiprocessing.active_children()
    print("no worker process left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
