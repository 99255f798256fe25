"""The articles' pictures and worked example: made from committed JSON, and right."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from ruvon_cli import report

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n_q,n_kv,bm,bn", [(1024, 1024, 128, 64), (300, 300, 64, 32), (1, 500, 16, 64),
                                            (100, 260, 32, 64), (129, 129, 128, 128)])
def test_block_plan_covers_exactly_the_visible_keys(n_q, n_kv, bm, bn):
    """Unmasked blocks see only visible keys, skipped blocks none, and every visible key is read."""
    plan = report.BlockPlan(n_q, n_kv, bm, bn)
    diagonal = n_kv - n_q
    for i, row in enumerate(plan.grid()):
        rows = range(i * bm, min((i + 1) * bm, n_q))
        for j, kind in enumerate(row):
            keys = range(j * bn, min((j + 1) * bn, n_kv))
            visible = [k <= r + diagonal for r in rows for k in keys]
            if kind == "full":
                assert all(visible) and len(keys) == bn, (i, j)
            elif kind == "skipped":
                assert not any(visible), (i, j)


def test_online_softmax_example_matches_the_direct_softmax():
    steps, online, direct = report.online_softmax_steps(report.EXAMPLE_SCORES, report.EXAMPLE_VALUES)
    assert online == pytest.approx(direct, rel=1e-12)
    assert [s["m_new"] for s in steps] == [2.0, 4.0, 4.0]
    assert steps[1]["alpha"] == pytest.approx(math.exp(-2)) and steps[2]["alpha"] == 1.0


def test_the_article_quotes_the_worked_example_as_computed():
    article = (ROOT / "articles/part-09-flashattention.md").read_text()
    for line in report.online_softmax_markdown().splitlines():
        assert line in article, line


def test_figures_are_made_from_the_committed_json(tmp_path):
    report.all_cmd(ROOT, tmp_path)
    for name in ("memory-vs-context-h200.png", "memory-vs-context-cpu.png", "kernel-tflops-h200.png",
                 "causal-tiles.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
        assert (ROOT / "articles/img" / name).exists(), f"articles/img/{name} is not committed"


def test_traffic_arithmetic():
    t = report.traffic_bytes(n=1024, d=64, heads=1, block_m=128, causal=False)
    assert t["eager"]["S written + read"] == 2 * 1024 * 1024 * 2
    assert t["fused"]["K, V streamed per query tile"] == 2 * (1024 * 64 * 2) * 8


def test_outside_a_clone_report_says_what_it_needs(tmp_path):
    """From an installed package there is no docs/benchmarks/: one sentence, exit 2; bad input files too."""
    (tmp_path / "flash.json").write_text("[1, 2]")
    for args, message in [(["all", "--from", str(tmp_path)], "run it in a clone or pass --from CLONE"),
                          (["memory", str(tmp_path / "flash.json"), "--out", str(tmp_path / "m.png")],
                           "is not a `flash --json` report")]:
        r = subprocess.run([sys.executable, "-m", "ruvon_cli.report", *args], capture_output=True, text=True,
                           cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "300"})
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
