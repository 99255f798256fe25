"""Speculative decoding: the proposers' matches, exact acceptance (greedy cases, a chi-square test of the
rejection sampler with a deliberately bad draft), batch-independent randomness."""

import dataclasses
import random

import pytest
import torch

from ruvoninference.engine import Engine, SamplingParams
from ruvoninference.engine.kv_cache import bytes_per_block
from ruvoninference.engine.sampler import seeded_exponentials, uniforms
from ruvoninference.engine.speculative import (
    STREAM_ACCEPT,
    STREAM_DRAFT,
    NgramProposer,
    accept_point_mass,
    check_speculative,
    ngram_propose,
    race,
    rejection_sample,
    stream_keys,
)
from ruvoninference.errors import RuvonError
from ruvoninference.models import load_model


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Upper tail of the chi-square statistic of observed counts against expected probabilities."""
    expected = probs.double() * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was drawn"
    stat = ((counts[keep].double() - expected[keep]) ** 2 / expected[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


# -- the n-gram proposer ----------------------------------------------------------------------------------


def test_ngram_proposes_what_followed_the_latest_match():
    passage = [5, 6, 7, 8, 9, 10]
    tokens = [1, 2] + passage + [3, 4] + passage[:3]  # the answer starts copying the passage
    assert ngram_propose(tokens, 2) == [8, 9]
    assert NgramProposer().propose("a", tokens, 2) == [8, 9]
    assert NgramProposer().propose("a", tokens, 10) == [8, 9, 10, 3, 4, 5, 6, 7]  # up to the end, not past it
    # The longest n wins: "7" alone last followed by 8 in the passage, but [2, 7] followed by 1 later.
    tokens = [2, 7, 1, 9, 7, 8, 4, 2, 7]
    assert ngram_propose(tokens, 1, ngram_max=2) == [1]
    assert ngram_propose(tokens, 1, ngram_max=1) == [8]  # the latest 7 with something after it
    assert ngram_propose([1, 2, 3, 4], 3) == []  # nothing repeats: nothing proposed
    assert ngram_propose([4, 4, 4], 3) == [4]  # overlapping matches propose up to the present
    assert ngram_propose([1, 2, 1, 2, 9, 1, 2], 2, ngram_min=2) == [9, 1]


def test_ngram_index_matches_the_scan_as_the_sequence_grows():
    rng = random.Random(0)
    proposer = NgramProposer(ngram_max=3)
    tokens = [rng.randrange(6) for _ in range(5)]
    for _ in range(200):
        want = ngram_propose(tokens, 4, ngram_max=3)
        assert proposer.propose("r", tokens, 4) == want
        tokens += [rng.randrange(6)] * rng.choice([1, 1, 2])  # sometimes several tokens a step
    proposer.forget("r")
    assert not proposer._index


# -- acceptance -------------------------------------------------------------------------------------------


def test_greedy_acceptance_keeps_the_agreeing_prefix_and_adds_the_targets_token():
    target = torch.tensor([[4, 5, 6, 7], [4, 9, 6, 7], [1, 5, 6, 7], [4, 5, 6, 7], [3, 3, 3, 3]])
    draft = torch.tensor([[4, 5, 6], [4, 5, 6], [4, 5, 6], [4, 5, 0], [0, 0, 0]])
    num_draft = torch.tensor([3, 3, 3, 2, 0])
    tokens, emitted = accept_point_mass(target, draft, num_draft)
    got = [tokens[b, :n].tolist() for b, n in enumerate(emitted.tolist())]
    assert got == [[4, 5, 6, 7],  # all three kept, plus the bonus token
                   [4, 9],  # the second guess disagrees: the target's 9 replaces it
                   [1],  # the first disagrees: a plain decode step's worth
                   [4, 5, 6],  # two guesses only: the third row's token is the bonus
                   [3]]  # no guess: plain decoding


def _draws(probs: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, salt: int) -> torch.Tensor:
    return race(probs.expand(len(seeds), -1), stream_keys(seeds, positions, salt))


def test_race_draws_follow_the_distribution_and_ignore_the_batch():
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    seeds = torch.arange(20000)
    draws = _draws(probs, seeds, torch.full_like(seeds, 7), 0)
    assert chi_square_p_value(torch.bincount(draws, minlength=6), probs) > 1e-3
    # The same (seed, position) gives the same draw alone, in another batch or at another row.
    alone = _draws(probs, seeds[123:124], torch.tensor([7]), 0)
    assert alone.item() == draws[123].item()
    shuffled = seeds.flip(0)
    assert torch.equal(_draws(probs, shuffled, torch.full_like(seeds, 7), 0), draws.flip(0))
    # Another position, or another stream, is another draw.
    assert (_draws(probs, seeds, torch.full_like(seeds, 8), 0) != draws).float().mean() > 0.3
    assert (_draws(probs, seeds, torch.full_like(seeds, 7), STREAM_DRAFT) != draws).float().mean() > 0.3
    # Stream 0 is the sampler's own seeded draw: the same noise, hence the same token.
    noise = seeded_exponentials(seeds[:50], torch.full((50,), 7), 6)
    assert torch.equal((probs / noise).argmax(-1), draws[:50])


def test_rejection_sampling_with_a_bad_draft_keeps_the_targets_distribution():
    """A draft that favours what the target rarely says: most guesses are rejected, yet the emitted tokens
    at each position follow the target's distribution (chi-square over thousands of draws)."""
    n, k = 20000, 2
    p = torch.tensor([[0.45, 0.25, 0.15, 0.1, 0.05, 0.0],
                      [0.05, 0.1, 0.5, 0.05, 0.1, 0.2],
                      [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]])  # [K+1, V]: the target after 0, 1, 2 guesses
    q = torch.tensor([[0.02, 0.03, 0.05, 0.1, 0.3, 0.5],
                      [0.4, 0.3, 0.05, 0.2, 0.05, 0.0]])  # [K, V]: the draft, mostly wrong
    seeds = torch.arange(n) * 7919
    start = torch.full((n,), 11)
    draft = torch.stack([_draws(q[i], seeds, start + i, STREAM_DRAFT) for i in range(k)], 1)  # [n, K]
    accept_u = torch.cat([uniforms(stream_keys(seeds, start + i, STREAM_ACCEPT), 1) for i in range(k)], 1)
    residual_keys = torch.stack([stream_keys(seeds, start + i) for i in range(k + 1)], 1)
    tokens, emitted = rejection_sample(p.expand(n, -1, -1), draft, q.expand(n, -1, -1),
                                       torch.full((n,), k), accept_u, residual_keys)
    accept_rate = ((emitted - 1).sum() / (n * k)).item()
    expected_first = torch.minimum(p[0], q[0]).sum().item()  # P(first guess kept) = sum min(p, q)
    assert expected_first < 0.35 and abs((emitted > 1).float().mean().item() - expected_first) < 0.02
    assert accept_rate < 0.35
    for pos in range(k + 1):
        reached = emitted > pos
        counts = torch.bincount(tokens[reached, pos], minlength=6)
        assert chi_square_p_value(counts, p[pos]) > 1e-3, (pos, counts)
    # A wrong sampler fails the same test: emitting the draft's guesses unchecked follows q, not p.
    assert chi_square_p_value(torch.bincount(draft[:, 0], minlength=6), p[0] + 1e-9) < 1e-6


