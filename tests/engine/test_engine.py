"""The engine end to end on the CPU: greedy parity with Hugging Face `generate`, batching, queueing,
preemption, chunked prefill, prefix caching, the step API, abort, logprobs and user errors."""

import pytest
import torch

from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.engine.kv_cache import bytes_per_block
from ruvoninference.errors import RuvonError
from ruvoninference.models import load_model

PROMPTS = ["Once upon a time", "The capital of France is a city where the river", "Hello"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundles():
    return {name: load_model(name, CPU, torch.float32) for name in ("gpt2-random", "smollm2-135m")}


def engine(bundle, attn="sdpa", blocks=64, block_size=16, **kw):
    return Engine(bundle, attn, block_size=block_size, kv_cache_memory=blocks * bytes_per_block(
        bundle.config, block_size, torch.float32), **kw)


def hf_greedy(loaded, prompt, n):
    ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = loaded.model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    return out[0, ids.input_ids.shape[1]:].tolist()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name,fixture", [("gpt2-random", "gpt2_sdpa"), ("smollm2-135m", "smollm2_sdpa")])
def test_batch_under_pressure_equals_hf_generate_alone(bundles, name, fixture, attn, request):
    """Small blocks, a batch of 2 and 3 blocks of cache: requests queue, get preempted, and still match."""
    hf = request.getfixturevalue(fixture)
    n = 20
    want = [hf_greedy(hf, p, n) for p in PROMPTS]
    eng = engine(bundles[name], attn, blocks=3, max_batch_size=2)
    outs = eng.generate(PROMPTS, SamplingParams(max_tokens=n, ignore_eos=True))
    assert [o.token_ids for o in outs] == want
    assert eng.scheduler.num_preemptions >= 1
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


@pytest.mark.parametrize("policy", ["static", "sequential"])
def test_every_policy_and_chunked_prefill_give_the_same_tokens(bundles, policy):
    bundle = bundles["gpt2-random"]
    sampling = SamplingParams(max_tokens=8, ignore_eos=True)
    ref = [o.token_ids for o in engine(bundle).generate(PROMPTS, sampling)]
    chunked = engine(bundle, scheduler=policy, max_num_batched_tokens=3)
    assert [o.token_ids for o in chunked.generate(PROMPTS, sampling)] == ref


def test_shared_prefix_is_computed_once(bundles):
    bundle = bundles["smollm2-135m"]
    prefix = list(range(1000, 1040))  # 40 tokens: two full blocks of 16
    sampling = SamplingParams(max_tokens=4, ignore_eos=True)
    eng = engine(bundle)
    first = eng.generate([prefix + [5, 6, 7]], sampling)[0]
    computed = eng.num_prefill_tokens
    second = eng.generate([prefix + [8, 9]], sampling)[0]
    assert eng.num_prefill_tokens - computed == len(prefix) + 2 - 32
    assert second.num_cached_tokens == 32 and first.num_cached_tokens == 0
    cold = engine(bundle, enable_prefix_caching=False).generate([prefix + [8, 9]], sampling)[0]
    assert second.token_ids == cold.token_ids
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_step_api_streams_the_text_and_abort_frees_blocks(bundles):
    eng = engine(bundles["smollm2-135m"])
    keep = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=10, ignore_eos=True))
    drop = eng.add_request(PROMPTS[1], SamplingParams(max_tokens=10, ignore_eos=True))
    pieces, finished = [], []
    for _ in range(3):
        pieces += [o.new_text for o in eng.step() if o.request_id == keep]
    eng.abort(drop)
    eng.abort(drop)  # twice, and an unknown id, are ignored
    eng.abort("nobody")
    while eng.has_unfinished():
        for o in eng.step():
            assert o.request_id == keep
            pieces.append(o.new_text)
            finished.append(o.finished)
    assert finished[-1] and not any(finished[:-1])
    alone = engine(eng.bundle).generate([PROMPTS[0]], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    assert "".join(pieces) == alone.text
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_logprobs_are_the_models_and_top_n_is_sorted(bundles, smollm2_sdpa):
    eng = engine(bundles["smollm2-135m"])
    out = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=5, logprobs=3))[0]
    ids = torch.tensor([out.prompt_token_ids + out.token_ids])
    with torch.no_grad():
        logits = smollm2_sdpa.model(ids).logits[0].log_softmax(-1)
    start = len(out.prompt_token_ids) - 1
    for i, lp in enumerate(out.logprobs):
        row = logits[start + i]
        assert lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(row[lp.token_id].item(), abs=1e-3)
        assert [t for t, _ in lp.top] == row.topk(3).indices.tolist()
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)


