"""What the server's duties to its clients cost the host, measured in-process with the server's own objects.

Each feature of Part 14's "What a server owes its clients" is timed where it runs, with the real code:

per request (the event loop, once per HTTP request)
    bearer_auth        `BearerAuth` around a trivial ASGI app, the right key, a POST /v1/completions
    body_limit         `BodyLimit` reading a ~1 KiB completions body and replaying it to the app
    status_counter     `StatusCounter` counting the response for /metrics
    middleware_stack   the three in `create_app`'s order: StatusCounter -> BearerAuth -> BodyLimit
        (each of these: the wrapped app minus the trivial app alone, paired round by round)
    validation         what a completions request goes through before the engine: `json.loads`, the
                       pydantic `CompletionRequest`, `routes.check_model` and `routes.sampling_params`
                       (the parse is included: an upper bound of what validation adds)
    ready_gate         `routes.ready`: the shutdown / loading gate every generating route depends on
    admission          backpressure: `routes.check_room`, the lock-protected count of `AsyncEngine.submit`
                       (timed as the exact statements it runs: they sit inside `submit`, between awaits),
                       and the engine thread's `AsyncEngine._count_waiting(taken=1)`
    submission         context, not a feature: the real `AsyncEngine.submit` round trip, with this thread
                       playing the engine thread's part (`AsyncEngine._drain` and `_add` on a fake engine)
    disconnect_watch   `routes._watch_disconnect`: one task per request, started, then cancelled
engine thread (per token, per step, per request)
    metrics_per_token  the real `AsyncEngine._step` over a fake engine whose `step()` returns `batch` decode
                       outputs, with the server's `ServerMetrics` minus the same with every metric a no-op,
                       divided by `batch`: the ITL observation and the token counter
    metrics_per_request  the same for outputs that are a request's first and last token (max_tokens=1):
                       TTFT, the prompt and prefix-cache counters, and the finish histograms
    fault_isolation    the `try`/`except` around `engine.step()` in `_step`: a guarded call minus a bare one
                       (timed as that statement alone; `_step` has no version without it)
per scrape (the event loop, once per Prometheus scrape)
    metrics_render     `ServerMetrics.render()` with the gauges bound to an `AsyncEngine` and filled histograms

Every number is the median over `repeats` rounds after `warmup` rounds thrown away; a round times a loop of
`inner` calls and divides. With a serve benchmark's JSON (`benchmark serve --json`), each cost is also put
against that run's latencies: a per-request cost against the median TTFT; a per-token cost times the tokens
one decode step makes (the run's concurrency, at most the server's max batch size) against the median ITL,
since the engine thread pays it for every sequence before the step's tokens go out; a per-step cost and a
scrape (which stalls the event loop once) against the median ITL.

The fake engine, the no-op metrics and the event loop stub that drops the hand-off of outputs stand in
only where a real engine would run a model; everything timed is the server's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

from ruvoninference.environment import describe
from ruvoninference.errors import RuvonError

DEFAULT_REPEATS = 21
DEFAULT_WARMUP = 3
BATCH = 64  # decode outputs per fake step (the H200 serve runs' concurrency)
BODY_BYTES = 1024  # the typical completions body
MODEL_NAME = "bench-model"
API_KEY = "sk-bench-0123456789abcdef"
SERVER_PACKAGES = ("fastapi", "starlette", "pydantic", "pydantic-core", "prometheus-client", "uvicorn")

# The fraction of a serve run's latency each kind of cost is put against (see the module docstring).
BASIS = {"request": "median TTFT", "token": "median ITL, times the tokens per step", "step": "median ITL",
         "scrape": "median ITL (one stall of the event loop)"}


# --- timing ---------------------------------------------------------------------------------------------------


def _rounds(variants: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Each round times every variant once (µs per call), in turn, so slow drift of the machine hits all."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + repeats):
        for name, timed in variants.items():
            value = timed()
            if r >= warmup:
                times[name].append(value)
    return times


def _loop_us(fn: Callable[[], object], inner: int) -> Callable[[], float]:
    def timed() -> float:
        start = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        return (time.perf_counter_ns() - start) / inner / 1e3

    return timed


def _async_loop_us(loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable], inner: int) -> Callable[[], float]:
    async def run() -> float:
        start = time.perf_counter_ns()
        for _ in range(inner):
            await fn()
        return (time.perf_counter_ns() - start) / inner / 1e3

    return lambda: loop.run_until_complete(run())


def _entry(per: str, what: str, times: dict[str, list[float]], name: str, baseline: str | None = None) -> dict:
    """The median cost; with a baseline, the median of the round-by-round differences, beside both medians."""
    entry = {"per": per, "what": what}
    if baseline is None:
        entry["us"] = statistics.median(times[name])
    else:
        entry["us"] = statistics.median(a - b for a, b in zip(times[name], times[baseline]))
        entry["with_us"] = statistics.median(times[name])
        entry["without_us"] = statistics.median(times[baseline])
    entry["spread_us"] = _spread(times[name])
    return entry


def _spread(values: list[float]) -> float:
    """Half the distance between the quartiles: how much the rounds disagreed (the noise floor)."""
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return (q[2] - q[0]) / 2


# --- the server's objects, without a model ------------------------------------------------------------------


class _FakeEngine:
    """Stands in for `Engine` where the engine thread calls it; `step()` returns prepared outputs."""

    def __init__(self) -> None:
        self.outputs: list = []
        self.scheduler = SimpleNamespace(num_preemptions=0)
        self.num_waiting = 0
        self.num_running = BATCH
        self.block_manager = SimpleNamespace(num_blocks=4096, num_free_blocks=1024)

    def step(self) -> list:
        return self.outputs

    def has_unfinished(self) -> bool:
        return True

    def check_request(self, prompt_ids, params) -> None:
        pass

    def add_request(self, prompt_ids, params, request_id) -> None:
        pass

    def sequence(self, request_id):
        return SimpleNamespace(num_cached_tokens=0)

    def abort(self, request_id) -> None:
        pass


class _DroppedHandOff:
    """The event loop as the engine thread sees it; the outputs' hand-off is dropped (the same in both
    variants, so it is not in any difference)."""

    def call_soon_threadsafe(self, *args) -> None:
        pass


class _Noop:
    def inc(self, *args) -> None:
        pass

    def observe(self, *args) -> None:
        pass

    def observe_many(self, *args) -> None:
        pass

    def labels(self, *args):
        return self


def _no_metrics(metrics) -> SimpleNamespace:
    """Every metric the server's object holds, as a no-op (names taken from the real object)."""
    noop = _Noop()
    fake = SimpleNamespace(**{name: noop for name in vars(metrics)})
    fake.success = {reason: noop for reason in metrics.success}
    return fake


