"""The batched sampler against simple references: float64 definitions and a chi-square test of the draws."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from ruvoninference.engine.sampler import SamplingTensors, sample, seeded_exponentials, uniforms, row_keys
from ruvoninference.sampling import SamplingParams

V = 12


def seq(params, prompt=(1, 2, 3), output=(), eos=(0,)):
    prompt, output = list(prompt), list(output)
    return SimpleNamespace(sampling=params, token_ids=prompt + output, prompt_token_ids=prompt,
                           num_prompt_tokens=len(prompt), num_tokens=len(prompt) + len(output),
                           num_output_tokens=len(output), eos_token_ids=frozenset(eos))


def run(logits, seqs, generator=None):
    return sample(logits, SamplingTensors.from_sequences(seqs, logits.device, logits.shape[1]), generator)


def chi_square_critical(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty: the chi-square quantile at the normal quantile z (3.719: p = 1e-4, one-sided)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """softmax(logits / T) after top-k and top-p, the textbook way, in float64."""
    x = logits.double() / p.temperature
    order = x.argsort(descending=True)
    keep = torch.zeros_like(x, dtype=torch.bool)
    mass, probs = 0.0, x.softmax(-1)
    for rank, i in enumerate(order.tolist()):
        if (p.top_k and rank >= p.top_k) or (rank > 0 and mass >= p.top_p):
            break
        keep[i], mass = True, mass + probs[i].item()
    return x.masked_fill(~keep, -math.inf).softmax(-1)


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, top_k=5),
                                    SamplingParams(temperature=0.9, top_p=0.8),
                                    SamplingParams(temperature=1.0, top_k=6, top_p=0.9)])
@pytest.mark.parametrize("seeded", [False, True])
def test_draws_follow_the_filtered_softmax(params, seeded):
    torch.manual_seed(0)
    logits = torch.randn(V) * 2
    n = 6000
    rows = [seq(dataclasses.replace(params, seed=s if seeded else None)) for s in range(n)]
    tokens = run(logits.expand(n, V).clone(), rows, torch.Generator().manual_seed(1)).tokens
    expected = reference_probs(logits, params)
    counts = torch.bincount(tokens, minlength=V).double()
    support = expected > 0
    assert counts[~support].sum() == 0, "a filtered token was drawn"
    stat = ((counts[support] - n * expected[support]) ** 2 / (n * expected[support])).sum().item()
    assert stat < chi_square_critical(int(support.sum()) - 1), (stat, counts, expected)


def test_a_wrong_distribution_fails_the_chi_square():
    """The test above can fail: draws at T=1 judged against T=0.7 are rejected."""
    torch.manual_seed(0)
    logits = torch.randn(V) * 2
    n = 6000
    tokens = run(logits.expand(n, V).clone(), [seq(SamplingParams(temperature=1.0))] * n).tokens
    expected = reference_probs(logits, SamplingParams(temperature=0.7))
    counts = torch.bincount(tokens, minlength=V).double()
    stat = ((counts - n * expected) ** 2 / (n * expected)).sum().item()
    assert stat > chi_square_critical(V - 1)


def test_greedy_rows_take_the_argmax_and_report_the_models_logprobs():
    logits = torch.randn(3, V)
    out = run(logits, [seq(SamplingParams(logprobs=3)), seq(SamplingParams(temperature=1e-40)),
                       seq(SamplingParams(logprobs=0))])
    assert torch.equal(out.tokens, logits.argmax(-1))
    assert out.logprob_rows == [0, 2]
    expected = logits[[0, 2]].log_softmax(-1)
    assert torch.allclose(out.logprobs, expected.gather(1, out.tokens[[0, 2], None])[:, 0])
    top = expected.topk(3)
    assert torch.equal(out.top_ids, top.indices) and torch.allclose(out.top_logprobs, top.values)


def test_no_logprobs_unless_asked():
    out = run(torch.randn(2, V), [seq(SamplingParams())] * 2)
    assert out.logprobs is None and out.top_ids is None


def test_a_seeded_row_gives_the_same_token_in_any_batch():
    torch.manual_seed(0)
    logits = torch.randn(64, V)
    target = SamplingParams(temperature=1.0, seed=1234)
    alone = [run(logits[:1], [seq(target, output=[5] * k)]).tokens.item() for k in range(30)]
    others = [SamplingParams(), SamplingParams(temperature=0.8), SamplingParams(temperature=1.2, seed=7)]
    for batch in (8, 64):
        got = []
        for k in range(30):
            rows = [seq(others[i % 3], output=[4] * (i % 5)) for i in range(batch)]
            rows[0] = seq(target, output=[5] * k)
            block = logits[:batch].clone()
            got.append(run(block, rows, torch.Generator().manual_seed(k)).tokens[0].item())
        assert got == alone
    assert len(set(alone)) > 3  # the position changes the draw


def test_seed_noise_is_deterministic_distinct_and_exponential():
    seeds = torch.tensor([0, 1, 2**63 - 1, -(2**63)], dtype=torch.int64)  # the last: seed 2**63
    pos = torch.tensor([0, 0, 5, 5])
    a, b = seeded_exponentials(seeds, pos, 1000), seeded_exponentials(seeds, pos, 1000)
    assert torch.equal(a, b) and (a > 0).all()
    assert len({tuple(r[:8].tolist()) for r in a}) == 4
    u = uniforms(row_keys(torch.arange(200), torch.zeros(200, dtype=torch.long)), 500).flatten()
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert abs(a.mean().item() - 1.0) < 0.1


def test_extreme_temperature_and_top_p_draw_valid_tokens_beside_others():
    logits = torch.randn(4, V) * 30
    rows = [seq(SamplingParams(temperature=1e-40)), seq(SamplingParams(temperature=1.0, top_p=1e-300)),
            seq(SamplingParams(temperature=1.0, seed=3)), seq(SamplingParams(temperature=100.0, top_k=1))]
    out = run(logits, rows)
    assert out.tokens[0] == logits[0].argmax() and out.tokens[1] == logits[1].argmax()
    assert out.tokens[3] == logits[3].argmax()
    assert ((out.tokens >= 0) & (out.tokens < V)).all()


def reference_penalised(logits, prompt, output, p: SamplingParams):
    """vLLM's definitions, in float64, token by token."""
    x = logits.double().clone()
    for t, b in p.logit_bias.items():
        x[t] += b
    for t in range(len(x)):
        count = output.count(t)
        if t in prompt or count:
            x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
        x[t] -= p.frequency_penalty * count + p.presence_penalty * (count > 0)
    return x


