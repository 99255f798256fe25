"""Did Triton pipeline the attention loop? Compile our kernels for Hopper (sm_90) on any machine and look.

No GPU needed: `triton.compile` lowers a kernel for a named target, and the TTGIR it produces shows what the
software pipeliner did with each loop. Two things to read in it:

- `ttg.async_copy_global_to_local`: a load turned into an asynchronous copy into shared memory;
- `ttg.async_wait {num = N}` at the top of the loop: wait until at most N groups of copies are still in
  flight. K and V are one group each, so with num_stages = 3, N = 2 lets the next tile's K and V keep
  loading while this tile is multiplied (and the tile after it is issued during the iteration). N = 0
  means every copy is waited for before any math: loads and math take turns.

  uv run python scripts/pipeline_probe.py            # the paged prefill/decode and contiguous kernels
  uv run python scripts/pipeline_probe.py --before   # plus the paged prefill as it was: each tile's page
                                                     # looked up in the iteration that loads the tile

The wait counts depend on the Triton version (the device image runs 3.6; `uv pip install --target DIR
triton==3.6.0` and put DIR first on PYTHONPATH to read exactly what the GPU ran). Arguments are declared the
way the JIT specializes them on a GPU: pointers and strides divisible by 16, unit strides constant. Without
the divisibility hints the copies cannot be vectorized and nothing is pipelined at all.
"""

from __future__ import annotations

import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ruvoninference.kernels import flash_attention as fa
from ruvoninference.kernels import paged_attention as pa


def compile_for_hopper(fn, types: dict[str, str], constants: dict, num_warps: int, num_stages: int) -> str:
    """The TTGIR of `fn` for sm_90; arguments not in `types` or `constants` are 32-bit integers."""
    constants = dict(constants)
    for name in fn.arg_names:
        if name.startswith("stride_") and name.endswith("d"):
            constants[name] = 1  # the head_dim stride: the JIT turns a 1 into a constant
    signature = {a: "constexpr" if a in constants else types.get(a, "i32") for a in fn.arg_names}
    hints = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in constants and (signature[a].startswith("*") or a.startswith("stride_"))}
    source = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=hints)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 128),
                            options={"num_warps": num_warps, "num_stages": num_stages})
    return kernel.asm["ttgir"]


def loop_waits(ttgir: str) -> list[int]:
    """The `num` of each async_wait inside an scf.for body (one per pipelined loop)."""
    waits, depth = [], 0
    for line in ttgir.splitlines():
        if "scf.for" in line:
            depth += 1
        elif line.strip().startswith("scf.yield") or (depth and line.strip() == "}"):
            depth = max(0, depth - 1)
        elif depth and "ttg.async_wait" in line:
            waits.append(int(re.search(r"num = (\d+)", line).group(1)))
    return waits


PAGED = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "BlockTables": "*i32", "Out": "*bf16", "qk_scale": "fp32"}
KERNELS = {
    "paged prefill, pages of 16": (pa._paged_prefill, {**PAGED, "CuSeqlensQ": "*i32", "SeqLensK": "*i32"},
                                   dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=128, BLOCK_N=64, BLOCK_B=2, PAGE_SIZE=16,
                                        CAUSAL=True), 8, 3),
    "paged prefill, pages of 256": (pa._paged_prefill, {**PAGED, "CuSeqlensQ": "*i32", "SeqLensK": "*i32"},
                                    dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=128, BLOCK_N=64, BLOCK_B=2, PAGE_SIZE=256,
                                         CAUSAL=True), 8, 3),
    "paged decode, pages of 256": (pa._paged_decode_split,
                                   {**PAGED, "SeqLens": "*i32", "PartOut": "*fp32", "PartLse": "*fp32"},
                                   dict(QUERIES_PER_KV=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_G=16, BLOCK_N=64,
                                        PAGE_SIZE=256, MIN_SPLIT=64, DIRECT=False), 4, 2),
    "contiguous prefill": (fa._flash_attention_forward.fn,
                           {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "Mask": "*bf16",
                            "qk_scale": "fp32"},
                           dict(HEAD_DIM=128, BLOCK_D=128, CAUSAL=True, HAS_MASK=False, USE_TMA=False,
                                BLOCK_M=128, BLOCK_N=64), 8, 3),
}

# The prefill before version p2 (docs/benchmarks/kernel-notes.md): no prefetch of the table entries.
SAME_ITERATION_LOOKUP = [("PAGE_SIZE, CAUSAL, False, True,", "PAGE_SIZE, CAUSAL, False, False,"),
                         ("PAGE_SIZE, CAUSAL, True, True,", "PAGE_SIZE, CAUSAL, True, False,")]

if __name__ == "__main__":
    if "--before" in sys.argv:
        from kernel_explore import variant_module  # scripts/ is on the path when this file is run

        before = variant_module("paged_before_p2", SAME_ITERATION_LOOKUP)
        KERNELS["paged prefill, pages of 256, before p2"] = (before._paged_prefill,) + KERNELS[
            "paged prefill, pages of 256"][1:]
    print(f"triton {triton.__version__}, target sm_90")
    for label, (fn, types, constants, warps, stages) in KERNELS.items():
        ir = compile_for_hopper(fn, types, constants, warps, stages)
        print(f"{label} | num_stages={stages} | async copies: {ir.count('ttg.async_copy_global_to_local')} | "
              f"loop waits: {loop_waits(ir)}")