def test_stop_strings_eos_and_seeds(bundles):
    eng = engine(bundles["smollm2-135m"])
    full = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=12))[0].text
    word = full.split()[2]
    stopped = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=12, stop=(word,)))[0]
    assert stopped.finish_reason == "stop" and stopped.text == full[: full.index(word)]
    chat = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    ended = eng.generate([chat], SamplingParams(max_tokens=60))[0]
    assert ended.finish_reason == "stop" and ended.token_ids[-1] in eng.bundle.eos_token_ids
    forced = eng.generate([chat], SamplingParams(max_tokens=len(ended.token_ids) + 3, ignore_eos=True))[0]
    assert len(forced.token_ids) == len(ended.token_ids) + 3 and forced.finish_reason == "length"
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=7, max_tokens=8)
    alone = eng.generate([PROMPTS[0]], p)[0].token_ids
    mixed = eng.generate([PROMPTS[0], PROMPTS[1]], [p, SamplingParams(max_tokens=8)])[0].token_ids
    assert alone == mixed


def test_bad_requests_are_user_errors_and_others_go_on(bundles):
    eng = engine(bundles["gpt2-random"], blocks=8)
    ok = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=4))
    with pytest.raises(RuvonError, match="context is 1024 tokens"):
        eng.add_request("hello " * 1100, SamplingParams(max_tokens=5))
    with pytest.raises(RuvonError, match="needs .* KV-cache blocks"):
        eng.add_request("hello " * 200, SamplingParams(max_tokens=5))
    with pytest.raises(RuvonError, match="empty"):
        eng.add_request("", SamplingParams(max_tokens=5))
    with pytest.raises(RuvonError, match="vocabulary"):
        eng.add_request([10**7], SamplingParams(max_tokens=5))
    with pytest.raises(RuvonError, match="at least 1"):
        SamplingParams(max_tokens=0)
    with pytest.raises(RuvonError, match="logprobs"):
        SamplingParams(logprobs=21)
    outs = []
    while eng.has_unfinished():
        outs += eng.step()
    assert outs[-1].request_id == ok and outs[-1].finished


def test_engine_configuration_errors(bundles):
    with pytest.raises(RuvonError, match="Unknown attention implementation"):
        Engine(bundles["gpt2-random"], "flashy")
    with pytest.raises(RuvonError, match="unavailable"):
        Engine(bundles["gpt2-random"], "flash_attention_2")
    with pytest.raises(RuvonError, match="power of two"):
        engine(bundles["gpt2-random"], block_size=24)
    with pytest.raises(RuvonError, match="scheduler"):
        engine(bundles["gpt2-random"], scheduler="fifo")
    with pytest.raises(RuvonError, match="holds no block"):
        Engine(bundles["gpt2-random"], "sdpa", kv_cache_memory=1000)
    with pytest.raises(RuvonError, match="embedded models"):
        Engine("./no/such/model", "sdpa", "cpu")


def test_mixed_batches_give_the_same_greedy_tokens_as_unmixed(bundles):
    """Requests arrive while others decode, prompts are chunked: decodes ride along in prefill steps."""
    bundle = bundles["gpt2-random"]
    sampling = SamplingParams(max_tokens=10, ignore_eos=True)

    def run(mixed):
        eng = engine(bundle, max_num_batched_tokens=6, mixed_batches=mixed)
        ids = [eng.add_request(PROMPTS[0], sampling)]
        tokens, mixed_steps = {}, 0
        for step in range(40):
            if step in (3, 5):
                ids.append(eng.add_request(PROMPTS[1 if step == 3 else 2], sampling))
            batch_before = eng.num_steps
            for out in eng.step():
                tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            assert eng.num_steps == batch_before + 1 or not eng.has_unfinished()
        assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
        return [tokens[i] for i in ids]

    assert run(True) == run(False)


def test_a_seeded_request_gives_the_same_tokens_in_any_batch(bundles):
    bundle = bundles["gpt2-random"]
    target = SamplingParams(temperature=1.0, top_p=0.9, seed=42, max_tokens=6, ignore_eos=True)
    alone = engine(bundle).generate([PROMPTS[0]], target)[0].token_ids
    others = [SamplingParams(max_tokens=6, ignore_eos=True), SamplingParams(temperature=0.8, max_tokens=5),
              SamplingParams(temperature=1.2, top_k=20, seed=3, max_tokens=7)]
    for size in (8, 64):
        prompts = [PROMPTS[0]] + [PROMPTS[i % 3] + " x" * (i % 4) for i in range(1, size)]
        params = [target] + [others[i % 3] for i in range(1, size)]
        eng = engine(bundle, blocks=200, max_batch_size=size)
        assert eng.generate(prompts, params)[0].token_ids == alone


