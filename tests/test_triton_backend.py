"""The Triton kernel inside a real transformers model, through AttentionInterface and its mask interface."""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import CUDA
from ruvoninference.attention import triton_backend
from transformers import DynamicCache

DEVICE = "cuda" if CUDA else "cpu"


def tiny_llama(attn: str):
    # The SmolLM2 recipe at toy size: GQA 4:2, head_dim 32.
    config = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn).to(DEVICE).eval()


def test_triton_backend_matches_eager_with_padding_and_cache():
    triton_backend.register()
    ours = tiny_llama("triton").half()
    eager = tiny_llama("eager").float()  # fp32: HF eager gives NaN rows for padding in fp64
    ids = torch.randint(0, 300, (2, 21), device=DEVICE)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding in the second row: the mask must reach the kernel
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        caches = DynamicCache(config=ours.config), DynamicCache(config=eager.config)
        a = ours(ids, attention_mask=mask, position_ids=positions, past_key_values=caches[0]).logits
        b = eager(ids, attention_mask=mask, position_ids=positions, past_key_values=caches[1]).logits
        real = mask.bool()
        torch.testing.assert_close(a[real].float(), b[real], atol=2e-2, rtol=2e-2)
        # One decode step against the cache: n_q = 1, n_kv = 22.
        step = torch.randint(0, 300, (2, 1), device=DEVICE)
        mask2 = torch.cat([mask, torch.ones_like(step)], 1)
        pos2 = positions[:, -1:] + 1
        a = ours(step, attention_mask=mask2, position_ids=pos2, past_key_values=caches[0]).logits
        b = eager(step, attention_mask=mask2, position_ids=pos2, past_key_values=caches[1]).logits
        torch.testing.assert_close(a.float(), b, atol=2e-2, rtol=2e-2)


def test_without_padding_no_mask_is_built():
    """No padding: SDPA's mask builder returns None and the kernel applies causality by itself."""
    triton_backend.register()
    seen = []
    original = triton_backend.triton_attention_forward

    def spy(module, q, k, v, attention_mask, **kw):
        seen.append(attention_mask)
        return original(module, q, k, v, attention_mask, **kw)

    from transformers import AttentionInterface

    AttentionInterface.register("triton", spy)
    try:
        model = tiny_llama("triton").half()
        with torch.no_grad():
            model(torch.randint(0, 300, (1, 9), device=DEVICE))
    finally:
        triton_backend.register()
    assert seen and all(m is None for m in seen)
