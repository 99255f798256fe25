"""A load-test client for any OpenAI-compatible server, measuring what `vllm bench serve` measures.

The client sends `num_prompts` streaming `/v1/completions` requests, at most `concurrency` in flight at once
(a semaphore: vLLM's `--max-concurrency`), started all at once or as a Poisson process of `request_rate`
requests per second. For each request it records, as vLLM's request function does:

- TTFT: from sending the request to the first chunk that carries a choice;
- ITL: the gap between each later such chunk and the one before it (one entry per chunk);
- E2EL: from sending to the last such chunk;
- the output token count from the server's `usage` (we ask for it with `stream_options.include_usage`).

A request that fails (an HTTP error, an error event, a cut connection) counts in `failed` with its error;
with `disconnect_fraction` > 0, that fraction of the requests (chosen with the seed) close their
connection after `disconnect_after` chunks, as impatient clients do: they count in `aborted`, not in the
latencies, so a run beside one without them shows whether the others' latencies moved.

and then, over the successful requests (vLLM's `calculate_metrics`):

- TPOT of a request = (E2EL - TTFT) / (output tokens - 1), only for requests with more than one token;
- ITL statistics pool every request's gaps; TTFT, TPOT and E2EL statistics take one value per request;
- request throughput = completed / duration, output throughput = output tokens / duration, total token
  throughput = (input + output tokens) / duration, where duration runs from the first request sent to the
  last one finished;
- mean, median and p99 (numpy's linear-interpolated percentile), 0 when there is nothing to summarize.

A server started with an API key gets it as `Authorization: Bearer KEY`, from `api_key` or, as `vllm bench
serve` and the `openai` client do, from the `OPENAI_API_KEY` variable.

Prompts (`dataset="random"`) are `input_len` words drawn with a seeded generator from common English words
that GPT-2's and SmolLM2's tokenizers each encode as exactly one token, so a prompt is `input_len` tokens on
those tokenizers without the client loading any (the input counts reported come from the server's `usage`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

ProgressCallback = Callable[[str, int, int], None]

# Each one token for GPT-2's and SmolLM2's BPE tokenizers, with or without a leading space
# (tests/server/test_serve_client.py checks it).
WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "they", "have", "this", "are", "not", "but", "had", "he", "she", "it", "be", "or", "an", "were", "which", "their", "one", "all", "there", "been", "would", "has", "more", "when", "will", "who", "so", "no", "if", "out", "up", "about", "than", "into", "them", "can", "only", "other", "time", "new", "some", "could", "these", "two", "may", "first", "then", "do", "any", "like", "my", "now", "over", "such", "our", "man", "me", "even", "most", "made", "after", "also", "did", "many", "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down", "should", "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make", "world", "still", "own", "see", "men", "work", "long", "get", "here", "between", "both", "life", "being", "under", "never", "day", "same", "another", "know", "while", "last", "might", "us", "great", "old", "year", "off", "come", "since", "against", "go", "came", "right", "used", "take", "three"]


@dataclass
class RequestResult:
    success: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    text: str = ""
    error: str | None = None
    aborted: bool = False  # the client left on purpose (disconnect_fraction)


def random_prompts(num_prompts: int, input_len: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(input_len)) for _ in range(num_prompts)]


async def send_request(client: httpx.AsyncClient, url: str, payload: dict,
                       leave_after: int | None = None) -> RequestResult:
    """One streaming completions request, timed as vLLM's OpenAI request function times it; with
    `leave_after`, the client closes the connection after that many chunks of text."""
    result = RequestResult(success=False)
    chunks = 0
    start = time.perf_counter()
    last = start
    got_first = False
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {body[:300]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    result.error = str(chunk["error"])
                    return result
                if chunk.get("choices"):
                    stamp = time.perf_counter()
                    if not got_first:
                        got_first = True
                        result.ttft_s = stamp - start
                    else:
                        result.itl_s.append(stamp - last)
                    last = stamp
                    result.text += chunk["choices"][0].get("text") or ""
                    chunks += 1
                    if leave_after is not None and chunks >= leave_after:
                        result.aborted = True
                        return result  # leaving the `async with` closes the connection
                elif chunk.get("usage"):
                    result.output_tokens = chunk["usage"].get("completion_tokens", 0)
                    result.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
        if not got_first:
            result.error = "the stream ended before any text arrived"
            return result
        result.latency_s = last - start
        result.success = True
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _summary(values: list[float], name: str) -> dict[str, float]:
    """Mean, median and p99 in milliseconds, as vLLM reports them (0 where there is no value)."""
    ms = np.asarray(values, dtype=np.float64) * 1000.0
    return {
        f"mean_{name}_ms": float(ms.mean()) if ms.size else 0.0,
        f"median_{name}_ms": float(np.median(ms)) if ms.size else 0.0,
        f"p99_{name}_ms": float(np.percentile(ms, 99)) if ms.size else 0.0,
    }


def calculate_metrics(results: list[RequestResult], duration_s: float) -> dict:
    """vLLM's serving metrics over one run's requests."""
    ok = [r for r in results if r.success]
    aborted = [r for r in results if r.aborted]
    tpots = [(r.latency_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [gap for r in ok for gap in r.itl_s]
    total_input = sum(r.prompt_tokens for r in ok)
    total_output = sum(r.output_tokens for r in ok)
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok) - len(aborted),
        "aborted": len(aborted),
        "duration_s": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
        **_summary([r.ttft_s for r in ok], "ttft"),
        **_summary(tpots, "tpot"),
        **_summary(itls, "itl"),
        **_summary([r.latency_s for r in ok], "e2el"),
    }


async def _run(url: str, payloads: list[dict], concurrency: int, request_rate: float, seed: int,
               timeout_s: float, on_done: Callable[[], None], leave_after: list[int | None] | None = None,
               headers: dict | None = None) -> tuple[list[RequestResult], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    rng = random.Random(seed)

    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits, headers=headers) as client:
        async def limited(payload: dict, leave: int | None) -> RequestResult:
            async with semaphore:
                result = await send_request(client, url, payload, leave)
            on_done()
            return result

        tasks = []
        start = time.perf_counter()
        for i, payload in enumerate(payloads):
            if i and request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))  # Poisson arrivals
            tasks.append(asyncio.create_task(limited(payload, leave_after[i] if leave_after else None)))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def server_info(base_url: str, timeout_s: float = 10.0, headers: dict | None = None) -> dict:
    """What the server says about itself (`/v1/models`, and our `/info`), for the record."""
    info: dict = {}
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        for path in ("/v1/models", "/info"):
            try:
                response = client.get(base_url.rstrip("/") + path)
                if response.status_code == 200:
                    info[path] = response.json()
            except (httpx.HTTPError, ValueError):
                pass
    return info


def served_model(info: dict) -> str | None:
    data = info.get("/v1/models", {}).get("data") or []
    return data[0]["id"] if data else None


def run_serve_benchmark(
    base_url: str,
    concurrencies: list[int],
    num_prompts: int,
    input_len: int,
    output_len: int,
    request_rate: float = float("inf"),
    model: str | None = None,
    ignore_eos: bool = True,
    seed: int = 0,
    timeout_s: float = 600.0,
    progress: ProgressCallback | None = None,
    temperature: float = 1.0,
    disconnect_fraction: float = 0.0,
    disconnect_after: int = 4,
    api_key: str | None = None,
) -> dict:
    """One run per concurrency over the same prompts, after one untimed warm-up request."""
    if not concurrencies or any(c < 1 for c in concurrencies):
        from ruvoninference.errors import RuvonError

        raise RuvonError(f"Concurrency levels must be integers >= 1, not {concurrencies}.")
    if num_prompts < 1 or input_len < 1 or output_len < 1:
        from ruvoninference.errors import RuvonError

        raise RuvonError("--num-prompts, --input-len and --output-len must each be at least 1.")
    if not 0.0 <= disconnect_fraction < 1.0:
        from ruvoninference.errors import RuvonError

        raise RuvonError(f"--disconnect-fraction must be in [0, 1), not {disconnect_fraction}.")
    base_url = base_url.rstrip("/")
    url = base_url + "/v1/completions"
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    info = server_info(base_url, headers=headers)
    model = model or served_model(info)
    prompts = random_prompts(num_prompts, input_len, seed)

    def payload(prompt: str) -> dict:
        body = {"prompt": prompt, "max_tokens": output_len, "temperature": temperature, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos}
        if model:
            body["model"] = model
        return body

    warmup = asyncio.run(_run(url, [payload(prompts[0])], 1, float("inf"), seed, timeout_s, lambda: None,
                              headers=headers))[0][0]
    if not warmup.success:
        from ruvoninference.errors import RuvonError

        raise RuvonError(f"The warm-up request to {url} failed ({warmup.error}); is the server up and the "
                         f"model name right?")
    chooser = random.Random(seed + 1)
    leave_after = [disconnect_after if chooser.random() < disconnect_fraction else None for _ in prompts]
    runs = []
    for concurrency in concurrencies:
        def on_done(c: int = concurrency, done: list[int] = [0]) -> None:  # noqa: B006 (one list per level)
            done[0] += 1
            if progress:
                progress(f"concurrency {c}", done[0], num_prompts)

        if progress:
            progress(f"concurrency {concurrency}", 0, num_prompts)
        results, duration = asyncio.run(
            _run(url, [payload(p) for p in prompts], concurrency, request_rate, seed, timeout_s, on_done,
                 leave_after, headers))
        errors = sorted({r.error for r in results if r.error})
        runs.append({"concurrency": concurrency, **calculate_metrics(results, duration), "errors": errors[:5]})
    return {
        "benchmark": "serve",
        "config": {"base_url": base_url, "endpoint": "/v1/completions", "model": model, "dataset": "random",
                   "num_prompts": num_prompts, "input_len": input_len, "output_len": output_len,
                   "request_rate": "inf" if request_rate == float("inf") else request_rate,
                   "ignore_eos": ignore_eos, "temperature": temperature, "seed": seed,
                   "concurrencies": concurrencies, "disconnect_fraction": disconnect_fraction,
                   "disconnect_after_chunks": disconnect_after if disconnect_fraction else None,
                   "api_key": bool(api_key)},
        "server": info,
        "runs": runs,
    }

