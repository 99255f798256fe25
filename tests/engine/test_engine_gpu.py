"""The engine on a real GPU, every family and every available backend: CUDA-graph decode gives the same
tokens as eager decode, a batch under cache pressure gives each prompt's tokens alone, and the greedy
tokens equal Hugging Face `generate` (SmolLM2 in fp16 with every backend; the random-weight models, whose
near-tied logits make fp16 greedy tokens fragile, in fp32 with the reference backends)."""

import pytest
import torch

from ruvoninference.attention import get_available_implementations, load_model_with_attention, parse_implementation
from ruvoninference.attention.paged import default_block_size
from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.engine.kv_cache import bytes_per_block
from ruvoninference.models import load_model

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
PROMPTS = ["Once upon a time", "The three primary colors are red, yellow and", "Hi", "A" * 40]
MODELS = [("gpt2-random", torch.float16), ("smollm2-135m", torch.float16), ("qwen3-0.6b-random", torch.bfloat16)]
BACKENDS = ["eager", "sdpa", "flash_attention_2", "triton"]


def _available(impl: str) -> bool:
    return impl in [i.value for i in get_available_implementations("cuda")]


@pytest.fixture(scope="module")
def bundles():
    return {}


def _bundle(bundles, name, dtype):
    if (name, dtype) not in bundles:
        bundles[(name, dtype)] = load_model(name, CUDA, dtype)
    return bundles[(name, dtype)]


def _engine(bundle, attn, blocks=None, **kw):
    block_size = default_block_size(parse_implementation(attn))
    memory = None if blocks is None else blocks * bytes_per_block(bundle.config, block_size, bundle.dtype)
    return Engine(bundle, attn, kv_cache_memory=memory or 256 << 20, **kw)


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("name,dtype", MODELS)
def test_graphs_batching_and_pressure_give_the_same_tokens(bundles, name, dtype, attn):
    if not _available(attn):
        pytest.skip(f"{attn} is not available here")
    bundle = _bundle(bundles, name, dtype)
    sampling = SamplingParams(max_tokens=24, ignore_eos=True)
    eager = _engine(bundle, attn, enforce_eager=True)
    alone = [eager.generate([p], sampling)[0].token_ids for p in PROMPTS]
    graphs = _engine(bundle, attn)
    assert graphs.use_cuda_graphs
    assert [o.token_ids for o in graphs.generate(PROMPTS, sampling)] == alone
    # Few blocks and a batch of 2: requests queue and get preempted, then run again.
    blocks = 3 if default_block_size(parse_implementation(attn)) == 16 else 2
    tight = _engine(bundle, attn, blocks=blocks, max_batch_size=2, max_num_batched_tokens=16)
    assert [o.token_ids for o in tight.generate(PROMPTS, sampling)] == alone
    assert tight.block_manager.num_free_blocks == tight.block_manager.num_blocks


@pytest.mark.parametrize("attn", BACKENDS)
def test_smollm2_fp16_every_backend_equals_hf_generate(bundles, attn):
    if not _available(attn):
        pytest.skip(f"{attn} is not available here")
    hf = load_model_with_attention("smollm2-135m", "sdpa", "cuda", "float16")
    n = 20
    want = []
    for p in PROMPTS[:2]:
        ids = hf.tokenizer(p, return_tensors="pt", add_special_tokens=False).to("cuda")
        out = hf.model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        want.append(out[0, ids.input_ids.shape[1]:].tolist())
    eng = _engine(_bundle(bundles, "smollm2-135m", torch.float16), attn)
    got = [o.token_ids for o in eng.generate(PROMPTS[:2], SamplingParams(max_tokens=n, ignore_eos=True))]
    assert got == want


@pytest.mark.parametrize("name", ["gpt2-random", "qwen3-0.6b-random"])
def test_random_models_fp32_equal_hf_generate(bundles, name):
    hf = load_model_with_attention(name, "sdpa", "cuda", "float32")
    ids = hf.tokenizer(PROMPTS[0], return_tensors="pt", add_special_tokens=False).to("cuda")
    out = hf.model.generate(**ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    eng = _engine(_bundle(bundles, name, torch.float32), "sdpa")
    assert eng.generate([PROMPTS[0]], SamplingParams(max_tokens=16, ignore_eos=True))[0].token_ids == \
        out[0, ids.input_ids.shape[1]:].tolist()


def test_seeded_sampling_on_the_gpu_does_not_depend_on_the_batch(bundles):
    """The fused draw: a seeded request gives the same tokens alone and in a batch of 8, graphs on."""
    bundle = _bundle(bundles, "qwen3-0.6b-random", torch.bfloat16)
    attn = "flash_attention_2" if _available("flash_attention_2") else "sdpa"
    target = SamplingParams(temperature=0.9, seed=11, max_tokens=16, ignore_eos=True)
    alone = _engine(bundle, attn).generate([PROMPTS[0]], target)[0].token_ids
    others = [SamplingParams(temperature=0.6, max_tokens=12, ignore_eos=True), SamplingParams(max_tokens=9)]
    batch = _engine(bundle, attn).generate([PROMPTS[0]] + [PROMPTS[i % len(PROMPTS)] for i in range(7)],
                                           [target] + [others[i % 2] for i in range(7)])
    assert batch[0].token_ids == alone


@pytest.mark.parametrize("attn", ["sdpa", "triton"])
def test_no_graph_is_captured_after_start_under_staggered_arrivals(bundles, attn):
    """Requests arriving while others decode change the batch size and the table width every few steps;
    every graph those steps replay was captured at start (a capture mid-run would stall every stream)."""
    if not _available(attn):
        pytest.skip(f"{attn} is not available here")
    bundle = _bundle(bundles, "qwen3-0.6b-random", torch.bfloat16)
    sampling = SamplingParams(max_tokens=40, ignore_eos=True)
    prompts = [("word " * n).strip() for n in (3, 17, 40, 90, 5, 200, 33, 64, 1, 130)]
    eager = _engine(bundle, attn, enforce_eager=True)
    want = {p: eager.generate([p], sampling)[0].token_ids for p in prompts}
    engine = _engine(bundle, attn)
    captured = dict(engine.runner._graphs)
    assert set(captured) == set(engine.runner.graph_keys())
    got, pending = {p: [] for p in prompts}, list(prompts)
    while pending or engine.has_unfinished():
        if pending:  # one new request every step
            engine.add_request(pending[0], sampling, request_id=pending.pop(0))
        for out in engine.step():
            got[out.request_id] += out.new_token_ids
    assert engine.runner._graphs == captured
    assert got == want