def _typical_body() -> bytes:
    """A completions body as an OpenAI client sends it, its prompt grown until the body is BODY_BYTES."""
    from ruvoninference.bench.serve import WORDS

    body, words = b"", 0
    while len(body) < BODY_BYTES:
        words += 1
        prompt = " ".join(WORDS[i % len(WORDS)] for i in range(words))
        body = json.dumps({"model": MODEL_NAME, "prompt": prompt, "max_tokens": 128, "temperature": 1.0,
                           "top_p": 0.95, "stream": True, "stream_options": {"include_usage": True},
                           "stop": ["\n\n"], "seed": 0}).encode()
    return body


def _scope(body: bytes) -> dict:
    headers = [(b"host", b"127.0.0.1:8000"), (b"accept-encoding", b"gzip, deflate"), (b"connection", b"keep-alive"),
               (b"accept", b"application/json"), (b"content-type", b"application/json"),
               (b"user-agent", b"OpenAI/Python 1.54.0"), (b"x-stainless-lang", b"python"),
               (b"authorization", f"Bearer {API_KEY}".encode()), (b"content-length", str(len(body)).encode())]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


def _bench_engine():
    """An `AsyncEngine` (never started) over one fake engine, as a loaded server holds it."""
    from ruvoninference.server.async_engine import AsyncEngine, EngineSettings
    from ruvoninference.server.metrics import ServerMetrics

    settings = EngineSettings(model=MODEL_NAME)
    metrics = ServerMetrics(MODEL_NAME)
    engine = AsyncEngine(settings, metrics)
    fake = _FakeEngine()
    engine.engines[settings.attn] = fake
    engine.state = "ready"
    # What `Tokenization.bind` reads from a loaded engine (SmolLM2-135M's vocabulary and context).
    engine.tokenization.vocab_size, engine.tokenization.context_length = 49152, 8192
    return engine, fake, metrics