def test_penalties_and_logit_bias_match_the_float64_reference():
    torch.manual_seed(0)
    cases = [(SamplingParams(presence_penalty=1.5), [1, 2], [3, 3, 4]),
             (SamplingParams(frequency_penalty=-0.7, presence_penalty=0.3), [5], [6, 6, 6, 7]),
             (SamplingParams(repetition_penalty=1.8), [1, 8], [2, 9, 9]),
             (SamplingParams(repetition_penalty=0.5, frequency_penalty=2.0, logit_bias={3: 5.0, 11: -100}),
              [3, 4], [4, 4, 10]),
             (SamplingParams(), [1], [2])]
    logits = torch.randn(len(cases), V) * 3
    rows = [seq(p, prompt, out) for p, prompt, out in cases]
    t = SamplingTensors.from_sequences(rows, logits.device, V)
    from ruvoninference.engine.sampler import apply_logit_bias, apply_penalties
    got = apply_penalties(apply_logit_bias(logits, t), t)
    for i, (p, prompt, out) in enumerate(cases):
        assert torch.allclose(got[i].double(), reference_penalised(logits[i], prompt, out, p), atol=1e-5), i
    # and greedy sampling honours them
    assert torch.equal(run(logits, rows).tokens, got.argmax(-1))


def test_min_tokens_holds_eos_back_until_reached():
    logits = torch.full((2, V), -5.0)
    logits[:, 0] = 10.0  # EOS is by far the likeliest
    rows = [seq(SamplingParams(min_tokens=3), output=[4, 4]), seq(SamplingParams(min_tokens=3), output=[4] * 3)]
    tokens = run(logits, rows).tokens.tolist()
    assert tokens[0] != 0 and tokens[1] == 0
