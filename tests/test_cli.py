"""The real cli.py in a subprocess, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("TRITON_INTERPRET", None)  # a user's run never interprets
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_generate_streams_text_and_writes_json(tmp_path, smollm2_sdpa):
    out = tmp_path / "g.json"
    r = cli("generate", "--text", "Once upon a time", "--max-length", "8", "--json", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    first = data["outputs"][0]
    assert "Once upon a time" + first["text"] in r.stdout
    assert len(first["token_ids"]) == data["stats"]["generated_tokens"] == data["config"]["max_tokens"] == 8
    assert data["environment"]["torch"] and data["stats"]["decode_tokens_per_s"] > 0
    assert data["config"]["scheduler"] == "continuous" and data["config"]["num_kv_blocks"] > 0
    assert "time to first token" in r.stdout


def test_generate_runs_several_prompts_as_a_batch(tmp_path):
    out = tmp_path / "g.json"
    r = cli("generate", "--text", "Hello there", "--text", "The capital of France is", "--model", "gpt2-random",
            "--max-tokens", "5", "--ignore-eos", "--json", str(out))
    assert r.returncode == 0, r.stderr
    outputs = json.loads(out.read_text())["outputs"]
    assert [len(o["token_ids"]) for o in outputs] == [5, 5]
    assert all(o["finish_reason"] == "length" for o in outputs)
    assert "Hello there" in r.stdout and "The capital of France is" in r.stdout


def test_sampling_options_and_random_weight_label():
    r = cli("generate", "--text", "Hello", "--model", "gpt2-random", "--max-length", "4",
            "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "random weights" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["generate", "--text", "hi", "--max-length", "0"], "at least 1"),
    (["generate", "--text", "hi", "--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["generate", "--text", "hi", "--attn", "nope"], "Unknown attention implementation"),
    (["generate", "--text", "hi", "--model", "./missing-model"], "does not exist"),
    (["generate", "--text", "hi", "--model", "someone/not-cached"], "embedded models work offline"),
    (["generate", "--text", "hi " * 1100, "--model", "gpt2-random"], "context is 1024 tokens"),
    (["generate"], "Give a prompt with --text"),
])
def test_user_errors_are_one_sentence_and_exit_2(args, message):
    r = cli(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_unavailable_backend_says_why():
    r = cli("generate", "--text", "hi", "--attn", "flash_attention_2")
    if r.returncode == 2:
        assert "unavailable" in r.stderr and "Traceback" not in r.stderr
    else:  # a GPU machine with flash-attn installed
        assert r.returncode == 0


@pytest.mark.parametrize("args", [["implementations"], ["generate", "implementations"]])
def test_implementations_table(args):
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    for name in ("eager", "sdpa", "flash_attention_2", "triton"):
        assert name in r.stdout
    assert "torch" in r.stdout


def test_benchmark_compares_backends_and_hf(tmp_path):
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    r = cli("generate", "benchmark", "--model", "gpt2-random", "--max-tokens", "4", "--warmup", "1",
            "--repeats", "2", "--detailed", "--baseline", "hf", "--json", str(out), "--markdown", str(md))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    names = [row["implementation"] for row in data["rows"]]
    assert names[:2] == ["eager", "sdpa"] and {"hf_generate:eager", "hf_generate:sdpa"} <= set(names)
    assert data["rows"][1]["speedup_vs_hf"] > 0
    sdpa = data["rows"][1]
    assert sdpa["matches_eager"] is True and len(sdpa["token_ids"]) == 4
    assert sdpa["tokens_per_s_min"] <= sdpa["tokens_per_s_median"] <= sdpa["tokens_per_s_max"]
    assert data["environment"]["device"] and data["config"]["repeats"] == 2
    assert "| sdpa |" in md.read_text()
    assert "prefill" in r.stdout and "decode" in r.stdout


def test_benchmark_alias_and_flash_on_cpu(tmp_path):
    r = cli("benchmark", "--model", "gpt2-random", "--max-tokens", "2", "--repeats", "1", "--attn", "sdpa")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "f.json"
    r = cli("flash", "--text", "test", "--max-length", "3", "--model", "gpt2-random", "--show-memory",
            "--length", "32", "--length", "64", "--repeats", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "FlashAttention-2 is not run" in r.stdout
    data = json.loads(out.read_text())
    rows = data["memory_scaling"]["rows"]
    assert {(row["implementation"], row["sequence_length"]) for row in rows} == {
        ("eager", 32), ("eager", 64), ("sdpa", 32), ("sdpa", 64)}
    assert all(row["status"] == "ok" and row["seconds"] > 0 for row in rows)
    assert data["memory_scaling"]["lengths"] == [32, 64] and data["memory_scaling"]["left_out"] == []
    assert "median time (ms)" in r.stdout and "MiB" in r.stdout


def test_flash_with_no_length_inside_the_context_is_one_sentence():
    """Lengths past the context used to give an empty table and exit 0; now one sentence, exit 2, and fast."""
    r = cli("flash", "--model", "gpt2-random", "--show-memory", "--length", "2000", "--length", "4096")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "exceeds the 1024-token context of 'gpt2-random'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "Prefill" not in r.stdout and "┃" not in r.stdout  # it stopped before any benchmark ran


def test_kernel_benchmark_needs_a_gpu():
    r = cli("kernel", "benchmark")
    if r.returncode == 2:
        assert "needs a CUDA GPU" in r.stderr
