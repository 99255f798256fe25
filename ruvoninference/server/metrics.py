"""What the server exposes on `/metrics`, in Prometheus' text format through `prometheus-client`.

The names and meanings are vLLM's (`vllm:x` is `ruvon:x` here), each with a `model_name` label, so a query
written for vLLM's dashboard works after replacing the prefix; the histogram buckets are vLLM's too:

    ruvon:time_to_first_token_seconds          observed when a request's first token is produced
    ruvon:inter_token_latency_seconds          observed at every later token: the gap since the one before
    ruvon:request_time_per_output_token_seconds  at the end of a request: (last - first token) / (tokens - 1)
    ruvon:e2e_request_latency_seconds          at the end of a request: arrival to its last token
    ruvon:request_prompt_tokens / _generation_tokens   per finished request
    ruvon:prompt_tokens_total                  when a prompt's prefill is done, once per prompt (as `usage`
                                               counts a prompt once for n choices)
    ruvon:generation_tokens_total              as tokens are produced (aborted requests' tokens too)
    ruvon:request_success_total{finished_reason}       stop, length or abort (the client left, or shutdown)
    ruvon:request_failed_total                 requests the engine failed (a 500 or an error event)
    ruvon:num_preemptions_total                sequences preempted by the scheduler
    ruvon:prefix_cache_queries_total / _hits_total     prompt tokens looked up in the prefix cache / found
    ruvon:num_requests_running / _waiting      gauges read from the engine when scraped (waiting counts the
                                               requests admitted and not yet scheduled)
    ruvon:kv_cache_usage_perc                  KV-cache blocks in use, as a fraction (1 = full), when scraped
    ruvon:spec_decode_num_drafts_total / _num_draft_tokens_total / _num_accepted_tokens_total /
      _num_emitted_tokens_total                with speculative decoding on, read from the engine when scraped
    ruvon:http_requests_total{route,status}    responses by route and status code

The engine thread pays for what it records: `prometheus-client`'s `Histogram.observe` takes about 1.8 µs a
value on an H200's host, 116 µs for a step of 64 rows, 2.4% of that step's 4.9 ms (`benchmark
server-overhead`). So the two metrics that grow with every token take a step at a time: the inter-token
gaps of a step are binned by one numpy call (`StepHistogram.observe_many`) and the step's tokens are one
counter increment.

Arrival is when the handler admitted the request (queueing counts, tokenization and HTTP parsing do not).
Latencies of requests that ended with an abort or an engine error are not observed (they would mix
shortened requests into the histograms); those requests are counted instead. Each server owns its own
`CollectorRegistry`, so two servers in one test process do not share counters; prometheus-client's metrics
are thread-safe, so the engine thread and the event loop both write without a lock of ours.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# vLLM's buckets (seconds), so its dashboards' quantile queries mean the same here.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)

FINISH_REASONS = ("stop", "length", "abort")


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = r = CollectorRegistry()
        self.model_name = model_name
        m = ["model_name"]

        def counter(name: str, doc: str, labels: list[str] = m) -> Counter:
            return Counter(f"ruvon:{name}", doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(f"ruvon:{name}", doc, m, buckets=buckets, registry=r).labels(model_name)

        self.http = Counter("ruvon:http_requests", "HTTP responses by route and status code.",
                            ["route", "status"], registry=r)
        self._success = counter("request_success", "Requests finished, by finish reason (stop, length, "
                                "abort).", m + ["finished_reason"])
        self.success = {reason: self._success.labels(model_name, reason) for reason in FINISH_REASONS}
        self.failed = counter("request_failed", "Requests the engine failed.").labels(model_name)
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens prefilled (once per prompt).").labels(model_name)
        self.generation_tokens = counter("generation_tokens", "Tokens generated.").labels(model_name)
        self.preemptions = counter("num_preemptions", "Sequences preempted.").labels(model_name)
        self.prefix_queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix "
                                      "cache.").labels(model_name)
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.").labels(model_name)
        self.ttft = histogram("time_to_first_token_seconds", "From arrival to the first token.", TTFT_BUCKETS)
        self.itl = StepHistogram("ruvon:inter_token_latency_seconds", "Gap between a request's consecutive "
                                 "tokens.", ITL_BUCKETS, model_name)
        r.register(self.itl)
        self.tpot = histogram("request_time_per_output_token_seconds", "A request's mean gap between tokens "
                              "after the first.", ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "From arrival to the last token.", E2E_BUCKETS)
        self.request_prompt_tokens = histogram("request_prompt_tokens", "Prompt tokens per finished request.",
                                               TOKEN_BUCKETS)
        self.request_generation_tokens = histogram("request_generation_tokens", "Generated tokens per finished "
                                                   "request.", TOKEN_BUCKETS)
        self._gauges = {name: Gauge(f"ruvon:{name}", doc, m, registry=r).labels(model_name) for name, doc in (
            ("num_requests_running", "Requests in the running batch."),
            ("num_requests_waiting", "Requests admitted and not yet scheduled."),
            ("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full)."))}

    def read_gauges_from(self, running: Callable[[], float], waiting: Callable[[], float],
                         kv_usage: Callable[[], float]) -> None:
        """Gauges are computed when scraped, so they are current whenever they are read."""
        self._gauges["num_requests_running"].set_function(running)
        self._gauges["num_requests_waiting"].set_function(waiting)
        self._gauges["kv_cache_usage_perc"].set_function(kv_usage)

    def read_spec_decode_from(self, stats: Callable[[], object | None]) -> None:
        """Speculative decoding's counters (vLLM's spec_decode_*), read from the engine's SpecStats when scraped;
        `stats()` returns None when speculation is off (then the counters are not exported)."""
        self.registry.register(_SpecDecodeCollector(self.model_name, stats))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StepHistogram:
    """A Prometheus histogram filled a batch of values at a time (one engine step's inter-token gaps).

    Exported exactly as `prometheus_client.Histogram` exports one: cumulative `_bucket{le}` counts, `_count`
    and `_sum`; a value lands in the first bucket whose upper bound it does not exceed.
    """

    def __init__(self, name: str, doc: str, buckets: Sequence[float], model_name: str) -> None:
        self.name, self.doc, self.model_name = name, doc, model_name
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last one is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()  # the engine thread writes, a scrape on the event loop reads

    def observe_many(self, values: Sequence[float]) -> None:
        if not values:
            return
        v = np.asarray(values, dtype=np.float64)
        binned = np.bincount(np.searchsorted(self.bounds, v, side="left"), minlength=len(self.counts))
        with self._lock:
            self.counts += binned
            self.sum += float(v.sum())

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def collect(self):
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        with self._lock:
            cumulative, total = np.cumsum(self.counts).tolist(), self.sum
        family = HistogramMetricFamily(self.name, self.doc, labels=["model_name"])
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        family.add_metric([self.model_name], list(zip(les, cumulative)), total)
        yield family


class _SpecDecodeCollector:
    """ruvon:spec_decode_num_drafts_total, _num_draft_tokens_total, _num_accepted_tokens_total,
    _num_emitted_tokens_total: verify steps, guesses proposed, guesses accepted, tokens they produced."""

    FIELDS = (("num_drafts", "Sequence-steps that verified guesses."),
              ("num_draft_tokens", "Guessed tokens proposed."),
              ("num_accepted_tokens", "Guessed tokens accepted."),
              ("num_emitted_tokens", "Tokens produced by verify steps (accepted guesses plus one each)."))

    def __init__(self, model_name: str, stats: Callable[[], object | None]) -> None:
        self.model_name, self.stats = model_name, stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        stats = self.stats()
        if stats is None:
            return
        for field, doc in self.FIELDS:
            family = CounterMetricFamily(f"ruvon:spec_decode_{field}", doc, labels=["model_name"])
            family.add_metric([self.model_name], getattr(stats, field))
            yield family
