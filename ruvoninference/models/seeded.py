"""Models too big to ship or to initialise on a CPU: seeded random weights made on the device, matrix by matrix.

`qwen3-8b-random` is the published Qwen3-8B architecture (36 layers, 32 query and 8 KV heads of 128 dims,
hidden 4096, MLP 12288, vocabulary 151,936, untied output head): 8.2 billion parameters, about 16 GB in
bf16. Its weights are never written anywhere: every parameter is drawn on the GPU by a seeded generator, in
name order, so the same seed gives the same model on every run of the same GPU type and PyTorch. Like
`qwen3-0.6b-random`, the values are k · 2^-12 for integers k in [-128, 127] (exact in fp32, fp16 and bf16),
norm weights are 1, and the tokenizer is GPT-2's (every GPT-2 id is below Qwen's vocabulary size): the
text is noise, but shapes, FLOPs, memory and timings are Qwen3-8B's.

A tensor-parallel rank draws each full matrix (one at a time) and keeps only its slice (`cut`), so a rank
never holds more than its share plus one matrix, and every rank's slices are cut from the same model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

QWEN3_8B = "qwen3-8b-random"
SEED = 0


def qwen3_8b_config():
    """The published Qwen3-8B config, with GPT-2's end-of-text token as BOS/EOS (the tokenizer is GPT-2's)."""
    from transformers import Qwen3Config

    eos = 50256  # GPT-2's <|endoftext|>
    return Qwen3Config(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, rms_norm_eps=1e-6,
        tie_word_embeddings=False, hidden_act="silu", bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip


SEEDED_MODELS = {QWEN3_8B: qwen3_8b_config}
SEEDED_DESCRIPTIONS = {
    QWEN3_8B: "Qwen3-8B architecture with seeded random weights made on the GPU (about 16 GB in bf16)",
}


@torch.no_grad()
def fill_on_device(model: torch.nn.Module, full_shapes: dict[str, torch.Size], device: torch.device,
                   dtype: torch.dtype, seed: int = SEED,
                   cut: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, t: t) -> None:
    """Give a model built on the meta device real weights, drawn on `device` in name order.

    `full_shapes` are the unsharded shapes (the draws do not depend on how the model is cut); `cut(name,
    full)` returns the part this process keeps. Names ending in "norm" are norm weights (1), "bias" 0.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    for name in sorted(full_shapes):
        shape = full_shapes[name]
        if name.endswith(("norm", "bias")):
            full = torch.full(shape, 0.0 if name.endswith("bias") else 1.0, device=device, dtype=dtype)
        else:
            ints = torch.randint(-128, 128, shape, generator=generator, device=device, dtype=torch.int8)
            full = ints.to(dtype).mul_(2.0**-12)
            del ints
        part = cut(name, full)
        parent_path, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, attr, torch.nn.Parameter(part, requires_grad=False))
        del full, part
