"""OpenAI's routes over the engine thread, streaming as server-sent events.

How one request flows: FastAPI parses the body into a `protocol` model (a bad value is a 400 naming the
field, before anything else runs); the `ready` dependency answers 503 while the model loads or the server
shuts down; the handler checks the model name (404), tokenizes every prompt off the engine thread, builds
one engine request per prompt and per `n`, and submits them all in one command (429 with Retry-After when
the queue is full). The engine thread pushes each step's outputs onto the handler's `asyncio.Queue`; the
handler turns every output into a chunk (streaming) or collects them into one body.

A client that leaves is noticed whatever it asked for: a task waits for the connection's disconnect and
puts `ClientGone` on the handler's queue, so a streaming or a non-streaming handler stops at once and
aborts its requests in the engine (their cache blocks are free a step later). After a stream's 200 is
sent, a failure is an error event in OpenAI's shape (`data: {"error": ...}`), never a cut connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from ruvoninference.errors import RuvonError
from ruvoninference.server.async_engine import (
    AsyncEngine,
    EngineFailure,
    EngineRequest,
    EngineSettings,
    PromptGroup,
    QueueFull,
    ShuttingDown,
)
from ruvoninference.server.errors import RETRY_AFTER_S, APIError, error_event
from ruvoninference.server.metrics import ServerMetrics
from ruvoninference.server.outputs import Choice, chat_logprobs, completion_logprobs, usage
from ruvoninference.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ErrorResponse,
    ModelCard,
    ModelList,
    new_id,
    now,
)


@dataclass
class ServerState:
    engine: AsyncEngine
    metrics: ServerMetrics
    settings: EngineSettings
    model_name: str
    created: int  # when the server started: /v1/models' `created`


class ClientGone(Exception):
    """The client closed the connection."""


_ERRORS = {400: "A bad request (the message says which field, and what would work)",
           401: "A missing or wrong API key", 404: "An unknown model", 413: "A body over --max-request-bytes",
           429: "The queue is full (see Retry-After)", 500: "The engine failed on this request",
           503: "The model is loading, or the server is shutting down"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in _ERRORS.items()}
STREAMED = {200: {"description": "JSON, or server-sent events when `stream` is true",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}

router = APIRouter()


def server(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server)]


def ready(s: State) -> AsyncEngine:
    engine = s.engine
    if engine.draining:
        raise APIError(503, "The server is shutting down and takes no new requests; retry after it restarts.")
    if engine.state == "loading":
        raise APIError(503, f"The model '{s.model_name}' is still loading; retry in a few seconds.")
    if engine.state == "failed":
        raise APIError(503, f"The model '{s.model_name}' failed to load: {engine.load_error}")
    return engine


Ready = Annotated[AsyncEngine, Depends(ready)]


def check_model(s: ServerState, requested: str | None) -> None:
    if requested not in (None, "", s.model_name):
        raise APIError(404, f"The model '{requested}' is not served here; this server serves "
                            f"'{s.model_name}'.", "model", "model_not_found")


# --- open routes ---------------------------------------------------------------------------------------------


@router.get("/health", responses={503: ERROR_RESPONSES[503]})
async def health(_engine: Ready) -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus' text format"}})
async def prometheus_metrics(s: State):
    body, content_type = s.metrics.render()
    return Response(body, media_type=content_type)


# --- /v1 (behind the API key when one is set) ----------------------------------------------------------------


@router.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
async def models(s: State):
    return ModelList(data=[ModelCard(id=s.model_name, created=s.created)])


@router.get("/v1/models/{model}", response_model=ModelCard,
            responses={401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]})
async def model_card(model: str, s: State):
    check_model(s, model or None)
    return ModelCard(id=s.model_name, created=s.created)


@router.get("/info", responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]})
async def info(engine: Ready, s: State) -> dict[str, Any]:
    """What the server runs on (device, library versions) and its settings: for benchmarks' records."""
    from ruvoninference.environment import describe

    st = s.settings
    return {"model": s.model_name, "scheduler": st.scheduler, "attention_implementation": st.attn,
            "max_batch_size": st.max_batch_size, "max_queue": st.max_queue,
            "tensor_parallel_size": st.tensor_parallel_size, "environment": describe(engine.engine.device)}


