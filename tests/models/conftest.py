"""A simple attention callable for testing the models: contiguous K/V per sequence, causal, in float64.

The fixture `reference_attention` hands the class to tests (pytest's importlib mode gives tests no package to
import helpers from).
"""

from __future__ import annotations

import pytest
import torch


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
    """Keeps a growing K/V history per (sequence, layer); `run` says which sequences a call's tokens belong to."""

    def __init__(self, scale: float):
        self.scale = scale
        self.history: dict[tuple[object, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.chunks: list[tuple[object, int]] = []  # (sequence id, new tokens) in the order they are flattened
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


@pytest.fixture
def reference_attention():
    return ReferenceAttention
