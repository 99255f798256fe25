"""The engine core, in the shape of nano-vllm: one module per idea.

- `sequence`: one request's state (tokens, cache blocks, sampling, output so far).
- `block_manager`: who owns which page of the KV cache; prefix caching.
- `kv_cache`: the paged K and V tensors themselves.
- `scheduler`: each step, which sequences run (continuous, static or sequential batching).
- `model_runner`: a batch becomes tensors, logits come out; CUDA graphs for decode.
- `engine`: `add_request`, `step`, `abort`, and the offline `generate` on top.
"""

from ruvoninference.engine.engine import Engine, RequestOutput, StepOutput
from ruvoninference.sampling import SamplingParams, TokenLogprob

__all__ = ["Engine", "RequestOutput", "SamplingParams", "StepOutput", "TokenLogprob"]
