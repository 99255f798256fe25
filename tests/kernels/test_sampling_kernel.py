"""The fused draw (kernels/sampling.py) against the PyTorch reference of the same formula, on the same noise.

On the CPU the kernel runs under Triton's interpreter (tests/conftest.py); on a GPU, for real."""

import pytest
import torch

from ruvoninference.engine.sampler import SamplingTensors, draw_keys, row_keys, sample, uniforms
from ruvoninference.kernels.sampling import gumbel_argmax
from ruvoninference.sampling import SamplingParams

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(logits, inv_temperature, noise_scale, keys):
    """argmax(logits / T - log E) in float64, E = -log(u) from the sampler's hash."""
    u = uniforms(keys.cpu(), logits.shape[1]).double()
    scores = logits.cpu().double() * inv_temperature.cpu().double()[:, None]
    scores = scores - noise_scale.cpu().double()[:, None] * torch.log(-torch.log(u))
    return scores.argmax(-1)


@pytest.mark.parametrize("vocab,block", [(50, 16), (300, 64)])  # several tiles and a ragged last one
def test_the_kernel_draws_what_the_reference_draws(vocab, block):
    torch.manual_seed(0)
    n = 24
    logits = (torch.randn(n, vocab) * 3).to(DEVICE)
    inv = torch.rand(n).add(0.3).to(DEVICE)
    scale = torch.tensor([0.0, 1.0] * (n // 2)).to(DEVICE)  # greedy and sampled rows
    keys = torch.randint(0, 1 << 32, (n,), dtype=torch.int64).to(DEVICE)
    got = gumbel_argmax(logits, inv, scale, keys, block=block).cpu()
    want = reference(logits, inv, scale, keys)
    assert (got == want).float().mean() >= 0.95  # float32 vs float64 can flip a near-tie, rarely
    assert torch.equal(got[::2], logits[::2].argmax(-1).cpu())  # greedy rows: exactly the argmax
    assert ((got >= 0) & (got < vocab)).all()


def test_bfloat16_logits_and_masked_entries():
    logits = torch.randn(4, 40)
    logits[:, ::2] = float("-inf")  # filtered tokens are never drawn
    keys = torch.arange(4, dtype=torch.int64)
    got = gumbel_argmax(logits.to(torch.bfloat16).to(DEVICE), torch.ones(4).to(DEVICE), torch.ones(4).to(DEVICE),
                        keys.to(DEVICE), block=16).cpu()
    assert (got % 2 == 1).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_sampled_rows_follow_the_softmax_and_seeded_rows_repeat():
    from types import SimpleNamespace

    vocab, n = 12, 20000
    logits = torch.randn(vocab, device="cuda") * 2
    params = SamplingParams(temperature=0.8)
    rows = [SimpleNamespace(sampling=params, token_ids=[1], prompt_token_ids=[1], num_prompt_tokens=1,
                            num_tokens=1, num_output_tokens=0, eos_token_ids=frozenset())] * n
    t = SamplingTensors.from_sequences(rows, torch.device("cuda"), vocab)
    tokens = sample(logits.expand(n, vocab).contiguous(), t, torch.Generator("cuda").manual_seed(0)).tokens
    expected = (logits.double() / 0.8).softmax(-1).cpu()
    counts = torch.bincount(tokens.cpu(), minlength=vocab).double()
    stat = ((counts - n * expected) ** 2 / (n * expected)).sum().item()
    assert stat < 40  # chi-square, 11 degrees of freedom: p < 1e-4 beyond 37.4
    seeded = SamplingParams(temperature=1.0, seed=9)
    one = [SimpleNamespace(sampling=seeded, token_ids=[1], prompt_token_ids=[1], num_prompt_tokens=1,
                           num_tokens=1, num_output_tokens=0, eos_token_ids=frozenset())]
    t1 = SamplingTensors.from_sequences(one, torch.device("cuda"), vocab)
    assert torch.equal(draw_keys(t1, 1, torch.device("cuda"), None), row_keys(t1.seeds, t1.positions))
    a = sample(logits[None].contiguous(), t1).tokens.item()
    assert all(sample(logits[None].contiguous(), t1).tokens.item() == a for _ in range(5))
