"""load_model on the embedded models: the weight mapping on real checkpoints, the bundle's facts, errors."""

import pytest
import torch
from transformers import LlamaConfig, OPTConfig, Qwen3Config

from ruvoninference.errors import RuvonError
from ruvoninference.models import ModelConfig, load_model

PROMPT = "Once upon a time, in a small village,"


@pytest.fixture(scope="module")
def gpt2_bundle():
    return load_model("gpt2-random", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def smollm2_bundle():
    return load_model("smollm2-135m", device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("which", ["gpt2", "smollm2"])
def test_real_checkpoints_match_transformers(which, request, reference_attention):
    """Prefill, then two decode steps, against the transformers model of the same checkpoint."""
    bundle = request.getfixturevalue(f"{which}_bundle")
    hf = request.getfixturevalue(f"{which}_sdpa").model
    ids = bundle.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]  # (T, V)
    attention = reference_attention(bundle.config.attn_scale)
    got = [attention.run(bundle.model, [("a", ids[:-2])])]
    got += [attention.run(bundle.model, [("a", [token])]) for token in ids[-2:]]
    torch.testing.assert_close(torch.cat(got), expected, rtol=1e-4, atol=2e-4)


def test_gpt2_random_bundle(gpt2_bundle):
    b = gpt2_bundle
    assert (b.name, b.config.family, b.random_weights) == ("gpt2-random", "gpt2", True)
    assert b.context_length == 1024 and b.eos_token_ids == frozenset({50256})
    c = b.config
    assert (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (12, 12, 12, 64)
    # 124,439,808 in transformers, where the 12 causal-mask buffers are not parameters either
    assert sum(p.numel() for p in b.model.parameters()) == 124_439_808
    assert not b.model.training and all(p.dtype == torch.float32 for p in b.model.parameters())
    assert b.tokenizer("Once upon a time", add_special_tokens=False)["input_ids"] == [7454, 2402, 257, 640]


def test_smollm2_bundle(smollm2_bundle):
    b = smollm2_bundle
    assert (b.name, b.config.family, b.random_weights) == ("smollm2-135m", "llama", False)
    assert b.context_length == 8192 and b.eos_token_ids == frozenset({2})
    assert (b.config.num_heads, b.config.num_kv_heads, b.config.head_dim) == (9, 3, 64)
    assert b.config.kv_bytes_per_token(torch.float32) == 2 * 30 * 3 * 64 * 4
    assert b.config.attn_scale == pytest.approx(64**-0.5)
    assert b.model.lm_head is None  # tied: the output head is the embedding, one tensor


def test_bfloat16_load_casts_everything(smollm2_bundle):
    b = load_model("smollm2-135m", dtype=torch.bfloat16)
    assert b.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in b.model.parameters())
    assert b.model.rotary.cos.dtype == torch.bfloat16  # rounded like transformers rounds its cos/sin
    torch.testing.assert_close(b.model.norm.float(), smollm2_bundle.model.norm, rtol=1e-2, atol=0)


def test_qwen3_random_bundle_is_the_published_shape_with_seeded_weights():
    b = load_model("qwen3-0.6b-random", dtype=torch.bfloat16)
    c = b.config
    assert (b.config.family, b.random_weights, b.context_length) == ("qwen3", True, 40960)
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers) == (151936, 1024, 3072, 28)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.norm_eps) == (16, 8, 128, 1e-6)
    assert c.tie_word_embeddings and c.rope_inv_freq[1] == pytest.approx(1e6 ** (-2 / 128))
    assert c.kv_bytes_per_token(torch.bfloat16) == 112 * 1024  # the "about 112 KiB per cached token"
    assert b.eos_token_ids == frozenset({b.tokenizer.eos_token_id}) == frozenset({50256})
    # The seeded weights are integers times 2^-12; these are what seed 0 gives on every machine.
    assert (b.model.layers[0].qkv.weight[0, :6].float() * 4096).tolist() == [-90, 60, 35, -33, -21, -96]
    assert (b.model.layers[27].mlp.down.weight[5, :4].float() * 4096).tolist() == [33, 69, -47, 77]
    assert (b.model.embed.weight[-1, -4:].float() * 4096).tolist() == [-120, 84, -18, 67]


def test_unsupported_family_is_a_user_error_before_weights_load(tmp_path):
    OPTConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(RuvonError, match=r"'opt' is not supported.*gpt2, llama, qwen3"):
        load_model(str(tmp_path))


def test_unknown_models_give_the_weights_errors():
    with pytest.raises(RuvonError, match="does not exist"):
        load_model("./no-such-model-folder")
    with pytest.raises(RuvonError, match="embedded models work offline"):
        load_model("some-org/some-model-that-is-not-cached")


@pytest.mark.parametrize(
    "hf_config, what",
    [
        (LlamaConfig(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}), "RoPE"),
        (Qwen3Config(use_sliding_window=True, sliding_window=128), "sliding-window"),
        (LlamaConfig(hidden_act="gelu"), "activation"),
    ],
)
def test_unimplemented_features_are_user_errors(hf_config, what):
    with pytest.raises(RuvonError, match=what):
        ModelConfig.from_hf(hf_config)
