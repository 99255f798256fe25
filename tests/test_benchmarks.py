import pytest
import torch

from ruvoninference.bench.prefill import AttentionBenchmark, default_lengths, lengths_within_context, tokens_of_length
from ruvoninference.bench.generation import BenchmarkRow, _compare_with_eager
from ruvoninference.errors import RuvonError
from ruvoninference.bench.kernels import flops


def test_tokens_of_length_repeats_the_prompt(gpt2_sdpa):
    ids = tokens_of_length(gpt2_sdpa.tokenizer, "Once upon a time", 10)
    assert ids == [7454, 2402, 257, 640] * 2 + [7454, 2402]


def test_sequence_length_scaling_rows(gpt2_sdpa):
    bench = AttentionBenchmark("gpt2-random", device="cpu", repeats=1)
    rows = bench.sequence_length_scaling("sdpa", "Once upon a time", [16, 64], loaded=gpt2_sdpa)
    assert [r.sequence_length for r in rows] == [16, 64]
    for r in rows:
        assert r.status == "ok" and r.seconds > 0 and r.tokens_per_s == pytest.approx(r.sequence_length / r.seconds)
        assert r.peak_memory_bytes >= 0
    # The first length records which attention operator SDPA dispatched to; the rest do not repeat it.
    assert any("scaled_dot_product" in op for op in rows[0].attention_ops) and rows[1].attention_ops is None
    with pytest.raises(RuvonError, match="outside"):
        bench.sequence_length_scaling("sdpa", "x", [2048], loaded=gpt2_sdpa)


def test_lengths_are_split_by_the_context():
    assert lengths_within_context([512, 1024, 2048], 1024, "gpt2-random") == ([512, 1024], [2048])
    with pytest.raises(RuvonError, match="exceeds the 1024-token context of 'gpt2-random'"):
        lengths_within_context([2048, 4096], 1024, "gpt2-random")
    with pytest.raises(RuvonError, match="at least 1"):
        lengths_within_context([0, 16], 1024, "gpt2-random")
    assert default_lengths("cuda")[-1] == 8192 and default_lengths("cpu")[-1] == 1024
    default_lengths("cpu").append(1)  # a copy: the defaults stay as they are
    assert default_lengths("cpu") == [128, 256, 512, 1024]


def _row(name, tps, ids):
    return BenchmarkRow(name, 1.0, tps, tps, tps, 0.1, None, None, 0, "process_rss", ids)


def test_speedup_and_agreement_are_computed_against_eager():
    rows = [_row("eager", 10.0, [1, 2, 3]), _row("sdpa", 15.0, [1, 2, 3]), _row("x", 20.0, [1, 5, 3])]
    _compare_with_eager(rows)
    assert [r.speedup_vs_eager for r in rows] == [1.0, 1.5, 2.0]
    assert [r.matches_eager for r in rows] == [True, True, False]
    assert rows[2].first_mismatch == 1


def test_attention_flops():
    assert flops(1, 1, 1024, 64, causal=False) == 4 * 1024 * 1024 * 64
    assert flops(2, 3, 1024, 64, causal=True) == 2 * 3 * 2 * 1024 * 1024 * 64


def test_saved_kernel_report_renders_again():
    """The committed H200 run re-renders from its JSON: the markdown's numbers are the measured ones."""
    import json
    from pathlib import Path

    from ruvoninference.bench.kernels import ratios, report_from_dict, to_markdown

    path = Path(__file__).resolve().parents[1] / "docs/benchmarks/h200-kernel/kernel.json"
    report = report_from_dict(json.loads(path.read_text()))
    text = to_markdown(report, "cmd")
    cell = next(r for r in report.rows if r.provider == "triton" and r.status == "ok")
    assert f"{cell.ms:.3f}" in text and f"{cell.tflops:.0f}" in text
    for entry in ratios(report):
        if entry["vs_flash_attn"] is not None:
            assert f"{entry['vs_flash_attn']:.2f}" in text


def test_paged_decode_providers_agree_with_float64():
    """The benchmark's providers (ours at pages of 16 and 256, SDPA over gathered K/V) on one small cell."""
    from ruvoninference.bench.kernels import decode_errors

    unavailable: dict[str, str] = {}
    errors = decode_errors(4, 2, 64, torch.float16, unavailable, device="cuda" if torch.cuda.is_available() else "cpu",
                           batch=2, kv_len=512)
    assert {k.split()[0] for k in errors} >= {"triton_paged_16", "triton_paged_256", "sdpa_contiguous"}
    assert all(e < 5e-3 for e in errors.values()), errors


