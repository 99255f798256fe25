"""Issue 15: the server under careless and hostile clients. One bad request fails alone, a full queue says
when to retry, a client that leaves stops its work, a shutdown ends every stream with a word."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import httpx
import pytest

from tests.server.test_server_errors import metric, wait_for_idle

LONG = {"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}


def events(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: "):]


def test_numerically_poisonous_values_fail_nothing(gpt2_server):
    """A temperature of 1e-40 or a top_p of 1e-300 once made the draw fail inside the step, taking every
    request in the batch with it; now they mean greedy, and the requests beside them are untouched."""
    url = gpt2_server.url + "/v1/completions"
    base = {"prompt": "The capital of France is", "max_tokens": 8, "ignore_eos": True}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            bodies = [{**base, "temperature": 0}] * 4 + [{**base, "temperature": 1e-40},
                                                          {**base, "temperature": 0.7, "top_p": 1e-300}]
            return await asyncio.gather(*(c.post(url, json=b) for b in bodies))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    texts = {r.json()["choices"][0]["text"] for r in responses}
    assert len(texts) == 1  # all greedy: the tiny temperature and the tiny top_p pick the argmax


def test_a_failing_step_fails_its_requests_cleanly_and_the_server_goes_on(small_server):
    with small_server(max_batch_size=4) as server:
        server.wait_ready()
        engine = server.app.state.engine.engine
        real_step = engine.step
        failures = {"left": 1}

        def step():
            if failures["left"] and engine.num_running:
                failures["left"] -= 1
                raise RuntimeError("secret internal detail")
            return real_step()

        engine.step = step
        url = server.url + "/v1/completions"
        with httpx.Client(timeout=60) as c:
            with c.stream("POST", url, json={**LONG, "stream": True}) as r:
                last = list(events(r))[-1]
            error = json.loads(last)["error"]
            assert error["type"] == "server_error" and error["code"] == "engine_error"
            assert "secret" not in error["message"] and "retry" in error["message"]
            assert wait_for_idle(server.url + "/metrics")  # blocks free again
            assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
            # One that names its request (an engine that can tell) fails that request alone.
            pinned = RuntimeError("bad row")
            failures["left"] = 1

            def pinned_step():
                if failures["left"] and engine.num_running >= 2:
                    failures["left"] -= 1
                    pinned.request_ids = [next(iter(engine._seqs))]  # the oldest request
                    raise pinned
                return real_step()

            engine.step = pinned_step

            async def two() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=60) as ac:
                    first = asyncio.create_task(ac.post(url, json={**LONG, "max_tokens": 40}))
                    await asyncio.sleep(0.3)
                    second = asyncio.create_task(ac.post(url, json={**LONG, "max_tokens": 40}))
                    return [await first, await second]

            statuses = sorted(r.status_code for r in asyncio.run(two()))
            assert statuses == [200, 500], statuses
            ok = c.post(url, json={"prompt": "Hi", "max_tokens": 2})
            assert ok.status_code == 200
            text = c.get(server.url + "/metrics").text
            assert metric(text, "ruvon:request_failed_total") == 2


def test_queue_bound_is_exact_429_says_when_to_retry_and_the_api_key_is_required(small_server):
    key = {"Authorization": "Bearer sekret"}
    with small_server(app_options={"api_key": "sekret"}, max_batch_size=2, max_queue=4) as server:
        server.wait_ready()
        url = server.url
        with httpx.Client(timeout=60) as c:
            denied = c.get(url + "/v1/models")
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
            assert denied.json()["error"]["code"] == "invalid_api_key"
            wrong = c.post(url + "/v1/completions", json={"prompt": "Hi"}, headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]["message"]
            assert c.get(url + "/health").status_code == 200 and c.get(url + "/metrics").status_code == 200
            with contextlib.ExitStack() as stack:
                readers = []  # an abandoned line iterator closes its connection: keep them

                def start(read_first: bool) -> None:
                    r = stack.enter_context(c.stream("POST", url + "/v1/completions", headers=key,
                                                     json={**LONG, "stream": True}))
                    assert r.status_code == 200
                    readers.append(events(r))
                    if read_first:
                        next(readers[-1])  # running: it has a token

                for _ in range(2):
                    start(read_first=True)  # the batch is full
                for _ in range(4):
                    start(read_first=False)  # the queue is full: 4 waiting
                assert metric(c.get(url + "/metrics").text, "ruvon:num_requests_waiting") == 4
                refused = c.post(url + "/v1/completions", headers=key, json={"prompt": "Hi", "max_tokens": 2})
                assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert metric(wait_for_idle(url + "/metrics"), "ruvon:num_requests_waiting") == 0


def test_body_limit_and_prompt_length_come_before_any_work(gpt2_server):
    url = gpt2_server.url + "/v1/completions"
    huge = json.dumps({"prompt": "a " * (5 * 2**20)}).encode()  # 10 MiB: over the 8 MiB default
    started = time.monotonic()
    response = httpx.post(url, content=huge, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: refused once the bytes read pass the limit
        for i in range(0, len(huge), 2**20):
            yield huge[i:i + 2**20]

    response = httpx.post(url, content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413
    # 2 MiB of text cannot fit gpt2's 1,024 tokens: refused without being tokenized.
    response = httpx.post(url, json={"prompt": "a " * 2**20, "max_tokens": 1}, timeout=60)
    assert response.status_code == 400 and "at least" in response.json()["error"]["message"]
    assert time.monotonic() - started < 20


def test_a_non_streaming_request_stops_when_its_client_leaves(gpt2_server):
    metrics_url = gpt2_server.url + "/metrics"
    before = metric(httpx.get(metrics_url).text, "ruvon:request_success_total", finished_reason="abort")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gpt2_server.url + "/v1/completions", json={**LONG, "n": 4}, timeout=2)
    after = wait_for_idle(metrics_url)
    assert metric(after, "ruvon:request_success_total", finished_reason="abort") == before + 4


def test_models_routes_and_what_openai_clients_expect(gpt2_server):
    url = gpt2_server.url
    card = httpx.get(url + "/v1/models/gpt2-random")
    assert card.status_code == 200 and card.json()["id"] == "gpt2-random"
    unknown = httpx.get(url + "/v1/models/gpt-4")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    wrong_model = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "model": "gpt-4"})
    assert wrong_model.status_code == 404 and wrong_model.json()["error"]["param"] == "model"
    not_allowed = httpx.get(url + "/v1/completions")
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
    assert not_allowed.json()["error"]["code"] == "method_not_allowed"
    bad = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "n": 0}).json()["error"]
    assert bad["code"] is None  # a string or null, never a number
    created = httpx.get(url + "/v1/models").json()["data"][0]["created"]
    time.sleep(1.1)
    assert httpx.get(url + "/v1/models").json()["data"][0]["created"] == created  # the start, not now
    with httpx.stream("POST", url + "/v1/completions", timeout=60,
                      json={"prompt": "Hi", "max_tokens": 3, "stream": True}) as r:
        chunks = [e for e in events(r) if e != "[DONE]"]
    assert chunks and all("usage" not in json.loads(e) for e in chunks)  # no usage unless include_usage


@contextlib.contextmanager
def a_running_stream(server):
    """A long stream that has its first token; yields the iterator over its remaining events."""
    with httpx.stream("POST", server.url + "/v1/completions", json={**LONG, "stream": True}, timeout=60) as r:
        received = events(r)
        next(received)
        yield received


def test_shutdown_drains_then_ends_streams_with_an_error_and_a_second_signal_exits_at_once(small_server):
    """What SIGTERM does (the signal handler calls `handle_exit`; here the test calls it)."""
    with small_server(shutdown_timeout=1.0) as server:
        server.wait_ready()
        with a_running_stream(server) as received:
            started = time.monotonic()
            server.server.handle_exit(signal.SIGTERM, None)
            rest = list(received)
        waited = time.monotonic() - started
        error = json.loads(rest[-1])["error"]
        assert error["type"] == "service_unavailable" and "shut down" in error["message"]
        assert 0.9 < waited < 10
        server.thread.join(10)
        assert not server.thread.is_alive()
    with small_server(shutdown_timeout=60.0) as server:
        server.wait_ready()
        with a_running_stream(server):
            started = time.monotonic()
            server.server.handle_exit(signal.SIGTERM, None)
            server.server.handle_exit(signal.SIGTERM, None)
            server.thread.join(10)
        assert not server.thread.is_alive() and time.monotonic() - started < 5


def test_the_samplers_settings_reach_the_engine(gpt2_server):
    """logit_bias, penalties and min_tokens pass through (a +100 bias makes greedy pick that token)."""
    url = gpt2_server.url + "/v1/completions"
    the = 262  # " the" in GPT-2's vocabulary
    body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True,
            "logit_bias": {str(the): 100}, "presence_penalty": 0.5, "frequency_penalty": 0.5,
            "repetition_penalty": 1.1, "min_tokens": 2}
    response = httpx.post(url, json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == " the" * 4
    outside = httpx.post(url, json={**body, "logit_bias": {"50257": 1}}, timeout=60)
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "logit_bias"
