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
  uv run python scripts/pipeline_probe.py --sass     # plus each loop's machine code: its instruction count
                                                     # and R2UR moves (version p4, kernel-notes.md)
  git show c6da663:ruvoninference/kernels/paged_attention.py > /tmp/p3.py
  uv run python scripts/pipeline_probe.py --sass --paged-from /tmp/p3.py   # an earlier version's paged kernels

With --sass the kernel is assembled (Triton's bundled ptxas) and disassembled (its cuobjdump). Two numbers
per loop body: how many instructions one iteration issues, and how many of them are R2UR, a move from a
vector register to a uniform one. A loop whose bounds the compiler cannot prove warp-uniform keeps its
counters in vector registers and moves each tensor-core descriptor across with R2UR, every iteration.

The wait counts depend on the Triton version (the device image runs 3.6; `uv pip install --target DIR
triton==3.6.0` and put DIR first on PYTHONPATH to read exactly what the GPU ran). Arguments are declared the
way the JIT specializes them on a GPU: pointers and strides divisible by 16, unit strides constant. Without
the divisibility hints the copies cannot be vectorized and nothing is pipelined at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ruvoninference.kernels import flash_attention as fa
from ruvoninference.kernels import paged_attention as pa


def compile_for_hopper(fn, types: dict[str, str], constants: dict, num_warps: int, num_stages: int):
    """`fn` compiled for sm_90 (`.asm` holds "ttgir", "ptx", "cubin"); arguments not in `types` or `constants`
    are 32-bit integers."""
    constants = {k: v for k, v in constants.items() if k in fn.arg_names}  # an older kernel may lack a switch
    for name in fn.arg_names:
        if name.startswith("stride_") and name.endswith("d"):
            constants[name] = 1  # the head_dim stride: the JIT turns a 1 into a constant
    signature = {a: "constexpr" if a in constants else types.get(a, "i32") for a in fn.arg_names}
    hints = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in constants and (signature[a].startswith("*") or a.startswith("stride_"))}
    source = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=hints)
    return triton.compile(source, target=GPUTarget("cuda", 90, 128),
                          options={"num_warps": num_warps, "num_stages": num_stages})


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
                                        CAUSAL=True, WIDE_OFFSETS=False, UNIFORM=True), 8, 3),
    "paged prefill, pages of 256": (pa._paged_prefill, {**PAGED, "CuSeqlensQ": "*i32", "SeqLensK": "*i32"},
                                    dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_M=128, BLOCK_N=64, BLOCK_B=2, PAGE_SIZE=256,
                                         CAUSAL=True, WIDE_OFFSETS=False, UNIFORM=True), 8, 3),
    "paged decode, pages of 256": (pa._paged_decode_split,
                                   {**PAGED, "SeqLens": "*i32", "PartOut": "*fp32", "PartLse": "*fp32"},
                                   dict(QUERIES_PER_KV=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_G=16, BLOCK_N=64,
                                        PAGE_SIZE=256, MIN_SPLIT=64, DIRECT=False, WIDE_OFFSETS=False,
                                        UNIFORM=True), 4, 2),
    "contiguous prefill": (fa._flash_attention_forward.fn,
                           {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "Mask": "*bf16",
                            "qk_scale": "fp32"},
                           dict(HEAD_DIM=128, BLOCK_D=128, CAUSAL=True, HAS_MASK=False, USE_TMA=False,
                                BLOCK_M=128, BLOCK_N=64), 8, 3),
}

def sass_loops(cubin: bytes) -> list[dict[str, int]]:
    """Each loop of the machine code (a backward branch and the instructions it jumps over): how many
    instructions one iteration runs and how many of them are R2UR moves."""
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    code = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for address, text in code:
        target = re.search(r"BRA\s+(?:`?\(?\.L_x_\d+\)?|0x([0-9a-f]+))", text)
        if target and target.group(1) and int(target.group(1), 16) < address:
            body = [t for a, t in code if int(target.group(1), 16) <= a <= address]
            loops.append({"instructions": len(body), "r2ur": sum(" R2UR " in f" {t} " for t in body)})
    return loops


