"""Every bad input gets its 4xx in OpenAI's error shape; a disconnect frees its blocks; 429 and 503."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

BAD_COMPLETIONS = [
    ({"prompt": "Hi", "model": "gpt-4"}, "model"),
    ({"prompt": "Hi", "attention_implementation": "warp_speed"}, "attention_implementation"),
    ({"prompt": "Hi", "max_tokens": 5000}, None),  # beyond the 1024-token context
    ({"prompt": "Hi", "temperature": -0.5}, "temperature"),
    ({"prompt": "Hi", "top_p": 0}, "top_p"),
    ({"prompt": "Hi", "top_p": 1.5}, "top_p"),
    ({"prompt": "Hi", "logprobs": 6}, "logprobs"),
    ({"prompt": "Hi", "n": 0}, "n"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"max_tokens": 4}, "prompt"),
    ({"prompt": [99999999]}, None),  # a token id outside the vocabulary
]


@pytest.mark.parametrize(("body", "param"), BAD_COMPLETIONS)
def test_bad_completion_requests(gpt2_server, body, param):
    response = httpx.post(gpt2_server.url + "/v1/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"].endswith(".") and "Traceback" not in error["message"]


def test_malformed_json(gpt2_server):
    response = httpx.post(gpt2_server.url + "/v1/completions", content=b'{"prompt": "Hi",',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_unavailable_implementation_names_why_and_what_works(gpt2_server):
    """The articles' curl request, verbatim, on a machine without FlashAttention-2."""
    from ruvoninference.attention import unavailable_reasons

    if "flash_attention_2" not in {str(k) for k in unavailable_reasons("cpu")}:
        pytest.skip("FlashAttention-2 is available here")
    response = httpx.post(gpt2_server.url + "/completions", timeout=30, json={
        "prompt": "The future of AI", "max_tokens": 50, "attention_implementation": "flash_attention_2"})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "FlashAttention-2" in message and re.search(r"available here: .*sdpa", message)


def test_openai_client_raises_bad_request(gpt2_server):
    c = openai.OpenAI(base_url=gpt2_server.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.completions.create(model="gpt2-random", prompt="Hi", temperature=-1)


def test_chat_needs_a_chat_template(gpt2_server):
    response = httpx.post(gpt2_server.url + "/v1/chat/completions", timeout=30,
                          json={"messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 400 and "no chat template" in response.json()["error"]["message"]


def _metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + (labels or "")) and not line.startswith("#"):
            if labels or line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnect_mid_stream_aborts_and_frees_blocks(gpt2_server):
    """16 streams of 900 tokens (tens of seconds of work): leaving after 3 chunks aborts all 16 at once."""
    metrics_url = gpt2_server.url + "/metrics"
    engine = gpt2_server.app.state.engine.engine
    aborted_before = _metric(httpx.get(metrics_url).text, "ruvon_request_finished_total", '{finish_reason="abort"}')
    with httpx.stream("POST", gpt2_server.url + "/v1/completions", timeout=60, json={
            "prompt": "Tell me a very long story", "max_tokens": 900, "n": 16, "ignore_eos": True,
            "stream": True}) as r:
        seen = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(line)
            if len(seen) == 3:
                break
        assert all('"text"' in line for line in seen), seen
        assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks  # they hold blocks
    # The connection is closed: within a step the requests are aborted and their blocks are free again,
    # long before 16 x 900 tokens could have been generated.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = httpx.get(metrics_url).text
        if _metric(after, "ruvon_kv_cache_blocks_used") == 0 and _metric(after, "ruvon_num_requests_running") == 0:
            break
        time.sleep(0.05)
    assert _metric(after, "ruvon_kv_cache_blocks_used") == 0
    assert _metric(after, "ruvon_request_finished_total", '{finish_reason="abort"}') == aborted_before + 16
    assert _metric(after, "ruvon_generation_tokens_total") < 16 * 900
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_metrics_exposes_the_telemetry(gpt2_server):
    httpx.post(gpt2_server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=30)
    text = httpx.get(gpt2_server.url + "/metrics").text
    for name in ("ruvon_http_requests_total", "ruvon_prompt_tokens_total", "ruvon_generation_tokens_total",
                 "ruvon_time_to_first_token_seconds_bucket", "ruvon_time_per_output_token_seconds_bucket",
                 "ruvon_e2e_request_latency_seconds_bucket", "ruvon_num_requests_waiting",
                 "ruvon_num_requests_running", "ruvon_kv_cache_blocks_used", "ruvon_kv_cache_blocks_free"):
        assert name in text, name
    assert _metric(text, "ruvon_http_requests_total", '{route="/v1/completions",status="200"}') >= 1
    assert _metric(text, "ruvon_generation_tokens_total") >= 3


def test_queue_full_is_429_and_loading_is_503(running_server):
    """A one-slot queue behind a one-sequence batch: the third request at once is refused."""
    import asyncio

    from ruvoninference.server.app import create_app
    from ruvoninference.server.async_engine import EngineSettings

    app = create_app(EngineSettings(model="gpt2-random", device="cpu", scheduler="sequential", max_batch_size=1,
                                    max_queue=1))
    with running_server(app) as server:
        early = httpx.get(server.url + "/health")
        if early.status_code == 503:  # caught while loading
            assert "still loading" in early.json()["error"]["message"]
        server.wait_ready()
        body = {"prompt": "Hi", "max_tokens": 40, "ignore_eos": True}

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
                return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(6)))

        codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert codes[0] == 200 and codes[-1] == 429, codes
    assert 429 in codes