def test_paged_report_tables_every_cell_and_ratio():
    from ruvoninference.bench.kernels import (DecodeRow, PagedPrefillRow, PagedReport, decode_cells, decode_ratios,
                                              paged_markdown, paged_report_from_dict, prefill_ratios)

    assert (32, 8, 128, 256, 16384) in decode_cells([256], [16384, 65536], [(32, 8, 128)])
    assert (32, 8, 128, 256, 65536) not in decode_cells([256], [16384, 65536], [(32, 8, 128)])  # 68 GB of K/V
    env = {"device": "GPU", "torch": "t", "triton": "tr", "flash_attn": None, "cuda": "c"}
    config = {"dtype": "bfloat16", "decode_tile": {128: "tile"}, "prefill_tile": {128: "tile"}}
    report = PagedReport(env, config, copy_gbps=4000.0)
    for provider, us in [("triton_paged_16", 10.0), ("triton_paged_256", 8.0), ("flash_attn_paged_256", 16.0),
                         ("sdpa_contiguous", 40.0)]:
        report.decode.append(DecodeRow(provider, 8, 4096, 32, 8, 128, us, 1e-3 * 134_217_728 / us, "ok", 4))
    for provider, ms in [("triton_paged_16", 2.0), ("triton_paged_256", 1.0), ("triton_contiguous", 1.8)]:
        report.prefill.append(PagedPrefillRow(provider, 4, 4096, 32, 8, 128, ms, 100.0 / ms, "ok"))
    ratio = decode_ratios(report)[0]
    assert ratio["speedup_vs_fa2_16"] == 1.6 and ratio["speedup_vs_fa2_256"] == 2.0
    assert ratio["fa2_ceiling"] == 2.0  # the fastest read in the run (ours at 256) over FA2's
    assert prefill_ratios(report)[0]["paged_16_vs_contiguous"] == 0.9
    text = paged_markdown(paged_report_from_dict(report.to_dict()), "cmd")
    assert "| 32/8 x 128 | 8 | 4096 | 4 | 10.0 | 8.0 | 16.0 | 40.0 |" in text
    assert "| 1.60 | 2.00 | 2.00 |" in text and "| 0.90 | 1.80 |" in text


# -- benchmark throughput -----------------------------------------------------------------------------------------


def _bench_py_draws(num_seqs, input_lens, output_lens, max_id):
    """nano-vllm's bench.py, written out call by call: per prompt its length then its ids, then every max_tokens."""
    import random

    random.seed(0)
    prompts = []
    for _ in range(num_seqs):
        length = random.randint(*input_lens)
        prompts.append([random.randint(0, max_id) for _ in range(length)])
    return prompts, [random.randint(*output_lens) for _ in range(num_seqs)]


def test_nano_vllm_workload_is_bench_py_seed_0():
    from ruvoninference.bench.throughput import make_workload, nano_vllm_workload

    w = nano_vllm_workload()
    prompts, outs = _bench_py_draws(256, (100, 1024), (100, 1024), 10_000)
    assert w.prompts[0] == prompts[0] and w.output_lens[:3] == outs[:3]  # the known first values
    assert w.prompts == prompts and w.output_lens == outs
    assert w.num_output_tokens == sum(outs) and w.spec["token_ids"] == [0, 10_000]
    # The CLI's defaults give exactly this workload; a vocabulary below 10,001 ids keeps the order, clipped.
    assert make_workload("nano-vllm", 151_936, 256, (100, 1024), (100, 1024), 0).prompts == prompts
    small = make_workload("nano-vllm", 1000, 4, (5, 9), (2, 3), 0)
    assert (small.prompts, small.output_lens) == _bench_py_draws(4, (5, 9), (2, 3), 999)
    random_one = make_workload("random", 50, 3, (4, 6), (2, 2), 0)
    assert all(4 <= len(p) <= 6 and max(p) < 50 for p in random_one.prompts) and random_one.output_lens == [2] * 3
    with pytest.raises(RuvonError, match="Unknown workload 'x'"):
        make_workload("x", 50, 1, (1, 1), (1, 1))


def _throughput_cli(*args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    env.pop("TRITON_INTERPRET", None)
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / "cli.py"), "benchmark", "throughput", "--model", "gpt2-random",
                           *args], check=False, capture_output=True, text=True, timeout=1800, cwd=root, env=env)


TINY_WORKLOAD = ["--num-seqs", "3", "--min-input-len", "8", "--max-input-len", "16", "--min-output-len", "2",
                 "--max-output-len", "4", "--max-batch-size", "2", "--warmup-tokens", "2"]


