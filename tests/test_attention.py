import pytest
import torch

from ruvoninference.attention import (
    AttentionImplementation,
    check_implementation,
    get_available_implementations,
    load_model_with_attention,
    parse_implementation,
    unavailable_reasons,
)
from ruvoninference.errors import RuvonError


def test_cpu_has_eager_and_sdpa_and_says_why_not_the_others():
    assert get_available_implementations("cpu") == [AttentionImplementation.EAGER, AttentionImplementation.SDPA]
    reasons = unavailable_reasons("cpu")
    assert "CUDA" in reasons[AttentionImplementation.FLASH_ATTENTION_2]
    assert "CUDA" in reasons[AttentionImplementation.TRITON]


def test_unknown_and_unavailable_implementations_are_user_errors():
    with pytest.raises(RuvonError, match="choose one of"):
        parse_implementation("flash3")
    with pytest.raises(RuvonError, match="unavailable"):
        check_implementation(AttentionImplementation.FLASH_ATTENTION_2, torch.device("cpu"), torch.float16)


@pytest.mark.gpu
def test_fused_backends_refuse_fp32_on_cuda():
    with pytest.raises(RuvonError, match="float16 and bfloat16"):
        check_implementation(AttentionImplementation.TRITON, torch.device("cuda"), torch.float32)


def test_eager_and_sdpa_agree_on_logits(gpt2_sdpa):
    eager = load_model_with_attention("gpt2-random", "eager", device="cpu")
    assert eager.model.config._attn_implementation == "eager"
    assert gpt2_sdpa.model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[7454, 2402, 257, 640, 11, 612]])
    with torch.no_grad():
        a, b = eager.model(ids).logits, gpt2_sdpa.model(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_kernel_names_and_the_lines_flash_prints():
    from ruvon_cli.flash_cmd import ran_as_lines
    from ruvoninference.bench.prefill import _kernel_name

    assert _kernel_name("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 4>, true>(Flash_fwd_params)") \
        == "flash::flash_fwd_kernel"
    assert _kernel_name("void (anonymous namespace)::softmax_warp_forward<float, 4>(float*, int)") \
        == "(anonymous namespace)::softmax_warp_forward"
    assert _kernel_name("_flash_attention_forward") == "_flash_attention_forward"
    gpu = {"implementation": "triton", "sequence_length": 512, "attention_ops": [],
           "attention_kernels": [{"name": "_flash_attention_forward", "launches": 30, "cuda_us": 410.0}]}
    assert ran_as_lines(gpu) == ["triton attention at 512 tokens ran the GPU kernels: "
                                 "_flash_attention_forward x30 (0.41 ms)"]
    cpu = {"implementation": "eager", "sequence_length": 16, "attention_ops": ["aten::_softmax", "aten::bmm"],
           "attention_kernels": None}
    assert ran_as_lines(cpu) == ["eager attention at 16 tokens ran the operators: _softmax, bmm"]
    assert ran_as_lines({**cpu, "attention_ops": None}) == []


def test_paged_sdpa_never_lets_torch_pick_cudnn(monkeypatch):
    """Every sdpa call of the paged backend runs with cuDNN's kernel excluded (its host cost per call is
    milliseconds on an H200 for shapes it has not seen), and the setting does not leak out of the call."""
    import torch.nn.functional as F

    from ruvoninference.attention.paged import AttentionMetadata, DecodeMetadata, PagedAttention, PrefillMetadata

    seen = []
    real = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    blocks, bs, hkv, hq, d = 4, 4, 2, 4, 8
    k_cache, v_cache = torch.zeros(blocks + 1, bs, hkv, d), torch.zeros(blocks + 1, bs, hkv, d)
    attention = PagedAttention(AttentionImplementation.SDPA, [k_cache], [v_cache], d ** -0.5)
    # one prompt of 3 tokens (blocks 0) and one decode of a 5-token sequence (blocks 1, 2)
    t = torch.tensor
    attention.meta = AttentionMetadata(
        t([0, 1, 2, 8]), 3,
        PrefillMetadata(t([0, 3], dtype=torch.int32), t([0, 3], dtype=torch.int32), 3, 3,
                        t([[0]], dtype=torch.int32), t([3], dtype=torch.int32), [3], [3]),
        DecodeMetadata(t([[1, 2]], dtype=torch.int32), t([5], dtype=torch.int32), 8))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    out = attention(0, torch.randn(4, hq, d), torch.randn(4, hkv, d), torch.randn(4, hkv, d))
    assert out.shape == (4, hq, d) and torch.isfinite(out).all()
    assert seen == [False, False]  # the prompt's call and the decode's
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
