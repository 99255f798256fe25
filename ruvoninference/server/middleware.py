"""Plain ASGI middleware: what every request passes before any route runs (streaming passes through).

- `StatusCounter` counts responses by route and status for `/metrics`.
- `BearerAuth` refuses a request without the server's API key (401 in OpenAI's shape), except on the
  routes a load balancer or a scraper needs (`/health`, `/metrics`) and the API's own documentation.
- `BodyLimit` refuses a body over `max_bytes` (413) before it is parsed: by its Content-Length at once,
  or, when the client streams a body without one, as soon as the bytes read pass the limit. A bounded body
  is read here and handed on, so the route's parser never sees more than the limit.
"""

from __future__ import annotations

import hmac

from ruvoninference.server.errors import error_response
from ruvoninference.server.metrics import ServerMetrics

ROUTES = frozenset({"/v1/completions", "/completions", "/v1/chat/completions", "/v1/models", "/health",
                    "/metrics", "/info"})
OPEN_PATHS = frozenset({"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class StatusCounter:
    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "/v1/models/{model}" if path.startswith("/v1/models/") else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.http.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


class BearerAuth:
    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            what = "wrong" if given else "missing"
            response = error_response(401, f"The API key is {what}; send the header 'Authorization: Bearer "
                                           f"<key>' with the key this server was started with (--api-key or "
                                           f"RUVON_API_KEY).", code="invalid_api_key",
                                      headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self):
        return error_response(413, f"The request body is larger than this server accepts ({self.max_bytes:,} "
                                   f"bytes); send a shorter prompt or fewer prompts per request, or start the "
                                   f"server with a larger --max-request-bytes.", code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large()(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large()(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)
