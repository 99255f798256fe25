"""/v1/completions and /completions against a real uvicorn server running the real engine (gpt2-random)."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import torch

from tests.server.test_server_errors import metric

PROMPTS = ["Once upon a time", "The capital of France is", "In 1905 Einstein published",
           "def fibonacci(n):", "A short poem about the sea", "Hello"]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def test_openai_client_completion(gpt2_server):
    result = client(gpt2_server).completions.create(model="gpt2-random", prompt="Once upon a time", max_tokens=8,
                                                    temperature=0)
    (choice,) = result.choices
    assert result.object == "text_completion" and result.model == "gpt2-random"
    assert choice.finish_reason == "length" and choice.text
    assert result.usage.completion_tokens == 8 and result.usage.prompt_tokens == 4
    assert result.usage.total_tokens == 12


def test_openai_client_streaming_equals_non_streaming(gpt2_server):
    c = client(gpt2_server)
    whole = c.completions.create(model="gpt2-random", prompt="Hello world", max_tokens=10, temperature=0)
    chunks = list(c.completions.create(model="gpt2-random", prompt="Hello world", max_tokens=10, temperature=0,
                                       stream=True, stream_options={"include_usage": True}))
    text_chunks = [ch for ch in chunks if ch.choices]
    assert "".join(ch.choices[0].text for ch in text_chunks) == whole.choices[0].text
    assert len(text_chunks) == 10  # one chunk per step's token
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices


def test_sse_wire_format_ends_with_done(gpt2_server):
    with httpx.stream("POST", gpt2_server.url + "/v1/completions", timeout=60,
                      json={"prompt": "Hi", "max_tokens": 3, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_n_choices_and_prompt_lists(gpt2_server):
    c = client(gpt2_server)
    result = c.completions.create(model="gpt2-random", prompt=["Hello", "Good morning"], max_tokens=4, n=2,
                                  temperature=1.0, seed=7)
    assert [ch.index for ch in result.choices] == [0, 1, 2, 3]
    assert result.usage.completion_tokens == 16
    assert result.usage.prompt_tokens == 1 + 2  # each prompt counted once, whatever n is
    again = c.completions.create(model="gpt2-random", prompt=["Hello", "Good morning"], max_tokens=4, n=2,
                                 temperature=1.0, seed=7)
    assert [ch.text for ch in again.choices] == [ch.text for ch in result.choices]  # seeded


def test_echo_and_stop(gpt2_server):
    c = client(gpt2_server)
    plain = c.completions.create(model="gpt2-random", prompt="Once upon", max_tokens=6, temperature=0)
    echoed = c.completions.create(model="gpt2-random", prompt="Once upon", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "Once upon" + plain.choices[0].text
    stop_at = plain.choices[0].text[3:8]
    stopped = c.completions.create(model="gpt2-random", prompt="Once upon", max_tokens=6, temperature=0,
                                   stop=[stop_at])
    assert stopped.choices[0].finish_reason == "stop"
    assert stop_at not in stopped.choices[0].text and plain.choices[0].text.startswith(stopped.choices[0].text)


def _reference_logprobs(bundle, token_ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits at every position, from a plain causal forward (no cache)."""
    def attention(_layer, q, k, v):  # q [T, Hq, D], k, v [T, Hkv, D]
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
            scale=bundle.config.attn_scale)
        return out.transpose(0, 1)

    ids = torch.tensor(token_ids)
    with torch.no_grad():
        hidden = bundle.model(ids, torch.arange(len(token_ids)), attention)
        logits = bundle.model.compute_logits(hidden)
    return torch.log_softmax(logits.double(), dim=-1)  # [T, V]


def test_logprobs_are_the_models_log_softmax(gpt2_server):
    engine = gpt2_server.app.state.engine.engine
    response = httpx.post(gpt2_server.url + "/v1/completions", timeout=60, json={
        "prompt": "The meaning of life is", "max_tokens": 6, "temperature": 0, "logprobs": 5})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    lp = choice["logprobs"]
    prompt_ids = engine.encode("The meaning of life is")
    generated = [engine.tokenizer.encode(t)[0] for t in lp["tokens"]]
    assert engine.tokenizer.decode(generated) == choice["text"]
    reference = _reference_logprobs(engine.bundle, prompt_ids + generated)
    for i, token_id in enumerate(generated):
        row = reference[len(prompt_ids) - 1 + i]
        assert lp["token_logprobs"][i] == pytest.approx(row[token_id].item(), abs=1e-3)
        top = lp["top_logprobs"][i]
        assert len(top) == 5 and list(top.values()) == sorted(top.values(), reverse=True)
        best = torch.topk(row, 5)
        assert list(top.values()) == pytest.approx(best.values.tolist(), abs=1e-3)
        assert lp["token_logprobs"][i] == pytest.approx(max(top.values()), abs=1e-6)  # greedy: the top one
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert "".join(lp["tokens"]) == choice["text"]