def test_point_mass_acceptance_with_temperature_is_the_targets_draw():
    """A deterministic guess is kept exactly when the target's seeded draw equals it, so the emitted tokens
    are the tokens the target draws alone, whatever was guessed."""
    probs = torch.tensor([0.3, 0.3, 0.2, 0.2])
    seeds = torch.arange(5000)
    target = torch.stack([_draws(probs, seeds, torch.full_like(seeds, i), 0) for i in range(4)], 1)
    guesses = torch.randint(0, 4, (5000, 3), generator=torch.Generator().manual_seed(0))
    tokens, emitted = accept_point_mass(target, guesses, torch.full((5000,), 3))
    for b in range(0, 5000, 97):
        assert tokens[b, :emitted[b]].tolist() == target[b, :emitted[b]].tolist()
    assert abs((emitted > 1).float().mean().item() - 0.25) < 0.03  # P(keep) = sum_x p(x) * 1/4


# -- bad settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,match", [
    (("beam", 4), "Unknown speculative method"),
    (("ngram", 0), "from 1 to 16"),
    (("ngram", 1000), "from 1 to 16"),
    (("draft", 4), "needs one"),
])
def test_bad_settings_are_one_sentence(args, match):
    with pytest.raises(RuvonError, match=match):
        check_speculative(*args)


