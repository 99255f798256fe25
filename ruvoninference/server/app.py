"""The FastAPI app: the routes (`routes.py`), the middleware every request passes (`middleware.py`), the
error handlers (`errors.py`), and the engine thread started with the app (`async_engine.py`).

    StatusCounter -> BearerAuth (when an API key is set) -> BodyLimit -> FastAPI routes

The OpenAPI document at /openapi.json lists what the routes really answer: 400 (not FastAPI's default
422) for a bad body, the other error statuses in OpenAI's error shape, and `text/event-stream` beside
JSON for the routes that stream.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI

from ruvoninference.server.async_engine import AsyncEngine, EngineSettings
from ruvoninference.server.errors import install_handlers
from ruvoninference.server.metrics import ServerMetrics
from ruvoninference.server.middleware import BearerAuth, BodyLimit, StatusCounter
from ruvoninference.server.protocol import now
from ruvoninference.server.routes import ServerState, router

DEFAULT_MAX_REQUEST_BYTES = 8 * 2**20


def create_app(settings: EngineSettings, served_model_name: str | None = None, api_key: str | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """The app; the engine starts loading in the background when the app starts (503 until then)."""
    model_name = served_model_name or (settings.model if isinstance(settings.model, str) else settings.model.name)
    metrics = ServerMetrics(model_name)
    engine = AsyncEngine(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="ruvoninference", version="0.1.0", lifespan=lifespan,
                  description="An OpenAI-compatible server over the ruvoninference engine.")
    app.state.server = ServerState(engine, metrics, settings, model_name, created=now())
    app.state.engine = engine  # for tests and the lifecycle
    app.state.metrics = metrics
    app.state.model_name = model_name
    install_handlers(app)
    app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(StatusCounter, metrics=metrics)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document without its default 422 (a bad body is a 400 here, listed by each route)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
