"""Time variants of our kernels, one JSON line per measurement (docs/benchmarks/kernel-notes.md).

  PYTHONPATH=. python3 scripts/kernel_explore.py [base] [tma]   # prefill kernel variants vs cuDNN
  PYTHONPATH=. python3 scripts/kernel_explore.py --paged        # decode: tiles and split counts, every cell
  PYTHONPATH=. python3 scripts/kernel_explore.py --paged-ab     # decode: heuristic splits, tiles, grid order vs FA2
  PYTHONPATH=. python3 scripts/kernel_explore.py --paged-prefill   # prefill over pages: tiles
  PYTHONPATH=. python3 scripts/kernel_explore.py --paged-p3     # address-work variants, every cell, both kernels
  PYTHONPATH=. python3 scripts/kernel_explore.py --paged-p4 OLD.py  # this kernel against an earlier copy
                                                                 # (git show REV:ruvoninference/kernels/paged_attention.py)
  PYTHONPATH=. python3 scripts/kernel_explore.py --shapes       # decode on untuned head shapes, ragged: splits x tiles
  PYTHONPATH=. python3 scripts/kernel_explore.py --prefill-short   # batch-1 prompts of 256-2k tokens vs FA2, SDPA
  PYTHONPATH=. python3 scripts/kernel_explore.py --kernels-ran  # the attention kernels `flash` reports, per backend
  PYTHONPATH=. python3 scripts/kernel_explore.py --fit-fixed-cost SWEEP.json  # per shape: fixed µs + streaming GB/s

Prefill variants each run in their own process because the switches are read when the kernel is launched
and the autotuner caches its choice per process. The paged sweep times, on a few decode cells, every tile
of `PAGED_TILES` at the heuristic's split count, and every split count at the default tile, each captured
in a CUDA graph; the heuristic's own choice is printed beside them.
"""

import json
import os
import subprocess
import sys

VARIANTS = {
    "base": {},
    "tma": {"RUVON_FLASH_TMA": "1"},
}
PAGED_TILES = [(64, 4, 2), (64, 4, 3), (128, 4, 2)]  # (BLOCK_N, warps, stages) for decode
PAGED_SPLITS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
PREFILL_TILES = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3),
                 (64, 64, 4, 4), (128, 64, 8, 4)]  # (M, N, warps, stages)
# Decode variants made by editing the kernel's source (so the module itself carries no switches).
GRID_KV_HEAD_FIRST = [  # consecutive programs = the KV heads of one (sequence, split): neighbouring bytes
    ("    batch = tl.program_id(0)\n    kv_head = tl.program_id(1)\n",
     "    kv_head = tl.program_id(0)\n    batch = tl.program_id(1)\n"),
    ("part_row = (batch * tl.num_programs(1) * QUERIES_PER_KV", "part_row = (batch * tl.num_programs(0) * QUERIES_PER_KV"),
    ("_paged_decode_split[(batch, heads_kv, splits)]", "_paged_decode_split[(heads_kv, batch, splits)]"),
]


# Per-iteration address work of the paged loop (version p3 candidates).
PAGE_POINTER = [(  # pages of at least a tile: a scalar page pointer plus 32-bit row offsets, no 64-bit vectors
    """            rows = pages * stride_kb + (first + offs_n) * stride_kt
        else:
            rows = pages * stride_kb + (cols % PAGE_SIZE) * stride_kt
        # K comes in transposed, [d, BLOCK_N], so Q K^T is a plain [M, d] x [d, BLOCK_N] product.
        k_ptrs = k_cache + rows[None, :] + offs_d[:, None] * stride_kd
        v_ptrs = v_cache + rows[:, None] + offs_d[None, :] * stride_kd
""",
    """            in_page = (first + offs_n) * stride_kt
            k_ptrs = (k_cache + pages * stride_kb) + in_page[None, :] + offs_d[:, None] * stride_kd
            v_ptrs = (v_cache + pages * stride_kb) + in_page[:, None] + offs_d[None, :] * stride_kd
        else:
            rows = pages * stride_kb + (cols % PAGE_SIZE) * stride_kt
            k_ptrs = k_cache + rows[None, :] + offs_d[:, None] * stride_kd
            v_ptrs = v_cache + rows[:, None] + offs_d[None, :] * stride_kd
""")]
PAGES_PER_TILE = [  # small pages: load the tile's BLOCK_N / PAGE_SIZE entries, not one per key
    ("""        cols = start_n + offs_n
        return tl.load(table_row + cols // PAGE_SIZE, mask=cols < seq_len, other=0)""",
     """        ids = start_n // PAGE_SIZE + tl.arange(0, BLOCK_N // PAGE_SIZE)
        return tl.load(table_row + ids, mask=ids * PAGE_SIZE < seq_len, other=0)"""),
    ("""            rows = pages * stride_kb + (cols % PAGE_SIZE) * stride_kt
""",
     """            rows = tl.reshape(pages[:, None] * stride_kb + tl.arange(0, PAGE_SIZE)[None, :] * stride_kt, (BLOCK_N,))
"""),
]
VARIANTS_P3 = {"base": [], "page_pointer": PAGE_POINTER, "pages_per_tile": PAGES_PER_TILE,
               "both": PAGE_POINTER + PAGES_PER_TILE}


