"""SamplingParams: what a request may ask for, and the one-sentence refusals of what it may not."""

import pytest

from ruvoninference.errors import RuvonError
from ruvoninference.sampling import SamplingParams


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -0.1}, {"temperature": float("nan")}, {"temperature": float("inf")}, {"top_k": -1},
     {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": float("nan")}, {"max_tokens": 0}, {"logprobs": -1},
     {"logprobs": 21}, {"seed": -1}, {"seed": 2**64}, {"seed": 1.5}, {"presence_penalty": 2.5},
     {"frequency_penalty": -5.0}, {"frequency_penalty": float("nan")}, {"repetition_penalty": 0.0},
     {"min_tokens": -1}, {"min_tokens": 17}, {"logit_bias": {5: 101.0}}, {"logit_bias": {-1: 1.0}},
     {"logit_bias": {"x": 1.0}}, {"stop": ("",)}, {"stop": ""}],
)
def test_bad_values_are_user_errors(kwargs):
    with pytest.raises(RuvonError) as err:
        SamplingParams(**kwargs)
    assert str(err.value).endswith(".") and "\n" not in str(err.value)


def test_ranges_accept_their_limits():
    SamplingParams(seed=0), SamplingParams(seed=2**64 - 1), SamplingParams(presence_penalty=-2.0)
    SamplingParams(top_p=1e-300, temperature=1e-40, min_tokens=16, logit_bias={"7": -100})
    assert SamplingParams(logit_bias={"7": 3}).logit_bias == {7: 3.0}


def test_tiny_temperatures_are_greedy():
    assert SamplingParams(temperature=1e-40).greedy and not SamplingParams(temperature=1e-3).greedy


def test_logit_bias_token_ids_are_checked_against_the_vocabulary():
    with pytest.raises(RuvonError, match="outside the model's vocabulary"):
        SamplingParams(logit_bias={50: 1.0}).check_vocabulary(50)


def test_stop_accepts_one_string():
    assert SamplingParams(stop="END").stop == ("END",)
