"""The paged kernels against float64 references built by gathering each sequence's pages.

Block tables are shuffled (a sequence's pages are scattered over the cache, never in order), two sequences
share their prefix pages, lengths end mid-page, some rows are empty, and outputs are poisoned with NaN before
every call. On a CPU this runs under the Triton interpreter (fp16, tiny shapes); on a GPU the `gpu` matrix
runs every shape family compiled.
"""

import pytest
import torch

from conftest import CUDA
from ruvoninference.kernels.paged_attention import (
    MAX_SPLITS,
    MERGE_CHUNK,
    Tile,
    choose_num_splits,
    min_tokens_per_split,
    needs_wide_offsets,
    paged_decode_attention,
    paged_prefill_attention,
    reference_paged_decode,
    reference_paged_prefill,
)

DEVICE = "cuda" if CUDA else "cpu"
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 1.2e-2}
UNUSED = -1  # table entries past a sequence's pages: reading one would be out of bounds


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in the kernel's output: a row was not written"
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def paged_cache(lengths, block_size, heads_kv, head_dim, dtype, gen, shared_prefix_blocks=1):
    """Random K/V caches and shuffled block tables; sequences 0 and 1 share their first pages."""
    per_seq = [-(-n // block_size) for n in lengths]
    num_blocks = sum(per_seq) + 3  # spare pages that belong to nobody
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(int(gen.initial_seed())))
    tables = torch.full((len(lengths), max(max(per_seq), 1) + 1), UNUSED, dtype=torch.int32)
    taken = 0
    for b, n in enumerate(per_seq):
        tables[b, :n] = order[taken: taken + n]
        taken += n
    if len(lengths) > 1:
        shared = min(shared_prefix_blocks, per_seq[0], per_seq[1])
        tables[1, :shared] = tables[0, :shared]  # a prefix-cache hit: the same physical pages
    shape = (num_blocks, block_size, heads_kv, head_dim)
    k = torch.randn(shape, generator=gen, device=DEVICE, dtype=dtype)
    v = torch.randn(shape, generator=gen, device=DEVICE, dtype=dtype)
    return k, v, tables.to(DEVICE)


def check_decode(lengths, heads_q, heads_kv, head_dim, block_size, dtype=torch.float16, num_splits=None, tile=None):
    gen = torch.Generator(device=DEVICE).manual_seed(hash((tuple(lengths), heads_q, heads_kv, head_dim, block_size)) % 2**31)
    k, v, tables = paged_cache(lengths, block_size, heads_kv, head_dim, dtype, gen)
    q = torch.randn(len(lengths), heads_q, head_dim, generator=gen, device=DEVICE, dtype=dtype)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(q, k, v, tables, seq_lens, num_splits=num_splits, out=out, tile=tile)
    ref = reference_paged_decode(q, k, v, tables, seq_lens)
    err = rel_error(out, ref)
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"
    for b, n in enumerate(lengths):
        if n == 0:
            assert out[b].abs().max() == 0, "a zero-length row must output zeros"


def check_prefill(chunks, heads_q, heads_kv, head_dim, block_size, causal=True, dtype=torch.float16,
                  padding_rows=0, tile=None):
    """chunks: (new tokens n, context length L after the chunk) per sequence."""
    gen = torch.Generator(device=DEVICE).manual_seed(hash((tuple(chunks), heads_q, head_dim, block_size, causal)) % 2**31)
    lengths = [L for _, L in chunks]
    k, v, tables = paged_cache(lengths, block_size, heads_kv, head_dim, dtype, gen)
    cu = [0]
    for n, _ in chunks:
        cu.append(cu[-1] + n)
    q = torch.randn(cu[-1] + padding_rows, heads_q, head_dim, generator=gen, device=DEVICE, dtype=dtype)
    cu_q = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    seq_lens_k = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    paged_prefill_attention(q, k, v, cu_q, seq_lens_k, tables, causal=causal, out=out, tile=tile)
    ref = reference_paged_prefill(q, k, v, cu_q, seq_lens_k, tables, causal=causal)
    err = rel_error(out[: cu[-1]], ref[: cu[-1]])
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"
    if padding_rows:
        assert torch.isnan(out[cu[-1]:]).all(), "rows past cu_seqlens_q[-1] must be left untouched"


# -- decode, interpreter-sized ---------------------------------------------------------------------------

@pytest.mark.parametrize("num_splits", [None, 1, 3])
@pytest.mark.parametrize("heads_q,heads_kv", [(2, 2), (8, 2)])
def test_decode_splits_and_gqa(num_splits, heads_q, heads_kv):
    # Lengths end mid-page, one row is empty padding, one holds a single token.
    check_decode([37, 0, 70, 1], heads_q, heads_kv, 64, block_size=16, num_splits=num_splits)


@pytest.mark.parametrize("block_size", [16, 64])
def test_decode_block_sizes(block_size):
    # 16: a key tile spans several pages; 64: several key tiles per page (the interpreter's tile is 16).
    check_decode([100, 33], 4, 1, 64, block_size=block_size, num_splits=2)


@pytest.mark.parametrize("head_dim", [32, 96, 128])
def test_decode_head_dims(head_dim):
    check_decode([40, 17], 4, 2, head_dim, block_size=16, num_splits=2)


def test_decode_smollm2_shape():
    check_decode([50, 19, 3], 9, 3, 64, block_size=16, num_splits=4)  # 9 query heads over 3 KV heads


@pytest.mark.parametrize("group", [5, 6, 7])
def test_decode_and_prefill_non_power_of_two_groups_ragged(group):
    # 5, 6 or 7 query heads per KV head fill 5-7 of the 16 rows of the tensor-core tile; the spare rows must
    # stay out of the output and the partials. Ragged lengths (a serving batch), one empty row, and the rule's
    # own split count as well as a forced one.
    lengths = [45, 0, 29, 3, 61]
    for num_splits in (None, 3):
        check_decode(lengths, 2 * group, 2, 32, block_size=16, num_splits=num_splits)
    check_prefill([(6, 45), (0, 9), (17, 17)], group, 1, 32, block_size=16)


def test_small_pages_under_a_wide_key_tile():
    # A 64-key tile over 16-token pages, the path a GPU takes with pages of 16 (the interpreter's default tile
    # is 16 keys, one page): every key looks its own page up, in decode and in prefill.
    check_decode([100, 33, 0, 1], 8, 2, 64, block_size=16, num_splits=2,
                 tile=Tile(block_n=64, num_warps=4, num_stages=1))
    check_prefill([(5, 40), (21, 21), (0, 10), (1, 33), (18, 50)], 4, 2, 64, block_size=16,
                  tile=Tile(block_m=16, block_n=64, num_warps=4, num_stages=1))


def test_decode_more_splits_than_tiles():
    # 100 splits over 20 tokens: most splits are empty and must be skipped by both kernels.
    check_decode([20, 5], 2, 1, 64, block_size=16, num_splits=100)


def test_decode_merge_loops_over_more_splits_than_it_holds():
    # 69 splits of one 16-token tile each are written for the long row, more than the merge kernel holds at
    # once (MERGE_CHUNK), so it must carry its running max and sums from one chunk of splits to the next.
    # The keys of the last splits score highest, so the second chunk raises the running max and what the
    # first chunk accumulated must be rescaled.
    lengths, block_size = [1100, 70], 16
    assert MERGE_CHUNK < -(-lengths[0] // block_size)
    gen = torch.Generator(device=DEVICE).manual_seed(11)
    k, v, tables = paged_cache(lengths, block_size, 1, 32, torch.float16, gen, shared_prefix_blocks=0)
    q = torch.randn(2, 2, 32, generator=gen, device=DEVICE, dtype=torch.float16)
    late_pages = tables[0, MERGE_CHUNK + 1: -(-lengths[0] // block_size)].long()
    k[late_pages] = (q[0, 0] * 0.5).to(k.dtype)  # q . k large for query head 0, from token 1040 on
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(q, k, v, tables, seq_lens, num_splits=70, out=out)
    err = rel_error(out, reference_paged_decode(q, k, v, tables, seq_lens))
    assert err < TOLERANCE[torch.float16], f"relative error {err:.2e}"


# -- prefill, interpreter-sized --------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False])
def test_prefill_chunks_over_cached_prefixes(causal):
    # A chunk after a cached prefix, a fresh prompt, an empty chunk, one decode-like token, a chunk
    # ending mid-page.
    check_prefill([(5, 40), (21, 21), (0, 10), (1, 33), (18, 50)], 4, 2, 64, block_size=16, causal=causal)


def test_prefill_big_pages_gqa_8():
    check_prefill([(30, 70), (7, 7)], 8, 1, 64, block_size=32)


def test_prefill_head_dim_96_and_padding_rows_untouched():
    check_prefill([(9, 20), (12, 30)], 2, 2, 96, block_size=16, padding_rows=5)


def test_prefill_of_whole_prompts_matches_decode_rows():
    """The last query of a fresh prompt in prefill is the decode query at that length: same answer."""
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    k, v, tables = paged_cache([23, 40], 16, 2, 64, torch.float16, gen)
    q = torch.randn(63, 4, 64, generator=gen, device=DEVICE, dtype=torch.float16)
    cu = torch.tensor([0, 23, 63], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([23, 40], dtype=torch.int32, device=DEVICE)
    pre = paged_prefill_attention(q, k, v, cu, lens, tables)
    dec = paged_decode_attention(q[[22, 62]].contiguous(), k, v, tables, lens, num_splits=2)
    torch.testing.assert_close(pre[[22, 62]], dec, atol=2e-3, rtol=2e-3)


def far_pages_cache(block_size, heads_kv, head_dim, dtype, gen, pages=5):
    """K/V caches of `pages` pages spaced 2^29 elements apart, so the last page starts at element 2^31:
    a key there is reached only with 64-bit offsets. The memory between pages is reserved, never written
    (about 4 GiB of address space each, a few pages of it touched)."""
    spacing = 2**29
    caches = []
    for _ in range(2):
        base = torch.empty((pages - 1) * spacing + block_size * heads_kv * head_dim, dtype=dtype, device=DEVICE)
        cache = base.as_strided((pages, block_size, heads_kv, head_dim),
                                (spacing, heads_kv * head_dim, head_dim, 1))
        for p in range(pages):
            cache[p] = torch.randn(block_size, heads_kv, head_dim, generator=gen, device=DEVICE, dtype=dtype)
        caches.append(cache)
    return caches


def test_offsets_past_2_31_elements_use_64_bits():
    assert not needs_wide_offsets(torch.empty(4, 16, 2, 64))
    assert needs_wide_offsets(torch.empty(0, device="meta").as_strided((2, 16, 2, 64), (2**31, 128, 64, 1)))
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    k, v = far_pages_cache(16, 2, 32, torch.float16, gen)
    assert needs_wide_offsets(k)
    # The far page (4) is read first, last and in the middle, by decode and by prefill.
    tables = torch.tensor([[4, 0, 3, 4], [2, 4, 1, UNUSED]], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([60, 40], dtype=torch.int32, device=DEVICE)
    q = torch.randn(2, 4, 32, generator=gen, device=DEVICE, dtype=torch.float16)
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(q, k, v, tables, lens, num_splits=2, out=out)
    assert rel_error(out, reference_paged_decode(q, k, v, tables, lens)) < TOLERANCE[torch.float16]
    cu = torch.tensor([0, 20, 27], dtype=torch.int32, device=DEVICE)
    qp = torch.randn(27, 4, 32, generator=gen, device=DEVICE, dtype=torch.float16)
    out = torch.full_like(qp, float("nan"))
    paged_prefill_attention(qp, k, v, cu, lens, tables, out=out)
    assert rel_error(out, reference_paged_prefill(qp, k, v, cu, lens, tables)) < TOLERANCE[torch.float16]


# -- the contract ----------------------------------------------------------------------------------------

def test_split_count_depends_on_shapes_only():
    cpu = torch.device("cpu")  # 4 "SMs" stand in for a GPU's count off the device
    assert choose_num_splits(64, 8, 4096, cpu) == 1  # the batch alone fills the machine
    assert choose_num_splits(3, 1, 4096, cpu, head_dim=128) == 5  # 4 programs per SM x 4 SMs // 3, rounded down
    assert choose_num_splits(1, 1, 100_000, cpu, head_dim=128) == 16  # 4 programs per SM x 4 SMs
    assert choose_num_splits(1, 1, 100_000, cpu, head_dim=64) == 24  # smaller tiles: 6 per SM
    assert choose_num_splits(1, 1, 100, cpu) == 2  # no split shorter than MIN_TOKENS_PER_SPLIT
    # Splits of about 2 sqrt(length) tokens: the fixed cost of a split against its streaming time.
    assert [min_tokens_per_split(n) for n in (100, 1024, 16384, 65536)] == [64, 64, 256, 512]
    # ... and 16 tokens per query head of the group, so the fp32 partials stay under 1/8 of the K/V read.
    assert [min_tokens_per_split(1024, g) for g in (1, 4, 7, 16)] == [64, 64, 112, 256]
    assert choose_num_splits(1, 1, 1024, cpu, head_dim=128, group=7) == 10  # 1024 / 112, not 16 splits of 64
    assert choose_num_splits(1, 1, 1024, cpu, head_dim=128, group=1) == 16
    assert 1 <= choose_num_splits(1, 1, 10**9, torch.device(DEVICE)) <= MAX_SPLITS


def test_warm_up_launches_every_variant_and_writes_no_cache():
    from ruvoninference.kernels.paged_attention import prefill_tiles, sequence_block, warm_up

    assert [sequence_block(b) for b in (1, 63, 64, 127, 200)] == [64, 64, 128, 128, 256]
    gen = torch.Generator(device=DEVICE).manual_seed(2)
    k, v, _ = paged_cache([20, 20], 16, 2, 32, torch.float16, gen)
    before = k.clone(), v.clone()
    seen = []
    launches = warm_up(k, v, 4, max_num_seqs=10, decode_shapes=[(1, 2), (3, 4)],
                       progress=lambda text, i, n: seen.append((i, n)))
    assert launches == len(prefill_tiles(32)) + 2 + 7  # one sequence block (64), two decode shapes, 7 split counts
    assert seen[-1] == (launches, launches)
    assert torch.equal(k, before[0]) and torch.equal(v, before[1])


def test_kernel_names_are_the_kernels_own():
    """`flash` finds our kernels in the profiler by these names: they must be the jitted functions' names."""
    from ruvoninference.kernels import KERNEL_NAMES, flash_attention, paged_attention

    jitted = {paged_attention._paged_decode_split, paged_attention._paged_decode_merge,
              paged_attention._paged_prefill, flash_attention._flash_attention_forward.fn}
    assert {k.fn.__name__ if hasattr(k, "fn") else k.__name__ for k in jitted} == KERNEL_NAMES


def test_rejects_what_it_cannot_do():
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    k, v, tables = paged_cache([10], 16, 2, 64, torch.float16, gen)
    q = torch.randn(1, 4, 64, device=DEVICE, dtype=torch.float16)
    lens = torch.tensor([10], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="int32"):
        paged_decode_attention(q, k, v, tables, lens.long())
    with pytest.raises(ValueError, match="int32"):
        paged_decode_attention(q, k, v, tables.long(), lens)
    with pytest.raises(ValueError, match="multiple"):
        paged_decode_attention(q[:, :3], k, v, tables, lens)
    with pytest.raises(ValueError, match="float16 and bfloat16"):
        paged_decode_attention(q.float(), k.float(), v.float(), tables, lens)
    with pytest.raises(ValueError, match="power of two"):
        paged_decode_attention(q, k[:, :12], v[:, :12], tables, lens)
    with pytest.raises(ValueError, match="num_splits"):
        paged_decode_attention(q, k, v, tables, lens, num_splits=MAX_SPLITS + 1)
    cu = torch.tensor([0, 1], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="agree"):
        paged_prefill_attention(q, k, v, cu, torch.cat([lens, lens]), tables)


# -- every shape family, compiled ------------------------------------------------------------------------

GPU_LENGTHS = [1, 0, 255, 256, 257, 1000, 4097, 31]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 64, 256])
@pytest.mark.parametrize("heads_q,heads_kv", [(8, 8), (32, 8), (16, 2)])
def test_decode_matrix_on_gpu(dtype, head_dim, block_size, heads_q, heads_kv):
    for num_splits in (None, 1, 7):
        check_decode(GPU_LENGTHS, heads_q, heads_kv, head_dim, block_size, dtype=dtype, num_splits=num_splits)


# Every head shape of the benchmark's sweep (groups 1-8, powers of two or not), ragged lengths.
SWEEP_HEADS = [(7, 1), (28, 4), (12, 2), (9, 3), (40, 8), (8, 8), (16, 8), (32, 8), (16, 2), (64, 8)]
RAGGED_LENGTHS = [4097, 2100, 0, 1, 3000, 17, 2049]


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("heads_q,heads_kv", SWEEP_HEADS)
def test_sweep_shapes_decode_and_prefill_on_gpu(head_dim, block_size, heads_q, heads_kv):
    check_decode(RAGGED_LENGTHS, heads_q, heads_kv, head_dim, block_size, dtype=torch.bfloat16)
    check_decode(RAGGED_LENGTHS[:3], heads_q, heads_kv, head_dim, block_size, dtype=torch.bfloat16)
    check_prefill([(300, 2100), (1, 4097), (0, 5), (700, 700)], heads_q, heads_kv, head_dim, block_size,
                  dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [32, 96, 256])
def test_decode_other_head_dims_on_gpu(dtype, head_dim):
    check_decode(GPU_LENGTHS, 9, 3, head_dim, 16, dtype=dtype)


GPU_CHUNKS = [(1, 1), (300, 300), (0, 77), (128, 1000), (1, 4097), (513, 2000), (17, 17)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [16, 64, 256])
@pytest.mark.parametrize("heads_q,heads_kv", [(8, 8), (32, 8), (16, 2)])
@pytest.mark.parametrize("causal", [True, False])
def test_prefill_matrix_on_gpu(dtype, head_dim, block_size, heads_q, heads_kv, causal):
    check_prefill(GPU_CHUNKS, heads_q, heads_kv, head_dim, block_size, causal=causal, dtype=dtype, padding_rows=3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [32, 96, 256])
def test_prefill_other_head_dims_on_gpu(dtype, head_dim):
    check_prefill(GPU_CHUNKS, 9, 3, head_dim, 16, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("tile", [Tile(block_n=32, num_warps=4, num_stages=3), Tile(block_n=128, num_warps=8, num_stages=2),
                                  Tile(block_n=16, num_warps=2, num_stages=4)])
def test_decode_other_tiles_on_gpu(tile):
    """The benchmark's tile sweep: every tile it tries must compute the same function."""
    check_decode(GPU_LENGTHS, 32, 8, 128, 16, dtype=torch.bfloat16, tile=tile)
    check_decode(GPU_LENGTHS, 32, 8, 128, 256, dtype=torch.bfloat16, tile=tile, num_splits=5)


@pytest.mark.gpu
def test_prefill_short_chunk_tile_on_gpu():
    check_prefill([(3, 500), (16, 40), (1, 7)], 32, 8, 128, 16, dtype=torch.bfloat16)  # avg <= 16: 16-row tiles


@pytest.mark.gpu
def test_decode_replays_in_a_cuda_graph_with_new_lengths():
    """Captured once, replayed with other lengths and other pages: no host sync, no stale split count."""
    gen = torch.Generator(device=DEVICE).manual_seed(11)
    lengths = [3000, 1, 0, 517]
    k, v, tables = paged_cache([4096] * 4, 16, 8, 128, torch.bfloat16, gen)
    q = torch.randn(4, 32, 128, generator=gen, device=DEVICE, dtype=torch.bfloat16)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    out = torch.empty_like(q)
    paged_decode_attention(q, k, v, tables, seq_lens, out=out)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_decode_attention(q, k, v, tables, seq_lens, out=out)
    for new in ([4096, 2, 17, 0], [1, 1, 1, 1], [2049, 4000, 256, 3]):
        seq_lens.copy_(torch.tensor(new, dtype=torch.int32))
        tables.copy_(tables[torch.randperm(4, generator=torch.Generator().manual_seed(sum(new))).to(DEVICE)])
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        ref = reference_paged_decode(q, k, v, tables, seq_lens)
        assert rel_error(out, ref) < TOLERANCE[torch.bfloat16]


def test_prefill_loop_loads_the_next_tile_during_the_math_on_hopper():
    """Compiled for sm_90 (no GPU needed): the paged prefill loop leaves 2 copy groups (the next tile's K and
    V) outstanding, as the contiguous kernel does (looking a tile's page up in the same iteration made it
    wait for all of them), keeps its bookkeeping in uniform registers (no R2UR moves: p4's _warp_uniform),
    and issues about as many instructions per iteration as the contiguous kernel."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, str(root / "scripts" / "pipeline_probe.py"), "--before", "--sass"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    fields = {line.split(" | ")[0]: dict(f.split(": ", 1) for f in line.split(" | ")[2:])
              for line in run.stdout.splitlines() if "loop waits" in line}
    waits = {label: f["loop waits"] for label, f in fields.items()}
    assert waits["paged prefill, pages of 16"] == waits["paged prefill, pages of 256"] == "[2, 2]", waits
    assert waits["contiguous prefill"] == "[2, 2]", waits
    assert waits["paged prefill, pages of 256, before p2"] == "[0, 0]", waits

    def loops(label, key):
        return [int(x) for x in fields[label][key].strip("[]").split(",")]

    contiguous = loops("contiguous prefill", "loop instructions")[0]
    for page, allowed in ((256, 1.05), (16, 1.05)):
        label = f"paged prefill, pages of {page}"
        assert loops(label, "loop R2UR") == [0, 0], fields[label]
        assert sum(loops(label + ", before p4", "loop R2UR")) > 0, "the probe no longer sees the moves p4 removed"
        assert loops(label, "loop instructions")[0] <= allowed * contiguous, (fields[label], contiguous)
