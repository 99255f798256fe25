"""An OpenAI-compatible HTTP server over the engine.

- `protocol`: the request and response bodies (pydantic), validated before anything runs.
- `tokenization`: prompts to token ids on a thread of their own, with the cheap length bound first.
- `async_engine`: the one thread that owns the engines and drives `step()`; handlers talk to it by queues;
  exact backpressure and fault isolation.
- `routes`: OpenAI's routes (APIRouter), server-sent events; `outputs`: engine outputs in OpenAI's shapes
  (`echo` with `logprobs` takes the prompt's log-probabilities from the engine's prefill steps).
- `errors`, `middleware`: errors in OpenAI's shape; status counting, API key, body limit.
- `metrics`: what `/metrics` exposes (vLLM's names under `ruvon:`).
- `lifecycle`: uvicorn with a bounded graceful shutdown.
- `app`: puts them together.
"""
