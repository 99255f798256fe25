"""/v1/chat/completions with SmolLM2-135M-Instruct's chat template, through the official openai client."""

from __future__ import annotations

import math

import openai


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


def test_chat_completion_uses_the_template(smollm2_server):
    result = client(smollm2_server).chat.completions.create(model="smollm2-135m", messages=MESSAGES, max_tokens=12,
                                                            temperature=0)
    (choice,) = result.choices
    assert result.object == "chat.completion" and choice.message.role == "assistant"
    assert "Paris" in choice.message.content  # the instruct model answers through its template
    engine = smollm2_server.app.state.engine.engine
    templated = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert result.usage.prompt_tokens == len(engine.encode(templated))


def test_chat_streaming_chunks_and_usage(smollm2_server):
    c = client(smollm2_server)
    whole = c.chat.completions.create(model="smollm2-135m", messages=MESSAGES, max_tokens=8, temperature=0)
    chunks = list(c.chat.completions.create(model="smollm2-135m", messages=MESSAGES, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]


def test_chat_logprobs_shape(smollm2_server):
    result = client(smollm2_server).chat.completions.create(
        model="smollm2-135m", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens
    assert "".join(t.token for t in content) == result.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode() == entry.token
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert math.isclose(entry.logprob, tops[0], abs_tol=1e-6)  # greedy chose the most likely
