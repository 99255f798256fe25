"""Time variants of our kernel against cuDNN on a few cells, one JSON line per cell (docs/benchmarks/kernel-notes.md).

Each variant runs in its own process because the switches are read when the kernel is launched and the
autotuner caches its choice per process. Usage on the GPU, from the repository root: PYTHONPATH=. python3 scripts/kernel_explore.py
"""

import json
import os
import subprocess
import sys

VARIANTS = {
    "base": {},
    "tma": {"RUVON_FLASH_TMA": "1"},
}

if len(sys.argv) > 1 and sys.argv[1] == "--child":
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
