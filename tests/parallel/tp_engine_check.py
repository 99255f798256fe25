"""The tensor-parallel engine against the single-process one (run by test_tp_engine.py in a subprocess).

    python tests/parallel/tp_engine_check.py

A tiny GPT-2 (saved to a temporary folder, so every rank loads it by name like any model; its vocabulary of
500 splits into 2 x 250 token ids), fp32 on the CPU, 2 ranks over gloo:
greedy tokens for prompts of different lengths with a KV cache small enough that the scheduler preempts, equal
to one process's; rank 0's blocks all free at the end; after `shutdown` no worker process is left. Prints one
line per check; any failure exits non-zero.
"""

import multiprocessing
import shutil
import sys
import tempfile

import torch

from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.engine.kv_cache import bytes_per_block
from ruvoninference.models import model_config
from ruvoninference.parallel import TPGroup
from ruvoninference.parallel.engine import DriverRunner, shutdown
from ruvoninference.parallel.shard import local_config

PROMPTS = [list(range(10, 10 + n)) for n in (5, 40, 23, 70, 9)]
TINY = {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 500, "n_positions": 256, "bos_token_id": 499,
        "eos_token_id": 499}  # every request ignores EOS
GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)
BLOCKS = 12  # 16-token blocks: fewer than the 5 sequences need at once, so some are preempted


def tiny_gpt2(folder: str) -> str:
    """A seeded tiny GPT-2 with every weight random (std 0.1: well-separated logits) and GPT-2's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from ruvoninference.weights import gpt2_tokenizer_folder

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.ndim == 1 else 0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    GPT2Tokenizer.from_pretrained(str(gpt2_tokenizer_folder())).save_pretrained(folder)
    return folder


def main() -> int:
    folder = tempfile.mkdtemp(prefix="tp-tiny-gpt2-")
    try:
        return check(tiny_gpt2(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check(name: str) -> int:
    config = model_config(name)
    kw = {"attn": "sdpa", "max_batch_size": 4, "block_size": 16}
    one = Engine(name, device="cpu", dtype="float32",
                 kv_cache_memory=BLOCKS * bytes_per_block(config, 16, torch.float32), **kw)
    expected = [o.token_ids for o in one.generate(PROMPTS, GREEDY)]
    del one
    half = local_config(config, TPGroup(0, 2))  # each rank caches 2 of the 4 KV heads
    engine = Engine(name, device="cpu", dtype="float32", tensor_parallel_size=2,
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