def test_throughput_sampled_greedy_and_warmed_baseline(tmp_path):
    """Default workload (nano-vllm's draws) at temperature 0.6: ours sampled and greedy, the baseline sampled."""
    import json

    out, md = tmp_path / "t.json", tmp_path / "t.md"
    r = _throughput_cli(*TINY_WORKLOAD, "--baseline", "hf", "--json", str(out), "--markdown", str(md))
    assert r.returncode == 0, r.stderr
    run = json.loads(out.read_text())["runs"][0]
    cfg, sampled, greedy, hf = run["config"], run["engine"], run["engine_greedy"], run["hf"]
    assert cfg["workload"] == "nano-vllm" and cfg["seed"] == 0 and cfg["ignore_eos"]
    assert cfg["sampling"] == {"temperature": 0.6, "top_k": 0, "top_p": 1.0, "do_sample": True}
    assert cfg["max_batch_size"] == 2 and cfg["max_num_batched_tokens"] > 0 and run["environment"]["device"]
    assert cfg["mixed_batches"] is True and cfg["scheduler"] == "continuous"
    assert (sampled["temperature"], greedy["temperature"]) == (0.6, 0.0)
    for ours in (sampled, greedy):  # the same prompts and lengths, each run after its own warm-up generate
        assert ours["output_tokens"] == cfg["output_tokens"] and ours["warmup"]["max_tokens"] == 2
        assert ours["decode_steps"]["count"] > 0 and ours["copy_bytes_per_s"] > 0
    assert run["sampled_vs_greedy"] == pytest.approx(sampled["output_tokens_per_s"] / greedy["output_tokens_per_s"])
    assert run["sampled_vs_greedy_per_cpu_s"] == pytest.approx(greedy["process_cpu_s"] / sampled["process_cpu_s"])
    assert hf["output_tokens"] == cfg["output_tokens"] and hf["warmup"]["elapsed_s"] > 0
    assert {"do_sample": True, "temperature": 0.6, "top_k": 0, "top_p": 1.0}.items() <= hf["settings"].items()
    assert run["speedup_vs_hf"] == pytest.approx(sampled["output_tokens_per_s"] / hf["output_tokens_per_s"])
    text = md.read_text()
    assert "nano-vllm's bench.py workload" in text and "| continuous T=0.6 |" in text
    assert "| continuous greedy |" in text and "| HF T=0.6 |" in text and "sampled / greedy: continuous" in text
    assert "continuous T=0.6" in r.stdout and "continuous greedy" in r.stdout


def test_throughput_greedy_only_random_workload(tmp_path):
    import json

    out = tmp_path / "t.json"
    r = _throughput_cli(*TINY_WORKLOAD, "--workload", "random", "--temperature", "0", "--max-num-batched-tokens",
                        "64", "--no-mixed-batches", "--json", str(out))
    assert r.returncode == 0, r.stderr
    run = json.loads(out.read_text())["runs"][0]
    assert run["config"]["workload"] == "random" and run["config"]["max_num_batched_tokens"] == 64
    assert run["config"]["mixed_batches"] is False
    assert run["engine"]["temperature"] == 0.0 and "engine_greedy" not in run and "sampled_vs_greedy" not in run


@pytest.mark.parametrize("args, sentence", [
    (["--temperature", "nan"], "--temperature must be a number >= 0"),
    (["--workload", "sharegpt"], "Unknown workload 'sharegpt'; use one of: nano-vllm, random."),
])
def test_throughput_bad_options_say_one_sentence(args, sentence):
    r = _throughput_cli(*args)
    assert r.returncode == 2 and sentence in r.stderr and "Traceback" not in r.stderr


def test_throughput_report_keeps_ours_when_the_baseline_failed():
    """A failed baseline is a row that says so, and its error is in the markdown; ours stays as measured."""
    import io
    import json
    from pathlib import Path

    from rich.console import Console

    from ruvon_cli import throughput_cmd

    path = Path(__file__).resolve().parents[1] / "docs/benchmarks/cpu-engine-core/throughput-gpt2-random-sampled.json"
    data = json.loads(path.read_text())
    data["runs"][0]["hf"] = {"method": "transformers (sdpa)", "error": "RuntimeError: it stopped"}
    rows = throughput_cmd._rows(data["runs"])
    assert rows[-1][:2] == ["HF T=0.6", "failed"] and rows[0][1] == f"{data['runs'][0]['engine']['output_tokens_per_s']:,.0f}"
    assert "HF: transformers (sdpa) failed: RuntimeError: it stopped" in throughput_cmd.to_markdown(data)
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    console.print(throughput_cmd.render_table(data["runs"]))
    assert "failed" in console.export_text()
