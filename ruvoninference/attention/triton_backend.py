"""Our Triton kernel as a transformers attention backend.

transformers resolves `config._attn_implementation` through two registries: `AttentionInterface` (the
function that computes attention inside every layer) and `AttentionMaskInterface` (the function that builds
the mask those layers receive). Registering "triton" in both is all it takes; the model code is untouched.

For the mask we reuse SDPA's builder: it returns None when the batch has no padding (then the kernel applies
the causal rule itself and skips whole blocks), and a boolean [b, 1, n_q, n_kv] mask when it does.
"""

from __future__ import annotations

import torch

from ruvoninference.kernels.flash_attention import flash_attention_triton

NAME = "triton"


def triton_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [b, h_q, n_q, d], usually a transposed view of [b, n_q, h_q, d]
    key: torch.Tensor,  # [b, h_kv, n_kv, d]
    value: torch.Tensor,  # [b, h_kv, n_kv, d]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if dropout:
        raise ValueError("the triton attention backend is for inference and supports no dropout")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask == 0  # an additive float mask: 0 where attended
    batch, heads, n_q, head_dim = query.shape
    # Write straight into the [b, n_q, h_q, d] layout the output projection reads: no transpose copy after.
    out = torch.empty(batch, n_q, heads, head_dim, dtype=query.dtype, device=query.device)
    flash_attention_triton(
        query, key, value, causal=causal, sm_scale=scaling, mask=attention_mask, out=out.transpose(1, 2)
    )
    return out, None


def register() -> None:
    """Make `attn_implementation="triton"` loadable (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, triton_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