def check_implementation(engine: AsyncEngine, requested: str | None) -> str | None:
    if requested is None or requested == engine.settings.attn:
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
        raise APIError(400, str(exc), "attention_implementation") from None
    if str(impl) != engine.settings.attn and engine.settings.tensor_parallel_size != 1:  # one engine per process
        raise APIError(400, f"This server runs {engine.settings.attn} tensor-parallel over "
                            f"{engine.settings.tensor_parallel_size} processes and cannot start another attention "
                            f"implementation; leave attention_implementation out.", "attention_implementation")
    reason = unavailable_reasons(device).get(impl)
    if reason:
        raise APIError(400, f"Attention implementation '{impl}' is unavailable: {reason}; available here: "
                            f"{available}.", "attention_implementation")
    return str(impl)


def _sampling_fields() -> frozenset[str]:
    from ruvoninference.sampling import SamplingParams

    return frozenset(f.name for f in fields(SamplingParams))


def sampling_params(req, engine: AsyncEngine, ids: list[int], index: int, logprobs: int | None,
                    max_tokens: int | None, prompt_logprobs: int | None = None):
    from ruvoninference.sampling import SamplingParams

    extra = req.penalties()
    missing = sorted(set(extra) - _sampling_fields())
    if missing:
        raise APIError(400, f"This server's engine does not implement '{missing[0]}' yet; leave it out.",
                       missing[0])
    vocab = engine.tokenization.vocab_size
    bad = [t for t in extra.get("logit_bias", {}) if t >= vocab]
    if bad:
        raise APIError(400, f"logit_bias names token {bad[0]}, outside the vocabulary (0 to {vocab - 1}).",
                       "logit_bias")
    limit = max_tokens if max_tokens is not None else max(1, engine.tokenization.context_length - len(ids))
    try:
        return SamplingParams(temperature=req.safe_temperature, top_k=max(req.top_k, 0), top_p=req.safe_top_p,
                              seed=req.seed_for(index), max_tokens=limit, stop=req.stop_strings,
                              ignore_eos=req.ignore_eos, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                              **extra)
    except RuvonError as exc:  # a combination the fields alone could not judge (min_tokens > max_tokens)
        param = next((f for f in ("min_tokens", "max_tokens", "logit_bias", "stop") if f in str(exc)), None)
        raise APIError(400, str(exc), param) from None


async def tokenized(coro) -> list[int]:
    try:
        return await coro
    except RuvonError as exc:
        raise APIError(400, str(exc), "prompt") from None


def check_room(engine: AsyncEngine, count: int) -> None:
    """The cheap refusal before tokenizing: the exact one is made again at submission."""
    if engine.num_waiting() + count > engine.settings.max_queue >= count:
        raise APIError(429, f"The server's queue is full ({engine.settings.max_queue} requests waiting); retry "
                            f"after the time in the Retry-After header.", code="rate_limit_exceeded",
                       headers={"Retry-After": str(RETRY_AFTER_S)})


