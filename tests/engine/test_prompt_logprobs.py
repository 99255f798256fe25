"""Prompt log-probabilities computed inside the engine's steps (`SamplingParams.prompt_logprobs`): equal to a
plain float64 forward of the prompt, however the prompt is chunked, batched, cached or preempted."""

import copy

import pytest
import torch
import torch.nn.functional as F

from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.engine import scheduler as scheduler_module
from ruvoninference.engine.kv_cache import bytes_per_block
from ruvoninference.errors import RuvonError
from ruvoninference.models import load_model

CPU = torch.device("cpu")
PROMPT = list(range(1000, 1045))  # 45 tokens: two full blocks of 16 and a partial one


@pytest.fixture(scope="module")
def bundle():
    return load_model("gpt2-random", CPU, torch.float32)


@pytest.fixture(scope="module")
def reference(bundle):
    """ids -> [T, V] float64 log-probabilities of a plain causal forward (row p: the token after p)."""
    model = copy.deepcopy(bundle.model).double()
    scale = bundle.config.attn_scale

    def attention(_layer, q, k, v):  # q [T, Hq, D], k/v [T, Hkv, D], no cache
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                             is_causal=True, scale=scale)
        return out.transpose(0, 1)

    @torch.inference_mode()
    def run(ids):
        hidden = model(torch.tensor(ids), torch.arange(len(ids)), attention)
        return model.compute_logits(hidden).log_softmax(-1)

    return run


def engine(bundle, blocks=64, **kw):
    return Engine(bundle, "sdpa", block_size=16, kv_cache_memory=blocks * bytes_per_block(
        bundle.config, 16, torch.float32), **kw)


def record(eng) -> list:
    """Every batch the engine's scheduler hands out from now on."""
    batches, schedule = [], eng.scheduler.schedule

    def recording():
        batch = schedule()
        if batch is not None:
            batches.append(batch)
        return batch

    eng.scheduler.schedule = recording
    return batches


def check(entries, ids, ref, top):
    """Entry i is token i's log-probability given the ones before it, with the `top` most likely, sorted."""
    assert len(entries) == len(ids) and entries[0] is None
    for p, entry in enumerate(entries[1:]):
        row = ref[p]
        assert entry.token_id == ids[p + 1]
        assert entry.logprob == pytest.approx(row[ids[p + 1]].item(), abs=2e-4)
        best = torch.topk(row, top)
        assert [t for t, _ in entry.top] == best.indices.tolist()
        assert [v for _, v in entry.top] == pytest.approx(best.values.tolist(), abs=2e-4)


def test_sampling_params_checks():
    assert SamplingParams(prompt_logprobs=0, max_tokens=0).max_tokens == 0
    for bad in ({"prompt_logprobs": -1}, {"prompt_logprobs": 21}, {"prompt_logprobs": True},
                {"prompt_logprobs": 1.5}, {"max_tokens": 0}):
        with pytest.raises(RuvonError):
            SamplingParams(**bad)


@pytest.mark.parametrize("overlap", [False, True])
def test_chunked_batched_and_beside_a_cached_prefix(bundle, reference, overlap):
    """The prompt's blocks are already in the prefix cache, requests are decoding, and the budget cuts the
    prompt into several chunks: its logprobs are still every position's, and it takes no cache hit."""
    eng = engine(bundle, max_num_batched_tokens=12, async_scheduling=overlap)
    plain = SamplingParams(max_tokens=6, ignore_eos=True)
    alone = eng.generate([PROMPT], plain)[0]  # leaves the prompt's full blocks in the prefix cache
    decode = SamplingParams(max_tokens=12, ignore_eos=True)
    others = [eng.add_request(p, decode) for p in ("Hello there", "A b")]
    outputs = {}
    for _ in range(3):
        for o in eng.step():
            outputs.setdefault(o.request_id, []).append(o)
    scored = eng.add_request(PROMPT, SamplingParams(max_tokens=6, ignore_eos=True, prompt_logprobs=3))
    seq = eng.sequence(scored)
    batches = record(eng)
    while eng.has_unfinished():
        for o in eng.step():
            outputs.setdefault(o.request_id, []).append(o)
    chunks = [c for b in batches for c in b.prompt_rows if c.seq is seq]
    assert len(chunks) >= 2 and seq.num_cached_tokens == 0  # several chunks; no prefix hit skipped positions
    assert any(len(b.seqs) > 1 for b in batches if any(c.seq is seq for c in b.prompt_rows))  # batched
    mine = outputs[scored]
    assert mine[0].prompt_logprobs is not None and all(o.prompt_logprobs is None for o in mine[1:])
    check(mine[0].prompt_logprobs, PROMPT, reference(PROMPT), 3)
    assert [t for o in mine for t in o.new_token_ids] == alone.token_ids  # its tokens are unchanged
    assert all(o.prompt_logprobs is None for rid in others for o in outputs[rid])
    again = eng.generate([PROMPT], plain)[0]
    assert again.num_cached_tokens == 32 and again.prompt_logprobs is None  # its blocks still serve others
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


