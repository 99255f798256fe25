"""An OpenAI-compatible HTTP server over the engine.

- `protocol`: the request and response bodies (pydantic), validated before anything runs.
- `async_engine`: the one thread that owns the engines and drives `step()`; handlers talk to it by queues.
- `metrics`: what `/metrics` exposes (prometheus-client).
- `app`: the FastAPI routes, server-sent events, and errors in OpenAI's shape.
"""