def test_echo_scores_the_prompt_as_lm_eval_asks(gpt2_server):
    """echo + max_tokens=0 + logprobs (lm-eval-harness' loglikelihood request): every prompt token's
    log-probability given the ones before it; the ones the engine generated greedily must score what the
    engine itself reported for them (two different code paths: the paged decode and a plain forward)."""
    url = gpt2_server.url + "/v1/completions"
    generated = httpx.post(url, timeout=60, json={"prompt": "Once upon a time", "max_tokens": 3,
                                                  "temperature": 0, "logprobs": 0}).json()["choices"][0]
    text = "Once upon a time" + generated["text"]
    before = httpx.get(gpt2_server.url + "/metrics").text
    scored = httpx.post(url, timeout=60, json={"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1})
    assert scored.status_code == 200, scored.text
    body = scored.json()
    lp = body["choices"][0]["logprobs"]
    assert body["choices"][0]["text"] == text and "".join(lp["tokens"]) == text
    assert lp["token_logprobs"][0] is None and all(x is not None for x in lp["token_logprobs"][1:])
    assert lp["token_logprobs"][-3:] == pytest.approx(generated["logprobs"]["token_logprobs"], abs=1e-3)
    assert all(len(top) == 1 for top in lp["top_logprobs"][1:])
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] == len(lp["tokens"])
    after = httpx.get(gpt2_server.url + "/metrics").text
    m = {"model_name": "gpt2-random"}
    # the scored prompt counts as `usage` counts it, though no token was drawn
    assert metric(after, "ruvon:prompt_tokens_total", **m) - metric(before, "ruvon:prompt_tokens_total", **m) \
        == body["usage"]["prompt_tokens"]
    nothing = httpx.post(url, timeout=60, json={"prompt": text, "max_tokens": 0})
    assert nothing.status_code == 400 and nothing.json()["error"]["param"] == "max_tokens"


def test_32_concurrent_streams_equal_lone_requests(gpt2_server):
    """Continuous batching must not change anyone's tokens: 32 greedy streams of different lengths at once."""
    url = gpt2_server.url + "/v1/completions"
    bodies = [{"prompt": " ".join(PROMPTS[i % len(PROMPTS)].split()[: 1 + i % 5]) + f" {i}",
               "max_tokens": 3 + i % 7, "temperature": 0, "ignore_eos": True} for i in range(32)]
    lone = [httpx.post(url, json=b, timeout=60).json()["choices"][0]["text"] for b in bodies]

    async def stream(client: httpx.AsyncClient, body: dict) -> str:
        text = ""
        async with client.stream("POST", url, json={**body, "stream": True}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    text += json.loads(line[6:])["choices"][0]["text"]
        return text

    async def all_at_once() -> list[str]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(*(stream(c, b) for b in bodies))

    together = asyncio.run(all_at_once())
    assert together == lone


def test_curl_example_from_the_articles_other_implementation_same_weights(gpt2_server):
    """`/completions` with `attention_implementation`: eager is served from the same weights as sdpa."""
    url = gpt2_server.url + "/completions"
    body = {"prompt": "The future of AI", "max_tokens": 8, "temperature": 0}
    sdpa = httpx.post(url, json={**body, "attention_implementation": "sdpa"}, timeout=60)
    eager = httpx.post(url, json={**body, "attention_implementation": "eager"}, timeout=120)
    assert sdpa.status_code == 200 and eager.status_code == 200, eager.text
    assert eager.json()["choices"][0]["text"] == sdpa.json()["choices"][0]["text"]
    engines = gpt2_server.app.state.engine.engines
    assert engines["eager"].bundle is engines["sdpa"].bundle


def test_models_health_openapi(gpt2_server):
    models = httpx.get(gpt2_server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "gpt2-random"
    assert httpx.get(gpt2_server.url + "/health").json() == {"status": "ok"}  # no versions, no kernel
    assert httpx.get(gpt2_server.url + "/info").json()["scheduler"] == "continuous"
    spec = httpx.get(gpt2_server.url + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/completions", "/v1/models"} <= set(spec["paths"])
