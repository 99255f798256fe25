"""What the model tests share: tiny random transformers models of each family, and a simple attention
callable (contiguous K/V per sequence, causal, in float64).

Fixtures hand them to tests (pytest's importlib mode gives tests no package to import helpers from): a test
that takes `tiny_name` runs once per tiny config, `tiny_transformers(name)` builds that model, and
`reference_attention` is the attention class.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen3Config

TINY_CONFIGS = {
    "gpt2": GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=256, n_positions=64),
    "llama-gqa-untied": LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=64, tie_word_embeddings=False,
    ),
    "llama-bias-llama3-rope": LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        vocab_size=256, max_position_embeddings=64, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ),
    "qwen3-gqa": Qwen3Config(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, vocab_size=256, max_position_embeddings=64, tie_word_embeddings=True,
    ),
}  # fmt: skip


def tiny_transformers_model(name: str) -> torch.nn.Module:
    """A transformers model of TINY_CONFIGS[name] with every parameter (norms, biases) seeded at random."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(TINY_CONFIGS[name], attn_implementation="eager")
        with torch.no_grad():
            for param in hf.parameters():
                noise = torch.randn_like(param)
                param.copy_(1 + 0.2 * noise if param.ndim == 1 else 0.1 * noise)
    return hf.eval()


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q (n, Hq, D) are the last n of the L positions in k, v (L, Hkv, D); query i sees keys 0 .. L-n+i."""
    n, L = q.shape[0], k.shape[0]
    rep = q.shape[1] // k.shape[1]  # query heads per KV head, in transformers' repeat_kv order
    k, v = k.double().repeat_interleave(rep, dim=1), v.double().repeat_interleave(rep, dim=1)  # (L, Hq, D)
    scores = torch.einsum("nhd,lhd->hnl", q.double(), k) * scale  # (Hq, n, L)
    visible = torch.arange(L)[None, :] <= torch.arange(L - n, L)[:, None]  # (n, L)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    return torch.einsum("hnl,lhd->nhd", probs, v).to(q.dtype)  # (n, Hq, D)


class ReferenceAttention:
    """A growing K/V history per (sequence, layer); `run` says which sequences a call's tokens belong to."""

    def __init__(self, scale: float):
        self.scale = scale
        self.history: dict[tuple[object, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.chunks: list[tuple[object, int]] = []  # (sequence id, new tokens), in flattening order
        self.calls = 0

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        outs, start = [], 0
        for seq, n in self.chunks:
            rows = slice(start, start + n)
            start += n
            old_k, old_v = self.history.get((seq, layer), (k[:0], v[:0]))
            keys, values = torch.cat([old_k, k[rows]]), torch.cat([old_v, v[rows]])
            self.history[(seq, layer)] = (keys, values)
            outs.append(causal_attention(q[rows], keys, values, self.scale))
        assert start == q.shape[0], "the chunks must cover the step's tokens"
        return torch.cat(outs)

    @torch.no_grad()
    def run(self, model, chunks: list[tuple[object, list[int]]]) -> torch.Tensor:
        """One step: each (sequence id, new token ids) continues that sequence; returns logits (T, V)."""
        ids, positions = [], []
        for seq, tokens in chunks:
            done = self.history[(seq, 0)][0].shape[0] if (seq, 0) in self.history else 0
            ids += tokens
            positions += range(done, done + len(tokens))
        self.chunks = [(seq, len(tokens)) for seq, tokens in chunks]
        hidden = model(torch.tensor(ids), torch.tensor(positions), self)  # (T, C)
        return model.compute_logits(hidden)  # (T, V)


def pytest_generate_tests(metafunc):
    if "tiny_name" in metafunc.fixturenames:
        metafunc.parametrize("tiny_name", list(TINY_CONFIGS), scope="module")


@pytest.fixture(scope="session")
def tiny_transformers():
    return tiny_transformers_model


@pytest.fixture(scope="session")
def reference_attention():
    return ReferenceAttention
