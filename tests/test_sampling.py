import pytest
import torch

from ruvoninference.errors import RuvonError
from ruvoninference.sampling import SamplingParams, filter_logits, sample


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -0.1}, {"temperature": float("nan")}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5},
               {"max_tokens": 0}, {"logprobs": -1}, {"logprobs": 21}]
)
def test_bad_values_are_user_errors(kwargs):
    with pytest.raises(RuvonError):
        SamplingParams(**kwargs)


def test_greedy_takes_argmax_and_reports_model_logprob():
    logits = torch.randn(3, 50)
    params = [SamplingParams()] * 3
    drawn = sample(logits, params, [None] * 3)
    tokens, logprobs = drawn.tokens, drawn.logprobs
    assert torch.equal(tokens, logits.argmax(-1))
    expected = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    assert torch.allclose(logprobs, expected)


def test_top_k_limits_the_support():
    logits = torch.randn(100)
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_k=5))
    assert torch.isfinite(kept).sum() == 5
    assert set(torch.nonzero(torch.isfinite(kept)).flatten().tolist()) == set(logits.topk(5).indices.tolist())


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.8))
    assert torch.isfinite(kept).tolist() == [True, True, False, False]
    kept = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.81))
    assert torch.isfinite(kept).tolist() == [True, True, True, False]
    # The most likely token always survives, however small top_p.
    kept = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.01))
    assert torch.isfinite(kept).tolist() == [True, False, False, False]


def test_seeded_sampling_repeats_and_differs_across_seeds():
    logits = torch.zeros(1, 1000)  # uniform: every draw is a coin with 1000 sides

    def draw(seed):
        p = SamplingParams(temperature=1.0, seed=seed)
        gen = p.make_generator(torch.device("cpu"))
        return [sample(logits, [p], [gen]).tokens.item() for _ in range(20)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_temperature_sharpens_towards_greedy():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    p = SamplingParams(temperature=0.05, seed=0)
    gen = p.make_generator(torch.device("cpu"))
    picks = [sample(logits, [p], [gen]).tokens.item() for _ in range(50)]
    assert picks == [0] * 50


def test_top_n_logprobs_are_sorted_and_only_when_asked():
    logits = torch.randn(2, 30)
    assert sample(logits, [SamplingParams()] * 2, [None] * 2).top_ids is None
    drawn = sample(logits, [SamplingParams(logprobs=4), SamplingParams(logprobs=0)], [None] * 2)
    expected = logits.log_softmax(-1).topk(4)
    assert torch.equal(drawn.top_ids, expected.indices) and torch.allclose(drawn.top_logprobs, expected.values)


def test_stop_accepts_one_string_and_drops_empty_ones():
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=("", "x")).stop == ("x",)
