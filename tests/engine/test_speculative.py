"""Speculative decoding: the proposers' matches, exact acceptance (greedy cases, a chi-square test of the
rejection sampler with a deliberately bad draft), batch-independent randomness."""

import random

import pytest
import torch

from ruvoninference.engine.speculative import (
    STREAM_ACCEPT, STREAM_DRAFT, NgramProposer, accept_point_mass, check_speculative, ngram_propose, race,
    rejection_sample, stream_keys,
)
from ruvoninference.engine.sampler import seeded_exponentials, uniforms
from ruvoninference.errors import RuvonError


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
