"""Qwen3: Llama plus an RMSNorm over each query and key head before RoPE (q_norm, k_norm).

The norms keep attention logits in range without a bias; each is a vector of D weights shared by the heads of
its kind. Everything else (GQA, RoPE convention, SwiGLU, tied embeddings in the small models) is Llama's.
"""

from __future__ import annotations

import torch
from torch import nn

from ruvoninference.models import llama
from ruvoninference.models.config import ModelConfig
from ruvoninference.models.layers import apply_rotary, rms_norm


class Qwen3Layer(llama.LlamaLayer):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__(config, index)
        # q_norm's weight repeated for the Hq query heads, then k_norm's for the Hkv key heads, so queries and
        # keys are normalized by one op over (T, Hq + Hkv, D).
        self.qk_norm = nn.Parameter(torch.ones(self.Hq + self.Hkv, self.D))

    def rotate(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        normed = rms_norm(qk, None, self.eps) * self.qk_norm  # (T, Hq+Hkv, D), per head
        return apply_rotary(normed, cos, sin)


class Qwen3(llama.Llama):
    layer_class = Qwen3Layer


def convert_state_dict(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' Qwen3ForCausalLM state dict -> ours: Llama's mapping plus the stacked q/k norms."""
    out = llama.convert_state_dict(hf, config)
    for i in range(config.num_layers):
        attn = f"model.layers.{i}.self_attn."
        q_norm, k_norm = hf[attn + "q_norm.weight"], hf[attn + "k_norm.weight"]  # (D,) each
        out[f"layers.{i}.qk_norm"] = torch.cat(
            (q_norm.expand(config.num_heads, -1), k_norm.expand(config.num_kv_heads, -1))
        )  # (Hq + Hkv, D)
    return out
