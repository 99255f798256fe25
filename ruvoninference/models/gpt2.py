"""GPT-2: learned positions, pre-LayerNorm blocks, multi-head attention (Hq = Hkv), a GELU MLP.

Shapes: T tokens (all sequences flattened), C = hidden size, H heads of D = C / H dims.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ruvoninference.models.config import ModelConfig
from ruvoninference.models.layers import AttentionFn, CausalLM, GeluMLP


class GPT2Block(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        C = config.hidden_size
        self.index = index
        self.heads = (3, config.num_heads, config.head_dim)
        self.ln_1 = nn.LayerNorm(C, eps=config.norm_eps)
        self.qkv = nn.Linear(C, 3 * C)  # q, k and v in one matmul
        self.proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=config.norm_eps)
        self.mlp = GeluMLP(config)

    def forward(self, x: torch.Tensor, attention: AttentionFn) -> torch.Tensor:
        qkv = self.qkv(self.ln_1(x)).view(-1, *self.heads)  # (T, C) -> (T, 3C) -> (T, 3, H, D)
        q, k, v = qkv.unbind(1)  # (T, H, D) each
        x = x + self.proj(attention(self.index, q, k, v).flatten(1))  # (T, H, D) -> (T, C)
        return x + self.mlp(self.ln_2(x))


class GPT2(CausalLM):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, input_ids: Tensor, positions: Tensor, attention: AttentionFn) -> Tensor:
        x = self.embed(input_ids) + self.wpe(positions)  # (T,) -> (T, C)
        for block in self.blocks:
            x = block(x, attention)
        return self.ln_f(x)  # (T, C)


def convert_state_dict(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' GPT2LMHeadModel state dict -> ours.

    GPT-2's projections are `Conv1D` modules that compute x @ W with W stored (in, out): the transpose of
    nn.Linear's (out, in). The output head is the token embedding (tied), so `lm_head.weight` is not read.
    """
    out = {
        "embed.weight": hf["transformer.wte.weight"],
        "wpe.weight": hf["transformer.wpe.weight"],
        "ln_f.weight": hf["transformer.ln_f.weight"],
        "ln_f.bias": hf["transformer.ln_f.bias"],
    }
    renames = {"ln_1": "ln_1", "ln_2": "ln_2", "qkv": "attn.c_attn", "proj": "attn.c_proj",
               "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}  # fmt: skip
    for i in range(config.num_layers):
        for ours, theirs in renames.items():
            weight, bias = hf[f"transformer.h.{i}.{theirs}.weight"], hf[f"transformer.h.{i}.{theirs}.bias"]
            out[f"blocks.{i}.{ours}.weight"] = weight if ours.startswith("ln") else weight.t().contiguous()
            out[f"blocks.{i}.{ours}.bias"] = bias
    return out
