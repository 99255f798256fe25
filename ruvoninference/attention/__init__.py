"""Attention backends and how a model is loaded with one.

The model code (transformers' Llama and GPT-2) calls whatever attention function its config names in
`attn_implementation`. We choose that name; we never patch the model. Four choices:

- `eager`: matmul, softmax, matmul in PyTorch. Materializes the [n, n] score matrix per head: memory grows as n².
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention`, which dispatches to a fused kernel when it can.
- `flash_attention_2`: Tri Dao's CUDA kernels from the `flash-attn` package (CUDA, fp16/bf16 only).
- `triton`: our own FlashAttention kernel (`ruvoninference.kernels.flash_attention`), registered with
  transformers' `AttentionInterface`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import Enum

import torch

from ruvoninference.config import dtype_name, resolve_device, resolve_dtype
from ruvoninference.errors import RuvonError
from ruvoninference.weights import DEFAULT_MODEL, EMBEDDED_MODELS, ProgressCallback, context_length, load_pretrained


class AttentionImplementation(str, Enum):
    EAGER = "eager"
    SDPA = "sdpa"
    FLASH_ATTENTION_2 = "flash_attention_2"
    TRITON = "triton"

    def __str__(self) -> str:
        return self.value


ALL_IMPLEMENTATIONS: tuple[AttentionImplementation, ...] = tuple(AttentionImplementation)


def parse_implementation(value: str | AttentionImplementation) -> AttentionImplementation:
    try:
        return AttentionImplementation(value)
    except ValueError:
        names = ", ".join(i.value for i in ALL_IMPLEMENTATIONS)
        raise RuvonError(f"Unknown attention implementation '{value}'; choose one of: {names}.") from None


def _cuda_reason(device: torch.device | None) -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU and none is visible"
    if device is not None and device.type != "cuda":
        return "needs a CUDA GPU (this run uses the CPU)"
    return None


def unavailable_reasons(device: str | torch.device | None = None) -> dict[AttentionImplementation, str]:
    """Why each implementation that cannot run here cannot: the companion of `get_available_implementations`."""
    dev = resolve_device(device) if isinstance(device, str) or device is None else device
    reasons: dict[AttentionImplementation, str] = {}
    cuda_reason = _cuda_reason(dev)
    if cuda_reason:
        reasons[AttentionImplementation.FLASH_ATTENTION_2] = f"FlashAttention-2 {cuda_reason}"
    elif importlib.util.find_spec("flash_attn") is None:
        reasons[AttentionImplementation.FLASH_ATTENTION_2] = (
            "the flash-attn package is not installed (on a CUDA machine: uv sync --group flash)"
        )
    elif torch.cuda.get_device_capability(dev)[0] < 8:
        reasons[AttentionImplementation.FLASH_ATTENTION_2] = "FlashAttention-2 needs an Ampere or newer GPU"
    if cuda_reason:
        reasons[AttentionImplementation.TRITON] = (
            f"our Triton kernel {cuda_reason} (the Triton interpreter is for tests only)"
        )
    elif importlib.util.find_spec("triton") is None:
        reasons[AttentionImplementation.TRITON] = "the triton package is not installed"
    return reasons


def get_available_implementations(device: str | torch.device | None = None) -> list[AttentionImplementation]:
    """The implementations that can run on `device` (default: CUDA if present, else the CPU)."""
    reasons = unavailable_reasons(device)
    return [impl for impl in ALL_IMPLEMENTATIONS if impl not in reasons]


def check_implementation(
    implementation: AttentionImplementation, device: torch.device, dtype: torch.dtype
) -> None:
    """Raise a one-sentence RuvonError when `implementation` cannot run with this device and dtype."""
    reason = unavailable_reasons(device).get(implementation)
    if reason:
        raise RuvonError(f"Attention implementation '{implementation}' is unavailable: {reason}.")
    fused = (AttentionImplementation.FLASH_ATTENTION_2, AttentionImplementation.TRITON)
    if implementation in fused and dtype not in (torch.float16, torch.bfloat16):
        raise RuvonError(
            f"Attention implementation '{implementation}' supports float16 and bfloat16 only, "
            f"not {dtype_name(dtype)}; pass --dtype float16 or --dtype bfloat16."
        )


@dataclass
class LoadedModel:
    """A model ready to run, with what was chosen to load it."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    implementation: AttentionImplementation
    device: torch.device
    dtype: torch.dtype
    context_length: int
    random_weights: bool


def load_model_with_attention(
    model: str = DEFAULT_MODEL,
    implementation: str | AttentionImplementation = AttentionImplementation.SDPA,
    device: str | torch.device | None = None,
    torch_dtype: str | torch.dtype | None = None,
    progress: ProgressCallback | None = None,
) -> LoadedModel:
    """Load `model` with `implementation` as its attention backend, through transformers' `attn_implementation`."""
    impl = parse_implementation(implementation)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    dtype = resolve_dtype(torch_dtype, dev)
    check_implementation(impl, dev, dtype)
    if impl is AttentionImplementation.TRITON:
        from ruvoninference.attention import triton_backend

        triton_backend.register()
    hf_model, tokenizer = load_pretrained(model, impl.value, dtype, progress=progress)
    hf_model = hf_model.to(dev).eval()
    # Left padding keeps each prompt's last token in the last column, where the next token is read from.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        name=model,
        implementation=impl,
        device=dev,
        dtype=dtype,
        context_length=context_length(hf_model.config),
        random_weights=model in EMBEDDED_MODELS and EMBEDDED_MODELS[model].random_weights,
    )