def variant_module(name: str, replacements: list[tuple[str, str]]):
    """paged_attention.py with `replacements` applied, imported from a temporary file (Triton reads the source)."""
    import importlib.util
    import tempfile

    from ruvoninference.kernels import paged_attention

    src = open(paged_attention.__file__).read()
    for old, new in replacements:
        assert old in src, old
        src = src.replace(old, new)
    path = os.path.join(tempfile.mkdtemp(), f"{name}.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def paged_ab() -> None:
    """Every decode cell at the heuristic's split count: tiles, and the grid order variant, beside FA2."""
    import torch

    from ruvoninference.bench.kernels import (
        DECODE_BATCHES, DECODE_HEADS, DECODE_KV_LENS, _graph_time_us, decode_cells, shuffled_tables)
    from ruvoninference.kernels import paged_attention as base

    from flash_attn import flash_attn_with_kvcache

    kv_first = variant_module("paged_kv_first", GRID_KV_HEAD_FIRST)
    for hq, hkv, d, batch, kv_len in decode_cells(DECODE_BATCHES, DECODE_KV_LENS, DECODE_HEADS):
        cell = f"{hq}/{hkv}x{d} b={batch} kv={kv_len}"
        pool_k, pool_v, q, lens, kv_bytes = decode_cell_inputs(hq, hkv, d, batch, kv_len)
        tables = {size: shuffled_tables(batch, kv_len, size, "cuda") for size in (16, 256)}
        out = torch.empty_like(q)
        k, v = pool_k.view(-1, 256, hkv, d), pool_v.view(-1, 256, hkv, d)
        runs = {"fa2": lambda: flash_attn_with_kvcache(q.unsqueeze(1), k, v, cache_seqlens=lens, block_table=tables[256])}
        for tname, t in (("64x4x2", (64, 4, 2)), ("64x4x3", (64, 4, 3))):
            for mname, mod in (("base", base), ("kv_first", kv_first)):
                runs[f"ours256_{mname}_{tname}"] = (lambda mod=mod, t=t: mod.paged_decode_attention(
                    q, k, v, tables[256], lens, out=out, tile=mod.Tile(*t)))
        k16, v16 = pool_k.view(-1, 16, hkv, d), pool_v.view(-1, 16, hkv, d)
        runs["ours16_base_64x4x2"] = lambda: base.paged_decode_attention(q, k16, v16, tables[16], lens, out=out)
        for name, fn in runs.items():
            us = _graph_time_us(fn, rep=30)
            print(json.dumps({"cell": cell, "run": name, "us": round(us, 2), "gbps": round(kv_bytes / us / 1e3),
                              "splits": base.choose_num_splits(batch, hkv, kv_len, q.device, d)}), flush=True)
        del pool_k, pool_v, runs
        torch.cuda.empty_cache()


def decode_cell_with_fa2(hq: int, hkv: int, d: int, batch: int, kv_len: int):
    """One decode cell's name, inputs (decode_cell_inputs), an output buffer, shuffled tables for pages of 16 and
    256, and FlashAttention-2 on the 256-token pages as a callable."""
    import torch

    from ruvoninference.bench.kernels import shuffled_tables

    from flash_attn import flash_attn_with_kvcache

    pool_k, pool_v, q, lens, kv_bytes = decode_cell_inputs(hq, hkv, d, batch, kv_len)
    tables = {size: shuffled_tables(batch, kv_len, size, "cuda") for size in (16, 256)}
    k256, v256 = pool_k.view(-1, 256, hkv, d), pool_v.view(-1, 256, hkv, d)
    fa2 = lambda: flash_attn_with_kvcache(q.unsqueeze(1), k256, v256, cache_seqlens=lens,  # noqa: E731
                                          block_table=tables[256])
    return (f"{hq}/{hkv}x{d} b={batch} kv={kv_len}", pool_k, pool_v, q, lens, kv_bytes, torch.empty_like(q), tables,
            fa2)


def decode_cell_inputs(hq: int, hkv: int, d: int, batch: int, kv_len: int):
    """Random bf16 K/V pools of batch x kv_len tokens, one query per sequence, full lengths, the K+V bytes."""
    import torch

    pool_k = torch.randn(batch * kv_len, hkv, d, device="cuda", dtype=torch.bfloat16)
    pool_v = torch.randn_like(pool_k)
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((batch,), kv_len, dtype=torch.int32, device="cuda")
    return pool_k, pool_v, q, lens, pool_k.numel() * 2 * 2


def paged_sweep() -> None:
    """Every decode cell of the benchmark: FA2 once, ours at each tile x split count x page size."""
    import torch

    from ruvoninference.bench.kernels import (
        DECODE_BATCHES, DECODE_HEADS, DECODE_KV_LENS, _graph_time_us, decode_cells, shuffled_tables)
    from ruvoninference.kernels import paged_attention as pa
    from ruvoninference.kernels.paged_attention import Tile, choose_num_splits, paged_decode_attention

    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        flash_attn_with_kvcache = None
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for hq, hkv, d, batch, kv_len in decode_cells(DECODE_BATCHES, DECODE_KV_LENS, DECODE_HEADS):
        cell = f"{hq}/{hkv}x{d} b={batch} kv={kv_len}"
        pool_k, pool_v, q, lens, kv_bytes = decode_cell_inputs(hq, hkv, d, batch, kv_len)
        chosen = choose_num_splits(batch, hkv, kv_len, q.device, d)
        tables = {size: shuffled_tables(batch, kv_len, size, "cuda") for size in (16, 256)}
        if flash_attn_with_kvcache is not None:
            k, v = pool_k.view(-1, 256, hkv, d), pool_v.view(-1, 256, hkv, d)
            us = _graph_time_us(lambda: flash_attn_with_kvcache(q.unsqueeze(1), k, v, cache_seqlens=lens,
                                                                block_table=tables[256]))
            print(json.dumps({"cell": cell, "provider": "fa2", "us": round(us, 2)}), flush=True)
        splits = [s for s in PAGED_SPLITS if batch * hkv * s <= 16 * sms and kv_len // s >= 64]
        for size in (16, 256):
            k, v = pool_k.view(-1, size, hkv, d), pool_v.view(-1, size, hkv, d)
            out = torch.empty_like(q)
            for t in PAGED_TILES if size == 256 else PAGED_TILES[::2]:
                tile = Tile(*t)
                for s in splits:
                    try:
                        us = _graph_time_us(lambda: paged_decode_attention(
                            q, k, v, tables[size], lens, tile=tile, num_splits=s, out=out), rep=20)
                        status = "ok"
                    except Exception as exc:  # a tile that does not compile is a result too
                        us, status = None, f"{type(exc).__name__}: {str(exc)[:100]}"
                    print(json.dumps({"cell": cell, "provider": f"ours{size}", "tile": list(t), "splits": s,
                                      "heuristic_splits": chosen, "us": us and round(us, 2),
                                      "gbps": us and round(kv_bytes / us / 1e3), "status": status}), flush=True)
        # What the second launch costs: the heuristic's call with the merge kernel skipped (wrong output).
        if chosen > 1:
            real = pa._paged_decode_merge
            pa._paged_decode_merge = _NoLaunch()
            k, v = pool_k.view(-1, 256, hkv, d), pool_v.view(-1, 256, hkv, d)
            us = _graph_time_us(lambda: paged_decode_attention(q, k, v, tables[256], lens, out=out), rep=20)
            pa._paged_decode_merge = real
            print(json.dumps({"cell": cell, "provider": "ours256_split_kernel_only", "splits": chosen,
                              "us": round(us, 2)}), flush=True)
        del pool_k, pool_v
        torch.cuda.empty_cache()


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def paged_p3() -> None:
    """VARIANTS_P3 side by side: every decode cell (pages of 16 and 256) and every prefill cell, with FA2 and
    the contiguous kernel as the references, each variant at the default tile and split count."""
    import torch
    import triton.testing

    from ruvoninference.bench.kernels import (
        DECODE_BATCHES, DECODE_HEADS, DECODE_KV_LENS, PREFILL_SEQ_LENS, decode_cells,
        shuffled_tables)
    from ruvoninference.kernels.flash_attention import flash_attention_triton

    mods = {name: variant_module(f"p3_{name}", reps) for name, reps in VARIANTS_P3.items()}
    for hq, hkv, d in DECODE_HEADS:
        for n in PREFILL_SEQ_LENS:
            batch, q, pool_k, pool_v, cu, lens, (qc, kc, vc) = prefill_cell_inputs(hq, hkv, d, n)
            cell = f"{hq}/{hkv}x{d} n={n} b={batch}"
            runs = {"contiguous": lambda: flash_attention_triton(qc, kc, vc, causal=True)}
            for size in (16, 256):
                t = shuffled_tables(batch, n, size, "cuda")
                k, v = pool_k.view(-1, size, hkv, d), pool_v.view(-1, size, hkv, d)
                for name, mod in mods.items():
                    runs[f"paged{size}_{name}"] = (lambda mod=mod, k=k, v=v, t=t:
                                                   mod.paged_prefill_attention(q, k, v, cu, lens, t))
            for name, fn in runs.items():
                ms = triton.testing.do_bench(fn, return_mode="median")
                print(json.dumps({"part": "prefill", "cell": cell, "run": name, "ms": round(ms, 4)}), flush=True)
    for hq, hkv, d, batch, kv_len in decode_cells(DECODE_BATCHES, DECODE_KV_LENS, DECODE_HEADS):
        cell, pool_k, pool_v, q, lens, kv_bytes, out, tables, fa2 = decode_cell_with_fa2(hq, hkv, d, batch, kv_len)
        runs = {"fa2": fa2}
        for size in (16, 256):
            k, v = pool_k.view(-1, size, hkv, d), pool_v.view(-1, size, hkv, d)
            for name, mod in mods.items():
                runs[f"ours{size}_{name}"] = (lambda mod=mod, k=k, v=v, t=tables[size]:
                                              mod.paged_decode_attention(q, k, v, t, lens, out=out))
        for name, fn in runs.items():
            us = _graph_time_us(fn, rep=30)
            print(json.dumps({"part": "decode", "cell": cell, "run": name, "us": round(us, 2),
                              "gbps": round(kv_bytes / us / 1e3)}), flush=True)
        del pool_k, pool_v, runs
        torch.cuda.empty_cache()


def prefill_cell_inputs(hq: int, hkv: int, d: int, n: int):
    """Fresh prompts of n tokens filling TOKENS_PER_BATCH: packed q and K/V pools, cu_seqlens, lengths, and
    the same numbers as [batch, heads, n, d] tensors for the contiguous kernel."""
    import torch

    from ruvoninference.bench.kernels import TOKENS_PER_BATCH

    batch = TOKENS_PER_BATCH // n
    q = torch.randn(batch * n, hq, d, device="cuda", dtype=torch.bfloat16)
    pool_k = torch.randn(batch * n, hkv, d, device="cuda", dtype=torch.bfloat16)
    pool_v = torch.randn_like(pool_k)
    cu = torch.arange(0, batch * n + 1, n, dtype=torch.int32, device="cuda")
    lens = torch.full((batch,), n, dtype=torch.int32, device="cuda")
    contiguous = (q.view(batch, n, hq, d).transpose(1, 2),
                  pool_k.view(batch, n, hkv, d).transpose(1, 2).contiguous(),
                  pool_v.view(batch, n, hkv, d).transpose(1, 2).contiguous())
    return batch, q, pool_k, pool_v, cu, lens, contiguous


def paged_prefill_sweep() -> None:
    """The prefill cells: each tile over pages of 16 and 256, and the contiguous kernel (autotuned)."""
    import torch
    import triton.testing

    from ruvoninference.bench.kernels import DECODE_HEADS, PREFILL_SEQ_LENS, shuffled_tables
    from ruvoninference.kernels.flash_attention import _flash_attention_forward, flash_attention_triton
    from ruvoninference.kernels.paged_attention import Tile, paged_prefill_attention

    for hq, hkv, d in DECODE_HEADS:
        for n in PREFILL_SEQ_LENS:
            batch, q, pool_k, pool_v, cu, lens, (qc, kc, vc) = prefill_cell_inputs(hq, hkv, d, n)
            cell = f"{hq}/{hkv}x{d} n={n} b={batch}"
            ms = triton.testing.do_bench(lambda: flash_attention_triton(qc, kc, vc, causal=True), return_mode="median")
            best = getattr(_flash_attention_forward, "best_config", None)
            print(json.dumps({"cell": cell, "provider": "contiguous", "ms": round(ms, 4), "tile": str(best)}), flush=True)
            for size in (16, 256):  # the p1 run also timed an in-order table: no difference from shuffled
                t = shuffled_tables(batch, n, size, "cuda")
                k, v = pool_k.view(-1, size, hkv, d), pool_v.view(-1, size, hkv, d)
                for bm, bn, w, st in PREFILL_TILES:
                    tile = Tile(block_m=bm, block_n=bn, num_warps=w, num_stages=st)
                    try:
                        ms = triton.testing.do_bench(
                            lambda: paged_prefill_attention(q, k, v, cu, lens, t, tile=tile), return_mode="median")
                        status = "ok"
                    except Exception as exc:
                        ms, status = None, f"{type(exc).__name__}: {str(exc)[:100]}"
                    print(json.dumps({"cell": cell, "provider": f"paged{size}_shuffled", "tile": [bm, bn, w, st],
                                      "ms": ms and round(ms, 4), "status": status}), flush=True)
            torch.cuda.empty_cache()


def graph_times(runs: dict, rep: int):
    """(key, (µs or None, status)) for each callable of `runs`, timed by CUDA-graph replays; a run that fails
    (a tile that does not compile) is a result too."""
    from ruvoninference.bench.kernels import _graph_time_us

    for key, fn in runs.items():
        try:
            yield key, (_graph_time_us(fn, rep=rep), "ok")
        except Exception as exc:
            yield key, (None, f"{type(exc).__name__}: {str(exc)[:100]}")


def module_from_file(name: str, path: str):
    """A kernel module imported from a file of its own (an earlier version, kept outside the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Decode cells that missed 1.2x FA2 with a ceiling that allows it (kernel-notes.md, p3): splits x tiles.
P4_DECODE_SWEEP = [(32, 8, 128, 1, 65536), (32, 8, 128, 1, 131072), (32, 8, 128, 8, 4096), (9, 3, 64, 8, 65536)]
P4_DECODE_TILES = [(64, 4, 2), (64, 4, 3), (128, 4, 2), (32, 4, 2), (64, 8, 2)]


def paged_p4(old_path: str) -> None:
    """Version p4 (uniform loop bounds, 32-bit offsets) against the earlier kernel in `old_path`, side by side:
    prefill at every tile of PREFILL_TILES (the old kernel at its own tile, the contiguous kernel autotuned),
    decode at every cell (FA2 beside), and a split x tile sweep of the new decode at P4_DECODE_SWEEP."""
    import torch
    import triton.testing

    from ruvoninference.bench.kernels import (
        DECODE_BATCHES, DECODE_HEADS, DECODE_KV_LENS, PREFILL_SEQ_LENS, decode_cells,
        shuffled_tables)
    from ruvoninference.kernels import paged_attention as new
    from ruvoninference.kernels.flash_attention import flash_attention_triton

    old = module_from_file("paged_attention_old", old_path)
    for hq, hkv, d in DECODE_HEADS:
        for n in PREFILL_SEQ_LENS:
            batch, q, pool_k, pool_v, cu, lens, (qc, kc, vc) = prefill_cell_inputs(hq, hkv, d, n)
            cell = f"{hq}/{hkv}x{d} n={n} b={batch}"
            runs = {("contiguous", None): lambda: flash_attention_triton(qc, kc, vc, causal=True)}
            for size in (16, 256):
                t = shuffled_tables(batch, n, size, "cuda")
                k, v = pool_k.view(-1, size, hkv, d), pool_v.view(-1, size, hkv, d)
                runs[(f"old{size}", None)] = lambda k=k, v=v, t=t: old.paged_prefill_attention(q, k, v, cu, lens, t)
                for bm, bn, w, st in PREFILL_TILES:
                    tile = new.Tile(block_m=bm, block_n=bn, num_warps=w, num_stages=st)
                    runs[(f"new{size}", (bm, bn, w, st))] = (
                        lambda k=k, v=v, t=t, tile=tile: new.paged_prefill_attention(q, k, v, cu, lens, t, tile=tile))
            for (name, tile), fn in runs.items():
                try:
                    ms, status = triton.testing.do_bench(fn, return_mode="median"), "ok"
                except Exception as exc:
                    ms, status = None, f"{type(exc).__name__}: {str(exc)[:100]}"
                print(json.dumps({"part": "prefill", "cell": cell, "run": name, "tile": tile,
                                  "ms": ms and round(ms, 4), "status": status}), flush=True)
            torch.cuda.empty_cache()
    sweep = {c: None for c in P4_DECODE_SWEEP}
    for hq, hkv, d, batch, kv_len in decode_cells(DECODE_BATCHES, DECODE_KV_LENS, DECODE_HEADS):
        cell, pool_k, pool_v, q, lens, kv_bytes, out, tables, fa2 = decode_cell_with_fa2(hq, hkv, d, batch, kv_len)
        k256, v256 = pool_k.view(-1, 256, hkv, d), pool_v.view(-1, 256, hkv, d)
        runs = {("fa2", None, None): fa2}
        for size in (16, 256):
            k, v = pool_k.view(-1, size, hkv, d), pool_v.view(-1, size, hkv, d)
            for name, mod in (("old", old), ("new", new)):
                runs[(f"{name}{size}", None, None)] = (lambda mod=mod, k=k, v=v, t=tables[size]:
                                                      mod.paged_decode_attention(q, k, v, t, lens, out=out))
        if (hq, hkv, d, batch, kv_len) in sweep:
            chosen = new.choose_num_splits(batch, hkv, kv_len, q.device, d)
            for s in sorted({max(1, chosen // 2), chosen, chosen * 3 // 2, chosen * 2, chosen * 3}):
                for t in P4_DECODE_TILES:
                    runs[("new256", t, s)] = (lambda t=t, s=s: new.paged_decode_attention(
                        q, k256, v256, tables[256], lens, out=out, num_splits=s, tile=new.Tile(*t)))
        for (name, tile, splits), (us, status) in graph_times(runs, rep=30):
            print(json.dumps({"part": "decode", "cell": cell, "run": name, "tile": tile, "splits": splits,
                              "us": us and round(us, 2), "gbps": us and round(kv_bytes / us / 1e3),
                              "status": status}), flush=True)
        del pool_k, pool_v, runs
        torch.cuda.empty_cache()


# Decode cells on head shapes the p4 rule was not tuned on (issue 19), ragged lengths (kv/2..kv), pages of 256.
SHAPE_CELLS = [(28, 4, 128, 4, 32768), (28, 4, 128, 32, 8192), (12, 2, 64, 4, 32768), (12, 2, 64, 32, 8192),
               (12, 2, 64, 128, 2048), (28, 4, 128, 1, 131072), (7, 1, 128, 8, 16384), (40, 8, 128, 8, 16384),
               (16, 8, 128, 4, 32768), (32, 8, 128, 8, 16384), (12, 2, 64, 1, 131072)]
SHAPE_TILES = [(64, 4, 2), (64, 4, 3), (128, 4, 2)]


def shapes_sweep() -> None:
    """FA2 and ours at SHAPE_CELLS: every split count around the rule's at the default tile, every tile at the
    rule's count and twice it, ragged and (for FA2 and the rule) full lengths, and the split kernel alone."""
    import torch

    from ruvoninference.bench.kernels import _graph_time_us, ragged_lengths
    from ruvoninference.kernels import paged_attention as pa

    for hq, hkv, d, batch, kv_len in SHAPE_CELLS:
        cell, pool_k, pool_v, q, full, _, out, tables, fa2_full = decode_cell_with_fa2(hq, hkv, d, batch, kv_len)
        from flash_attn import flash_attn_with_kvcache

        lens = ragged_lengths(batch, kv_len, "cuda")
        kv_bytes = int(lens.sum()) * hkv * d * 2 * 2
        k, v = pool_k.view(-1, 256, hkv, d), pool_v.view(-1, 256, hkv, d)
        chosen = pa.choose_num_splits(batch, hkv, kv_len, q.device, d)
        runs = {("fa2", None, None): lambda: flash_attn_with_kvcache(q.unsqueeze(1), k, v, cache_seqlens=lens,
                                                                      block_table=tables[256]),
                ("fa2_full", None, None): fa2_full,
                ("rule", None, chosen): lambda: pa.paged_decode_attention(q, k, v, tables[256], lens, out=out),
                ("rule_full", None, chosen): lambda: pa.paged_decode_attention(q, k, v, tables[256], full, out=out)}
        for s in sorted({max(1, chosen // 4), max(1, chosen // 2), chosen, 2 * chosen, 4 * chosen, 8 * chosen}):
            if s <= pa.MAX_SPLITS and kv_len // s >= 32:
                runs[("splits", (64, 4, 2), s)] = (lambda s=s: pa.paged_decode_attention(
                    q, k, v, tables[256], lens, out=out, num_splits=s, tile=pa.Tile(64, 4, 2)))
        for t in SHAPE_TILES:
            for s in sorted({chosen, min(pa.MAX_SPLITS, 2 * chosen)}):
                runs[("tile", t, s)] = (lambda t=t, s=s: pa.paged_decode_attention(
                    q, k, v, tables[256], lens, out=out, num_splits=s, tile=pa.Tile(*t)))
        for (name, tile, splits), (us, status) in graph_times(runs, rep=25):
            nbytes = pool_k.numel() * 4 if name.endswith("_full") else kv_bytes
            print(json.dumps({"part": "shapes", "cell": cell, "run": name, "tile": tile, "splits": splits,
                              "rule_splits": chosen, "us": us and round(us, 2),
                              "gbps": us and round(nbytes / us / 1e3), "status": status}), flush=True)
        if chosen > 1:  # the split kernel alone (merge skipped: wrong output, timing only)
            real, pa._paged_decode_merge = pa._paged_decode_merge, _NoLaunch()
            us = _graph_time_us(lambda: pa.paged_decode_attention(q, k, v, tables[256], lens, out=out), rep=25)
            pa._paged_decode_merge = real
            print(json.dumps({"part": "shapes", "cell": cell, "run": "rule_split_kernel_only", "splits": chosen,
                              "us": round(us, 2)}), flush=True)
        del pool_k, pool_v, runs
        torch.cuda.empty_cache()


# The embedded models' attention shapes (heads_q, heads_kv, head_dim): gpt2, smollm2-135m, qwen3-0.6b.
SHORT_PREFILL_HEADS = [(12, 12, 64), (9, 3, 64), (16, 8, 128)]
SHORT_PREFILL_LENS = [256, 512, 1024, 2048]
SHORT_PREFILL_TILES = [(32, 64, 4, 3), (64, 32, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3),
                       (128, 128, 8, 3)]


def prefill_short() -> None:
    """Batch-1 prompts: FA2 (dense and varlen), SDPA, our contiguous kernel (autotuned, every tile) and our
    paged prefill (every tile, pages of 256), each timed in a CUDA graph (the kernels) and by do_bench (eager
    launches, as a model calls it), plus each provider's host time per launch."""
    import time

    import torch
    import triton.testing

    from flash_attn import flash_attn_func, flash_attn_varlen_func

    from ruvoninference.bench.kernels import _graph_time_us, shuffled_tables
    from ruvoninference.kernels.flash_attention import _flash_attention_forward, flash_attention_triton
    from ruvoninference.kernels.paged_attention import Tile, paged_prefill_attention

    for hq, hkv, d in SHORT_PREFILL_HEADS:
        for n in SHORT_PREFILL_LENS:
            cell = f"{hq}/{hkv}x{d} n={n}"
            q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(n, hkv, d, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
            lens = torch.tensor([n], dtype=torch.int32, device="cuda")
            qc, kc, vc = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))  # [1, h, n, d] views
            runs = {
                "fa2": lambda: flash_attn_func(q[None], k[None], v[None], causal=True),
                "fa2_varlen": lambda: flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True),
                "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=True,
                                                                                 enable_gqa=True),
                "ours_contiguous": lambda: flash_attention_triton(qc, kc, vc, causal=True),
            }
            table = shuffled_tables(1, n, 256, "cuda")
            pk, pv = k.view(-1, 256, hkv, d), v.view(-1, 256, hkv, d)
            for t in SHORT_PREFILL_TILES:
                tile = Tile(block_m=t[0], block_n=t[1], num_warps=t[2], num_stages=t[3])
                runs[f"ours_contiguous_{t}"] = (lambda tile=tile: flash_attention_triton(
                    qc, kc, vc, causal=True, config=triton.Config({"BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n},
                                                                  num_warps=tile.num_warps, num_stages=tile.num_stages)))
                runs[f"ours_paged256_{t}"] = (lambda tile=tile: paged_prefill_attention(
                    q, pk, pv, cu, lens, table, tile=tile))
            runs["ours_paged256_rule"] = lambda: paged_prefill_attention(q, pk, pv, cu, lens, table)
            for name, fn in runs.items():
                try:
                    fn()
                    torch.cuda.synchronize()
                    graph_us = _graph_time_us(fn, rep=20)
                    eager_us = triton.testing.do_bench(fn, rep=20, return_mode="median") * 1e3
                    t0 = time.perf_counter()
                    for _ in range(50):
                        fn()
                    host_us = (time.perf_counter() - t0) / 50 * 1e6
                    torch.cuda.synchronize()
                    status = "ok"
                except Exception as exc:
                    graph_us = eager_us = host_us = None
                    status = f"{type(exc).__name__}: {str(exc)[:100]}"
                extra = {"autotuned": str(getattr(_flash_attention_forward, "best_config", None))} \
                    if name == "ours_contiguous" else {}
                print(json.dumps({"part": "prefill_short", "cell": cell, "run": name,
                                  "graph_us": graph_us and round(graph_us, 2), "eager_us": eager_us and round(eager_us, 2),
                                  "host_us": host_us and round(host_us, 1), "status": status, **extra}), flush=True)


def fixed_cost_fit(path: str) -> None:
    """Per head shape of a `kernel paged --cell` run: a least-squares line time = fixed + bytes / rate over its
    cells (batch 1 × 1k left out: it is all fixed cost), for ours at pages of 256. Prints fixed µs and GB/s."""
    import numpy as np

    with open(path) as f:
        data = json.load(f)
    cells: dict[tuple, list] = {}
    for r in data["decode"]:
        if r["provider"] == "triton_paged_256" and r["us"] and not (r["batch"] == 1 and r["kv_len"] == 1024):
            cells.setdefault((r["heads_q"], r["heads_kv"], r["head_dim"]), []).append((r["gbps"] * r["us"] / 1e3, r["us"]))
    for (hq, hkv, d), pts in sorted(cells.items()):
        mb, us = np.array(pts).T
        fixed, per_mb = np.linalg.lstsq(np.stack([np.ones_like(mb), mb], 1), us, rcond=None)[0]
        print(json.dumps({"heads": f"{hq}/{hkv}x{d}", "cells": len(pts), "fixed_us": round(float(fixed), 1),
                          "gbps": round(1e3 / float(per_mb)), "mb": [round(float(mb.min())), round(float(mb.max()))]}))


def kernels_ran() -> None:
    """What `flash` records as the attention kernels, per backend, on a small random Llama (Qwen3-0.6B's
    16/8 x 128 heads, 2 layers; no tokenizer needed): bench.prefill.attention_ops on 256 tokens."""
    import types

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ruvoninference.attention import triton_backend
    from ruvoninference.bench.prefill import attention_ops

    triton_backend.register()
    for impl in ("triton", "eager", "sdpa", "flash_attention_2"):
        config = LlamaConfig(hidden_size=2048, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=16,
                             num_key_value_heads=8, head_dim=128, vocab_size=1000, attn_implementation=impl)
        try:
            model = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
            loaded = types.SimpleNamespace(model=model, device=torch.device("cuda"))
            ids = list(range(1, 257))
            attention_ops(loaded, ids)  # warm (autotune, compile) outside the profiled pass
            ops, kernels = attention_ops(loaded, ids)
        except Exception as exc:
            ops, kernels = f"error: {type(exc).__name__}: {str(exc)[:200]}", None
        print(json.dumps({"part": "kernels_ran", "implementation": impl, "attention_ops": ops,
                          "attention_kernels": kernels}), flush=True)


def flash_profile(model: str) -> None:
    """What `flash --show-memory` measures, per backend (transformers' model, batch 1): prefill time and the
    attention kernels the profiler saw, at a few short lengths."""
    from ruvoninference.bench.prefill import AttentionBenchmark

    bench = AttentionBenchmark(model, "cuda", "bfloat16", repeats=5)
    for impl in ("sdpa", "flash_attention_2", "triton", "eager"):
        loaded = bench.load(impl)
        for n in (256, 1024, 2048):
            if n > loaded.context_length:
                continue
            row = bench.sequence_length_scaling(impl, "Once upon a time", [n], loaded=loaded)[0]
            print(json.dumps({"part": "flash_profile", "model": model, **row.to_dict()}), flush=True)
        del loaded


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--paged":
        paged_sweep()
    elif len(sys.argv) > 1 and sys.argv[1] == "--paged-ab":
        paged_ab()
    elif len(sys.argv) > 1 and sys.argv[1] == "--paged-p3":
        paged_p3()
    elif len(sys.argv) > 1 and sys.argv[1] == "--paged-prefill":
        paged_prefill_sweep()
    elif len(sys.argv) > 1 and sys.argv[1] == "--shapes":
        shapes_sweep()
    elif len(sys.argv) > 2 and sys.argv[1] == "--fit-fixed-cost":
        fixed_cost_fit(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--kernels-ran":
        kernels_ran()
    elif len(sys.argv) > 2 and sys.argv[1] == "--flash-profile":
        flash_profile(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--prefill-short":
        prefill_short()
    elif len(sys.argv) > 2 and sys.argv[1] == "--paged-p4":
        paged_p4(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        from ruvoninference.bench.kernels import run_benchmark

        report = run_benchmark([4096, 16384], [64, 128], providers=["sdpa_cudnn", "triton"])
        cells = {}
        for r in report.rows:
            cells.setdefault((r.head_dim, r.causal, r.seq_len), {})[r.provider] = r
        for (d, c, n), cell in cells.items():
            ours, cudnn = cell["triton"], cell["sdpa_cudnn"]
            print(json.dumps({"d": d, "causal": c, "n": n, "ours": round(ours.tflops or 0), "cudnn": round(cudnn.tflops or 0),
                              "ratio": round((ours.tflops or 0) / cudnn.tflops, 3), "err": ours.rel_err_vs_fp64_sample,
                              "tile": ours.config, "status": ours.status}))
    else:
        chosen = sys.argv[1:] or list(VARIANTS)  # variant names, default all
        for name, env in ((n, VARIANTS[n]) for n in chosen):
            print(f"== {name}", flush=True)
            subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, **env}, check=False)
