"""schemathesis over the server's own OpenAPI document: generated requests (valid and not) to every route of
a real server; no 5xx, and every status code, content type, header and body is the one the document lists.
A small budget (a few examples per route) and a short context keep it to about a minute on 2 cores."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.server.conftest import engine_server

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance, checks.negative_data_rejection]


@pytest.fixture(scope="module")
def api_schema(gpt2_bundle):
    # 24 tokens of context and a queue of 4: no generated request can run long.
    with engine_server(gpt2_bundle, max_batch_size=4, max_queue=4, kv_cache_memory=64 * 2**20,
                       extra={"max_model_len": 24}) as server:
        server.wait_ready()
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")


def test_every_route_answers_as_documented(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def conforms(case):
            case.call_and_validate(checks=CHECKS, timeout=300)

        conforms()
