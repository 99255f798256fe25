"""Our model code against transformers' on tiny random models of each family, in fp32.

Every parameter (norms and biases too) is randomized, so a swapped or mis-transposed tensor shows. The
attention is the float64 reference in conftest.py; the engine's paged backends are tested against it
elsewhere.
"""

import pytest
import torch

from ruvoninference.models import from_transformers

PROMPT = [5, 17, 200, 3, 99, 42, 7, 128, 64, 1, 250]


@pytest.fixture(scope="module")
def pair(tiny_name, tiny_transformers):
    """(transformers model, our model) with the same random weights, for each of conftest's tiny configs."""
    hf = tiny_transformers(tiny_name)
    return hf, from_transformers(hf, "cpu", torch.float32)


@torch.no_grad()
def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    return hf(torch.tensor([ids])).logits[0]  # (T, V)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_prefill_matches_transformers(pair, reference_attention):
    hf, ours = pair
    attention = reference_attention(ours.config.attn_scale)
    assert_close(attention.run(ours, [("a", PROMPT)]), hf_logits(hf, PROMPT))
    assert attention.calls == ours.config.num_layers


def test_decode_token_by_token_matches_transformers(pair, reference_attention):
    hf, ours = pair
    attention = reference_attention(ours.config.attn_scale)
    expected = hf_logits(hf, PROMPT)
    n = 4
    got = [attention.run(ours, [("a", PROMPT[:n])])]
    for token in PROMPT[n:]:
        got.append(attention.run(ours, [("a", [token])]))  # (1, V) each
    assert_close(torch.cat(got), expected)


def test_flattened_sequences_equal_each_alone(pair, reference_attention):
    """Two sequences of different lengths in one call, then a decode token beside a prefill chunk."""
    hf, ours = pair
    a, b = PROMPT, [9, 8, 7, 6, 5, 4]
    alone_a = reference_attention(ours.config.attn_scale).run(ours, [("a", a[:7])])
    alone_b = reference_attention(ours.config.attn_scale).run(ours, [("b", b[:3])])
    attention = reference_attention(ours.config.attn_scale)
    first = attention.run(ours, [("a", a[:7]), ("b", b[:3])])
    torch.testing.assert_close(first, torch.cat([alone_a, alone_b]), rtol=1e-5, atol=1e-5)
    second = attention.run(ours, [("b", b[3:]), ("a", a[7:8])])  # b's second chunk, a's decode step
    assert_close(second[:3], hf_logits(hf, b)[3:])
    assert_close(second[3:], hf_logits(hf, a[:8])[7:])


def test_forward_leaves_no_state_between_calls(pair, reference_attention):
    """The same step twice gives the same logits: the model itself keeps no cache."""
    _, ours = pair
    first = reference_attention(ours.config.attn_scale).run(ours, [("a", PROMPT)])
    second = reference_attention(ours.config.attn_scale).run(ours, [("a", PROMPT)])
    assert torch.equal(first, second)
