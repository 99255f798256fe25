import torch
from transformers import GPT2Config, LlamaConfig

from ruvoninference.kv_cache import bytes_per_token


def test_gpt2_cache_bytes_per_token():
    # 12 layers x (K and V) x 12 heads x 64 dims x 2 bytes
    assert bytes_per_token(GPT2Config(), torch.float16) == 12 * 2 * 12 * 64 * 2


def test_grouped_query_attention_shrinks_the_cache():
    config = LlamaConfig(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3)
    assert bytes_per_token(config, torch.float32) == 30 * 2 * 3 * 64 * 4
