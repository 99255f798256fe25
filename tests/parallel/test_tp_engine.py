"""The tensor-parallel engine: a step's inputs survive the trip as tensors; the engine over 2 gloo ranks gives
one process's greedy tokens (tp_engine_check.py, in a subprocess, so its workers are real processes)."""

import subprocess
import sys
from pathlib import Path

import torch

from ruvoninference.attention.paged import AttentionMetadata, DecodeMetadata, PrefillMetadata
from ruvoninference.engine.model_runner import StepInputs
from ruvoninference.parallel.engine import HEADER, pack, unpack

ROOT = Path(__file__).parents[2]


def test_a_mixed_step_packs_into_one_header_and_one_payload():
    i32 = torch.int32
    prefill = PrefillMetadata(torch.tensor([0, 3, 5], dtype=i32), torch.tensor([0, 3, 9], dtype=i32), 3, 7,
                              torch.tensor([[4, 0], [1, 2]], dtype=i32), torch.tensor([3, 7], dtype=i32), [3, 2], [3, 7])
    decode = DecodeMetadata(torch.tensor([[8, 9, 10]], dtype=i32), torch.tensor([40], dtype=i32), 48)
    inputs = StepInputs(torch.arange(6) + 100, torch.tensor([0, 1, 2, 5, 6, 39]), AttentionMetadata(
        torch.arange(6) * 2, 5, prefill, decode), torch.tensor([2, 4, 5]), None, 3, [0, 1, 2])
    header, payload = pack(inputs)
    assert header.shape == (HEADER,) and header.dtype == payload.dtype == torch.long
    got = unpack(header.tolist(), payload, runner=None)
    for a, b in [(got.input_ids, inputs.input_ids), (got.positions, inputs.positions),
                 (got.meta.slot_mapping, inputs.meta.slot_mapping), (got.logits_rows, inputs.logits_rows),
                 (got.meta.prefill.cu_seqlens_k, prefill.cu_seqlens_k), (got.meta.prefill.block_tables, prefill.block_tables),
                 (got.meta.decode.block_tables, decode.block_tables), (got.meta.decode.seq_lens, decode.seq_lens)]:
        assert torch.equal(a, b) and a.dtype == b.dtype
    assert (got.meta.num_prefill_tokens, got.num_rows, got.graph_key) == (5, 3, None)
    assert (got.meta.prefill.query_lens, got.meta.prefill.context_lens, got.meta.prefill.max_seqlen_k) == ([3, 2], [3, 7], 7)
    assert got.meta.decode.max_seqlen_k == 48


def test_two_ranks_give_one_process_tokens_under_preemption():
    result = subprocess.run([sys.executable, "tests/parallel/tp_engine_check.py"], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "greedy tokens equal TP=1 for 5 prompts" in result.stdout
    assert "no worker process left" in result.stdout
