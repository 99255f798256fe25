"""ruvoninference: an educational LLM inference engine.

Modules, in the order the articles introduce them:

- `weights`: where weights and tokenizers come from (the embedded SmolLM2 GGUF, random-weight GPT-2, the Hub).
- `attention`: the attention backends (eager, SDPA, FlashAttention-2, our Triton kernel) and model loading.
- `kernels.flash_attention`: the Triton FlashAttention kernel itself.
- `kv_cache`: the key/value cache and what it costs in memory.
- `sampling`: turning logits into the next token (greedy, temperature, top-k, top-p).
- `generation`: the prefill/decode loop built on the three above.
- `stats`: what a run measured (TTFT, tokens/s, peak memory).
- `benchmark`: side-by-side comparisons of backends.
"""

from ruvoninference.errors import RuvonError

__all__ = ["RuvonError"]
__version__ = "0.1.0"