# --- the measurements ---------------------------------------------------------------------------------------


def _per_request(loop, repeats: int, warmup: int, inner: int) -> dict:
    from ruvoninference.server import routes
    from ruvoninference.server.async_engine import EngineRequest, PromptGroup
    from ruvoninference.server.middleware import BearerAuth, BodyLimit, StatusCounter
    from ruvoninference.server.protocol import CompletionRequest
    from ruvoninference.server.routes import ServerState

    engine, _fake, metrics = _bench_engine()
    state = ServerState(engine, metrics, engine.settings, MODEL_NAME, created=0)
    body = _typical_body()
    scope = _scope(body)
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    end = {"type": "http.response.body", "body": b"{}", "more_body": False}

    async def app(scope_, receive, send):  # a route that reads its body and answers
        await receive()
        await send(start)
        await send(end)

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(_message):
        pass

    auth, limit = BearerAuth(app, api_key=API_KEY), BodyLimit(app, max_bytes=8 * 2**20)
    counter = StatusCounter(app, metrics=metrics)
    stack = StatusCounter(BearerAuth(BodyLimit(app, max_bytes=8 * 2**20), api_key=API_KEY), metrics=metrics)

    ids = list(range(200))  # the prompt's token ids: only their count is read

    def validate():
        req = CompletionRequest.model_validate(json.loads(body))
        routes.check_model(state, req.model)
        return EngineRequest(ids, routes.sampling_params(req, engine, ids, 0, req.logprobs, req.max_tokens),
                             PromptGroup())

    def admit():
        # routes.check_room, then the statements of AsyncEngine.submit's admission (between its awaits),
        # then the engine thread's count once it has taken the command.
        routes.check_room(engine, 1)
        bound = engine.settings.max_queue
        with engine._lock:
            if engine._in_inbox + engine._engine_waiting + 1 > bound:
                raise AssertionError("the benchmark's queue cannot be full")
            engine._in_inbox += 1
        engine._count_waiting(taken=1)

    request = validate()

    async def submission():
        loop.call_soon(engine._drain, False)  # runs as submit waits: the engine thread's part, on this thread
        await engine.submit([request], asyncio.Queue())
        engine._tracked.clear()

    class _Waiting:  # a connection that stays open: `receive()` waits until the watch is cancelled
        async def receive(self):
            await loop.create_future()

    waiting, out = _Waiting(), asyncio.Queue()

    async def watch():
        task = loop.create_task(routes._watch_disconnect(waiting, out))
        await asyncio.sleep(0)  # the watch starts and waits on the connection
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    times = _rounds({
        "app": _async_loop_us(loop, lambda: app(scope, receive, send), inner),
        "bearer_auth": _async_loop_us(loop, lambda: auth(scope, receive, send), inner),
        "body_limit": _async_loop_us(loop, lambda: limit(scope, receive, send), inner),
        "status_counter": _async_loop_us(loop, lambda: counter(scope, receive, send), inner),
        "middleware_stack": _async_loop_us(loop, lambda: stack(scope, receive, send), inner),
        "validation": _loop_us(validate, inner),
        "ready_gate": _loop_us(lambda: routes.ready(state), inner),
        "admission": _loop_us(admit, inner),
        "submission": _async_loop_us(loop, submission, inner),
        "disconnect_watch": _async_loop_us(loop, watch, inner),
    }, repeats, warmup)
    engine.tokenization.close()
    return {
        "bearer_auth": _entry("request", "BearerAuth, the right key (with it minus without)", times,
                              "bearer_auth", "app"),
        "body_limit": _entry("request", f"BodyLimit, a {len(body)}-byte body read and replayed", times,
                             "body_limit", "app"),
        "status_counter": _entry("request", "StatusCounter, one response counted", times, "status_counter", "app"),
        "middleware_stack": _entry("request", "StatusCounter -> BearerAuth -> BodyLimit, as create_app stacks "
                                              "them", times, "middleware_stack", "app"),
        "validation": _entry("request", "json.loads + CompletionRequest + check_model + sampling_params "
                                        "(parse included)", times, "validation"),
        "ready_gate": _entry("request", "routes.ready: the shutdown and loading gate", times, "ready_gate"),
        "admission": _entry("request", "backpressure: check_room + submit's locked count + _count_waiting",
                            times, "admission"),
        "submission": _entry("request", "context: AsyncEngine.submit through the inbox to _add (fake engine)",
                             times, "submission"),
        "disconnect_watch": _entry("request", "routes._watch_disconnect: a task started and cancelled", times,
                                   "disconnect_watch"),
    }, {"body_bytes": len(body), "request_headers": len(scope["headers"])}


