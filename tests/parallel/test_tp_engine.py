"""The tensor-parallel engine: a step's inputs survive the trip as tensors; the engine over 2 gloo ranks gives
one process's greedy tokens (tp_engine_check.py with a tiny GPT-2, in a subprocess: real worker processes)."""

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


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, **(env or {})})


def test_cli_refuses_sizes_and_ports_in_one_sentence():
    import socket

    bad = cli("generate", "--text", "hi", "--model", "qwen3-8b-random", "--device", "cpu", "-tp", "3")
    assert bad.returncode == 2 and "size of 3 does not divide this model's 32 query heads" in bad.stderr
    assert "Traceback" not in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli("generate", "--text", "hi", "--model", "gpt2-random", "--device", "cpu",
                   "--tensor-parallel-size", "2", env={"MASTER_PORT": str(port)})
    assert busy.returncode == 2 and f"rendezvous port {port} on 127.0.0.1 is already in use" in busy.stderr


def test_more_ranks_than_gpus_is_one_sentence():
    import pytest

    from ruvoninference.errors import RuvonError
    from ruvoninference.parallel.engine import check_parallel_size

    visible = torch.cuda.device_count()
    wanted = max(2, visible + 1)  # a size that also passes the head check (32 query heads)
    with pytest.raises(RuvonError, match=f"size of {wanted} needs {wanted} GPUs but {visible} (is|are) visible"):
        check_parallel_size("qwen3-8b-random", wanted, torch.device("cuda"))


def test_a_graph_decode_lands_in_the_workers_own_graph_buffers():
    """Rank 0's graph-bucket decode inputs, unpacked by a worker runner, give the same tensors in its buffers.
    (The buffers exist on any device; no graph is captured or replayed here.)"""
    from types import SimpleNamespace

    from transformers import GPT2Config

    from ruvoninference.attention import AttentionImplementation
    from ruvoninference.engine.kv_cache import allocate_kv_cache
    from ruvoninference.engine.model_runner import ModelRunner
    from ruvoninference.engine.scheduler import ScheduledBatch
    from ruvoninference.engine.sequence import Sequence
    from ruvoninference.models import ModelConfig
    from ruvoninference.models.gpt2 import GPT2
    from ruvoninference.sampling import SamplingParams

    config = ModelConfig.from_hf(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=128))
    bundle = SimpleNamespace(model=GPT2(config), config=config)

    def runner() -> ModelRunner:
        cache = allocate_kv_cache(config, 16, 16, torch.device("cpu"), torch.float32)
        return ModelRunner(bundle, AttentionImplementation.SDPA, cache, max_batch_size=4, max_model_len=128,
                           use_cuda_graphs=True)

    driver, worker = runner(), runner()
    seqs = []
    for i, n in enumerate((5, 20, 33)):
        seq = Sequence(f"s{i}", list(range(1, n + 1)), SamplingParams(), frozenset())
        seq.num_computed_tokens, seq.block_table = n - 1, [3 * i + b for b in range(-(-n // 16))]
        seqs.append(seq)
    sent = driver.prepare(ScheduledBatch(seqs, [1, 1, 1], 0))
    assert sent.graph_key is not None and sent.graph_key[0] == 4  # 3 sequences in the 4-bucket
    header, payload = pack(sent)
    got = unpack(header.tolist(), payload, worker)
    assert got.graph_key == sent.graph_key and got.num_rows == 3
    assert got.input_ids.data_ptr() == worker._input_ids.data_ptr()  # the worker's own buffers
    for a, b in [(got.input_ids, sent.input_ids), (got.positions, sent.positions),
                 (got.meta.slot_mapping, sent.meta.slot_mapping), (got.meta.decode.seq_lens, sent.meta.decode.seq_lens),
                 (got.meta.decode.block_tables, sent.meta.decode.block_tables)]:
        assert torch.equal(a, b)
