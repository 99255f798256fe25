"""The step histogram exports what prometheus-client's Histogram exports for the same values."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ruvoninference.server.metrics import ITL_BUCKETS, StepHistogram


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    lines = generate_latest(registry).decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines
            if line and not line.startswith("#") and "_created" not in line}


def test_step_histogram_matches_prometheus_histogram():
    rng = random.Random(0)
    values = [rng.choice([0.0, *ITL_BUCKETS, 1e3]) for _ in range(200)]  # the bounds themselves: le is inclusive
    values += [rng.expovariate(20.0) for _ in range(500)]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("ruvon:inter_token_latency_seconds", "doc", ["model_name"], buckets=ITL_BUCKETS,
                          registry=theirs).labels("m")
    step = StepHistogram("ruvon:inter_token_latency_seconds", "doc", ITL_BUCKETS, "m")
    ours.register(step)
    for v in values:
        reference.observe(v)
    for start in range(0, len(values), 64):  # a step's gaps at a time, an empty step among them
        step.observe_many(values[start:start + 64])
        step.observe_many([])
    want, got = _samples(theirs), _samples(ours)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert abs(got[name] - value) <= 1e-9 * max(1.0, abs(value)), name
    assert got['ruvon:inter_token_latency_seconds_count{model_name="m"}'] == len(values)
