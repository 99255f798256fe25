"""The small pieces against transformers' own, bit for bit where the arithmetic is the same."""

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from ruvoninference.models.config import ModelConfig
from ruvoninference.models.layers import RotaryEmbedding, apply_rotary, rms_norm


def test_rotary_equals_transformers_bit_for_bit():
    hf_config = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096)
    positions = torch.tensor([0, 5, 100, 4095])
    q = torch.randn(1, 4, len(positions), 64)  # transformers' layout: (B, H, T, D)
    cos, sin = LlamaRotaryEmbedding(hf_config)(q, positions[None])
    expected, _ = apply_rotary_pos_emb(q, q, cos, sin)
    ours_cos, ours_sin = RotaryEmbedding(ModelConfig.from_hf(hf_config))(positions)  # (T, 1, D) each
    ours = apply_rotary(q[0].transpose(0, 1), ours_cos, ours_sin)  # (T, H, D)
    assert torch.equal(ours, expected[0].transpose(0, 1))


def test_rms_norm_equals_transformers():
    norm = LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(7, 48) * 3
    torch.testing.assert_close(rms_norm(x, norm.weight, 1e-5), norm(x), rtol=1e-6, atol=1e-6)


def test_kv_bytes_and_scale():
    config = ModelConfig.from_hf(LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                                             num_hidden_layers=3))  # fmt: skip
    assert config.kv_bytes_per_token(torch.bfloat16) == 2 * 3 * 2 * 64 * 2
    assert config.kv_bytes_per_token(torch.float32) == 2 * 3 * 2 * 64 * 4
    assert config.attn_scale == 0.125
