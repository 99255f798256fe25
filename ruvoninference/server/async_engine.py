"""The thread that owns the engines, and the queues through which HTTP handlers talk to it.

The engine is not thread-safe and its `step()` blocks for a whole forward pass, so it cannot run on the
event loop: one background thread owns every `Engine` and runs this loop

    drain the inbox (add / abort requests)  ->  step each engine with work  ->  hand the outputs out

Handlers never touch an engine. They put a command in the inbox (a thread-safe `queue.Queue`) and read
their request's outputs from an `asyncio.Queue` that the engine thread fills through
`loop.call_soon_threadsafe`; those queues are unbounded, so a slow client only grows its own queue and never
holds the engine up. A client that goes away makes its handler send `abort`, which the thread executes
before the next step: the request's KV blocks are free one step later at most.

One engine per attention implementation, created on first use from the first engine's already loaded
weights (`Engine(model=bundle)`), so `/completions` can serve `sdpa` and `eager` from one copy of the model.

Backpressure: a request is refused (`QueueFull`, a 429) when the requests submitted but not yet scheduled
would exceed `max_queue`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ruvoninference.errors import RuvonError
from ruvoninference.server.metrics import ServerMetrics


class QueueFull(Exception):
    """The server's queue is full; the client should retry later."""


class EngineFailure(Exception):
    """The engine raised something that is not a user error (a bug): the affected requests fail with 500."""


@dataclass
class EngineSettings:
    model: Any = "smollm2-135m"  # a name, or a ModelBundle already loaded
    attn: str = "sdpa"
    device: str | None = None
    dtype: str | None = None
    scheduler: str = "continuous"
    max_batch_size: int = 32
    max_queue: int = 512
    kv_cache_memory: int | None = None
    extra_kv_cache_memory: int = 256 * 2**20  # for engines of other implementations, created on demand
    enforce_eager: bool = False
    extra: dict = field(default_factory=dict)  # passed on to Engine as is


@dataclass
class RequestTimes:
    arrival: float
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0