async def submit(engine: AsyncEngine, requests: list[EngineRequest], implementation: str | None
                 ) -> tuple[asyncio.Queue, list[Choice]]:
    out: asyncio.Queue = asyncio.Queue()
    try:
        streams = await engine.submit(requests, out, implementation)
    except RuvonError as exc:
        raise APIError(400, str(exc)) from None
    except QueueFull as exc:
        raise APIError(429, str(exc), code="rate_limit_exceeded",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except ShuttingDown as exc:
        raise APIError(503, str(exc)) from None
    except EngineFailure as exc:
        raise APIError(500, str(exc), code="engine_error") from None
    groups: dict[int, int] = {}  # id of a request's PromptGroup -> the prompt's index
    choices = []
    for index, (stream, r) in enumerate(zip(streams, requests)):
        group = groups.setdefault(id(r.prompt), len(groups))
        choices.append(Choice(index=index, request_id=stream.request_id, group=group,
                              prompt_ids=stream.prompt_token_ids))
    return out, choices


async def _watch_disconnect(request: Request, out: asyncio.Queue) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    out.put_nowait(ClientGone())


async def outputs(engine: AsyncEngine, request: Request, out: asyncio.Queue, choices: list[Choice]
                  ) -> AsyncIterator[tuple[Choice, Any]]:
    """Each engine output as it comes, with its choice updated; aborts what is left if the caller stops
    (the client left, a sibling failed, the server shuts down)."""
    by_id = {c.request_id: c for c in choices}
    unfinished = set(by_id)
    watcher = asyncio.create_task(_watch_disconnect(request, out))
    try:
        while unfinished:
            item = await out.get()
            if isinstance(item, BaseException):
                raise item
            choice = by_id[item.request_id]
            choice.text += item.new_text
            choice.token_ids += item.new_token_ids
            choice.logprobs += item.new_logprobs or []
            if item.prompt_logprobs is not None:  # a request's first output, when it scored its prompt
                choice.prompt_logprobs = item.prompt_logprobs
            if item.finished:
                choice.finish_reason = item.finish_reason
                unfinished.discard(item.request_id)
            yield choice, item
    finally:
        watcher.cancel()
        for request_id in unfinished:
            engine.abort(request_id)


async def collect(engine: AsyncEngine, request: Request, out: asyncio.Queue, choices: list[Choice]) -> None:
    """Run a non-streaming request to its end, turning its failures into HTTP errors."""
    try:
        async for _ in outputs(engine, request, out, choices):
            pass
    except ClientGone:
        raise APIError(499, "The client closed the connection.") from None
    except ShuttingDown as exc:
        raise APIError(503, str(exc)) from None
    except EngineFailure as exc:
        raise APIError(500, str(exc), code="engine_error") from None


async def guard(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Once the 200 and its headers are sent, a failure can only be reported inside the stream."""
    try:
        async for event in events:
            yield event
    except ClientGone:
        return
    except ShuttingDown as exc:
        yield error_event(503, str(exc))
    except EngineFailure as exc:
        yield error_event(500, str(exc), "engine_error")
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()


def sse(payload, include_usage: bool) -> str:
    """One server-sent event; without `include_usage` a chunk has no `usage` key at all (OpenAI's wire)."""
    body = payload.model_dump_json(exclude=None if include_usage else {"usage"})
    return f"data: {body}\n\n"


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(guard(events), media_type="text/event-stream")


# --- completions ---------------------------------------------------------------------------------------------


@router.post("/v1/completions", response_model=CompletionResponse, responses={**ERROR_RESPONSES, **STREAMED})
async def completions(req: CompletionRequest, request: Request, engine: Ready,
                      s: State):
    check_model(s, req.model)
    if req.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens=0 generates nothing; set echo to true to score the prompt (with "
                            "logprobs), or ask for at least 1 token.", "max_tokens")
    implementation = check_implementation(engine, req.attention_implementation)
    prompts = req.prompt_list
    check_room(engine, len(prompts) * req.n)
    ids = [await tokenized(engine.tokenization.encode(p)) for p in prompts]
    # echo with logprobs scores the prompt: the engine computes each prompt token's logprob in its own steps
    # (SamplingParams.prompt_logprobs) and hands them over with the request's first output.
    scored = req.logprobs if req.echo else None
    request_id, created = new_id("cmpl"), now()
    tokenizer = engine.tokenization

    def response(choices: list[CompletionChoice], usage_=None) -> CompletionResponse:
        return CompletionResponse(id=request_id, created=created, model=s.model_name, choices=choices,
                                  usage=usage_)

    def logprobs(c: Choice, new: list, start: int, echo: bool):
        if req.logprobs is None:
            return None
        return completion_logprobs(tokenizer, new, start, c.prompt_ids if echo else None,
                                   c.prompt_logprobs if echo else None)

    if req.max_tokens == 0:  # echo only: the prompts (and their log-probabilities), nothing generated
        entries: list = [None] * len(ids)
        if scored is not None:  # one engine request per prompt (max_tokens=0: it ends after its prefill)
            requests = [EngineRequest(i, sampling_params(req, engine, i, p * req.n, None, 0, scored),
                                      PromptGroup()) for p, i in enumerate(ids)]
            out, runs = await submit(engine, requests, implementation)
            await collect(engine, request, out, runs)
            entries = [run.prompt_logprobs for run in runs]
        choices = [Choice(index=p * req.n + j, request_id="", group=p, prompt_ids=i, finish_reason="length",
                          prompt_logprobs=entries[p]) for p, i in enumerate(ids) for j in range(req.n)]
        body = [CompletionChoice(index=c.index, text=tokenizer.decode(c.prompt_ids),
                                 logprobs=logprobs(c, [], 0, True), finish_reason="length") for c in choices]
        if not req.stream:
            return response(body, usage(choices))

        async def echoed() -> AsyncIterator[str]:
            for choice in body:
                yield sse(response([choice]), req.include_usage)
            if req.include_usage:
                yield sse(response([], usage(choices)), True)
            yield "data: [DONE]\n\n"

        return event_stream(echoed())

    groups = [PromptGroup() for _ in ids]
    requests = [EngineRequest(i, sampling_params(req, engine, i, p * req.n + j, req.logprobs, req.max_tokens,
                                                 scored), groups[p])
                for p, i in enumerate(ids) for j in range(req.n)]
    out, choices = await submit(engine, requests, implementation)

    def echo_text(c: Choice) -> str:
        return tokenizer.decode(c.prompt_ids) if req.echo else ""

    if not req.stream:
        await collect(engine, request, out, choices)
        return response([CompletionChoice(index=c.index, text=echo_text(c) + c.text,
                                          logprobs=logprobs(c, c.logprobs, 0, req.echo),
                                          finish_reason=c.finish_reason) for c in choices], usage(choices))

    async def events() -> AsyncIterator[str]:
        sent: dict[int, int] = {}  # choice index -> characters of text already sent
        async for c, item in outputs(engine, request, out, choices):
            first = c.index not in sent
            start = sent.get(c.index, 0)
            text = (echo_text(c) if first else "") + item.new_text
            lp = logprobs(c, item.new_logprobs or [], start, first and req.echo)
            sent[c.index] = start + len(text)
            yield sse(response([CompletionChoice(index=c.index, text=text, logprobs=lp,
                                                 finish_reason=c.finish_reason if item.finished else None)]),
                      req.include_usage)
        if req.include_usage:
            yield sse(response([], usage(choices)), True)
        yield "data: [DONE]\n\n"

    return event_stream(events())


router.add_api_route("/completions", completions, methods=["POST"], response_model=CompletionResponse,
                     responses={**ERROR_RESPONSES, **STREAMED}, operation_id="completions_series",
                     summary="Completions with `attention_implementation` (this series' endpoint)")


# --- chat ----------------------------------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses={**ERROR_RESPONSES, **STREAMED})
async def chat_completions(req: ChatCompletionRequest, request: Request, engine: Ready,
                           s: State):
    check_model(s, req.model)
    check_room(engine, req.n)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    ids = await tokenized(engine.tokenization.encode_chat(messages, s.model_name))
    top = (req.top_logprobs or 0) if req.logprobs else None
    group = PromptGroup()
    requests = [EngineRequest(ids, sampling_params(req, engine, ids, j, top, req.token_limit), group)
                for j in range(req.n)]
    out, choices = await submit(engine, requests, None)
    tokenizer = engine.tokenization
    request_id, created = new_id("chatcmpl"), now()

    if not req.stream:
        await collect(engine, request, out, choices)
        body = [ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                           logprobs=chat_logprobs(tokenizer, c.logprobs) if req.logprobs else None,
                           finish_reason=c.finish_reason) for c in choices]
        return ChatCompletionResponse(id=request_id, created=created, model=s.model_name, choices=body,
                                      usage=usage(choices))

    def chunk(choices_: list[ChatChunkChoice], usage_=None) -> str:
        return sse(ChatCompletionChunk(id=request_id, created=created, model=s.model_name, choices=choices_,
                                       usage=usage_), req.include_usage)

    async def events() -> AsyncIterator[str]:
        for c in choices:
            yield chunk([ChatChunkChoice(index=c.index, delta=Delta(role="assistant", content=""))])
        async for c, item in outputs(engine, request, out, choices):
            lp = chat_logprobs(tokenizer, item.new_logprobs or []) if req.logprobs else None
            yield chunk([ChatChunkChoice(index=c.index, delta=Delta(content=item.new_text), logprobs=lp,
                                         finish_reason=c.finish_reason if item.finished else None)])
        if req.include_usage:
            yield chunk([], usage(choices))
        yield "data: [DONE]\n\n"

    return event_stream(events())
