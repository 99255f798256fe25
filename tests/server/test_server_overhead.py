"""`benchmark server-overhead`: every feature is measured, costs are put against a serve run's latencies,
and a bad --serve-json is one sentence and exit 2 (the real cli.py in a subprocess)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ruvon_cli.app import app
from ruvoninference.bench.server_overhead import benchmark_server_overhead, load_serve_json, relate
from ruvoninference.errors import RuvonError

ROOT = Path(__file__).resolve().parents[2]
FEATURES = {"bearer_auth", "body_limit", "status_counter", "middleware_stack", "validation", "ready_gate",
            "admission", "submission", "disconnect_watch", "metrics_per_token", "metrics_per_request",
            "fault_isolation", "step_bookkeeping", "metrics_render"}
TINY = {"repeats": 2, "warmup": 0, "inner": 40, "batch": 8}


def serve_result(tmp_path: Path, runs: list[dict], max_batch_size: int | None = 4) -> Path:
    info = {"/info": {"model": "gpt2-random", "max_batch_size": max_batch_size}} if max_batch_size else {}
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"benchmark": "serve", "command": "cli.py benchmark serve", "server": info,
                                "runs": runs}))
    return path


def test_every_feature_is_measured_with_positive_times():
    data = benchmark_server_overhead(**TINY)
    assert set(data["features"]) == FEATURES
    for name, f in data["features"].items():
        assert f["per"] in ("request", "token", "step", "scrape"), name
        assert math.isfinite(f["us"]) and f["spread_us"] >= 0, name
        if "with_us" in f:  # a difference: both sides were timed
            assert f["with_us"] > 0 and f["without_us"] > 0, name
        else:
            assert f["us"] > 0, name
    # The differences that are large against the noise come out positive even with two short rounds.
    assert data["features"]["middleware_stack"]["us"] > 0
    assert data["features"]["metrics_per_token"]["with_us"] > data["features"]["metrics_per_token"]["without_us"]
    assert data["features"]["metrics_render"]["bytes"] > 1000
    assert data["config"]["repeats"] == 2 and data["config"]["warmup"] == 0 and data["config"]["body_bytes"] >= 1024
    env = data["environment"]
    assert env["device"].startswith("CPU") and env["torch"] and "pydantic" in env["server_packages"]
    assert len(data["load_average"]["before"]) == 3
    assert "relative_to" not in data


def test_costs_are_put_against_the_serve_runs_latencies(tmp_path):
    path = serve_result(tmp_path, [{"concurrency": 8, "median_itl_ms": 10.0, "median_ttft_ms": 100.0},
                                   {"concurrency": 2, "median_itl_ms": 5.0, "median_ttft_ms": 50.0}])
    features = {"auth": {"per": "request", "us": 10.0}, "metrics": {"per": "token", "us": 2.0},
                "try": {"per": "step", "us": 1.0}, "render": {"per": "scrape", "us": 500.0}}
    out = relate(features, load_serve_json(path), path)
    first, second = out["runs"]
    assert first["tokens_per_step"] == 4  # the concurrency, capped by the server's max batch size
    assert second["tokens_per_step"] == 2
    assert first["percent"] == pytest.approx({"auth": 0.01, "metrics": 0.08, "try": 0.01, "render": 5.0})
    assert second["percent"]["metrics"] == pytest.approx(0.08)
    assert out["max_batch_size"] == 4 and out["path"] == str(path)


def test_the_cli_writes_json_and_markdown_with_percentages(tmp_path):
    serve = serve_result(tmp_path, [{"concurrency": 64, "median_itl_ms": 4.7, "median_ttft_ms": 384.0}], None)
    out_json, out_md = tmp_path / "o.json", tmp_path / "o.md"
    result = CliRunner().invoke(app, ["benchmark", "server-overhead", "--repeats", "2", "--warmup", "0", "--inner",
                                      "20", "--serve-json", str(serve), "--json", str(out_json), "--markdown",
                                      str(out_md)])
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert data["command"].startswith("cli.py") and set(data["features"]) == FEATURES
    run = data["relative_to"]["runs"][0]
    assert run["tokens_per_step"] == 64 and set(run["percent"]) == FEATURES
    assert run["percent"]["metrics_per_token"] == pytest.approx(
        100 * data["features"]["metrics_per_token"]["us"] * 64 / 4700)
    markdown = out_md.read_text()
    assert "% of c64" in markdown and "| bearer_auth | request |" in markdown and "load average" in markdown


def test_a_serve_json_without_latencies_is_refused(tmp_path):
    with pytest.raises(RuvonError, match="no runs with a concurrency"):
        load_serve_json(serve_result(tmp_path, [{"concurrency": 8, "median_itl_ms": 0.0, "median_ttft_ms": 1.0}]))
    with pytest.raises(RuvonError, match="repeats must be at least 2"):
        benchmark_server_overhead(repeats=1)


@pytest.mark.parametrize("kind", ["missing", "not json", "no runs"])
def test_a_bad_serve_json_is_one_sentence_and_exit_2(tmp_path, kind):
    path = tmp_path / "serve.json"
    if kind == "not json":
        path.write_text("concurrency,itl\n8,10\n")
    elif kind == "no runs":
        path.write_text(json.dumps({"benchmark": "serve", "runs": []}))
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "benchmark", "server-overhead", "--serve-json",
                        str(path)], check=False, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    error = r.stderr.strip()
    assert error.startswith("Error: --serve-json") and error.count("\n") == 0 and "Traceback" not in r.stderr
    assert {"missing": "does not exist", "not json": "is not a JSON file",
            "no runs": "has no runs"}[kind] in error