# The prefill before version p2 (docs/benchmarks/kernel-notes.md): no prefetch of the table entries.
SAME_ITERATION_LOOKUP = [("PAGE_SIZE, CAUSAL, False, True,", "PAGE_SIZE, CAUSAL, False, False,"),
                         ("PAGE_SIZE, CAUSAL, True, True,", "PAGE_SIZE, CAUSAL, True, False,")]

def decode_groups(groups: list[int]) -> None:
    """The decode kernel compiled for each query-head group: which tensor-core instruction its 16-row tile
    becomes, how many per program, and each loop's instruction count (the group's rows are padding or not)."""
    fn, types, constants, warps, stages = KERNELS["paged decode, pages of 256"]
    for group in groups:
        block_g = max(16, triton.next_power_of_2(group))
        kernel = compile_for_hopper(fn, types, {**constants, "QUERIES_PER_KV": group, "BLOCK_G": block_g},
                                    warps, stages)
        ptx = kernel.asm["ptx"]
        shapes = sorted(set(re.findall(r"mma\.sync\.aligned\.(m\d+n\d+k\d+)", ptx)))
        loops = sass_loops(kernel.asm["cubin"])
        print(f"decode, group {group} in {block_g} rows | wgmma: {ptx.count('wgmma.mma_async')} | "
              f"mma.sync: {ptx.count('mma.sync')} {shapes} | loop instructions: {[lp['instructions'] for lp in loops]}")


if __name__ == "__main__":
    if "--decode-groups" in sys.argv:  # e.g. --decode-groups 4,7: what a group that is not a power of two costs
        print(f"triton {triton.__version__}, target sm_90")
        decode_groups([int(g) for g in sys.argv[sys.argv.index("--decode-groups") + 1].split(",")])
        sys.exit(0)
    if "--paged-from" in sys.argv:  # the paged kernels of another file, e.g. an earlier commit's
        from kernel_explore import module_from_file

        other = module_from_file("paged_other", sys.argv[sys.argv.index("--paged-from") + 1])
        for label, (fn, *rest) in list(KERNELS.items()):
            if label.startswith("paged"):
                KERNELS[label] = (getattr(other, fn.__name__), *rest)
    if "--before" in sys.argv:
        from kernel_explore import variant_module  # scripts/ is on the path when this file is run

        before = variant_module("paged_before_p2", SAME_ITERATION_LOOKUP)
        KERNELS["paged prefill, pages of 256, before p2"] = (before._paged_prefill,) + KERNELS[
            "paged prefill, pages of 256"][1:]
    if "--sass" in sys.argv:  # p4's two switches undone, each alone and both ("before p4")
        for page in (16, 256):
            fn, types, constants, warps, stages = KERNELS[f"paged prefill, pages of {page}"]
            for label, switches in (("64-bit offsets", {"WIDE_OFFSETS": True}), ("not uniform", {"UNIFORM": False}),
                                    ("before p4", {"WIDE_OFFSETS": True, "UNIFORM": False})):
                KERNELS[f"paged prefill, pages of {page}, {label}"] = (fn, types, {**constants, **switches}, warps, stages)
    print(f"triton {triton.__version__}, target sm_90")
    for label, (fn, types, constants, warps, stages) in KERNELS.items():
        kernel = compile_for_hopper(fn, types, constants, warps, stages)
        ir = kernel.asm["ttgir"]
        line = (f"{label} | num_stages={stages} | async copies: {ir.count('ttg.async_copy_global_to_local')} | "
                f"loop waits: {loop_waits(ir)}")
        if "--sass" in sys.argv:
            loops = sass_loops(kernel.asm["cubin"])
            line += (f" | loop instructions: {[lp['instructions'] for lp in loops]}"
                     f" | loop R2UR: {[lp['r2ur'] for lp in loops]}")
        print(line)
