"""The load-test client: its statistics by hand, and its timing against a small fake OpenAI server."""

from __future__ import annotations

import pytest

from ruvoninference.bench.serve import RequestResult, calculate_metrics, random_prompts, run_serve_benchmark


def test_calculate_metrics_by_hand():
    results = [
        RequestResult(success=True, prompt_tokens=10, output_tokens=5, ttft_s=0.1, latency_s=0.5,
                      itl_s=[0.1, 0.1, 0.1, 0.1]),
        RequestResult(success=True, prompt_tokens=20, output_tokens=1, ttft_s=0.2, latency_s=0.2),
        RequestResult(success=False, error="HTTP 500"),
    ]
    m = calculate_metrics(results, duration_s=2.0)
    assert (m["completed"], m["failed"]) == (2, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (30, 6)
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["output_throughput"] == pytest.approx(3.0)
    assert m["total_token_throughput"] == pytest.approx(18.0)
    assert m["mean_ttft_ms"] == pytest.approx(150.0)
    assert m["median_ttft_ms"] == pytest.approx(150.0)
    assert m["p99_ttft_ms"] == pytest.approx(199.0)  # linear interpolation between 100 and 200
    # TPOT only for requests with more than one token: (0.5 - 0.1) / 4
    assert m["mean_tpot_ms"] == pytest.approx(100.0) and m["p99_tpot_ms"] == pytest.approx(100.0)
    assert m["mean_itl_ms"] == pytest.approx(100.0)
    assert m["mean_e2el_ms"] == pytest.approx(350.0)


def test_calculate_metrics_with_nothing_to_summarize():
    m = calculate_metrics([RequestResult(success=False, error="x")], duration_s=1.0)
    assert m["completed"] == 0 and m["failed"] == 1
    assert m["median_ttft_ms"] == 0.0 and m["p99_itl_ms"] == 0.0


def test_random_prompts_are_seeded_and_sized():
    a, b = random_prompts(3, 17, seed=1), random_prompts(3, 17, seed=1)
    assert a == b and len(a) == 3
    assert all(len(p.split()) == 17 for p in a)
    assert random_prompts(3, 17, seed=2) != a


def test_client_against_a_fake_server(running_server, fake_openai_server):
    app, state = fake_openai_server()
    first_delay_s, gap_s, tokens = state["first_delay_s"], state["gap_s"], state["tokens"]
    with running_server(app) as server:
        seen = []
        result = run_serve_benchmark(server.url, [4], num_prompts=12, input_len=5, output_len=6,
                                     progress=lambda d, c, t: seen.append((c, t)))
    (run,) = result["runs"]
    # Request 0 is the warm-up; of the 12 timed ones (numbers 1-12), 2, 5, 8 and 11 fail.
    assert (run["completed"], run["failed"]) == (8, 4)
    assert any("HTTP 500" in e for e in run["errors"])
    assert state["max_in_flight"] == 4  # the semaphore: never more than the concurrency
    assert run["total_output_tokens"] == 8 * tokens  # from usage, not from chunks
    assert run["total_input_tokens"] == 8 * 4
    assert first_delay_s * 1000 <= run["median_ttft_ms"] < first_delay_s * 1000 + 400
    assert gap_s * 1000 <= run["median_itl_ms"] < gap_s * 1000 + 300
    # TPOT = (latency - ttft) / (6 - 1): two gaps spread over five tokens
    assert run["median_tpot_ms"] == pytest.approx(run["median_itl_ms"] * 2 / 5, rel=0.5)
    assert result["config"]["model"] == "fake-model"
    body = state["bodies"][-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 6 and body["model"] == "fake-model" and len(body["prompt"].split()) == 5
    assert seen[-1] == (12, 12)


def test_clients_that_leave_count_as_aborted_not_failed(running_server, fake_openai_server):
    import random

    app, state = fake_openai_server()
    with running_server(app) as server:
        result = run_serve_benchmark(server.url, [4], num_prompts=12, input_len=5, output_len=6,
                                     disconnect_fraction=0.5, disconnect_after=1, seed=3)
    (run,) = result["runs"]
    chooser = random.Random(4)  # the benchmark's seed + 1
    leaving = [chooser.random() < 0.5 for _ in range(12)]
    # The fake server fails every third request it receives (4 of 12): a leaving client whose request failed
    # counts as failed, so the aborted ones are the leaving ones among the other 8.
    assert run["failed"] == 4 and run["completed"] == 12 - run["aborted"] - run["failed"]
    assert sum(leaving) - 4 <= run["aborted"] <= sum(leaving) and run["aborted"] > 0
    assert state["bodies"][-1]["temperature"] == 1.0  # what a client that sets nothing gets
    assert result["config"]["disconnect_fraction"] == 0.5


def test_the_api_key_goes_in_every_request(running_server, fake_openai_server, monkeypatch):
    app, state = fake_openai_server()
    monkeypatch.setenv("OPENAI_API_KEY", "from-the-environment")
    with running_server(app) as server:
        result = run_serve_benchmark(server.url, [2], num_prompts=3, input_len=2, output_len=2, api_key="sk-test")
        run_serve_benchmark(server.url, [2], num_prompts=3, input_len=2, output_len=2)
    assert state["authorization"][:4] == ["Bearer sk-test"] * 4  # the warm-up and the 3 timed requests
    assert state["authorization"][4:] == ["Bearer from-the-environment"] * 4
    assert result["config"]["api_key"] is True  # that a key was sent, never the key
    assert "sk-test" not in str(result)