# -- in the engine: the same tokens as without speculation ----------------------------------------------

CPU = torch.device("cpu")
# Prompts whose continuation may copy from them (the n-gram proposer's case), and one that does not.
COPY = "Repeat the list: apples, pears, plums, figs, dates. Again: apples, pears, plums, figs, dates. Again: apples,"
FREE = "The weather in the mountains"


@pytest.fixture(scope="module")
def bundles():
    return {name: load_model(name, CPU, torch.float32) for name in ("gpt2-random", "smollm2-135m")}


@pytest.fixture(scope="module")
def bad_draft():
    """gpt2-random with noise on its weights: the same tokenizer, other guesses (acceptance well below 1)."""
    bundle = load_model("gpt2-random", CPU, torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in bundle.model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * 0.3)
    return bundle


def make_engine(bundle, blocks=64, block_size=16, **kw):
    return Engine(bundle, "sdpa", block_size=block_size,
                  kv_cache_memory=blocks * bytes_per_block(bundle.config, block_size, torch.float32), **kw)


def tokens_of(outputs):
    return [o.token_ids for o in outputs]


@pytest.mark.parametrize("name", ["gpt2-random", "smollm2-135m"])
def test_ngram_greedy_equals_plain_decoding_and_speculates(bundles, name):
    bundle = bundles[name]
    sampling = SamplingParams(max_tokens=23, ignore_eos=True)
    want = tokens_of(make_engine(bundle).generate([COPY, FREE], sampling))
    eng = make_engine(bundle, speculative="ngram", num_speculative_tokens=4)
    assert tokens_of(eng.generate([COPY, FREE], sampling)) == want
    stats = eng.speculator.stats
    assert stats.num_accepted_tokens > 0 and stats.mean_tokens_per_step > 1
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_draft_greedy_equals_plain_decoding_with_a_bad_draft(bundles, bad_draft):
    bundle = bundles["gpt2-random"]
    sampling = SamplingParams(max_tokens=21, ignore_eos=True)
    want = tokens_of(make_engine(bundle).generate([COPY, FREE], sampling))
    eng = make_engine(bundle, speculative="draft", num_speculative_tokens=3, draft_model=bad_draft)
    assert tokens_of(eng.generate([COPY, FREE], sampling)) == want
    stats = eng.speculator.stats
    # Some guesses kept, some rejected: both paths ran.
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens, stats
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
    # The draft is level with every sequence once they are gone: its cache is empty again.
    draft_blocks = eng.speculator.draft.block_manager
    assert draft_blocks.num_free_blocks == draft_blocks.num_blocks


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_requests_finishing_mid_guess_stop_where_plain_decoding_stops(bundles, method):
    """EOS, a stop string and max_tokens falling inside a step's accepted guesses end exactly as without
    speculation, in the text, the finish reason and the stream. SmolLM2 continues COPY by copying it, and a
    draft equal to the target has every guess accepted, so the stops land inside accepted guesses."""
    bundle = bundles["smollm2-135m"]
    plain = make_engine(bundle).generate([COPY], SamplingParams(max_tokens=24, ignore_eos=True))[0]
    eos = plain.token_ids[9]  # a token the model produces mid-output becomes EOS
    stop_text = bundle.tokenizer.decode(plain.token_ids[6:8])
    bundle_eos = dataclasses.replace(bundle, eos_token_ids=frozenset({eos}))
    params = [SamplingParams(max_tokens=24), SamplingParams(max_tokens=24, stop=(stop_text,), ignore_eos=True),
              SamplingParams(max_tokens=13, ignore_eos=True)]
    prompts = [COPY, COPY, COPY + " figs"]
    # Both runs stream (on_output), so both detokenize incrementally: compare like with like.
    want = make_engine(bundle_eos).generate(prompts, params, on_output=lambda o: None)
    assert want[0].finish_reason == "stop" and len(want[0].token_ids) == plain.token_ids.index(eos) + 1
    spec = {"speculative": method, "num_speculative_tokens": 4, "draft_model": bundle if method == "draft" else None}
    eng = make_engine(bundle_eos, **spec)
    streamed: dict[str, list[int]] = {}
    got = eng.generate(prompts, params, on_output=lambda o: streamed.setdefault(o.request_id, []).extend(
        o.new_token_ids))
    assert [(o.token_ids, o.text, o.finish_reason) for o in got] == [
        (o.token_ids, o.text, o.finish_reason) for o in want]
    assert [streamed[o.request_id] for o in got] == [o.token_ids for o in got]  # the stream says the same
    assert eng.speculator.stats.mean_tokens_per_step > 2
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_speculation_under_cache_pressure_and_preemption(bundles):
    """A batch of 2 in 3 blocks of cache: requests queue and are preempted; tokens as without speculation."""
    bundle = bundles["gpt2-random"]
    prompts = ["Once upon a time", "The capital of France is a city where the river", "Hello"]
    sampling = SamplingParams(max_tokens=20, ignore_eos=True)
    want = tokens_of(make_engine(bundle).generate(prompts, sampling))
    eng = make_engine(bundle, blocks=3, max_batch_size=2, speculative="ngram")
    assert tokens_of(eng.generate(prompts, sampling)) == want
    assert eng.scheduler.num_preemptions >= 1 and eng.speculator.stats.num_accepted_tokens > 0
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_a_seeded_request_gives_the_same_tokens_alone_or_batched(bundles, bad_draft, method):
    bundle = bundles["gpt2-random"]
    seeded = SamplingParams(temperature=0.8, top_k=50, seed=1234, max_tokens=16, ignore_eos=True, logprobs=2)
    spec = {"speculative": method, "num_speculative_tokens": 3, "draft_model": bad_draft if method == "draft" else None}
    alone = make_engine(bundle, **spec).generate([COPY], seeded)[0]
    others = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    batched = make_engine(bundle, **spec).generate([FREE, COPY, FREE], [others, seeded, others])[1]
    assert batched.token_ids == alone.token_ids
    assert [lp.token_id for lp in alone.logprobs] == alone.token_ids
    assert [lp.logprob for lp in batched.logprobs] == pytest.approx([lp.logprob for lp in alone.logprobs], abs=1e-4)
    if method == "ngram":  # a deterministic guess is kept exactly when the target's own draw equals it
        assert alone.token_ids == make_engine(bundle).generate([COPY], seeded)[0].token_ids


def test_a_draft_with_another_vocabulary_is_refused_in_one_sentence(bundles):
    with pytest.raises(RuvonError, match="shares the target's tokenizer"):
        make_engine(bundles["smollm2-135m"], speculative="draft", draft_model=bundles["gpt2-random"])


def test_metrics_export_the_spec_decode_counters():
    from ruvoninference.engine.speculative import SpecStats
    from ruvoninference.server.metrics import ServerMetrics

    stats = SpecStats(num_drafts=3, num_draft_tokens=12, num_accepted_tokens=7, num_emitted_tokens=10)
    metrics = ServerMetrics("m")
    metrics.read_spec_decode_from(lambda: stats)
    text = metrics.render()[0].decode()
    assert 'ruvon:spec_decode_num_accepted_tokens_total{model_name="m"} 7.0' in text
    assert 'ruvon:spec_decode_num_draft_tokens_total{model_name="m"} 12.0' in text
    off = ServerMetrics("m")
    off.read_spec_decode_from(lambda: None)
    assert "spec_decode" not in off.render()[0].decode()