@pytest.mark.parametrize("overlap", [False, True])
def test_rows_per_step_are_capped(bundle, reference, overlap, monkeypatch):
    """No step computes more than PROMPT_LOGPROB_ROWS prompt rows, whatever the token budget allows."""
    monkeypatch.setattr(scheduler_module, "PROMPT_LOGPROB_ROWS", 8)
    eng = engine(bundle, max_num_batched_tokens=256, async_scheduling=overlap)
    batches = record(eng)
    prompts = [PROMPT, PROMPT[:20], list(range(2000, 2030))]
    outs = eng.generate(prompts, [SamplingParams(max_tokens=2, prompt_logprobs=1),
                                  SamplingParams(max_tokens=0, prompt_logprobs=0),
                                  SamplingParams(max_tokens=3)])
    rows = [b.num_prompt_rows for b in batches]
    assert max(rows) == 8 and sum(rows) == len(PROMPT) - 1 + 19
    check(outs[0].prompt_logprobs, PROMPT, reference(PROMPT), 1)
    check(outs[1].prompt_logprobs, PROMPT[:20], reference(PROMPT[:20]), 0)
    assert outs[2].prompt_logprobs is None and len(outs[2].token_ids) == 3


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("other_prompt,when", [(30, "prefilling"), (10, "generating")])
def test_preempted_while_prefilling_or_generating(bundle, reference, overlap, other_prompt, when):
    """Preempted in the middle of its prefill or once generating, a sequence recomputes its prompt without
    scoring a position twice, and its first output still holds the whole prompt's logprobs."""
    eng = engine(bundle, blocks=5, max_batch_size=3, max_num_batched_tokens=5, async_scheduling=overlap)
    victims = []
    preempt = eng.scheduler.preempt

    def recording(seq):
        victims.append((seq.request_id, seq.num_computed_tokens))
        preempt(seq)

    eng.scheduler.preempt = recording
    other = list(range(300, 300 + other_prompt))
    first = eng.add_request(other, SamplingParams(max_tokens=40, ignore_eos=True))
    scored = eng.add_request(PROMPT, SamplingParams(max_tokens=12, ignore_eos=True, prompt_logprobs=2))
    outputs = {}
    while eng.has_unfinished():
        for o in eng.step():
            outputs.setdefault(o.request_id, []).append(o)
    computed = [c for rid, c in victims if rid == scored]
    during = [0 < c < len(PROMPT) if when == "prefilling" else c > len(PROMPT) for c in computed]
    assert during and all(during), victims
    check(outputs[scored][0].prompt_logprobs, PROMPT, reference(PROMPT), 2)
    assert all(o.prompt_logprobs is None for o in outputs[scored][1:])
    alone = engine(bundle).generate([PROMPT, other], [SamplingParams(max_tokens=12, ignore_eos=True),
                                                      SamplingParams(max_tokens=40, ignore_eos=True)])
    assert [t for o in outputs[scored] for t in o.new_token_ids] == alone[0].token_ids
    assert [t for o in outputs[first] for t in o.new_token_ids] == alone[1].token_ids
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


