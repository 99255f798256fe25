"""The tensor-parallel benchmark's table and agreement measure, on the committed H200 dry-run result."""

import copy
import json
from pathlib import Path

from ruvoninference.bench.tp import agreement, table

DRY_RUN = Path(__file__).parents[2] / "docs/benchmarks/h200-tp/dry-run-tp1-qwen3-8b.json"


def test_agreement_counts_the_shared_leading_tokens():
    assert agreement([[1, 2, 3], [4, 5], [7]], [[1, 2, 9], [4, 5], [8]]) == [2, 2, 0]


def test_table_puts_each_size_beside_the_smallest():
    tp1 = json.loads(DRY_RUN.read_text())
    tp2 = copy.deepcopy(tp1)
    tp2["config"]["tp"] = 2
    tp2["batch1"]["tokens_per_s"] *= 1.5
    tp2["greedy"]["triton"]["token_ids"][0][3] += 1  # one flip at position 3 of the first prompt
    tp2.update(collectives_ms_per_step=0.25, collectives_per_step=74)
    engine1 = copy.deepcopy(tp1)
    engine1["config"]["harness"] = "engine"
    engine1["batch1"]["tokens_per_s"] = 100.0
    text = table([tp2, engine1, tp1])
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| 1 | engine | 100.0 | 1.00 |")  # each harness has its own base
    assert rows[1].startswith("| 1 | lockstep | 156.5 | 1.00 |") and rows[2].startswith("| 2 | lockstep | 234.8 | 1.50 |")
    assert "771,072" in rows[1]
    assert "lockstep greedy triton: TP=2 shares [3, 64, 64, 64, 64, 64, 64, 64] of 64" in text
    assert "lockstep noise floor: at TP=1, flash_attention_2 and triton share [35, 15, 9, 0, 1, 19, 4, 11]" in text
    assert "lockstep TP=2 batch-1: collectives cost 0.250 ms per decode step (74 collectives)" in text
