"""Time variants of our kernels, one JSON line per measurement (docs/benchmarks/kernel-notes.md).

  PYTHONPATH=. python3 scripts/kernel_explore.py [base] [tma]   # prefill kernel variants vs cuDNN
  PYTHONPATH=. python3 scripts/kernel_explore.py --paged        # decode: tiles and split counts

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
PAGED_CELLS = [(32, 8, 128, 1, 16384), (32, 8, 128, 8, 4096), (32, 8, 128, 64, 4096), (32, 8, 128, 1, 131072),
               (32, 8, 128, 256, 1024), (9, 3, 64, 8, 16384)]
PAGED_TILES = [(32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 4, 2), (128, 8, 3), (16, 4, 4)]
PAGED_SPLITS = [1, 2, 4, 8, 16, 32, 64]


def paged_sweep() -> None:
    import torch

    from ruvoninference.bench.kernels import _graph_time_us, shuffled_tables
    from ruvoninference.kernels.paged_attention import Tile, choose_num_splits, decode_tile, paged_decode_attention

    for hq, hkv, d, batch, kv_len in PAGED_CELLS:
        pool_k = torch.randn(batch * kv_len, hkv, d, device="cuda", dtype=torch.bfloat16)
        pool_v = torch.randn_like(pool_k)
        q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
        lens = torch.full((batch,), kv_len, dtype=torch.int32, device="cuda")
        kv_bytes = pool_k.numel() * 2 * 2
        chosen = choose_num_splits(batch, hkv, kv_len, q.device)
        for size in (16, 256):
            k, v = pool_k.view(-1, size, hkv, d), pool_v.view(-1, size, hkv, d)
            tables = shuffled_tables(batch, kv_len, size, "cuda")
            variants = [("tile", Tile(*t), None) for t in PAGED_TILES]
            variants += [("splits", decode_tile(d), s) for s in PAGED_SPLITS]
            for kind, tile, splits in variants:
                try:
                    us = _graph_time_us(lambda: paged_decode_attention(q, k, v, tables, lens, tile=tile,
                                                                       num_splits=splits, max_seq_len=kv_len))
                    status = "ok"
                except Exception as exc:  # a tile that does not compile is a result too
                    us, status = None, f"{type(exc).__name__}: {str(exc)[:100]}"
                print(json.dumps({"cell": f"{hq}/{hkv}x{d} b={batch} kv={kv_len}", "block_size": size, "sweep": kind,
                                  "tile": tile.describe(), "splits": splits or chosen, "heuristic_splits": chosen,
                                  "us": us and round(us, 2), "gbps": us and round(kv_bytes / us / 1e3),
                                  "status": status}), flush=True)
        del pool_k, pool_v
        torch.cuda.empty_cache()


if len(sys.argv) > 1 and sys.argv[1] == "--paged":
    paged_sweep()
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
