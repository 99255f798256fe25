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
