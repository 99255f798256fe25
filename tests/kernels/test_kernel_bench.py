"""`kernel paged`'s shape options and what its tables compute, without a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ruvoninference.bench import kernels as kb
from ruvoninference.errors import RuvonError

ROOT = Path(__file__).resolve().parents[2]


def test_heads_and_cells_parse_or_say_what_would_work():
    assert kb.parse_heads("28/4x128") == (28, 4, 128) and kb.parse_cell("4x32768") == (4, 32768)
    for bad, said in (("28/5x128", "multiple"), ("28x4", "like 28/4x128"), ("7/1x100", "head_dim must be")):
        with pytest.raises(RuvonError, match=said):
            kb.parse_heads(bad)
    with pytest.raises(RuvonError, match="BATCHxKV_LEN"):
        kb.parse_cell("4-32768")


def test_ragged_lengths_lie_between_half_and_all_of_kv_len():
    lens = kb.ragged_lengths(64, 1000, "cpu")
    assert lens.dtype == torch.int32 and int(lens.min()) >= 500 and int(lens.max()) <= 1000
    assert torch.equal(lens, kb.ragged_lengths(64, 1000, "cpu")) and lens.unique().numel() > 10


def test_short_prompt_ratios_are_fa2_time_over_ours():
    report = kb.PagedReport({}, {})
    for provider, us in (("ours_contiguous", 10.0), ("ours_paged_256", 20.0), ("flash_attn", 15.0)):
        report.prefill_short.append(kb.ShortPrefillRow(provider, 256, 12, 12, 64, us, 2 * us, "ok"))
    ratio = kb.prefill_short_ratios(report)[0]
    assert ratio["ours_contiguous_vs_fa2_graph"] == 1.5 and ratio["ours_paged_256_vs_fa2_eager"] == 0.75
    again = kb.paged_report_from_dict({**report.to_dict(), "command": "x"})
    assert again.prefill_short == report.prefill_short


def test_cli_refuses_a_bad_head_shape_in_one_sentence():
    env = {**os.environ, "COLUMNS": "100"}
    run = subprocess.run([sys.executable, str(ROOT / "cli.py"), "kernel", "paged", "--heads", "28/5x128"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "multiple of the KV heads" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
