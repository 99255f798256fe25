"""`cli.py serve` as a user starts it, in a subprocess, answering the articles' curl request."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CURL_BODY = '{"prompt": "The future of AI", "max_tokens": 50, "attention_implementation": "flash_attention_2"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: str) -> tuple[int, dict]:
    """The articles' curl line verbatim when curl is installed, else the same request through httpx."""
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", url, "-H",
                              "Content-Type: application/json", "-d", body], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        payload, code = out.rsplit("\n", 1)
        return int(code), json.loads(payload)
    response = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=120)
    return response.status_code, response.json()


@pytest.fixture(scope="module")
def cli_server():
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "cli.py", "serve", "--model", "gpt2-random", "--device", "cpu",
                                "--port", str(port), "--max-batch-size", "4", "--shutdown-timeout", "2"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    statuses = set()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                statuses.add(code := httpx.get(url + "/health", timeout=5).status_code)
                if code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert 200 in statuses, "the server did not come up"
        yield url, statuses, process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_curl_example(cli_server):
    url, _, _ = cli_server
    from ruvoninference.attention import unavailable_reasons

    code, body = post(url + "/completions", CURL_BODY)
    if "flash_attention_2" in {str(k) for k in unavailable_reasons(None)}:
        assert code == 400 and "FlashAttention-2" in body["error"]["message"]
        assert "available here" in body["error"]["message"]
    else:
        assert code == 200 and body["choices"][0]["text"]
    code, body = post(url + "/completions", CURL_BODY.replace("flash_attention_2", "sdpa"))
    assert code == 200 and body["usage"]["completion_tokens"] <= 50 and body["choices"][0]["text"]


def test_loading_then_ready_and_no_traceback_for_client_mistakes(cli_server):
    url, statuses, process = cli_server
    assert statuses <= {200, 503}  # before the model is in, /health says 503, never an error page
    for body in ('{"prompt": ', '{"prompt": "x", "temperature": -1}', '{"prompt": "x", "max_tokens": 99999}'):
        assert httpx.post(url + "/v1/completions", content=body,
                          headers={"Content-Type": "application/json"}).status_code == 400
    # SIGTERM with a stream running: it may run on for --shutdown-timeout (2 s), then ends with an error
    # event, and the server exits by itself.
    with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
            "prompt": "Hi", "max_tokens": 1000, "ignore_eos": True, "stream": True}) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        next(lines)
        process.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert "shut down" in json.loads(rest[-1][len("data: "):])["error"]["message"]
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 0 and "Traceback" not in output, output
