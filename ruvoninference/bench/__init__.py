"""Benchmarks as data: each module measures and returns results; the CLI renders them.

- `generation`: attention backends side by side in the engine's generation loop (and Hugging Face `generate`).
- `prefill`: prefill time and peak memory as the context grows (`flash --show-memory`).
- `kernels`: our Triton kernels against standard attention, SDPA and FlashAttention-2.
- `throughput`: many requests through the engine's scheduler (`benchmark throughput`).
- `serve`: a load-test client for any OpenAI-compatible server (`benchmark serve`).
"""
