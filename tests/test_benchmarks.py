import pytest
import torch

from ruvoninference.bench.prefill import AttentionBenchmark, tokens_of_length
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
    with pytest.raises(RuvonError, match="outside"):
        bench.sequence_length_scaling("sdpa", "x", [2048], loaded=gpt2_sdpa)


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
