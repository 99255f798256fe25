"""One configuration for the three families, read from any transformers config.

Hugging Face spells the same facts differently per family (`n_layer` / `num_hidden_layers`, `n_embd` /
`hidden_size`, ...). `ModelConfig.from_hf` reads them once, rejects what our compact models do not implement
(sliding windows, RoPE that depends on the sequence length, ...) with one sentence, and gives the engine a
single vocabulary: layers, heads, KV heads, head dim, and how many bytes each cached token costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ruvoninference.errors import RuvonError

SUPPORTED_FAMILIES = ("gpt2", "llama", "qwen3")
# RoPE variants whose frequencies are fixed once; `dynamic` and `longrope` change with the sequence length.
_STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_GELU_APPROXIMATION = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


@dataclass(frozen=True)
class ModelConfig:
    family: str  # "gpt2" | "llama" | "qwen3"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool = False  # biases on the q/k/v/o projections (GPT-2 always, Llama optionally)
    mlp_bias: bool = False
    gelu_approximate: str = "tanh"  # GPT-2 only: "tanh" (gelu_new) or "none" (exact erf GELU)
    # RoPE (Llama, Qwen3): the inverse frequency of each of the head_dim/2 rotation planes, and the factor
    # some scaled variants (YaRN) multiply cos and sin by. Empty for GPT-2, which has learned positions.
    rope_inv_freq: tuple[float, ...] = field(default=(), repr=False)
    rope_attention_factor: float = 1.0

    @property
    def attn_scale(self) -> float:
        """The softmax scale every attention backend uses: 1/sqrt(head_dim) for the three families."""
        return 1.0 / math.sqrt(self.head_dim)

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes one cached token costs across all layers (K and V): what sizes the paged cache."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    @classmethod
    def from_hf(cls, hf_config) -> ModelConfig:
        """Read a transformers `PretrainedConfig` of a supported family; anything else is a RuvonError."""
        family = getattr(hf_config, "model_type", None)
        if family == "gpt2":
            return _from_gpt2(hf_config)
        if family in ("llama", "qwen3"):
            return _from_llama_like(hf_config, family)
        raise RuvonError(
            f"Model family '{family}' is not supported by this engine; use a model whose config is one of: "
            f"{', '.join(SUPPORTED_FAMILIES)}."
        )


def _from_gpt2(c) -> ModelConfig:
    if c.activation_function not in _GELU_APPROXIMATION:
        _unsupported("gpt2", f"activation '{c.activation_function}'")
    if c.scale_attn_by_inverse_layer_idx or not c.scale_attn_weights:
        _unsupported("gpt2", "an attention scale other than 1/sqrt(head_dim)")
    return ModelConfig(
        family="gpt2",
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        num_layers=c.n_layer,
        num_heads=c.n_head,
        num_kv_heads=c.n_head,
        head_dim=c.n_embd // c.n_head,
        intermediate_size=c.n_inner or 4 * c.n_embd,
        max_position_embeddings=c.n_positions,
        norm_eps=c.layer_norm_epsilon,
        tie_word_embeddings=True,  # GPT-2 has no separate output head
        attention_bias=True,
        mlp_bias=True,
        gelu_approximate=_GELU_APPROXIMATION[c.activation_function],
    )


def _from_llama_like(c, family: str) -> ModelConfig:
    if c.hidden_act not in ("silu", "swish"):
        _unsupported(family, f"activation '{c.hidden_act}'")
    if getattr(c, "sliding_window", None) and getattr(c, "use_sliding_window", True):
        _unsupported(family, "sliding-window attention")
    if getattr(c, "pretraining_tp", 1) != 1:
        _unsupported(family, "pretraining_tp other than 1")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    inv_freq, attention_factor = _rope_frequencies(c, family, head_dim)
    return ModelConfig(
        family=family,
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
        head_dim=head_dim,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings,
        norm_eps=c.rms_norm_eps,
        tie_word_embeddings=bool(c.tie_word_embeddings),
        attention_bias=bool(getattr(c, "attention_bias", False)),
        mlp_bias=bool(getattr(c, "mlp_bias", False)),
        rope_inv_freq=tuple(inv_freq.tolist()),
        rope_attention_factor=float(attention_factor),
    )


def _rope_frequencies(c, family: str, head_dim: int) -> tuple[torch.Tensor, float]:
    params = c.rope_parameters or {}
    rope_type = params.get("rope_type", "default")
    if rope_type not in _STATIC_ROPE_TYPES:
        _unsupported(family, f"RoPE type '{rope_type}'")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        _unsupported(family, "partial rotary embeddings")
    if rope_type == "default":
        # theta^(-2i/D) in float32, the same arithmetic as transformers so cos/sin agree bit for bit.
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
        return 1.0 / (params["rope_theta"] ** exponents), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ROPE_INIT_FUNCTIONS[rope_type](c, device=None)


def _unsupported(family: str, what: str) -> None:
    raise RuvonError(
        f"This {family} model uses {what}, which this engine's {family} code does not implement; "
        f"choose a {family} model without it."
    )
