"""What the server exposes on `/metrics`, in Prometheus' text format through `prometheus-client`.

Each server owns its own `CollectorRegistry` (two servers in one test process must not share counters).
Counters and histograms are updated where the event happens (the HTTP handler for statuses, the engine
thread for tokens and latencies); gauges are set by the engine thread after every step. prometheus-client's
metrics are thread-safe, so both threads write without a lock of ours.

The histogram buckets are vLLM's, so dashboards built for its `/metrics` read ours with new names.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ruvon_http_requests", "HTTP requests answered, by route and status code.",
                                ["route", "status"], registry=r)
        self.finished = Counter("ruvon_request_finished", "Engine requests finished, by finish reason "
                                "(stop, length, abort).", ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("ruvon_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("ruvon_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram("ruvon_time_to_first_token_seconds", "From arrival to the first generated token.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("ruvon_time_per_output_token_seconds", "Mean gap between a request's tokens "
                              "after the first.", buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("ruvon_e2e_request_latency_seconds", "From arrival to the last token.",
                             buckets=E2E_BUCKETS, registry=r)
        self.waiting = Gauge("ruvon_num_requests_waiting", "Requests queued, not yet scheduled.", registry=r)
        self.running = Gauge("ruvon_num_requests_running", "Requests in the running batch.", registry=r)
        self.blocks_used = Gauge("ruvon_kv_cache_blocks_used", "KV cache blocks held by requests.",
                                 ["implementation"], registry=r)
        self.blocks_free = Gauge("ruvon_kv_cache_blocks_free", "KV cache blocks free.", ["implementation"],
                                 registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
