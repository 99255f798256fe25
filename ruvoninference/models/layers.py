"""The small pieces the three model families are built from.

Every tensor here is flattened: T tokens of however many sequences, no batch dimension and no padding. The
pieces keep no per-call state and allocate no constants in `forward`, so a forward pass is the same sequence
of kernels for any input of the same shape (what CUDA-graph capture needs) and costs little Python per layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ruvoninference.models.config import ModelConfig

AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`attention(layer, q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D]) -> out [T, Hq, D]`.

q and k arrive with RoPE (and Qwen3's q/k norms) applied. q, k and v may be views into one fused projection:
their last dimension is contiguous, their token stride need not be. The callable owns everything about
sequences: storing k and v in a cache, which keys each query sees, the softmax scale (`config.attn_scale`).
"""


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) * weight over the last dimension (one fused op, statistics in float32)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


class RotaryEmbedding(nn.Module):
    """cos and sin of every (position, frequency) pair, computed once; a forward pass only indexes them.

    Llama's convention pairs dimension i with i + D/2 ("rotate half"): the pair (a, b) becomes
    (a cos - b sin, b cos + a sin). The tables are stored over all D dimensions, cos as [cos, cos] and sin as
    [-sin, sin], so the rotation is x * cos + swap_halves(x) * sin: three kernels. transformers computes
    cos/sin in float32 and rounds them to the model's dtype; the buffers follow the model's dtype, rounding
    the same way.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        # Explicit device: the models are built under torch.device("meta"), but these values are computed, not
        # loaded, so they must be real.
        inv_freq = torch.tensor(config.rope_inv_freq, dtype=torch.float32, device="cpu")  # (D/2,)
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32, device="cpu")
        angles = torch.outer(positions, inv_freq)  # (P, D/2)
        cos, sin = angles.cos() * config.rope_attention_factor, angles.sin() * config.rope_attention_factor
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)  # (P, D)
        self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)  # (P, D)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (T,) -> two (T, 1, D), broadcasting over heads
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair by its angle: x (T, H, D), cos/sin (T, 1, D) -> (T, H, D).

    The same products and sums as transformers' `q * cos + rotate_half(q) * sin` (negation is exact), so the
    results agree bit for bit.
    """
    swapped = x.roll(x.shape[-1] // 2, dims=-1)  # (x_{D/2..D}, x_{0..D/2})
    return x * cos + swapped * sin


class GeluMLP(nn.Module):
    """GPT-2's MLP: C -> 4C, GELU (tanh approximation for gelu_new), 4C -> C."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))  # (T, C) -> (T, 4C) -> (T, C)


class SwiGLU(nn.Module):
    """Llama's MLP, down(silu(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (T, C) -> two (T, I)
        return self.down(F.silu(gate) * up)  # (T, C)


class CausalLM(nn.Module):
    """What the families share: a token embedding and an output head, tied to it or not.

    `forward(input_ids (T,), positions (T,), attention) -> hidden (T, C)` after the final norm;
    `compute_logits(hidden (N, C)) -> (N, V)`, called by the engine only on the rows it samples from.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        # Tied: no second parameter (loading and dtype casts would otherwise split it from the embedding).
        tied = config.tie_word_embeddings
        self.lm_head = None if tied else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Tensor parallelism swaps this for an all-gather of every rank's slice of the vocabulary.
        self.gather_logits: nn.Module = nn.Identity()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return self.gather_logits(F.linear(hidden, weight))  # (N, C) @ (C, V) -> (N, V)


def fuse_rows(*weights: torch.Tensor) -> torch.Tensor:
    """Stack projection weights (out, in) along `out`, so several projections of one input are one matmul."""
    return torch.cat(weights, dim=0)
