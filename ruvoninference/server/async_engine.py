"""The thread that owns the engines, and the queues through which HTTP handlers talk to it.

The engine is not thread-safe and its `step()` blocks for a whole forward pass, so it cannot run on the
event loop: one background thread owns every `Engine` and runs this loop

    drain the inbox (add / abort)  ->  step each engine with work  ->  hand the outputs out

Handlers never touch an engine. They tokenize on their own thread (`tokenization.py`), put one command in
the inbox (a thread-safe `queue.Queue`) for all the prompts and choices of an HTTP request, and read their
outputs from an `asyncio.Queue` that the engine thread fills through `loop.call_soon_threadsafe`; those
queues are unbounded, so a slow client only grows its own queue and never holds the engine up. A client
that goes away makes its handler send `abort`, which the thread executes before the next step: the
request's KV blocks are free one step later at most.

**Backpressure, exactly.** `max_queue` bounds the requests admitted and not yet scheduled: those still in
the inbox plus the engines' waiting queues. Both counts change under one lock, the inbox count when a
handler admits (or refuses, `QueueFull`, a 429) and when the engine thread takes a command, the waiting
count right after the engine thread changes an engine, so the bound holds at every instant (a sequence
the scheduler preempts goes back to waiting without admission, and then new requests wait their turn).

**Fault isolation.** What a request can get wrong is refused where it enters (`protocol.py`, and the
engine's own checks when the command is taken, which fail that command alone). A step that raises anyway
is a bug: if the exception names the requests it belongs to (a `request_ids` attribute), those fail alone
and the rest of the batch goes on; otherwise every request of that engine fails with a clean
`EngineFailure` (a 500, or an error event in a stream), their blocks are freed, the traceback goes to the
server's log (never to a client), and the engine serves the next requests; an engine left inconsistent
is rebuilt from the loaded weights.

One engine per attention implementation, created on first use from the first engine's already loaded
weights (`Engine(model=bundle)`), so `/completions` can serve `sdpa` and `eager` from one copy of the model.

**Tensor parallelism** (`tensor_parallel_size` > 1): the engine thread builds the engine from the model's
name, and it is rank 0 of a group of processes, each holding a shard; the worker processes cannot share
weights with a second engine, so only the default implementation is served. The engine thread stops the
workers when it ends (a server's shutdown), and an engine rebuilt after a failed step is a new group. A
worker that dies ends the server with one sentence (parallel/engine.py), never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

from ruvoninference.errors import RuvonError
from ruvoninference.server.metrics import ServerMetrics
from ruvoninference.server.tokenization import Tokenization

log = logging.getLogger("ruvoninference.server")


class QueueFull(Exception):
    """The server's queue is full; the client should retry later."""


class EngineFailure(Exception):
    """The engine failed (a bug, never the client's doing): the affected requests end with a 500. The
    message is written for the client; the cause goes to the server's log."""


class ShuttingDown(Exception):
    """The server is shutting down: no new requests; the ones still running when it stops end with this."""


ENGINE_FAILED = ("The engine failed while running this request (a server bug, logged there); the server is "
                 "still up, so retry the request.")


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
    tensor_parallel_size: int = 1  # > 1: `model` must be a name (every rank loads its shard)
    extra: dict = field(default_factory=dict)  # passed on to Engine as is


@dataclass
class EngineRequest:
    """One engine request, ready to add: the prompt's token ids and how to sample."""

    prompt_ids: list[int]
    params: Any  # SamplingParams
    prompt: PromptGroup  # the choices of one prompt share it: its tokens count once in the metrics


@dataclass
class PromptGroup:
    prefilled: bool = False


class RequestStream:
    """One engine request as its handler sees it. Its outputs go to `queue`, which several requests of one
    HTTP call (n > 1, or a list of prompts) share: each output carries its `request_id`."""

    def __init__(self, out: asyncio.Queue, request: EngineRequest) -> None:
        self.request_id = uuid.uuid4().hex
        self.queue = out
        self.prompt_token_ids = request.prompt_ids
        self.arrival = time.perf_counter()  # TTFT and latency count from admission, queueing included


@dataclass
class _Tracked:
    """What the engine thread keeps about one request it runs."""

    stream: RequestStream
    loop: asyncio.AbstractEventLoop
    engine: Any
    prompt: PromptGroup
    sequence: Any = None  # the engine's Sequence, for its prefix-cache hits
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0


