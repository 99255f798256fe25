"""`-tp N` on `benchmark throughput` and `serve`: the real cli.py in a subprocess, 2 gloo ranks on the CPU.

The model is a tiny GPT-2 (2 layers, 4 heads, GPT-2's whole vocabulary, so text prompts tokenize into it)
saved to a folder that every rank loads by name, as a user's model would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY_WORKLOAD = ["--workload", "random", "--num-seqs", "4", "--min-input-len", "8", "--max-input-len", "24",
                 "--min-output-len", "8", "--max-output-len", "16", "--warmup-tokens", "4", "--max-batch-size", "4"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """Seeded weights with std 0.1 (well-separated logits, so greedy tokens do not flip on rounding)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from ruvoninference.weights import gpt2_tokenizer_folder

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=256))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(1.0 if p.ndim == 1 else 0.0, 0.1)
    model.save_pretrained(folder)
    GPT2Tokenizer.from_pretrained(str(gpt2_tokenizer_folder())).save_pretrained(folder)
    return str(folder)


def environment() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("MASTER_PORT", None)
    return env


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False, env=environment())


def test_throughput_at_two_ranks_generates_one_process_greedy_tokens(tiny_model, tmp_path):
    one, two = tmp_path / "tp1.json", tmp_path / "tp2.json"
    r1 = cli("benchmark", "throughput", "--model", tiny_model, "--device", "cpu", *TINY_WORKLOAD,
             "--temperature", "0", "--json", str(one))
    assert r1.returncode == 0, r1.stdout + r1.stderr
    # Sampled first, then greedy in a fresh engine: two groups of processes, one after the other.
    r2 = cli("benchmark", "throughput", "--model", tiny_model, "--device", "cpu", "-tp", "2", *TINY_WORKLOAD,
             "--temperature", "0.6", "--json", str(two))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "tensor-parallel over 2 processes" in r2.stdout
    run1, run2 = json.loads(one.read_text())["runs"][0], json.loads(two.read_text())["runs"][0]
    assert run1["config"]["tensor_parallel_size"] == 1 and run2["config"]["tensor_parallel_size"] == 2
    greedy1, greedy2 = run1["engine"], run2["engine_greedy"]
    assert greedy1["temperature"] == greedy2["temperature"] == 0.0
    assert greedy2["token_ids_sha256"] == greedy1["token_ids_sha256"]
    assert greedy2["output_tokens"] == greedy1["output_tokens"] == run1["config"]["output_tokens"]
    assert run2["engine"]["output_tokens"] == greedy1["output_tokens"]  # the sampled run did the same work


@pytest.mark.parametrize("command", [["benchmark"], ["benchmark", "throughput"]])
def test_the_hugging_face_baseline_cannot_be_cut(command):
    r = cli(*command, "--model", "gpt2-random", "--device", "cpu", "-tp", "2", "--baseline", "hf")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot be cut over 2" in r.stderr and "--tensor-parallel-size 1" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: no process library needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running, or stopped; a zombie (dead, not yet reaped by whoever adopted it) is not alive."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_serve_at_two_ranks_answers_like_the_offline_engine_and_leaves_no_process(tiny_model):
    from ruvoninference.engine import Engine, SamplingParams
    from ruvoninference.parallel.group import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "cli.py", "serve", "--model", tiny_model, "--device", "cpu", "-tp", "2",
                               "--port", str(port), "--max-batch-size", "4", "--shutdown-timeout", "2"], cwd=ROOT,
                              env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert server.poll() is None, server.stdout.read()
        workers = children(server.pid)
        assert workers, "no worker process was started"
        assert httpx.get(url + "/info", timeout=30).json()["tensor_parallel_size"] == 2

        body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
        served = httpx.post(url + "/v1/completions", json=body, timeout=120)
        assert served.status_code == 200, served.text
        offline = Engine(tiny_model, "sdpa", "cpu", "float32").generate(
            "Once upon a time", SamplingParams(max_tokens=12, temperature=0))[0]
        assert served.json()["choices"][0]["text"] == offline.text
        assert served.json()["usage"]["completion_tokens"] == len(offline.token_ids)

        other = httpx.post(url + "/completions", json={**body, "attention_implementation": "eager"}, timeout=60)
        assert other.status_code == 400 and other.json()["error"]["param"] == "attention_implementation"

        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "a worker outlived the server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
        server.stdout.close()