def _engine_thread(repeats: int, warmup: int, inner: int, batch: int) -> tuple[dict, object]:
    from ruvoninference.engine.engine import StepOutput
    from ruvoninference.sampling import SamplingParams
    from ruvoninference.server.async_engine import (
        EngineRequest,
        PromptGroup,
        RequestStream,
        _Tracked,
    )

    engine, fake, metrics = _bench_engine()
    real, noop = metrics, _no_metrics(metrics)
    hand_off = _DroppedHandOff()
    params = SamplingParams(max_tokens=128)
    out = asyncio.Queue()

    def track(first_token: float | None) -> list[str]:
        engine._tracked.clear()
        ids = []
        for _ in range(batch):
            stream = RequestStream(out, EngineRequest(list(range(128)), params, PromptGroup()))
            engine._tracked[stream.request_id] = _Tracked(stream, hand_off, fake, PromptGroup(),
                                                          SimpleNamespace(num_cached_tokens=0),
                                                          first_token=first_token, last_token=first_token)
            ids.append(stream.request_id)
        return ids

    decode = [StepOutput(rid, [42], " the", False, None) for rid in track(time.perf_counter())]

    def steady(metrics_) -> Callable[[], float]:
        timed = _loop_us(lambda: engine._step("sdpa", fake), max(1, inner // 20))

        def run() -> float:
            fake.outputs, engine.metrics = decode, metrics_
            return timed()

        return run

    def first_and_last(metrics_) -> Callable[[], float]:
        calls = max(1, inner // batch)

        def timed() -> float:
            engine.metrics, total = metrics_, 0
            for _ in range(calls):
                fake.outputs = [StepOutput(rid, [42], " the", True, "length") for rid in track(None)]
                start = time.perf_counter_ns()
                engine._step("sdpa", fake)
                total += time.perf_counter_ns() - start
            return total / calls / 1e3

        return timed

    def guarded():
        try:
            return fake.step()
        except Exception:  # noqa: BLE001 (the statement _step wraps engine.step() in)
            return None

    def bare():
        return fake.step()

    decode_times = _rounds({"real": steady(real), "noop": steady(noop)}, repeats, warmup)
    first_times = _rounds({"real": first_and_last(real), "noop": first_and_last(noop)}, repeats, warmup)
    try_times = _rounds({"guarded": _loop_us(guarded, inner * 100), "bare": _loop_us(bare, inner * 100)},
                        repeats, warmup)

    per_token = _entry("token", f"metrics in AsyncEngine._step: ITL observe + token counter (a {batch}-output "
                                f"decode step, real minus no-op metrics, / {batch})", decode_times, "real", "noop")
    per_first = _entry("request", "metrics of a request's first and last token in _step (TTFT, prompt and "
                                  f"prefix counters, finish histograms; real minus no-op, / {batch})",
                       first_times, "real", "noop")
    for entry in (per_token, per_first):
        for key in ("us", "with_us", "without_us", "spread_us"):
            entry[key] /= batch
    step_with_metrics = _entry("step", f"AsyncEngine._step over {batch} decode outputs, server metrics on "
                                       "(engine.step() itself is a fake: the server's bookkeeping only)",
                               decode_times, "real")
    fault = _entry("step", "try/except around engine.step(): guarded call minus bare call", try_times,
                   "guarded", "bare")
    engine.metrics = real
    engine.tokenization.close()
    return {"metrics_per_token": per_token, "metrics_per_request": per_first, "fault_isolation": fault,
            "step_bookkeeping": step_with_metrics}, (engine, real)


def _scrape(engine, metrics, repeats: int, warmup: int, inner: int) -> dict:
    """One /metrics render, with the histograms the engine-thread measurements filled and a route table."""
    for route in ("/v1/completions", "/v1/chat/completions", "/health", "/metrics", "/v1/models"):
        for status in ("200", "400", "429"):
            metrics.http.labels(route, status).inc()
    times = _rounds({"render": _loop_us(metrics.render, max(1, inner // 20))}, repeats, warmup)
    body, _ = metrics.render()
    entry = _entry("scrape", "ServerMetrics.render(): one /metrics body", times, "render")
    entry["bytes"] = len(body)
    return entry


# --- putting the costs against a serve run --------------------------------------------------------------------


def load_serve_json(path: str | Path) -> dict:
    """A `benchmark serve --json` result, checked for the latencies this benchmark compares against."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RuvonError(f"--serve-json {path} does not exist; give the JSON written by `cli.py benchmark serve "
                         f"--json`.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise RuvonError(f"--serve-json {path} is not a JSON file; give the JSON written by `cli.py benchmark "
                         f"serve --json`.") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    usable = isinstance(runs, list) and runs and all(
        isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) and r.get(k) > 0
                                    for k in ("concurrency", "median_itl_ms", "median_ttft_ms")) for r in runs)
    if not usable:
        raise RuvonError(f"--serve-json {path} has no runs with a concurrency and positive median TTFT and ITL; "
                         f"give the JSON written by `cli.py benchmark serve --json`.")
    return data


def relate(features: dict, serve: dict, path: str | None = None) -> dict:
    """Each cost as a percentage of each serve run's median TTFT or ITL (see BASIS)."""
    info = (serve.get("server") or {}).get("/info") or {}
    max_batch = info.get("max_batch_size")
    runs = []
    for run in serve["runs"]:
        tokens_per_step = min(run["concurrency"], max_batch) if max_batch else run["concurrency"]
        itl_us, ttft_us = run["median_itl_ms"] * 1e3, run["median_ttft_ms"] * 1e3
        percent = {}
        for name, f in features.items():
            if f["per"] == "request":
                percent[name] = 100 * f["us"] / ttft_us
            elif f["per"] == "token":
                percent[name] = 100 * f["us"] * tokens_per_step / itl_us
            else:
                percent[name] = 100 * f["us"] / itl_us
        runs.append({"concurrency": run["concurrency"], "tokens_per_step": tokens_per_step,
                     "median_itl_ms": run["median_itl_ms"], "median_ttft_ms": run["median_ttft_ms"],
                     "percent": percent})
    return {"path": str(path) if path is not None else None, "command": serve.get("command"),
            "model": info.get("model") or (serve.get("config") or {}).get("model"),
            "max_batch_size": max_batch, "environment": info.get("environment"), "basis": BASIS, "runs": runs}


# --- the benchmark ------------------------------------------------------------------------------------------


def _versions() -> dict:
    found = {}
    for package in SERVER_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def benchmark_server_overhead(repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP, inner: int = 2000,
                              batch: int = BATCH, serve_json: str | Path | None = None,
                              progress: Callable[[str, int, int], None] | None = None) -> dict:
    """The host cost of each server feature (µs, medians over `repeats` rounds of `inner` calls each, after
    `warmup` rounds); with `serve_json`, each also as a percentage of that serve run's latencies."""
    if repeats < 2 or warmup < 0 or inner < 1 or batch < 1:
        raise RuvonError(f"repeats must be at least 2, warmup at least 0, inner and batch at least 1 (got "
                         f"{repeats}, {warmup}, {inner}, {batch}).")
    serve = load_serve_json(serve_json) if serve_json is not None else None
    report = progress or (lambda *_: None)
    load_before = os.getloadavg()
    loop = asyncio.new_event_loop()
    try:
        report("per request: middleware, validation, admission", 0, 3)
        per_request, request_config = _per_request(loop, repeats, warmup, inner)
        report("engine thread: metrics, fault isolation", 1, 3)
        engine_thread, (engine, metrics) = _engine_thread(repeats, warmup, inner, batch)
        report("/metrics render", 2, 3)
        scrape = _scrape(engine, metrics, repeats, warmup, inner)
        report("done", 3, 3)
    finally:
        loop.close()
    features = {**per_request, **engine_thread, "metrics_render": scrape}
    data = {
        "benchmark": "server-overhead",
        "environment": {**describe("cpu"), "server_packages": _versions(), "cpu_count": os.cpu_count()},
        "config": {"repeats": repeats, "warmup": warmup, "inner": inner, "batch": batch, **request_config,
                   "statistic": "median over rounds; a cost with a baseline is the median of the round-by-round "
                                "differences", "unit": "µs"},
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "features": features,
    }
    if serve is not None:
        data["relative_to"] = relate(features, serve, serve_json)
    return data
