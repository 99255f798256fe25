"""How attention cost grows with the context, per backend.

`AttentionBenchmark.sequence_length_scaling` runs one prefill forward pass of n tokens (the prompt's tokens
repeated up to n) and measures its time and the peak memory it needed above what was allocated before it
(the weights). Eager attention materializes [heads, n, n] scores per layer, so its peak grows as n²; the
fused kernels (SDPA's flash path, FlashAttention-2, ours) keep it linear in n.

On CUDA, time is taken with CUDA events and the peak from the caching allocator; on a CPU, time with a host
clock and the peak from PyTorch's profiler, replaying its allocation and free events (`stats.cpu_peak_allocated`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ruvoninference.attention import AttentionImplementation, LoadedModel, load_model_with_attention
from ruvoninference.errors import RuvonError
from ruvoninference.weights import ProgressCallback
from ruvoninference.stats import cpu_peak_allocated, is_out_of_memory, native_stderr_silenced


# A GPU reaches the lengths where eager attention's n² memory dominates; two CPU cores would take minutes.
DEFAULT_LENGTHS = {"cuda": [512, 1024, 2048, 4096, 8192], "cpu": [128, 256, 512, 1024]}


def default_lengths(device_type: str) -> list[int]:
    return list(DEFAULT_LENGTHS.get(device_type, DEFAULT_LENGTHS["cpu"]))


def lengths_within_context(lengths: list[int], context_length: int, model_name: str) -> tuple[list[int], list[int]]:
    """Split the requested lengths into (usable, left_out) by the model's context.

    A sweep with nothing left to measure is a user error, not an empty table.
    """
    bad = [n for n in lengths if n < 1]
    if bad:
        raise RuvonError(f"Sequence lengths must be at least 1 token; got {bad[0]}.")
    usable = [n for n in lengths if n <= context_length]
    if not usable:
        raise RuvonError(
            f"Every requested length ({', '.join(map(str, lengths))}) exceeds the {context_length}-token context "
            f"of '{model_name}'; ask for --length {min(context_length, 1024)} or less."
        )
    return usable, [n for n in lengths if n > context_length]


@dataclass
class ScalingRow:
    implementation: str
    sequence_length: int
    seconds: float | None  # median over repeats; None when the pass ran out of memory
    tokens_per_s: float | None
    peak_memory_bytes: int | None  # above the memory in use before the pass
    status: str  # "ok" or "OOM"
    # Which attention operators ran (e.g. aten::_scaled_dot_product_flash_attention names SDPA's flash backend)
    # and, on a GPU, which kernels they launched ({"name", "launches", "cuda_us"}, from the profiler);
    # recorded once per implementation, on its first length, so "sdpa" says which kernel it dispatched to.
    attention_ops: list[str] | None = None
    attention_kernels: list[dict] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def tokens_of_length(tokenizer, prompt: str, length: int) -> list[int]:
    """The prompt's tokens repeated and cut to exactly `length` tokens."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise RuvonError("The prompt is empty; give some text to repeat up to each sequence length.")
    return (ids * (length // len(ids) + 1))[:length]


@torch.inference_mode()
def measure_prefill(loaded: LoadedModel, input_ids: list[int], repeats: int = 3, warmup: int = 1) -> tuple[float, int]:
    """Median seconds and peak extra bytes of one prefill forward over `input_ids` (batch 1)."""
    device, model = loaded.device, loaded.model
    ids = torch.tensor([input_ids], device=device)
    kwargs = {"logits_to_keep": 1}

    def once() -> None:
        model(input_ids=ids, use_cache=True, **kwargs)

    for _ in range(warmup):
        once()
    times, peak = [], 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
            peak = max(peak, torch.cuda.max_memory_allocated(device) - before)
        else:
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
    if device.type == "cpu":
        peak = cpu_peak_allocated(once)  # one more pass, profiled, not timed
    return statistics.median(times), peak


# What attention ran is read from the profiler in one pass recorded with Python frames: an operator belongs to
# attention when it is a fused attention operator, or when it runs inside transformers' attention function
# (every backend's is named `*attention_forward`: eager_attention_forward, sdpa_attention_forward, ours
# triton_attention_forward). Of those, the operators named here are listed (unfused attention shows as
# `bmm` and `softmax`; a rotary embedding's `bmm` outside the attention function is not counted).
FUSED_OP_MARKERS = ("scaled_dot_product", "flash", "fmha", "cudnn_attn")
ATTENTION_OP_MARKERS = FUSED_OP_MARKERS + ("attention", "softmax", "aten::bmm", "aten::baddbmm")
ATTENTION_FRAME = "attention_forward"


def _kernel_name(name: str) -> str:
    """A CUDA kernel's name without its return type, template arguments and parameter list."""
    name = name.removeprefix("void ").split("<")[0]
    if name.endswith(")") and "(" in name:
        name = name[: name.rindex("(")]
    return name.strip()


def _is_attention_piece(event) -> bool:
    """Unfused attention's own operators when no Python frame says so (a profiler without frame records):
    softmax, and a batched matmul that contracts over more than one element (QKᵀ over head_dim, PV over the
    keys; a rotary embedding's position matmul contracts over 1)."""
    if event.name in ("aten::softmax", "aten::_softmax"):
        return True
    if event.name == "aten::bmm":
        shapes = event.input_shapes or []
        return bool(shapes and len(shapes[0]) == 3 and shapes[0][2] > 1)
    return False


def _in_attention(event) -> bool:
    if _is_attention_piece(event):
        return True
    while event is not None:
        name = event.name.lower()
        if any(m in name for m in FUSED_OP_MARKERS) or name.endswith(ATTENTION_FRAME):
            return True
        event = event.cpu_parent
    return False


@torch.inference_mode()
def attention_ops(loaded: LoadedModel, input_ids: list[int]) -> tuple[list[str], list[dict] | None]:
    """What one prefill pass ran for attention, read from PyTorch's profiler (one more, untimed pass).

    Returns (operators, kernels). Operators: the attention operators the model called, by their aten names
    (SDPA chooses its kernel at run time from the dtype, shapes, mask and GPU, and the operator says which:
    `_scaled_dot_product_flash_attention`, `_cudnn_attention`, `_efficient_attention`, `_math`; unfused
    attention shows as `bmm` and `softmax`). Kernels (CUDA only, else None): every GPU kernel launched from
    attention, plus our own Triton kernels (which no aten operator launches; found by their names), each
    as {"name", "launches", "cuda_us"} from the profiler's kernel records, not from the backend's name.
    """
    from torch.profiler import ProfilerActivity, profile

    from ruvoninference.kernels import KERNEL_NAMES

    ids = torch.tensor([input_ids], device=loaded.device)
    cuda = loaded.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    # Python frames (with_stack) say which operators ran inside the attention function; no USDT start/stop lines.
    with native_stderr_silenced(), profile(activities=activities, with_stack=True, record_shapes=True) as prof:
        loaded.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        if cuda:
            torch.cuda.synchronize(loaded.device)
    events = prof.events()
    attention = [e for e in events if e.device_type.name == "CPU" and _in_attention(e)]
    ops = sorted({e.name for e in attention if e.name.startswith("aten::")
                  and any(m in e.name.lower() for m in ATTENTION_OP_MARKERS)})
    if not cuda:
        return ops, None
    found: dict[str, dict] = {}

    def add(name: str, us: float) -> None:
        entry = found.setdefault(_kernel_name(name), {"name": _kernel_name(name), "launches": 0, "cuda_us": 0.0})
        entry["launches"] += 1
        entry["cuda_us"] += us

    for e in attention:
        for k in e.kernels:
            if _kernel_name(k.name) not in KERNEL_NAMES:
                add(k.name, k.duration)
    for e in events:
        if e.device_type.name == "CUDA" and _kernel_name(e.name) in KERNEL_NAMES:
            add(e.name, e.time_range.end - e.time_range.start)
    kernels = sorted(found.values(), key=lambda k: -k["cuda_us"])
    for k in kernels:
        k["cuda_us"] = round(k["cuda_us"], 1)
    return ops, kernels


class AttentionBenchmark:
    """Prefill time and peak memory against sequence length, for one model on one device."""

    def __init__(
        self,
        model_name: str,
        device: str | None = None,
        torch_dtype: str | torch.dtype | None = None,
        repeats: int = 3,
        progress: ProgressCallback | None = None,
    ):
        self.model_name, self.device, self.torch_dtype = model_name, device, torch_dtype
        self.repeats, self.progress = repeats, progress

    def load(self, implementation: str | AttentionImplementation) -> LoadedModel:
        return load_model_with_attention(self.model_name, implementation, self.device, self.torch_dtype)

    def sequence_length_scaling(
        self,
        implementation: str | AttentionImplementation,
        prompt: str,
        sequence_lengths: list[int] = [128, 256, 512, 1024],  # noqa: B006 - read only
        loaded: LoadedModel | None = None,
    ) -> list[ScalingRow]:
        loaded = loaded or self.load(implementation)
        for n in sequence_lengths:
            if n < 1 or n > loaded.context_length:
                raise RuvonError(
                    f"Sequence length {n} is outside 1..{loaded.context_length}, the context of '{loaded.name}'."
                )
        rows = []
        for i, n in enumerate(sequence_lengths):
            if self.progress:
                self.progress(f"{loaded.implementation} at {n} tokens", i, len(sequence_lengths))
            ids = tokens_of_length(loaded.tokenizer, prompt, n)
            try:
                seconds, peak = measure_prefill(loaded, ids, repeats=self.repeats)
                ops, kernels = attention_ops(loaded, ids) if i == 0 else (None, None)
                rows.append(ScalingRow(str(loaded.implementation), n, seconds, n / seconds, peak, "ok", ops, kernels))
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                if loaded.device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(ScalingRow(str(loaded.implementation), n, None, None, None, "OOM"))
        if self.progress:
            self.progress(f"{loaded.implementation} done", len(sequence_lengths), len(sequence_lengths))
        return rows
