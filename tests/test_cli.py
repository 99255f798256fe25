"""The real cli.py in a subprocess, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, timeout=600, columns=200, **env_vars):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": str(columns), **env_vars}
    env.pop("TRITON_INTERPRET", None)  # a user's run never interprets
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, errors="replace")


def one_sentence(r, message: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


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
            "--max-tokens", "24", "--ignore-eos", "--json", str(out), columns=40)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    outputs = data["outputs"]
    assert [len(o["token_ids"]) for o in outputs] == [24, 24]
    assert all(o["finish_reason"] == "length" for o in outputs)
    # The terminal wraps long lines itself: no line break is added inside the generated text.
    for o in outputs:
        assert len(o["prompt"] + o["text"]) > 40 and o["prompt"] + o["text"] in r.stdout
    # The KV pool (reserved up front) and what this run filled are reported apart.
    stats = data["stats"]
    assert stats["kv_used_tokens"] == sum(len(o["prompt_token_ids"]) + 24 for o in outputs)
    assert 0 < stats["kv_used_bytes"] < stats["kv_pool_bytes"] <= stats["peak_memory_bytes"]
    assert "KV-cache pool" in r.stdout and "warm-up" in r.stdout


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
    assert sdpa["kv_pool_bytes"] > 0 and data["rows"][2]["kv_pool_bytes"] is None  # ours reserve, HF grows
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


def test_flag_mistakes_are_reported_before_torch_is_imported(tmp_path):
    """A torch that cannot be imported proves these checks run first (a flag mistake used to take 5 s)."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    env = {"PYTHONPATH": str(fake)}
    missing = tmp_path / "no-such-dir" / "out.json"
    cases = [
        (["generate", "--text", "hi", "--json", str(tmp_path)], "is a folder"),
        (["generate", "--text", "hi", "--json", str(missing)], "does not exist; create it first"),
        (["benchmark", "--markdown", "/proc/ruvon.md"], "cannot be written"),
        (["generate", "--text", "hi", "--block-size", "0"], "power of two of at least 16, not 0"),
        (["generate", "--text", "hi", "--kv-cache-memory", "512"], "is not a memory size"),
        (["generate", "--text", "hi", "--seed", "-1"], "from 0 to 2**64 - 1, not -1"),
        (["generate", "--text", "hi", "--stop", ""], "non-empty string"),
        (["generate", "--text", b"caf\xe9 \xff"], "not valid UTF-8 (byte 0xe9 at position 3)"),
        (["benchmark", "--repeats", "0"], "--repeats must be at least 1, not 0"),
    ]
    for args, message in cases:
        one_sentence(cli(*args, **env), message)
    assert not missing.parent.exists()  # refused, not created


def test_saved_report_files_that_are_wrong_are_one_sentence(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"rows": 3}')
    one_sentence(cli("kernel", "paged", "--render", str(tmp_path)), "is a folder; give a file that `kernel paged")
    one_sentence(cli("kernel", "benchmark", "--render", str(tmp_path / "bad.json")), "is not JSON")
    one_sentence(cli("kernel", "paged", "--render", str(tmp_path / "other.json")),
                 "is not a `kernel paged --json` report")


def test_mistakes_found_after_torch_loads_are_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    one_sentence(cli("generate", "--text", "hi", "--model", str(tmp_path / "empty")), "holds no model (no config.json)")
    r = cli("generate", "--text", "hi", "--model", "gpt2-random", "--kv-cache-memory", "1000TiB", "--device", "cpu")
    one_sentence(r, "more than this machine's free memory (")
    assert "GiB free of" in r.stderr
    one_sentence(cli("benchmark", "throughput", "--model", "gpt2-random", "--min-input-len", "50",
                     "--max-input-len", "8"), "--min-input-len (50) must be at least 1 and at most --max-input-len (8)")


def test_serve_refuses_at_start_what_cannot_work():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        one_sentence(cli("serve", "--model", "gpt2-random", "--port", port), f"Port {port} on 127.0.0.1 is already in use")
    one_sentence(cli("serve", "--model", "gpt2-random", "--host", "no-such-host.invalid"), "does not resolve")
    r = cli("serve", "--model", "smollm2-135n", "--port", "0")
    one_sentence(r, "Model 'smollm2-135n' could not be loaded")
    assert "Serving" not in r.stderr  # the banner comes only once the server can start


def test_two_quick_interrupts_end_quietly():
    """Ctrl-C twice while generating: "Interrupted." and exit 130, no traceback from Python's shutdown."""
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "generate", "--model", "gpt2-random", "--text",
                             "Hello", "--max-tokens", "1000", "--ignore-eos"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout.read(len("gpt2-random")) == "gpt2-random"  # the header: generation is starting
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Interrupted." in err and "Traceback" not in err + out and "KeyboardInterrupt" not in err
