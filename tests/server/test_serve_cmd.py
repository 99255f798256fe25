"""`serve` and `benchmark serve` on the command line: argument errors, and a run against a fake server."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ruvon_cli.app import app
from ruvon_cli.serve_cmd import comparison_markdown

runner = CliRunner()


def test_serve_rejects_bad_arguments_with_one_sentence():
    result = runner.invoke(app, ["serve", "--scheduler", "fastest"])
    assert result.exit_code == 2
    assert "Unknown scheduler 'fastest'" in result.output and "continuous" in result.output
    result = runner.invoke(app, ["serve", "--max-batch-size", "0"])
    assert result.exit_code == 2 and "--max-batch-size" in result.output
    result = runner.invoke(app, ["serve", "--max-request-bytes", "10"])
    assert result.exit_code == 2 and "--max-request-bytes must be at least 1024" in result.output
    result = runner.invoke(app, ["serve", "--shutdown-timeout", "-1"])
    assert result.exit_code == 2 and "--shutdown-timeout" in result.output


def test_benchmark_serve_rejects_bad_arguments():
    result = runner.invoke(app, ["benchmark", "serve", "--concurrency", "1,x"])
    assert result.exit_code == 2 and "--concurrency takes integers" in result.output
    result = runner.invoke(app, ["benchmark", "serve", "--concurrency", "0"])
    assert result.exit_code == 2 and "at least 1" in result.output
    result = runner.invoke(app, ["benchmark", "serve", "--dataset", "sharegpt"])
    assert result.exit_code == 2 and "only dataset is 'random'" in result.output
    result = runner.invoke(app, ["benchmark", "serve", "--temperature", "3"])
    assert result.exit_code == 2 and "--temperature must be between 0 and 2" in result.output
    result = runner.invoke(app, ["benchmark", "serve", "--disconnect-fraction", "1.5"])
    assert result.exit_code == 2 and "--disconnect-fraction" in result.output


def test_benchmark_serve_against_a_fake_server(tmp_path, running_server, fake_openai_server):
    fake, _ = fake_openai_server()
    out_json, out_md = tmp_path / "serve.json", tmp_path / "serve.md"
    with running_server(fake) as server:
        result = runner.invoke(app, ["benchmark", "serve", "--url", server.url, "--concurrency", "1,2",
                                     "--num-prompts", "3", "--input-len", "4", "--output-len", "6",
                                     "--json", str(out_json), "--markdown", str(out_md)])
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert [r["concurrency"] for r in data["runs"]] == [1, 2]
    assert data["command"].startswith("cli.py")
    assert data["config"]["num_prompts"] == 3 and data["config"]["model"] == "fake-model"
    markdown = out_md.read_text()
    assert "| concurrency |" in markdown and "fake-model" in markdown
    assert "TTFT" in result.output
    table = comparison_markdown([str(out_json)])
    assert table.count("\n") == 2 + len(data["runs"])


def test_benchmark_serve_says_when_no_server_answers():
    result = runner.invoke(app, ["benchmark", "serve", "--url", "http://127.0.0.1:9", "--num-prompts", "1"])
    assert result.exit_code == 2 and "warm-up request" in result.output
