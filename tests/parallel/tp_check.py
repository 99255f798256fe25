"""Run on every rank of a tensor-parallel group: sharded logits against the whole model's, prefill and decode.

Started by test_tp_logits.py in the two ways users start ranks:

    python -m torch.distributed.run --nproc-per-node 2 tests/parallel/tp_check.py gpt2-random tiny-qwen3 ...
    python tests/parallel/tp_check.py --spawn 3 smollm2-135m

Each rank builds the same model, rank 0 computes the unsharded logits, then every rank cuts its share and
runs two sequences of different lengths through a prefill and two decode steps, with attention over each
rank's own KV heads (a contiguous float64 reference, so only the sharding is under test). Rank 0 compares;
any mismatch exits non-zero. Prints one line per model on rank 0.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ruvoninference.models import from_transformers, load_model
from ruvoninference.parallel import TPGroup, init_from_torchrun, load_shard, shard_model, spawn
from ruvoninference.parallel.shard import local_config

PROMPTS = {"a": [5, 17, 200, 3, 99, 42, 7], "b": [9, 8, 7, 6]}
DECODES = [{"a": [11], "b": [12]}, {"a": [13], "b": [14]}]  # fixed tokens: no sampling under test


def tiny(name: str):
    """Tiny transformers models (fixed seed, every parameter random): Qwen3 with 2 KV heads, Llama with 1."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    configs = {
        "tiny-qwen3": Qwen3Config(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, vocab_size=255, max_position_embeddings=64,
            tie_word_embeddings=True),
        "tiny-llama-1kv": LlamaConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, vocab_size=256, max_position_embeddings=64, tie_word_embeddings=False,
            attention_bias=True, mlp_bias=True),
    }  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(configs[name], attn_implementation="eager")
        with torch.no_grad():
            for p in hf.parameters():
                p.copy_(1 + 0.2 * torch.randn_like(p) if p.ndim == 1 else 0.1 * torch.randn_like(p))
    return from_transformers(hf, "cpu", torch.float32)


class ContiguousAttention:
    """Each sequence's K/V history per layer, causal attention in float64 (GQA by repeating KV heads)."""

    def __init__(self, scale: float):
        self.scale, self.history, self.chunks = scale, {}, []

    def __call__(self, layer, q, k, v):
        outs, start = [], 0
        for seq, n in self.chunks:
            old_k, old_v = self.history.get((seq, layer), (k[:0], v[:0]))
            keys, values = torch.cat([old_k, k[start:start + n]]), torch.cat([old_v, v[start:start + n]])
            self.history[(seq, layer)] = (keys, values)
            L, rep = keys.shape[0], q.shape[1] // keys.shape[1]
            kk, vv = keys.double().repeat_interleave(rep, 1), values.double().repeat_interleave(rep, 1)
            scores = torch.einsum("nhd,lhd->hnl", q[start:start + n].double(), kk) * self.scale
            visible = torch.arange(L)[None, :] <= torch.arange(L - n, L)[:, None]
            probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
            outs.append(torch.einsum("hnl,lhd->nhd", probs, vv).to(q.dtype))
            start += n
        return torch.cat(outs)

    @torch.no_grad()
    def step(self, model, chunks: dict[str, list[int]]) -> torch.Tensor:
        ids, positions = [], []
        for seq, tokens in chunks.items():
            done = self.history[(seq, 0)][0].shape[0] if (seq, 0) in self.history else 0
            ids += tokens
            positions += range(done, done + len(tokens))
        self.chunks = [(seq, len(tokens)) for seq, tokens in chunks.items()]
        return model.compute_logits(model(torch.tensor(ids), torch.tensor(positions), self))  # (T, V)


def run_steps(model) -> list[torch.Tensor]:
    attention = ContiguousAttention(model.config.attn_scale)
    return [attention.step(model, chunks) for chunks in [PROMPTS, *DECODES]]


def check(tp: TPGroup, names: list[str]) -> None:
    for name in names:
        if name.startswith("tiny"):
            whole = tiny(name)
            expected = run_steps(whole) if tp.is_driver else None
            shard_model(whole, tp)
            sharded, heads = whole, local_config(whole.config, tp)
        else:
            expected = run_steps(load_model(name).model) if tp.is_driver else None
            bundle = load_shard(name, torch.device("cpu"), torch.float32, tp)
            sharded, heads = bundle.model, bundle.config
        got = run_steps(sharded)
        if tp.is_driver:
            for step, (g, e) in enumerate(zip(got, expected)):
                where = f"{name} step {step}"
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=lambda m, where=where: f"{where}: {m}")
            worst = max((g - e).abs().max().item() for g, e in zip(got, expected))
            print(f"{name}: TP={tp.world_size} equals TP=1 (max |diff| {worst:.2e}; rank 0 holds "
                  f"{heads.num_heads} query and {heads.num_kv_heads} KV heads)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--spawn", type=int, default=0, help="start this many ranks here (else: torchrun)")
    args = parser.parse_args()
    if args.spawn:
        spawn(check, args.spawn, torch.device("cpu"), (args.models,))
    else:
        check(init_from_torchrun(torch.device("cpu")), args.models)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
