"""Servers for the server tests: real uvicorn on 127.0.0.1, a free port, in a thread of the test process."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


class RunningServer:
    def __init__(self, app, shutdown_timeout: float = 30.0) -> None:
        from ruvoninference.server.lifecycle import Server

        self.app = app
        self.server = Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                            timeout_graceful_shutdown=shutdown_timeout + 5), shutdown_timeout)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if httpx.get(self.url + "/health", timeout=10).status_code == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("the model did not load in time")


def engine_server(model, scheduler: str = "continuous", app_options: dict | None = None,
                  shutdown_timeout: float = 30.0, **settings) -> RunningServer:
    from ruvoninference.server.app import create_app
    from ruvoninference.server.async_engine import EngineSettings

    return RunningServer(create_app(EngineSettings(model=model, attn="sdpa", device="cpu", scheduler=scheduler,
                                                   **settings), **(app_options or {})), shutdown_timeout)


@pytest.fixture(scope="session")
def gpt2_bundle():
    """gpt2-random loaded once: servers made from it start in a moment (loading takes most of a minute on
    a busy 2-core machine)."""
    import torch

    from ruvoninference.models import load_model

    return load_model("gpt2-random", "cpu", torch.float32)


@pytest.fixture(scope="session")
def gpt2_server(gpt2_bundle):
    """gpt2-random with the continuous scheduler: most tests share it."""
    with engine_server(gpt2_bundle, max_batch_size=32, max_queue=64) as server:
        server.wait_ready()
        yield server


@pytest.fixture
def small_server(gpt2_bundle):
    """`with small_server(max_batch_size=2, ...) as server:` a server of its own, on the shared weights."""
    def make(app_options: dict | None = None, shutdown_timeout: float = 30.0, **settings) -> RunningServer:
        settings = {"kv_cache_memory": 256 * 2**20, **settings}
        return engine_server(gpt2_bundle, app_options=app_options, shutdown_timeout=shutdown_timeout, **settings)

    return make


@pytest.fixture(scope="session")
def smollm2_server():
    """SmolLM2-135M-Instruct: the model with a chat template."""
    with engine_server("smollm2-135m", max_batch_size=8) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="session")
def running_server():
    """`with running_server(app) as server:` serves any ASGI app (the client tests' fake server)."""
    return RunningServer


FIRST_DELAY_S = 0.15
GAP_S = 0.05
CHUNKS = 3
TOKENS_PER_CHUNK = 2  # the usage says 6 tokens for 3 chunks: counts must come from usage


def _fake_openai_server() -> tuple[FastAPI, dict]:
    """Streams 3 chunks (first after FIRST_DELAY_S, then every GAP_S); every third request fails with 500."""
    state = {"first_delay_s": FIRST_DELAY_S, "gap_s": GAP_S, "tokens": CHUNKS * TOKENS_PER_CHUNK, "count": 0, "in_flight": 0, "max_in_flight": 0, "bodies": []}
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        number = state["count"]
        state["count"] += 1
        state["bodies"].append(body)
        state.setdefault("authorization", []).append(request.headers.get("authorization"))
        if number % 3 == 2:
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)

        async def events():
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            try:
                await asyncio.sleep(FIRST_DELAY_S)
                for i in range(CHUNKS):
                    if i:
                        await asyncio.sleep(GAP_S)
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'text': 'ab'}]})}\n\n"
                usage = {"prompt_tokens": 4, "completion_tokens": CHUNKS * TOKENS_PER_CHUNK, "total_tokens": 10}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                state["in_flight"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    return app, state




@pytest.fixture(scope="session")
def fake_openai_server():
    return _fake_openai_server
