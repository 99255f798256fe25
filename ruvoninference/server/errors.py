"""Every error a client sees, in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

The message says what is wrong with the request and what would work, in one sentence; it never carries an
internal exception's text (the server's log has the traceback). `code` is a short string a program can
test, or null. Error bodies are written with JSON's ASCII escapes, so no input (a lone surrogate echoed in
a model name, say) can make the error itself fail to encode.
"""

from __future__ import annotations

import json
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ruvoninference.server.protocol import error_body

RETRY_AFTER_S = 1  # a 429's Retry-After: a step or two frees a slot in the queue


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(error_body(message, status, param, code), ensure_ascii=True)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error_event(status: int, message: str, code: str | None = None) -> str:
    """A failure after a stream's 200 was sent can only be told inside the stream."""
    return f"data: {json.dumps(error_body(message, status, None, code), ensure_ascii=True)}\n\n"


# Parts of a pydantic error location that name a union member or a validator, not a field.
_NOT_A_FIELD = re.compile(r"[\[\(]|^(str|int|float|bool|list|dict|none)$")


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return error_response(400, "The request body is not valid JSON; send a JSON object such as "
                                       '{"prompt": "Hello", "max_tokens": 16}.')
        loc = [str(part) for part in first.get("loc", ()) if part != "body" and not _NOT_A_FIELD.search(str(part))]
        param = loc[0] if loc else None
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        where = f"'{'.'.join(loc)}'" if loc else "the request body"
        return error_response(400, f"Invalid value for {where}: {message}.", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error_response(404, f"There is no route {request.url.path}; the routes are listed at "
                                       f"/docs.", code="not_found")
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            return error_response(405, f"{request.method} is not allowed on {request.url.path}; use {allow}.",
                                  code="method_not_allowed", headers=exc.headers)
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(APIError)
    async def _ours(_request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)