@dataclass
class _Add:
    streams: list[RequestStream]
    requests: list[EngineRequest]
    implementation: str
    accepted: asyncio.Future
    loop: asyncio.AbstractEventLoop


class AsyncEngine:
    """Owns the engine thread. Call `start()` once; `state` says loading / ready / failed."""

    def __init__(self, settings: EngineSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = "loading"
        self.load_error: str | None = None
        self.engines: dict[str, Any] = {}  # implementation -> Engine, written by the engine thread only
        self.default_implementation = settings.attn
        self.tokenization = Tokenization()
        self.draining = False  # set at shutdown: no new requests
        self._inbox: queue.Queue = queue.Queue()
        self._tracked: dict[str, _Tracked] = {}  # engine thread only
        self._lock = threading.Lock()
        self._in_inbox = 0  # requests admitted, not yet taken by the engine thread
        self._engine_waiting = 0  # the engines' waiting sequences, as of the engine thread's last change
        self._preemptions: dict[int, int] = {}  # id(engine) -> its scheduler's count at the last step
        self._thread = threading.Thread(target=self._main, name="ruvon-engine", daemon=True)
        self._stop = threading.Event()
        self.ready_event = threading.Event()  # set once loading ends, either way
        metrics.read_gauges_from(self._num_running, self.num_waiting, self._kv_usage)
        metrics.read_spec_decode_from(self._spec_stats)

    # --- the event loop's side ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout_s)
        self.tokenization.close()

    @property
    def engine(self):
        return self.engines.get(self.default_implementation)

    def num_waiting(self) -> int:
        return self._in_inbox + self._engine_waiting

    async def submit(self, requests: list[EngineRequest], out: asyncio.Queue,
                     implementation: str | None = None) -> list[RequestStream]:
        """Admit every request of one HTTP call at once, or none; returns once the engine has added them all
        (or raises the RuvonError that refused them)."""
        if self.draining:
            raise ShuttingDown("The server is shutting down and takes no new requests; retry on another "
                               "replica or after it restarts.")
        k, bound = len(requests), self.settings.max_queue
        if k > bound:
            raise RuvonError(f"This request asks for {k} completions (prompts times n), more than the server "
                             f"queues at once ({bound}); split it into smaller requests.")
        with self._lock:
            if self._in_inbox + self._engine_waiting + k > bound:
                raise QueueFull(f"The server's queue is full ({bound} requests waiting); retry after the "
                                f"time in the Retry-After header, or start the server with a larger --max-queue.")
            self._in_inbox += k
        loop = asyncio.get_running_loop()
        streams = [RequestStream(out, r) for r in requests]
        accepted = loop.create_future()
        self._inbox.put(_Add(streams, requests, implementation or self.default_implementation, accepted, loop))
        try:
            await asyncio.shield(accepted)
        except asyncio.CancelledError:  # the client left before the engine took the requests
            for s in streams:
                self.abort(s.request_id)
            raise
        return streams

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def fail_all(self, error: BaseException) -> None:
        """End every request now with `error` (graceful shutdown's deadline)."""
        self._inbox.put(("fail_all", error))

    # --- the engine thread ----------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 (a bad model name or an out-of-memory at load: the server answers 503)
            self.load_error = str(exc) if isinstance(exc, RuvonError) else "it failed to load (see the server's log)"
            self.state = "failed"
            self.ready_event.set()
            if not isinstance(exc, RuvonError):
                traceback.print_exc()
            return
        self.state = "ready"
        self.ready_event.set()
        try:
            self._loop()
        finally:
            self._close_engines()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = any(engine.has_unfinished() for engine in self.engines.values())
                self._drain(block=not busy)
                for implementation, engine in list(self.engines.items()):
                    if engine.has_unfinished():
                        self._step(implementation, engine)
                self._count_waiting()
            except Exception as exc:  # noqa: BLE001 (a bug outside a step: never let the thread die silently)
                log.error("engine loop failed:\n%s", "".join(traceback.format_exception(exc)))
                for request_id in list(self._tracked):
                    with contextlib.suppress(Exception):
                        self._fail(request_id, EngineFailure(ENGINE_FAILED))

    def _new_engine(self, implementation: str, **kwargs):
        from ruvoninference.engine import Engine

        s = self.settings
        return Engine(attn=implementation, device=s.device, dtype=s.dtype, max_batch_size=s.max_batch_size,
                      scheduler=s.scheduler, enforce_eager=s.enforce_eager, **s.extra, **kwargs)

    def _load(self) -> None:
        s = self.settings
        engine = self._new_engine(s.attn, model=s.model, kv_cache_memory=s.kv_cache_memory,
                                  tensor_parallel_size=s.tensor_parallel_size)
        self.engines[s.attn] = engine
        self.tokenization.bind(engine)

    def _close_engines(self) -> None:
        """The engine thread's last act: a tensor-parallel engine's workers stop (a collective, so here)."""
        from ruvoninference.parallel.engine import shutdown

        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                shutdown(engine)

    def _engine_for(self, implementation: str):
        engine = self.engines.get(implementation)
        if engine is None and self.settings.tensor_parallel_size != 1:
            raise RuvonError(f"This server runs {self.default_implementation} tensor-parallel over "
                             f"{self.settings.tensor_parallel_size} processes and cannot start another attention "
                             f"implementation; leave attention_implementation out.")
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
        while True:
            if command is not None:
                self._execute(command)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
        self._count_waiting()

    def _count_waiting(self, taken: int = 0) -> None:
        waiting = sum(e.num_waiting for e in self.engines.values())
        with self._lock:
            self._in_inbox -= taken
            self._engine_waiting = waiting

    def _execute(self, command) -> None:
        if isinstance(command, _Add):
            self._add(command)
        elif command[0] == "abort":
            tracked = self._tracked.pop(command[1], None)
            if tracked is not None:
                tracked.engine.abort(command[1])
                self.metrics.success["abort"].inc()
        elif command[0] == "fail_all":
            for request_id in list(self._tracked):
                self._fail(request_id, command[1], reason="abort")

    def _add(self, command: _Add) -> None:
        added: list[str] = []
        try:
            engine = self._engine_for(command.implementation)
            for r in command.requests:  # every request is checked before any is added
                engine.check_request(r.prompt_ids, r.params)
            for stream, r in zip(command.streams, command.requests):
                engine.add_request(r.prompt_ids, r.params, request_id=stream.request_id)
                added.append(stream.request_id)
                self._tracked[stream.request_id] = _Tracked(stream, command.loop, engine, r.prompt,
                                                            engine.sequence(stream.request_id))
        except Exception as exc:  # noqa: BLE001 (RuvonError: the client's 400; anything else: a 500)
            for request_id in added:
                self._tracked.pop(request_id).engine.abort(request_id)
            self._count_waiting(taken=len(command.requests))
            command.loop.call_soon_threadsafe(_resolve, command.accepted, self._client_error(exc), None)
            return
        self._count_waiting(taken=len(command.requests))
        command.loop.call_soon_threadsafe(_resolve, command.accepted, None, None)

    def _client_error(self, exc: Exception) -> Exception:
        if isinstance(exc, RuvonError):
            return exc
        log.error("engine command failed:\n%s", "".join(traceback.format_exception(exc)))
        return EngineFailure(ENGINE_FAILED)

    def _fail(self, request_id: str, error: BaseException, reason: str | None = None) -> None:
        tracked = self._tracked.pop(request_id, None)
        if tracked is None:
            return
        try:
            tracked.engine.abort(request_id)
        finally:
            if reason is None:
                self.metrics.failed.inc()
            else:
                self.metrics.success[reason].inc()
            tracked.loop.call_soon_threadsafe(tracked.stream.queue.put_nowait, error)

    def _step(self, implementation: str, engine) -> None:
        try:
            outputs = engine.step()
        except Exception as exc:  # noqa: BLE001 (a bug: fail the requests it belongs to, serve the rest)
            self._step_failed(implementation, engine, exc)
            outputs = getattr(exc, "outputs", None)  # engine.RequestsFailed: the others' tokens of this step
            if not outputs:
                return
        now = time.perf_counter()
        m = self.metrics
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        gaps: list[float] = []  # the step's inter-token gaps, binned at once (metrics.StepHistogram)
        produced = 0
        for out in outputs:
            t = self._tracked.get(out.request_id)
            if t is None:
                continue  # aborted while this step ran
            if out.new_token_ids:
                n = len(out.new_token_ids)
                produced += n
                if t.first_token is None:
                    t.first_token = now
                    m.ttft.observe(now - t.stream.arrival)
                    self._prefilled(t)
                else:
                    gaps.append(now - t.last_token)
                t.last_token = now
                t.tokens += n
            if out.finished:
                self._tracked.pop(out.request_id)
                if t.first_token is None and out.finish_reason != "abort":
                    self._prefilled(t)  # a prompt scored with max_tokens=0: prefilled, no token drawn
                self._observe_finished(t, out.finish_reason)
            deliveries.setdefault(t.loop, []).append((t.stream.queue, out))
        if produced:
            m.generation_tokens.inc(produced)
        m.itl.observe_many(gaps)
        for loop, items in deliveries.items():
            loop.call_soon_threadsafe(_deliver, items)
        self._count_preemptions(engine)

    def _step_failed(self, implementation: str, engine, exc: Exception) -> None:
        log.error("engine step failed:\n%s", "".join(traceback.format_exception(exc)))
        failure = EngineFailure(ENGINE_FAILED)
        pinned = set(getattr(exc, "request_ids", None) or ())
        owned = [rid for rid, t in self._tracked.items() if t.engine is engine]
        for request_id in (pinned & set(owned)) or owned:
            try:
                self._fail(request_id, failure)
            except Exception:  # noqa: BLE001 (the engine cannot even abort: rebuilt below)
                log.error("abort after a failed step failed:\n%s", traceback.format_exc())
        if not pinned and engine.has_unfinished():  # requests no handler owns: start this engine afresh
            log.error("the engine kept unfinished sequences after a failed step; rebuilding it")
            s = self.settings
            if s.tensor_parallel_size != 1:  # a new group of processes, each loading its shard again
                from ruvoninference.parallel.engine import shutdown

                shutdown(engine)
                del self.engines[implementation], engine
                self.engines[implementation] = self._new_engine(implementation, model=s.model,
                                                                kv_cache_memory=s.kv_cache_memory,
                                                                tensor_parallel_size=s.tensor_parallel_size)
                return
            bundle = engine.bundle
            del self.engines[implementation], engine
            memory = s.kv_cache_memory if implementation == self.default_implementation else s.extra_kv_cache_memory
            self.engines[implementation] = self._new_engine(implementation, model=bundle, kv_cache_memory=memory)

    def _prefilled(self, t: _Tracked) -> None:
        m, prompt_len = self.metrics, len(t.stream.prompt_token_ids)
        if not t.prompt.prefilled:  # n choices of one prompt: its tokens count once, as `usage` counts them
            t.prompt.prefilled = True
            m.prompt_tokens.inc(prompt_len)
        if t.sequence is not None:
            m.prefix_queries.inc(prompt_len)
            m.prefix_hits.inc(getattr(t.sequence, "num_cached_tokens", 0))

    def _observe_finished(self, t: _Tracked, reason: str | None) -> None:
        m = self.metrics
        reason = reason if reason in m.success else "stop"
        m.success[reason].inc()
        if reason == "abort" or t.first_token is None:
            return
        m.e2e.observe(t.last_token - t.stream.arrival)
        m.request_prompt_tokens.observe(len(t.stream.prompt_token_ids))
        m.request_generation_tokens.observe(t.tokens)
        if t.tokens > 1:
            m.tpot.observe((t.last_token - t.first_token) / (t.tokens - 1))

    def _count_preemptions(self, engine) -> None:
        count = getattr(engine.scheduler, "num_preemptions", 0)
        before = self._preemptions.get(id(engine), 0)
        if count > before:
            self.metrics.preemptions.inc(count - before)
        self._preemptions[id(engine)] = count

    # --- read by /metrics on the event loop (a scrape sees the engines as they are) -------------------------

    def _num_running(self) -> int:
        return sum(e.num_running for e in list(self.engines.values()))

    def _spec_stats(self):
        """The default engine's speculative decoding counters, or None when it does not speculate."""
        return getattr(getattr(self.engine, "speculator", None), "stats", None)

    def _kv_usage(self) -> float:
        managers = [e.block_manager for e in list(self.engines.values())]
        total = sum(m.num_blocks for m in managers)
        return (total - sum(m.num_free_blocks for m in managers)) / total if total else 0.0


def _resolve(future: asyncio.Future, error: BaseException | None, result: Any) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _deliver(items: list) -> None:
    for q, item in items:
        q.put_nowait(item)
