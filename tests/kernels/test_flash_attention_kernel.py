"""Our Triton kernel against a float64 reference.

On a CPU these run under the Triton interpreter (small shapes, fp16 only: the interpreter's bf16 dot is not
trustworthy); on a GPU the same tests run compiled, and the `gpu` ones add bf16 and full sizes.
"""

import pytest
import torch

from conftest import CUDA
from ruvoninference.kernels.flash_attention import flash_attention_triton, reference_attention

DEVICE = "cuda" if CUDA else "cpu"
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 1e-2}


def rel_error(out, ref):
    assert not torch.isnan(out).any(), "NaN in the kernel's output"
    return ((out.double() - ref).norm() / ref.norm()).item()


def check(b, hq, hkv, nq, nkv, d, causal, dtype=torch.float16, mask=None, layout="bhnd"):
    gen = torch.Generator(device=DEVICE).manual_seed(hash((b, hq, hkv, nq, nkv, d, causal)) % 2**31)

    def rand(h, n):
        if layout == "bnhd":  # the layout transformers hands over: a transposed view of [b, n, h, d]
            return torch.randn(b, n, h, d, generator=gen, device=DEVICE, dtype=dtype).transpose(1, 2)
        return torch.randn(b, h, n, d, generator=gen, device=DEVICE, dtype=dtype)

    q, k, v = rand(hq, nq), rand(hkv, nkv), rand(hkv, nkv)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    flash_attention_triton(q, k, v, causal=causal, mask=mask, out=out)
    ref = reference_attention(q, k, v, causal=causal, mask=mask)
    err = rel_error(out, ref)
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 7, 129])
def test_odd_lengths(n, causal):
    check(1, 2, 2, n, n, 64, causal)


@pytest.mark.parametrize("causal", [False, True])
def test_long_ragged_sequence(causal):
    check(1, 1, 1, 1000, 1000, 32, causal)


@pytest.mark.parametrize("d", [32, 64, 96, 128, 256])
def test_every_head_dim(d):
    check(1, 2, 1, 40, 40, d, causal=True)


@pytest.mark.parametrize("nq,nkv", [(1, 77), (5, 77), (33, 100)])
@pytest.mark.parametrize("causal", [False, True])
def test_fewer_queries_than_keys_aligns_causal_bottom_right(nq, nkv, causal):
    check(2, 3, 3, nq, nkv, 64, causal)


def test_grouped_query_attention_smollm2_shape():
    check(2, 9, 3, 37, 37, 64, causal=True)  # SmolLM2: 9 query heads share 3 key/value heads


def test_strided_transformers_layout_without_copies():
    check(2, 4, 2, 50, 50, 64, causal=True, layout="bnhd")


def test_padding_mask():
    b, n = 2, 24
    mask = torch.ones(b, 1, n, n, dtype=torch.bool, device=DEVICE).tril()
    mask[0, :, :, :5] = False  # left padding of 5 in the first sequence
    mask[0, :, :5, 0] = True  # padded queries attend to something (as transformers' mask lets them)
    check(b, 2, 2, n, n, 64, causal=True, mask=mask)


def test_rows_with_no_visible_key_give_zeros_not_nan():
    q = torch.randn(1, 1, 20, 32, dtype=torch.float16, device=DEVICE)
    k = torch.randn(1, 1, 4, 32, dtype=torch.float16, device=DEVICE)
    out = flash_attention_triton(q, k, k.clone(), causal=True)  # 20 queries, 4 keys: the first 16 see none
    assert not torch.isnan(out).any()
    assert out[0, 0, :16].abs().max() == 0
    torch.testing.assert_close(out[0, 0, 16:].double(), reference_attention(q, k, k, causal=True)[0, 0, 16:],
                               atol=5e-3, rtol=5e-3)


def test_rejects_what_it_cannot_do():
    q = torch.randn(1, 3, 8, 64, dtype=torch.float16, device=DEVICE)
    k = torch.randn(1, 2, 8, 64, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="multiple"):
        flash_attention_triton(q, k, k)
    with pytest.raises(ValueError, match="float16 and bfloat16"):
        flash_attention_triton(q.float(), k.float(), k.float())
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention_triton(q[..., :48], k[..., :48], k[..., :48])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 64, 96, 128, 256])
@pytest.mark.parametrize("tma", ["1", "0"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq,nkv", [(1, 1), (7, 7), (129, 129), (1000, 1000), (1, 1000), (300, 1000), (2048, 2048)])
def test_full_size_on_gpu(dtype, d, causal, nq, nkv, tma, monkeypatch):
    monkeypatch.setenv("RUVON_FLASH_TMA", tma)
    check(2, 8, 2, nq, nkv, d, causal, dtype=dtype, layout="bnhd")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_long_sequence_on_gpu(dtype):
    check(1, 4, 4, 8192, 8192, 128, True, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("tma", ["1", "0"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_autotune_tile_is_correct(causal, tma, monkeypatch):
    """The autotuner may pick any tile; each must compute the same function (ragged n, GQA, strided)."""
    from ruvoninference.kernels.flash_attention import all_configs

    monkeypatch.setenv("RUVON_FLASH_TMA", tma)  # Hopper's tensor-descriptor loads, and the pointer loads

    for nq, nkv in [(1, 300), (300, 300), (200, 1000)]:
        gen = torch.Generator(device=DEVICE).manual_seed(nq + nkv)
        q = torch.randn(2, 1000, 8, 64, generator=gen, device=DEVICE, dtype=torch.bfloat16)[:, :nq].transpose(1, 2)
        k = torch.randn(2, nkv, 2, 64, generator=gen, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
        v = torch.randn_like(k)
        ref = reference_attention(q, k, v, causal=causal)
        for config in all_configs():
            out = torch.full_like(q, float("nan"))
            flash_attention_triton(q, k, v, causal=causal, out=out, config=config)
            assert rel_error(out, ref) < TOLERANCE[torch.bfloat16], f"{config} at n_q={nq}, n_kv={nkv}"
