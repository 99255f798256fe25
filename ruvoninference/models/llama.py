"""Llama: RoPE, pre-RMSNorm blocks, grouped-query attention (Hq query heads share Hkv < Hq key-value heads),
a SwiGLU MLP. SmolLM2 is this architecture; Qwen3 (qwen3.py) adds one step, q/k norms.

Shapes: T tokens (all sequences flattened), C = hidden size, D = head dim, I = MLP width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ruvoninference.models.config import ModelConfig
from ruvoninference.models.layers import (
    AttentionFn,
    CausalLM,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
    fuse_rows,
    rms_norm,
)


class LlamaLayer(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        C, D = config.hidden_size, config.head_dim
        self.index, self.eps = index, config.norm_eps
        self.Hq, self.Hkv, self.D = config.num_heads, config.num_kv_heads, D
        self.attn_norm = nn.Parameter(torch.ones(C))
        # q, k and v in one matmul
        self.qkv = nn.Linear(C, (self.Hq + 2 * self.Hkv) * D, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.Hq * D, C, bias=config.attention_bias)
        self.mlp_norm = nn.Parameter(torch.ones(C))
        self.mlp = SwiGLU(config)

    def rotate(self, qk: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        # Queries and keys rotated in one go: (T, Hq + Hkv, D)
        return apply_rotary(qk, cos, sin)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attention: AttentionFn) -> Tensor:
        Hq, Hqk = self.Hq, self.Hq + self.Hkv
        h = rms_norm(x, self.attn_norm, self.eps)  # (T, C)
        qkv = self.qkv(h).view(-1, Hqk + self.Hkv, self.D)  # (T, Hq+2Hkv, D)
        qk = self.rotate(qkv[:, :Hqk], cos, sin)  # (T, Hq+Hkv, D)
        out = attention(self.index, qk[:, :Hq], qk[:, Hq:], qkv[:, Hqk:])  # (T, Hq, D)
        x = x + self.o_proj(out.flatten(1))  # (T, Hq*D) -> (T, C)
        return x + self.mlp(rms_norm(x, self.mlp_norm, self.eps))


class Llama(CausalLM):
    layer_class: type[LlamaLayer] = LlamaLayer

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.rotary = RotaryEmbedding(config)
        self.layers = nn.ModuleList(self.layer_class(config, i) for i in range(config.num_layers))
        self.norm = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, input_ids: Tensor, positions: Tensor, attention: AttentionFn) -> Tensor:
        x = self.embed(input_ids)  # (T,) -> (T, C)
        cos, sin = self.rotary(positions)  # (T, 1, D/2) each, shared by every layer
        for layer in self.layers:
            x = layer(x, cos, sin, attention)
        return rms_norm(x, self.norm, self.config.norm_eps)  # (T, C)


def convert_state_dict(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' LlamaForCausalLM (or Qwen3ForCausalLM) state dict -> ours, fusing q/k/v and gate/up."""
    out = {"embed.weight": hf["model.embed_tokens.weight"], "norm": hf["model.norm.weight"]}
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = hf["lm_head.weight"]
    suffixes = ["weight"] + ["bias"] * config.attention_bias
    for i in range(config.num_layers):
        theirs, ours = f"model.layers.{i}.", f"layers.{i}."
        attn, mlp = theirs + "self_attn.", theirs + "mlp."
        out[ours + "attn_norm"] = hf[theirs + "input_layernorm.weight"]
        out[ours + "mlp_norm"] = hf[theirs + "post_attention_layernorm.weight"]
        for s in suffixes:
            out[f"{ours}qkv.{s}"] = fuse_rows(*(hf[f"{attn}{p}_proj.{s}"] for p in "qkv"))
            out[f"{ours}o_proj.{s}"] = hf[f"{attn}o_proj.{s}"]
        for s in ["weight"] + ["bias"] * config.mlp_bias:
            out[f"{ours}mlp.gate_up.{s}"] = fuse_rows(hf[f"{mlp}gate_proj.{s}"], hf[f"{mlp}up_proj.{s}"])
            out[f"{ours}mlp.down.{s}"] = hf[f"{mlp}down_proj.{s}"]
    return out
