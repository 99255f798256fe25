"""The scheduler without a model: which sequences each step runs, under each policy."""

import pytest

from ruvoninference.engine.block_manager import BlockManager
from ruvoninference.engine.scheduler import Scheduler
from ruvoninference.engine.sequence import Sequence, SequenceStatus
from ruvoninference.errors import RuvonError
from ruvoninference.sampling import SamplingParams


def make(policy="continuous", blocks=64, block_size=4, max_seqs=4, budget=64, mixed=True):
    return Scheduler(BlockManager(blocks, block_size), policy, max_seqs, budget, mixed)


def seq(n, rid, max_tokens=4):
    return Sequence(rid, list(range(1000 + n * 7, 1000 + n * 8)) or [1], SamplingParams(max_tokens=max_tokens),
                    frozenset())


def run_step(s: Scheduler):
    """Play the engine's part: advance computed tokens, append a token to each producing sequence."""
    batch = s.schedule()
    if batch is None:
        return None
    for q, n in zip(batch.seqs, batch.num_new_tokens):
        q.num_computed_tokens += n
        s.block_manager.commit_full_blocks(q)
        if q.num_computed_tokens == q.num_tokens:
            q.token_ids.append(7)
            if q.num_output_tokens >= q.sampling.max_tokens:
                s.finish(q, "length")
    return batch


def test_prefill_then_decode_and_finish_frees_everything():
    s = make()
    seqs = [seq(5 + i, f"r{i}") for i in range(3)]
    for q in seqs:
        s.add(q)
    b = run_step(s)
    assert b.is_prefill and b.seqs == seqs
    kinds = []
    while (b := run_step(s)) is not None:
        kinds.append(b.is_prefill)
    assert kinds == [False, False, False]  # max_tokens 4: one token from prefill, three decodes
    assert all(q.finished for q in seqs)
    assert s.block_manager.num_free_blocks == s.block_manager.num_blocks


def test_chunked_prefill_respects_the_token_budget():
    s = make(budget=8)
    a = Sequence("a", list(range(20)), SamplingParams(max_tokens=2), frozenset())
    s.add(a)
    sizes = []
    while (b := run_step(s)) is not None and b.is_prefill:
        sizes.append(b.num_new_tokens)
    assert sizes == [[8], [8], [4]]


def test_continuous_admits_newcomers_while_others_decode():
    s = make(max_seqs=4)
    s.add(seq(5, "a", max_tokens=10))
    run_step(s)
    run_step(s)  # a decodes
    late = seq(6, "b", max_tokens=2)
    s.add(late)
    b = run_step(s)
    # a's decode rides along in b's prefill step: prefill chunks first, then decodes
    assert b.seqs == [late, s.running[0]] and b.num_new_tokens == [6, 1] and b.num_prefill == 1
    assert [q.request_id for q in s.running] == ["a", "b"]


def test_unmixed_steps_are_all_prefill_or_all_decode():
    s = make(max_seqs=4, mixed=False)
    s.add(seq(5, "a", max_tokens=10))
    run_step(s)
    run_step(s)
    late = seq(6, "b", max_tokens=2)
    s.add(late)
    b = run_step(s)
    assert b.is_prefill and b.seqs == [late] and b.num_prefill == 1
    b = run_step(s)
    assert b.is_decode_only and [q.request_id for q in b.seqs] == ["a", "b"]


def test_decodes_take_their_tokens_from_the_budget_and_prefill_gets_the_rest():
    s = make(max_seqs=8, budget=8)
    for i in range(3):
        s.add(seq(1, f"d{i}", max_tokens=50))
    while any(q.num_uncomputed_tokens > 1 for q in s.running) or s.waiting:
        run_step(s)
    long = Sequence("long", list(range(30)), SamplingParams(max_tokens=2), frozenset())
    s.add(long)
    sizes = []
    while long.num_output_tokens == 0:
        b = run_step(s)
        assert b.num_tokens <= 8 and b.num_new_tokens[b.num_prefill:] == [1] * (len(b.seqs) - b.num_prefill)
        sizes.append(b.num_new_tokens[:b.num_prefill])
    assert sizes == [[5]] * 6  # 3 decodes ride along in every chunk step

def test_static_waits_for_the_whole_batch():
    s = make("static", max_seqs=4)
    s.add(seq(5, "a", max_tokens=5))
    run_step(s)
    run_step(s)
    s.add(seq(6, "b", max_tokens=2))
    admitted_b_while_a_ran = False
    while s.running:
        b = run_step(s)
        if b.is_prefill:
            admitted_b_while_a_ran = True
    assert not admitted_b_while_a_ran
    b = run_step(s)
    assert b.is_prefill and b.seqs[0].request_id == "b"


def test_sequential_runs_one_at_a_time():
    s = make("sequential")
    for i in range(3):
        s.add(seq(5, f"r{i}", max_tokens=3))
    while (b := run_step(s)) is not None:
        assert len(b.seqs) == 1 and len(s.running) <= 1


def test_preemption_frees_the_newest_and_loses_nothing():
    # 6 blocks of 4 tokens; two sequences of 8 prompt tokens use 4, and each grows by 8 tokens.
    s = make(blocks=6, max_seqs=2)
    a, b = (Sequence(r, list(range(i * 100, i * 100 + 8)), SamplingParams(max_tokens=8), frozenset())
            for i, r in enumerate("ab"))
    s.add(a), s.add(b)
    outputs = []
    while (batch := run_step(s)) is not None:
        outputs.append([q.request_id for q in batch.seqs])
    assert s.num_preemptions >= 1
    assert a.finished and b.finished
    assert a.num_output_tokens == b.num_output_tokens == 8
    assert s.block_manager.num_free_blocks == 6


def test_finish_while_waiting_or_running_releases_blocks():
    s = make()
    a, b = seq(5, "a"), seq(5, "b")
    s.add(a)
    run_step(s)
    s.add(b)
    s.finish(a, "abort")
    s.finish(b, "abort")
    assert a.status is SequenceStatus.FINISHED and a.finish_reason == "abort"
    assert not s.has_unfinished() and s.block_manager.num_free_blocks == s.block_manager.num_blocks


def test_unknown_policy_is_a_user_error():
    with pytest.raises(RuvonError, match="continuous, static, sequential"):
        make("fifo")
