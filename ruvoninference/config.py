"""Where the engine runs: device and dtype, resolved once from what the user asked for."""

from __future__ import annotations

import torch

from ruvoninference.errors import RuvonError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_device(device: str | None) -> torch.device:
    """`None` picks CUDA when present; asking for CUDA without it is a user error, not a silent CPU run."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise RuvonError(f"Unknown device '{device}'; use 'cpu' or 'cuda'.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuvonError("Device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu.")
    if resolved.type not in ("cpu", "cuda"):
        raise RuvonError(f"Device '{device}' is not supported; use 'cpu' or 'cuda'.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on the CPU (fast and exact there); fp16 on CUDA, which every backend, FlashAttention-2 included, runs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise RuvonError(f"Unknown dtype '{dtype}'; use float32, float16 or bfloat16.") from None


def dtype_name(dtype: torch.dtype) -> str:
    """'float16' for torch.float16: the name users type and results record."""
    return str(dtype).removeprefix("torch.")
