"""The HTTP layer: OpenAI's routes over the engine thread, streaming as server-sent events.

How one request flows: FastAPI parses the body into a `protocol` model (a bad value is a 400 naming the
field, before anything else runs); the handler turns it into one engine request per prompt and per `n`,
each with a `prepare` function that the engine thread runs to tokenize and build `SamplingParams`; the
engine thread adds them, steps, and pushes each step's outputs onto the handler's `asyncio.Queue`; the
handler turns every output into a chunk (streaming) or collects them into one body. A `RuvonError` from the
engine (prompt too long, ...) is a 400 in OpenAI's error shape; a full queue a 429; a model still loading a
503. A client that disconnects mid-stream cancels the handler's generator, whose `finally` aborts its
requests in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ruvoninference.errors import RuvonError
from ruvoninference.server.async_engine import AsyncEngine, EngineFailure, EngineSettings, QueueFull
from ruvoninference.server.metrics import ServerMetrics
from ruvoninference.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ModelCard,
    ModelList,
    TopLogprob,
    Usage,
    error_body,
    new_id,
    now,
    sse,
)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status)


# --- turning engine outputs into OpenAI's shapes -------------------------------------------------------------


@dataclass
class Choice:
    """What one engine request has produced so far, for one `choices[i]`."""

    index: int
    stream: Any
    group: int  # which prompt of the request
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)  # the engine's TokenLogprob per token
    finish_reason: str | None = None

    @property
    def prompt_ids(self) -> list[int]:
        return self.stream.prompt_token_ids


def _piece(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def completion_logprobs(tokenizer, new: list, start_offset: int, prompt_ids: list[int] | None = None
                        ) -> CompletionLogprobs:
    """OpenAI's completions logprobs for `new` tokens whose text starts at `start_offset` in the choice's text.

    With `prompt_ids` (echo), the prompt's tokens come first with null logprobs: our engine computes no
    prompt logprobs (OpenAI too gives null for the first token; we give null for all of them).
    """
    result = CompletionLogprobs()
    offset = start_offset
    for token_id in prompt_ids or ():
        piece = _piece(tokenizer, token_id)
        result.tokens.append(piece)
        result.token_logprobs.append(None)
        result.top_logprobs.append(None)
        result.text_offset.append(offset)
        offset += len(piece)
    for lp in new:
        piece = _piece(tokenizer, lp.token_id)
        result.tokens.append(piece)
        result.token_logprobs.append(lp.logprob)
        result.top_logprobs.append({_piece(tokenizer, t): v for t, v in lp.top} if lp.top else None)
        result.text_offset.append(offset)
        offset += len(piece)
    return result


def chat_logprobs(tokenizer, new: list) -> ChatLogprobs:
    def entry(token_id: int, logprob: float) -> TopLogprob:
        token = _piece(tokenizer, token_id)
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))

    content = []
    for lp in new:
        head = entry(lp.token_id, lp.logprob)
        content.append(ChatTokenLogprob(**head.model_dump(), top_logprobs=[entry(t, v) for t, v in lp.top]))
    return ChatLogprobs(content=content)


def usage(choices: list[Choice]) -> Usage:
    # A prompt's tokens count once however many choices (n) it has, as OpenAI and vLLM count them.
    prompt_tokens = sum({c.group: len(c.prompt_ids) for c in choices}.values())
    completion_tokens = sum(len(c.token_ids) for c in choices)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


# --- the app -----------------------------------------------------------------------------------------------


ROUTES = frozenset({"/v1/completions", "/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})


class _StatusCounter:
    """ASGI middleware counting responses by route and status (a plain ASGI wrapper, so streaming and
    disconnect handling pass through untouched)."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(settings: EngineSettings, served_model_name: str | None = None) -> FastAPI:
    """The FastAPI app; the engine starts loading in the background when the app starts (503 until then)."""
    metrics = ServerMetrics()
    engine = AsyncEngine(settings, metrics)
    model_name = served_model_name or (settings.model if isinstance(settings.model, str) else settings.model.name)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="ruvoninference", version="0.1.0", lifespan=lifespan,
                  description="An OpenAI-compatible server over the ruvoninference engine.")
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.model_name = model_name
    app.add_middleware(_StatusCounter, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, "The request body is not valid JSON; send a JSON object such as "
                               '{"prompt": "Hello", "max_tokens": 16}.')
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = loc[0] if loc else None
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        where = f"'{'.'.join(loc)}'" if loc else "the request body"
        return _error(400, f"Invalid value for {where}: {message}.", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(HTTPError)
    async def _ours(_request: Request, exc: HTTPError):
        return _error(exc.status, exc.message, exc.param)

    def ready() -> AsyncEngine:
        if engine.state == "loading":
            raise HTTPError(503, f"The model '{model_name}' is still loading; retry in a few seconds.")
        if engine.state == "failed":
            raise HTTPError(503, f"The model '{model_name}' failed to load: {engine.load_error}")
        return engine

    def check_model(requested: str | None) -> None:
        if requested not in (None, "", model_name):
            raise HTTPError(400, f"The model '{requested}' is not served here; this server serves "
                                 f"'{model_name}'.", "model")

    def check_implementation(requested: str | None) -> str | None:
        if requested is None or requested == settings.attn:
            return None
        from ruvoninference.attention import (
            get_available_implementations,
            parse_implementation,
            unavailable_reasons,
        )

        device = engine.engine.device
        available = ", ".join(str(i) for i in get_available_implementations(device))
        try:
            impl = parse_implementation(requested)
        except RuvonError as exc:
            raise HTTPError(400, str(exc), "attention_implementation") from None
        reason = unavailable_reasons(device).get(impl)
        if reason:
            raise HTTPError(400, f"Attention implementation '{impl}' is unavailable: {reason}; available "
                                 f"here: {available}.", "attention_implementation")
        return str(impl)

    async def submit_all(prepares: list[tuple[int, Callable]], implementation: str | None
                         ) -> tuple[asyncio.Queue, list[Choice]]:
        """One engine request per choice, all feeding one queue; if one is refused, abort the others."""
        out: asyncio.Queue = asyncio.Queue()
        choices: list[Choice] = []
        try:
            for index, (group, prepare) in enumerate(prepares):
                stream = await engine.submit(prepare, out, implementation)
                choices.append(Choice(index=index, stream=stream, group=group))
        except BaseException as exc:
            for c in choices:
                engine.abort(c.stream.request_id)
            if isinstance(exc, RuvonError):
                raise HTTPError(400, str(exc)) from None
            if isinstance(exc, QueueFull):
                raise HTTPError(429, str(exc)) from None
            if isinstance(exc, EngineFailure):
                raise HTTPError(500, str(exc)) from None
            raise
        return out, choices

    async def outputs(out: asyncio.Queue, choices: list[Choice]) -> AsyncIterator[tuple[Choice, Any]]:
        """Each engine output as it comes, with its choice updated; aborts what is left if the caller stops."""
        by_id = {c.stream.request_id: c for c in choices}
        unfinished = set(by_id)
        try:
            while unfinished:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                choice = by_id[item.request_id]
                choice.text += item.new_text
                choice.token_ids += item.new_token_ids
                choice.logprobs += item.new_logprobs or []
                if item.finished:
                    choice.finish_reason = item.finish_reason
                    unfinished.discard(item.request_id)
                yield choice, item
        finally:
            for request_id in unfinished:  # the client went away (or a sibling failed): free the blocks now
                engine.abort(request_id)

    def sampling_prepare(req, prompt: str | list[int] | None, index: int, logprobs: int | None,
                         chat_messages: list[dict] | None = None, max_tokens: int | None = None) -> Callable:
        from ruvoninference.sampling import SamplingParams

        def prepare(eng) -> tuple[list[int], Any]:
            tokenizer = eng.tokenizer
            if chat_messages is not None:
                if not getattr(tokenizer, "chat_template", None):
                    raise RuvonError(f"The model '{model_name}' has no chat template; use /v1/completions, or "
                                     f"serve a model with one such as smollm2-135m.")
                ids = tokenizer.apply_chat_template(chat_messages, add_generation_prompt=True, tokenize=True)
                ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            else:
                ids = eng.encode(prompt)  # the engine's own tokenization (and its vocabulary check)
            limit = max_tokens if max_tokens is not None else max(1, eng.context_length - len(ids))
            seed = None if req.seed is None else req.seed + index
            params = SamplingParams(temperature=req.temperature, top_k=max(req.top_k, 0), top_p=req.top_p,
                                    seed=seed, max_tokens=limit, stop=req.stop_strings,
                                    ignore_eos=req.ignore_eos, logprobs=logprobs)
            return ids, params

        return prepare

    # --- routes ----------------------------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        eng = ready()
        from ruvoninference.environment import describe

        return {"status": "ok", "model": model_name, "scheduler": settings.scheduler,
                "attention_implementation": settings.attn, "max_batch_size": settings.max_batch_size,
                "max_queue": settings.max_queue, "environment": describe(eng.engine.device)}

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=model_name, created=now())])

    @app.get("/metrics")
    async def prometheus_metrics():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def completions(req: CompletionRequest):
        eng = ready()
        check_model(req.model)
        implementation = check_implementation(req.attention_implementation)
        prepares = []
        for p, prompt in enumerate(req.prompt_list):
            for j in range(req.n):
                index = p * req.n + j
                prepares.append((p, sampling_prepare(req, prompt, index, req.logprobs, max_tokens=req.max_tokens)))
        out, choices = await submit_all(prepares, implementation)
        tokenizer = (eng.engines.get(implementation) or eng.engine).tokenizer
        request_id, created = new_id("cmpl"), now()

        def echo_text(c: Choice) -> str:
            return tokenizer.decode(c.prompt_ids) if req.echo else ""

        if not req.stream:
            async for _ in outputs(out, choices):
                pass
            body = []
            for c in choices:
                prefix = echo_text(c)
                lp = None
                if req.logprobs is not None:
                    lp = completion_logprobs(tokenizer, c.logprobs, 0, c.prompt_ids if req.echo else None)
                body.append(CompletionChoice(index=c.index, text=prefix + c.text, logprobs=lp,
                                             finish_reason=c.finish_reason))
            return CompletionResponse(id=request_id, created=created, model=model_name, choices=body,
                                      usage=usage(choices))

        async def events() -> AsyncIterator[str]:
            sent: dict[int, int] = {}  # choice index -> characters of text already sent
            async for c, item in outputs(out, choices):
                first = c.index not in sent
                prefix = echo_text(c) if first else ""
                start = sent.get(c.index, 0)
                lp = None
                if req.logprobs is not None:
                    lp = completion_logprobs(tokenizer, item.new_logprobs or [], start,
                                             c.prompt_ids if first and req.echo else None)
                text = prefix + item.new_text
                sent[c.index] = start + len(text)
                yield sse(CompletionResponse(
                    id=request_id, created=created, model=model_name,
                    choices=[CompletionChoice(index=c.index, text=text, logprobs=lp,
                                              finish_reason=c.finish_reason if item.finished else None)]))
            if req.include_usage:
                yield sse(CompletionResponse(id=request_id, created=created, model=model_name, choices=[],
                                             usage=usage(choices)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(_guard(events()), media_type="text/event-stream")

    app.post("/v1/completions", response_model=CompletionResponse)(completions)
    app.post("/completions", response_model=CompletionResponse,
             summary="Completions with `attention_implementation` (this series' endpoint)")(completions)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(req: ChatCompletionRequest):
        eng = ready()
        check_model(req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        top = (req.top_logprobs or 0) if req.logprobs else None
        prepares = [(0, sampling_prepare(req, None, j, top, chat_messages=messages, max_tokens=req.token_limit))
                    for j in range(req.n)]
        out, choices = await submit_all(prepares, None)
        tokenizer = eng.engine.tokenizer
        request_id, created = new_id("chatcmpl"), now()

        if not req.stream:
            async for _ in outputs(out, choices):
                pass
            body = [ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                               logprobs=chat_logprobs(tokenizer, c.logprobs) if req.logprobs else None,
                               finish_reason=c.finish_reason) for c in choices]
            return ChatCompletionResponse(id=request_id, created=created, model=model_name, choices=body,
                                          usage=usage(choices))

        def chunk(choices_: list[ChatChunkChoice], usage_: Usage | None = None) -> str:
            return sse(ChatCompletionChunk(id=request_id, created=created, model=model_name, choices=choices_,
                                           usage=usage_))

        async def events() -> AsyncIterator[str]:
            for c in choices:
                yield chunk([ChatChunkChoice(index=c.index, delta=Delta(role="assistant", content=""))])
            async for c, item in outputs(out, choices):
                lp = chat_logprobs(tokenizer, item.new_logprobs or []) if req.logprobs else None
                yield chunk([ChatChunkChoice(index=c.index, delta=Delta(content=item.new_text), logprobs=lp,
                                             finish_reason=c.finish_reason if item.finished else None)])
            if req.include_usage:
                yield chunk([], usage(choices))
            yield "data: [DONE]\n\n"

        return StreamingResponse(_guard(events()), media_type="text/event-stream")

    return app


async def _guard(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Once the 200 and its headers are sent, a failure can only be reported inside the stream."""
    try:
        async for event in events:
            yield event
    except (RuvonError, EngineFailure) as exc:
        status = 400 if isinstance(exc, RuvonError) else 500
        yield f"data: {json.dumps(error_body(str(exc), status))}\n\n"
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()
