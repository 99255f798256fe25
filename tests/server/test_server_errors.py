"""Every bad input gets its 4xx in OpenAI's error shape; a disconnect frees its blocks; 429 and 503."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

BAD_COMPLETIONS = [
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
    ({"prompt": "Hi", "temperature": float("nan")}, "temperature"),
    ({"prompt": [99999999]}, "prompt"),  # a token id outside the vocabulary
    ({"prompt": "Hi", "temperature": 2.5}, "temperature"),  # above OpenAI's 2
    ({"prompt": "Hi", "seed": 2**64}, "seed"),  # beyond 64 bits
    ({"prompt": "\ud800abc"}, "prompt"),  # a lone surrogate
    ({"prompt": "Hi", "stop": ["\udfff"]}, "stop"),
    ({"prompt": "Hi", "presence_penalty": 5.0}, "presence_penalty"),  # OpenAI's range is -2 to 2
    ({"prompt": "Hi", "frequency_penalty": -2.5}, "frequency_penalty"),
    ({"prompt": "Hi", "logit_bias": {"50256": 101}}, "logit_bias"),
    ({"prompt": "Hi", "max_tokens": 2, "min_tokens": 5}, "min_tokens"),  # judged by SamplingParams
    ({"prompt": "Hi", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "Hi", "best_of": 3}, "best_of"),  # accepted by OpenAI, not implemented here: said so
    ({"prompt": "Hi", "suffix": "and then"}, "suffix"),
    ({"prompt": "Hi", "tools": [{"type": "function"}]}, "tools"),
    ({"prompt": "Hi", "response_format": {"type": "json_object"}}, "response_format"),
]


@pytest.mark.parametrize(("body", "param"), BAD_COMPLETIONS)
def test_bad_completion_requests(gpt2_server, body, param):
    # Written by hand: httpx's own encoder refuses NaN and lone surrogates, which clients do send.
    response = httpx.post(gpt2_server.url + "/v1/completions", content=json.dumps(body), timeout=30,
                          headers={"content-type": "application/json"})
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


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (Prometheus' text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def test_disconnect_mid_stream_aborts_and_frees_blocks(gpt2_server):
    """16 streams of 900 tokens (tens of seconds of work): leaving after 3 chunks aborts all 16 at once."""
    metrics_url = gpt2_server.url + "/metrics"
    engine = gpt2_server.app.state.engine.engine
    aborted_before = metric(httpx.get(metrics_url).text, "ruvon:request_success_total", finished_reason="abort")
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
    after = wait_for_idle(metrics_url)
    assert metric(after, "ruvon:kv_cache_usage_perc") == 0
    assert metric(after, "ruvon:request_success_total", finished_reason="abort") == aborted_before + 16
    assert metric(after, "ruvon:generation_tokens_total") < 16 * 900
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def wait_for_idle(metrics_url: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(metrics_url).text
        idle = metric(text, "ruvon:kv_cache_usage_perc") == 0 and metric(text, "ruvon:num_requests_running") == 0
        if idle or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_metrics_have_vllms_names_and_meanings(gpt2_server):
    url = gpt2_server.url
    before = httpx.get(url + "/metrics").text
    response = httpx.post(url + "/v1/completions", timeout=60, json={
        "prompt": "Hi there", "max_tokens": 3, "n": 2, "ignore_eos": True, "temperature": 0})
    usage = response.json()["usage"]
    after = httpx.get(url + "/metrics").text

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    m = {"model_name": "gpt2-random"}
    assert grew("ruvon:prompt_tokens_total", **m) == usage["prompt_tokens"]  # once for n=2, as usage counts
    assert grew("ruvon:generation_tokens_total", **m) == usage["completion_tokens"] == 6
    assert grew("ruvon:request_success_total", finished_reason="length", **m) == 2
    assert grew("ruvon:time_to_first_token_seconds_count", **m) == 2  # at the first token
    assert grew("ruvon:inter_token_latency_seconds_count", **m) == 4  # one per gap
    assert grew("ruvon:request_time_per_output_token_seconds_count", **m) == 2
    assert grew("ruvon:e2e_request_latency_seconds_count", **m) == 2
    assert grew("ruvon:prefix_cache_queries_total", **m) == 2 * usage["prompt_tokens"]
    for name in ("ruvon:num_requests_running", "ruvon:num_requests_waiting", "ruvon:kv_cache_usage_perc",
                 "ruvon:num_preemptions_total", "ruvon:prefix_cache_hits_total", "ruvon:request_failed_total"):
        assert f"{name}{{" in after, name
    assert 0 <= metric(after, "ruvon:kv_cache_usage_perc") <= 1
    assert grew("ruvon:http_requests_total", route="/v1/completions", status="200") == 1