class RequestStream:
    """One engine request as its handler sees it. Its outputs go to `queue`, which several requests of one
    HTTP call (n > 1, or a list of prompts) may share: each output carries its `request_id`."""

    def __init__(self, queue: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = uuid.uuid4().hex
        self.queue = queue
        self.loop = loop
        self.accepted: asyncio.Future = loop.create_future()
        self.prompt_token_ids: list[int] = []  # as given to the engine, set before `accepted` resolves
        self.arrival = time.perf_counter()  # TTFT and latency count from here, queueing included


# Builds (prompt token ids, SamplingParams) from the engine, on the engine thread: tokenizing there keeps
# the tokenizer single-threaded, and the engine's context length decides an open-ended max_tokens.
Prepare = Callable[[Any], tuple[list[int], Any]]


@dataclass
class _Add:
    stream: RequestStream
    prepare: Prepare
    implementation: str


class AsyncEngine:
    """Owns the engine thread. Call `start()` once; `state` says loading / ready / failed."""

    def __init__(self, settings: EngineSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = "loading"
        self.load_error: str | None = None
        self.engines: dict[str, Any] = {}  # implementation -> Engine, written by the engine thread only
        self.default_implementation = settings.attn
        self._inbox: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[RequestStream, RequestTimes, Any]] = {}  # engine thread only
        self._pending = 0  # submitted, not yet taken by the engine thread (event loop only)
        self._waiting = 0  # engine's waiting requests after the last step (written by the engine thread)
        self._thread = threading.Thread(target=self._main, name="ruvon-engine", daemon=True)
        self._stop = threading.Event()
        self.ready_event = threading.Event()  # set once loading ends, either way

    # --- the event loop's side ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout_s)

    @property
    def engine(self):
        return self.engines.get(self.default_implementation)

    async def submit(self, prepare: Prepare, out: asyncio.Queue, implementation: str | None = None) -> RequestStream:
        """Queue one engine request; returns once the engine has accepted it (or raises its RuvonError)."""
        if self._pending + self._waiting >= self.settings.max_queue:
            raise QueueFull(f"The server's queue is full ({self.settings.max_queue} requests waiting); "
                            f"retry later or start the server with a larger --max-queue.")
        stream = RequestStream(out, asyncio.get_running_loop())
        self._pending += 1
        self._inbox.put(_Add(stream, prepare, implementation or self.default_implementation))
        try:
            await stream.accepted
        except asyncio.CancelledError:  # the client left before the engine took the request
            self.abort(stream.request_id)
            raise
        finally:
            self._pending -= 1
        return stream

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    # --- the engine thread ----------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 (a bad model name or an out-of-memory at load: the server answers 503 with it)
            self.load_error = str(exc) if isinstance(exc, RuvonError) else f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            self.ready_event.set()
            if not isinstance(exc, RuvonError):
                traceback.print_exc()
            return
        self.state = "ready"
        self.ready_event.set()
        while not self._stop.is_set():
            busy = any(engine.has_unfinished() for engine in self.engines.values())
            self._drain(block=not busy)
            for implementation, engine in list(self.engines.items()):
                if engine.has_unfinished():
                    self._step(implementation, engine)
            self._update_gauges()

    def _new_engine(self, implementation: str, **kwargs):
        from ruvoninference.engine import Engine

        s = self.settings
        return Engine(attn=implementation, device=s.device, dtype=s.dtype, max_batch_size=s.max_batch_size,
                      scheduler=s.scheduler, enforce_eager=s.enforce_eager, **s.extra, **kwargs)

    def _load(self) -> None:
        s = self.settings
        engine = self._new_engine(s.attn, model=s.model, kv_cache_memory=s.kv_cache_memory)
        self.engines[s.attn] = engine
        self._update_gauges()

    def _engine_for(self, implementation: str):
        engine = self.engines.get(implementation)
        if engine is None:
            # Same weights, a cache of its own: a modest one, since the first engine took most of the memory.
            engine = self._new_engine(implementation, model=self.engine.bundle,
                                      kv_cache_memory=self.settings.extra_kv_cache_memory)
            self.engines[implementation] = engine
        return engine

    def _drain(self, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while command is not None or not self._inbox.empty():
            if command is not None:
                self._execute(command)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break

    def _execute(self, command) -> None:
        if isinstance(command, _Add):
            stream = command.stream
            try:
                engine = self._engine_for(command.implementation)
                prompt_ids, params = command.prepare(engine)
                engine.add_request(prompt_ids, params, request_id=stream.request_id)
            except Exception as exc:  # noqa: BLE001 (RuvonError: a 400; anything else: a 500)
                error = exc if isinstance(exc, RuvonError) else EngineFailure(f"{type(exc).__name__}: {exc}")
                if not isinstance(exc, RuvonError):
                    traceback.print_exc()
                stream.loop.call_soon_threadsafe(_resolve, stream.accepted, error)
                return
            stream.prompt_token_ids = list(prompt_ids)
            self._streams[stream.request_id] = (stream, RequestTimes(arrival=stream.arrival), engine)
            stream.loop.call_soon_threadsafe(_resolve, stream.accepted, None)
        else:
            _, request_id = command
            entry = self._streams.pop(request_id, None)
            if entry is not None:
                entry[2].abort(request_id)
                self.metrics.finished.labels("abort").inc()

    def _step(self, implementation: str, engine) -> None:
        try:
            outputs = engine.step()
        except Exception as exc:  # noqa: BLE001 (a bug: fail this engine's requests, serve the rest)
            traceback.print_exc()
            failure = EngineFailure(f"The engine failed ({type(exc).__name__}: {exc}).")
            for request_id, (stream, _, owner) in list(self._streams.items()):
                if owner is engine:
                    self._streams.pop(request_id)
                    owner.abort(request_id)
                    stream.loop.call_soon_threadsafe(stream.queue.put_nowait, failure)
            return
        now = time.perf_counter()
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            entry = self._streams.get(out.request_id)
            if entry is None:
                continue  # aborted while this step ran
            stream, times, _ = entry
            if out.new_token_ids:
                times.first_token = times.first_token or now
                times.last_token = now
                times.tokens += len(out.new_token_ids)
                self.metrics.generation_tokens.inc(len(out.new_token_ids))
            if out.finished:
                self._streams.pop(out.request_id)
                self._observe_finished(stream, times, out.finish_reason)
            deliveries.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in deliveries.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _observe_finished(self, stream: RequestStream, times: RequestTimes, reason: str | None) -> None:
        m = self.metrics
        m.finished.labels(reason or "stop").inc()
        m.prompt_tokens.inc(len(stream.prompt_token_ids))
        if times.first_token is not None:
            m.ttft.observe(times.first_token - times.arrival)
            m.e2e.observe(times.last_token - times.arrival)
            if times.tokens > 1:
                m.tpot.observe((times.last_token - times.first_token) / (times.tokens - 1))

    def _update_gauges(self) -> None:
        waiting = sum(e.num_waiting for e in self.engines.values())
        self._waiting = waiting
        self.metrics.waiting.set(waiting)
        self.metrics.running.set(sum(e.num_running for e in self.engines.values()))
        for implementation, engine in self.engines.items():
            manager = engine.block_manager
            self.metrics.blocks_free.labels(implementation).set(manager.num_free_blocks)
            self.metrics.blocks_used.labels(implementation).set(manager.num_blocks - manager.num_free_blocks)


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _deliver(items: list) -> None:
    for q, item in items:
        q.put_nowait(item)
