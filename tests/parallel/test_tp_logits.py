"""Sharded models against whole ones: real processes, gloo, the two ways users start ranks.

The multi-process checks live in tp_check.py (they run on every rank); each test here starts one group.
GPT-2 (vocabulary 50,257: the last rank's slice is padded), a tiny Qwen3 (KV heads split) and a tiny Llama
with one KV head (replicated on both ranks, with biases on every projection) run under torchrun with 2
ranks; SmolLM2 (9 query heads, 3 KV heads: 2 ranks cannot cut it) runs spawned on 3 ranks.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ruvoninference.errors import RuvonError
from ruvoninference.models import model_config
from ruvoninference.models.seeded import fill_on_device
from ruvoninference.parallel import TPGroup, check_shardable, shard_model
from ruvoninference.parallel.group import check_port_free, free_port

CHECK = Path(__file__).with_name("tp_check.py")
ROOT = Path(__file__).parents[2]


def run_check(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_torchrun_two_ranks_give_one_ranks_logits():
    out = run_check("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
                    str(CHECK), "gpt2-random", "tiny-qwen3", "tiny-llama-1kv")
    assert "gpt2-random: TP=2 equals TP=1" in out and "12 query" not in out
    assert "tiny-qwen3: TP=2 equals TP=1" in out and "2 query and 1 KV heads" in out
    assert "tiny-llama-1kv: TP=2 equals TP=1 (max |diff|" in out


def test_spawned_three_ranks_cut_smollm2():
    out = run_check(str(CHECK), "--spawn", "3", "smollm2-135m")
    assert "smollm2-135m: TP=3 equals TP=1" in out and "3 query and 1 KV heads" in out


def test_sizes_that_cannot_cut_the_model_are_one_sentence():
    qwen3_8b = model_config("qwen3-8b-random")
    smollm2_heads = replace(qwen3_8b, num_heads=9, num_kv_heads=3, intermediate_size=1536)  # SmolLM2's GQA 9:3
    with pytest.raises(RuvonError, match="2 does not divide this model's 9 query heads; use one of 1, 3, 9"):
        check_shardable(smollm2_heads, 2)
    check_shardable(replace(qwen3_8b, num_heads=12, num_kv_heads=3), 6)  # each KV head replicated on 2 ranks
    with pytest.raises(RuvonError, match="neither split nor evenly replicate this model's 8 KV heads"):
        check_shardable(replace(qwen3_8b, num_heads=48), 3)


def test_a_taken_rendezvous_port_is_one_sentence():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(RuvonError, match=f"port {s.getsockname()[1]} on 127.0.0.1 is already in use"):
            check_port_free(s.getsockname()[1])


def test_qwen3_8b_random_has_the_published_shape():
    from ruvoninference.models.qwen3 import Qwen3

    config = model_config("qwen3-8b-random")
    with torch.device("meta"):
        model = Qwen3(config)
    # Qwen3-8B's count as transformers builds it (ours stores the q/k norm vectors once per head)
    norms = sum(layer.qk_norm.numel() - 2 * 128 for layer in model.layers)
    assert sum(p.numel() for p in model.parameters()) - norms == 8_190_735_360
    shard_model(model, TPGroup(1, 2))
    assert model.layers[0].qkv.weight.shape == ((16 + 2 * 4) * 128, 4096)  # 16 query + 4 KV heads per rank
    assert model.lm_head.weight.shape == (151936 // 2, 4096)


def test_each_rank_draws_the_same_model_and_keeps_its_slice():
    """fill_on_device at 2 ranks (simulated: cutting needs no process group) gives the slices of size 1's."""
    from transformers import Qwen3Config

    from ruvoninference.models import ModelConfig
    from ruvoninference.models.qwen3 import Qwen3

    tiny = Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=101, max_position_embeddings=32)

    def seeded(tp: TPGroup) -> torch.nn.Module:
        config = ModelConfig.from_hf(tiny)
        with torch.device("meta"):
            model = Qwen3(config)
        shapes = {n: p.shape for n, p in model.named_parameters()}
        cuts = shard_model(model, tp)
        fill_on_device(model, shapes, torch.device("cpu"), torch.float32, cut=lambda n, t: cuts.get(n, lambda x: x)(t))
        return model

    whole = seeded(TPGroup(0, 1)).state_dict()
    ranks = [seeded(TPGroup(r, 2)).state_dict() for r in range(2)]
    torch.testing.assert_close(torch.cat([r["layers.0.mlp.down.weight"] for r in ranks], 1),
                               whole["layers.0.mlp.down.weight"], rtol=0, atol=0)
    vocab = torch.cat([r["embed.weight"] for r in ranks])  # 51 + 51 rows, the last one padding
    torch.testing.assert_close(vocab[:101], whole["embed.weight"], rtol=0, atol=0)
    assert vocab[101:].eq(0).all() and ranks[0]["layers.0.qk_norm"].eq(1).all()
