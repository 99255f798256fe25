"""Our own compact model definitions, shaped for the engine.

transformers' models take padded `[batch, seq]` tensors and manage their own caches. The engine instead runs
one step over T tokens of many sequences flattened together, and keeps K and V in its paged cache. So each
family (gpt2.py, llama.py, qwen3.py, a page each) is written here as a function of `(input_ids [T],
positions [T], attention)`: the model computes projections, norms and RoPE, and hands q, k, v to the
`attention` callable the engine passes in, which stores them and attends. The weights are the very tensors
transformers loads (`weights.load_pretrained`), renamed, with q/k/v and gate/up fused into one matmul each.

    bundle = load_model("smollm2-135m", device=torch.device("cpu"), dtype=torch.float32)
    hidden = bundle.model(input_ids, positions, attention)   # (T,), (T,) -> (T, C)
    logits = bundle.model.compute_logits(hidden[last_rows])   # (N, C) -> (N, V)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ruvoninference import weights
from ruvoninference.models import gpt2, llama, qwen3, seeded
from ruvoninference.models.config import SUPPORTED_FAMILIES, ModelConfig
from ruvoninference.models.layers import AttentionFn, CausalLM

__all__ = [
    "SUPPORTED_FAMILIES",
    "AttentionFn",
    "CausalLM",
    "ModelBundle",
    "ModelConfig",
    "from_transformers",
    "load_model",
    "model_config",
]  # fmt: skip

_FAMILIES = {
    "gpt2": (gpt2.GPT2, gpt2.convert_state_dict),
    "llama": (llama.Llama, llama.convert_state_dict),
    "qwen3": (qwen3.Qwen3, qwen3.convert_state_dict),
}


@dataclass
class ModelBundle:
    """A model ready for the engine, with what the engine needs to know about it."""

    model: CausalLM
    tokenizer: object  # a transformers tokenizer
    name: str
    config: ModelConfig
    context_length: int  # the longest prompt + generation the positions allow
    eos_token_ids: frozenset[int]
    random_weights: bool
    device: torch.device
    dtype: torch.dtype


Shard = Callable[[CausalLM], dict[str, Callable[[torch.Tensor], torch.Tensor]]]
"""`shard(model) -> {parameter name: cut}`: cuts a model to one tensor-parallel rank's share, in place, and
says how a full tensor of each cut parameter is cut (`parallel.shard.shard_model` with its group bound)."""


def load_model(
    name: str = weights.DEFAULT_MODEL,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: weights.ProgressCallback | None = None,
    shard: Shard | None = None,
) -> ModelBundle:
    """Load an embedded model, a Hub id or a local folder of a supported family into our model code.

    The family is checked from the config before any weight is read, so an unsupported model fails fast.
    With `shard`, the model is cut before it goes to the device, so each rank's device holds only its slice.
    """
    device = torch.device(device)
    if name in seeded.SEEDED_MODELS:
        return _load_seeded(name, device, dtype, progress, shard)
    hf_config = weights.load_config(name, progress)
    config = ModelConfig.from_hf(hf_config)
    hf_model, tokenizer = weights.load_pretrained(name, "eager", dtype, progress=progress)
    model = from_transformers(hf_model, "cpu" if shard else device, dtype)
    if shard:
        shard(model)
        model.to(device)
    eos = _eos_token_ids(hf_model.generation_config, tokenizer)
    del hf_model  # the tensors we did not fuse or transpose now belong to our model alone
    embedded = weights.EMBEDDED_MODELS.get(name)
    random_weights = embedded is not None and embedded.random_weights
    return ModelBundle(model, tokenizer, name, config, weights.context_length(hf_config), eos, random_weights,
                       device, dtype)


def model_config(name: str, progress: weights.ProgressCallback | None = None) -> ModelConfig:
    """The configuration of `name` without loading a weight."""
    if name in seeded.SEEDED_MODELS:
        return ModelConfig.from_hf(seeded.SEEDED_MODELS[name]())
    return ModelConfig.from_hf(weights.load_config(name, progress))


def _load_seeded(name: str, device: torch.device, dtype: torch.dtype, progress: weights.ProgressCallback | None,
                 shard: Shard | None) -> ModelBundle:
    from transformers import GPT2Tokenizer

    hf_config = seeded.SEEDED_MODELS[name]()
    config = ModelConfig.from_hf(hf_config)
    model_class, _ = _FAMILIES[config.family]
    with torch.device("meta"):
        model = model_class(config)
    full_shapes = {n: p.shape for n, p in model.named_parameters()}
    cuts = shard(model) if shard else {}
    if progress:
        progress(f"Drawing {name}'s seeded weights on {device}", 0, 1)
    seeded.fill_on_device(model, full_shapes, device, dtype, cut=lambda n, t: cuts[n](t) if n in cuts else t)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)  # the RoPE tables follow
    if progress:
        progress(f"Drew {name}'s seeded weights", 1, 1)
    tokenizer = GPT2Tokenizer.from_pretrained(str(weights.gpt2_tokenizer_folder()))
    eos = frozenset([hf_config.eos_token_id])
    return ModelBundle(model, tokenizer, name, config, weights.context_length(hf_config), eos, True, device, dtype)


@torch.no_grad()
def from_transformers(hf_model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> CausalLM:
    """Our model holding a transformers model's weights (shared where no fusion or transpose copies them)."""
    config = ModelConfig.from_hf(hf_model.config)
    model_class, convert = _FAMILIES[config.family]
    with torch.device("meta"):
        model = model_class(config)  # shapes only: no memory, no random init to overwrite
    model.load_state_dict(convert(hf_model.state_dict(), config), strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _eos_token_ids(generation_config, tokenizer) -> frozenset[int]:
    ids = getattr(generation_config, "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return frozenset()
    return frozenset([ids] if isinstance(ids, int) else ids)
