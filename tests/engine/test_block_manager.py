"""The block manager: allocation, freeing, and prefix caching with reference counts."""

from ruvoninference.engine.block_manager import BlockManager
from ruvoninference.engine.sequence import Sequence
from ruvoninference.sampling import SamplingParams


def seq(tokens, rid="r"):
    return Sequence(rid, list(tokens), SamplingParams(), frozenset())


def compute_all(bm, s):
    s.num_computed_tokens = s.num_tokens
    bm.commit_full_blocks(s)


def test_allocate_append_free_returns_every_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(range(10))
    assert bm.can_allocate(a)
    bm.allocate(a)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 5
    for t in range(2):  # tokens 10, 11 fit in the third block; token 12 needs a fourth
        a.token_ids.append(100 + t)
        assert bm.can_append(a)
        bm.append_slot(a)
    assert len(a.block_table) == 3
    a.token_ids.append(102)
    bm.append_slot(a)
    assert len(a.block_table) == 4 and len(set(a.block_table)) == 4
    bm.free(a)
    assert bm.num_free_blocks == 8 and a.block_table == []


def test_cannot_allocate_more_than_is_free():
    bm = BlockManager(num_blocks=2, block_size=4)
    assert not bm.can_allocate(seq(range(9)))
    a = seq(range(8))
    bm.allocate(a)
    assert not bm.can_append(seq(range(1))) or bm.num_free_blocks > 0
    a.token_ids.append(8)
    assert not bm.can_append(a)


def test_shared_prefix_is_reused_and_reference_counted():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(list(range(10)), "a")
    bm.allocate(a)
    compute_all(bm, a)
    b = seq(list(range(8)) + [50, 51, 52], "b")  # shares two full blocks with a
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2]
    assert b.num_cached_tokens == b.num_computed_tokens == 8
    assert bm.blocks[a.block_table[0]].ref_count == 2
    bm.free(a)
    assert bm.blocks[b.block_table[0]].ref_count == 1
    bm.free(b)
    assert bm.num_free_blocks == 16


def test_a_fully_cached_prompt_still_computes_its_last_token():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(range(8), "a")
    bm.allocate(a)
    compute_all(bm, a)
    b = seq(range(8), "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 4  # the second block is recomputed: it holds the token that samples


def test_freed_blocks_keep_their_prefix_until_reused():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq(range(9), "a")
    bm.allocate(a)
    compute_all(bm, a)
    first = a.block_table[:2]
    bm.free(a)
    b = seq(range(9), "b")
    assert bm.can_allocate(b)
    bm.allocate(b)
    assert b.block_table[:2] == first and b.num_cached_tokens == 8
    bm.free(b)
    # Overwriting every block with other tokens forgets the prefix.
    c = seq(range(100, 116), "c")
    bm.allocate(c)
    compute_all(bm, c)
    bm.free(c)
    d = seq(range(9), "d")
    bm.allocate(d)
    assert d.num_cached_tokens == 0


def test_prefix_caching_off_shares_nothing():
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    a = seq(range(10), "a")
    bm.allocate(a)
    compute_all(bm, a)
    b = seq(range(10), "b")
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and not set(a.block_table) & set(b.block_table)