@pytest.mark.parametrize("overlap", [False, True])
def test_max_tokens_zero_scores_the_prompt_and_draws_nothing(bundle, reference, overlap):
    eng = engine(bundle, max_num_batched_tokens=16, async_scheduling=overlap)
    params = SamplingParams(max_tokens=0, prompt_logprobs=5, logprobs=2, stop=("x",))
    ids = [eng.add_request(p, params) for p in (PROMPT, [7])]
    decoding = eng.add_request("Hello", SamplingParams(max_tokens=8, ignore_eos=True))
    outputs = {}
    while eng.has_unfinished():
        for o in eng.step():
            outputs.setdefault(o.request_id, []).append(o)
    for request_id, prompt in zip(ids, (PROMPT, [7])):
        (only,) = outputs[request_id]  # one output, the last
        assert only.finished and only.finish_reason == "length"
        assert only.new_token_ids == [] and only.new_text == "" and only.new_logprobs == []
        if len(prompt) > 1:
            check(only.prompt_logprobs, prompt, reference(prompt), 5)
        else:
            assert only.prompt_logprobs == [None]  # the first token has no context
    assert sum(len(o.new_token_ids) for o in outputs[decoding]) == 8
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
    (out,) = eng.generate([PROMPT[:10]], params)
    assert out.token_ids == [] and out.text == "" and out.finish_reason == "length"
    assert len(out.prompt_logprobs) == 10


def test_speculative_decoding_refuses_prompt_logprobs(bundle):
    eng = engine(bundle, speculative="ngram")
    with pytest.raises(RuvonError, match="speculative"):
        eng.add_request(PROMPT, SamplingParams(max_tokens=2, prompt_logprobs=0))


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["sdpa", "triton"])
def test_on_the_gpu_overlapped_with_graphs_and_the_row_cap(attn):
    """CUDA: overlapped steps, decode graphs, a 1300-token prompt scored over three steps of 512 rows beside
    decoding requests, and a max_tokens=0 request; equal to a float64 forward."""
    from ruvoninference.attention import get_available_implementations

    if attn not in [i.value for i in get_available_implementations("cuda")]:
        pytest.skip(f"{attn} is not available here")
    gpu = torch.device("cuda")
    bundle = load_model("qwen3-0.6b-random", gpu, torch.float32)
    try:
        eng = Engine(bundle, attn, kv_cache_memory=1 << 30)
    except RuvonError as exc:  # a backend without float32
        pytest.skip(str(exc))
    assert eng.async_scheduling and eng.use_cuda_graphs
    prompt = [(i * 7919) % 150000 for i in range(1300)]
    batches = record(eng)
    decode = SamplingParams(max_tokens=40, ignore_eos=True)
    decoding = [eng.add_request(p, decode) for p in ("Hello", "A b c")]
    outputs = {}
    for o in eng.step() + eng.step():  # overlapped: the second step hands out the first one's tokens
        outputs.setdefault(o.request_id, []).append(o)
    ids = [eng.add_request(prompt, SamplingParams(max_tokens=m, ignore_eos=True, prompt_logprobs=4))
           for m in (3, 0)]
    while eng.has_unfinished():
        for o in eng.step():
            outputs.setdefault(o.request_id, []).append(o)
    assert max(b.num_prompt_rows for b in batches) == scheduler_module.PROMPT_LOGPROB_ROWS
    assert all(sum(len(o.new_token_ids) for o in outputs[d]) == 40 for d in decoding)
    model = copy.deepcopy(bundle.model).double()
    scale = bundle.config.attn_scale

    def attention(_layer, q, k, v):
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                             is_causal=True, scale=scale)
        return out.transpose(0, 1)

    with torch.inference_mode():
        hidden = model(torch.tensor(prompt, device=gpu), torch.arange(len(prompt), device=gpu), attention)
        ref = model.compute_logits(hidden).log_softmax(-1).cpu()
    for request_id in ids:
        entries = outputs[request_id][0].prompt_logprobs
        assert len(entries) == len(prompt) and entries[0] is None
        got = torch.tensor([e.logprob for e in entries[1:]], dtype=torch.float64)
        want = ref[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
        assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()
    assert outputs[ids[1]][-1].finish_reason == "length" and outputs[ids[1]][-1].new_token_ids == []
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
    del eng, model
    # The cache sizing pass scores PROMPT_LOGPROB_ROWS rows too: an engine that fills the GPU still scores.
    eng = Engine(bundle, attn)
    (out,) = eng.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=20))
    assert len(out.prompt_logprobs) == len(prompt) and len(out.prompt_logprobs[1].top) == 20