def test_a_stop_string_across_two_tokens_never_leaks_into_the_stream(bundles):
    eng = engine(bundles["gpt2-random"])
    sampling = SamplingParams(max_tokens=12, ignore_eos=True)
    free = eng.generate([PROMPTS[0]], sampling)[0]
    pieces = [eng.tokenizer.decode([t]) for t in free.token_ids]
    # A stop string made of the end of token 4's text and the start of token 5's
    i = next(i for i in range(3, 10) if len(pieces[i].strip()) >= 2 and len(pieces[i + 1].strip()) >= 1)
    stop = pieces[i][-2:] + pieces[i + 1][:1]
    want = free.text[:free.text.index(stop)]
    rid = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=12, ignore_eos=True, stop=(stop,)))
    streamed = []
    while eng.has_unfinished():
        streamed += [o.new_text for o in eng.step() if o.request_id == rid]
    assert "".join(streamed) == want
    assert eng.generate([PROMPTS[0]], SamplingParams(max_tokens=12, ignore_eos=True, stop=(stop,)))[0].text == want
    # a stop string that never completes holds nothing back at the end
    never = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=12, ignore_eos=True, stop=(pieces[3] + "\x00",)))
    assert never[0].text == free.text and never[0].finish_reason == "length"


def test_a_batch_with_extreme_sampling_values_gives_every_row_a_token(bundles):
    eng = engine(bundles["gpt2-random"])
    params = [SamplingParams(temperature=1e-40, max_tokens=3), SamplingParams(temperature=1.0, top_p=1e-300,
              max_tokens=3), SamplingParams(temperature=0.7, presence_penalty=2.0, frequency_penalty=-2.0,
              repetition_penalty=1.5, logit_bias={11: 100.0}, max_tokens=3)]
    outs = eng.generate(PROMPTS, params)
    assert all(len(o.token_ids) == 3 for o in outs)
    assert outs[2].token_ids == [11, 11, 11]  # a bias of +100 wins
    greedy = eng.generate([PROMPTS[0]], SamplingParams(max_tokens=3))[0].token_ids
    assert outs[0].token_ids == greedy and outs[1].token_ids == eng.generate(
        [PROMPTS[1]], SamplingParams(max_tokens=3))[0].token_ids


def test_overlapped_steps_give_what_plain_steps_give(bundles):
    """Async scheduling (engine/overlap.py) forced on the CPU: same tokens, text, stops, finish reasons, under
    cache pressure and preemption, with chunked and mixed prefill, a penalised request and an abort."""
    bundle = bundles["gpt2-random"]
    params = [SamplingParams(max_tokens=14, ignore_eos=True), SamplingParams(max_tokens=9, stop=(" the",)),
              SamplingParams(temperature=0.8, seed=5, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.9, seed=6, presence_penalty=1.0, max_tokens=7, ignore_eos=True)]
    prompts = PROMPTS + ["One more prompt, a longer one, to be chunked"]
    sampling = params + [SamplingParams(max_tokens=5, ignore_eos=True)]

    def run(overlap, mixed=True):
        eng = engine(bundle, blocks=3, max_batch_size=3, max_num_batched_tokens=8, async_scheduling=overlap,
                     mixed_batches=mixed)
        assert eng.async_scheduling == overlap
        ids = [eng.add_request(p, s) for p, s in zip(prompts[:3], sampling[:3])]
        texts, tokens, reasons = {}, {}, {}
        step = 0
        while eng.has_unfinished():
            if step == 2:
                ids += [eng.add_request(p, s) for p, s in zip(prompts[3:], sampling[3:])]
            for o in eng.step():
                tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
                texts[o.request_id] = texts.get(o.request_id, "") + o.new_text
                if o.finished:
                    reasons[o.request_id] = o.finish_reason
            step += 1
        assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
        aborted = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=20))
        eng.step(), eng.step(), eng.step()
        eng.abort(aborted)
        while eng.has_unfinished():
            eng.step()
        assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
        return [(tokens[i], texts[i], reasons[i]) for i in ids], eng.scheduler.num_preemptions

    plain, overlapped = run(False), run(True)
    assert overlapped[0] == plain[0]
    # Unmixed steps: a step where every running sequence waits for its last token schedules nothing (the
    # H200 serving run found it recursing instead)
    assert run(True, mixed=False)[0] == run(False, mixed=False)[0]
    assert plain[1] >= 1 and overlapped[1] >= 1  # both ran under preemption


@pytest.mark.parametrize("overlap", [False, True])
def test_a_request_whose_bookkeeping_fails_fails_alone(bundles, overlap):
    from ruvoninference.engine.engine import RequestsFailed

    eng = engine(bundles["gpt2-random"], async_scheduling=overlap)
    sampling = SamplingParams(max_tokens=6, ignore_eos=True)
    good, bad = eng.add_request(PROMPTS[0], sampling), eng.add_request(PROMPTS[1], sampling)

    class Broken:
        stopped, text = False, ""

        def add(self, token):
            raise ValueError("a detokenizer bug")

    eng.sequence(bad).detokenizer = Broken()
    tokens, failures = [], []
    while eng.has_unfinished():
        try:
            outs = eng.step()
        except RequestsFailed as exc:
            failures.append(exc.request_ids)
            outs = exc.outputs
        tokens += [t for o in outs if o.request_id == good for t in o.new_token_ids]
    assert failures == [[bad]]
    assert tokens == engine(eng.bundle).generate([PROMPTS[0]], sampling)[0].token_ids
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
