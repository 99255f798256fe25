"""Our Triton kernels, each a literate file that holds the kernel and its float64 reference.

- `flash_attention`: FlashAttention forward over contiguous [batch, heads, n, d] tensors (prefill).
- `paged_attention`: attention over the paged KV cache: split-KV decode and variable-length prefill, and
  `warm_up`, which compiles every variant an engine can launch before it serves.
- `sampling`: the sampler's draw (Gumbel-max with counter-based noise) as one kernel.

Benchmarks import these (`ruvoninference.bench.kernels`); a kernel module never imports a benchmark.
"""

# The names our Triton attention kernels carry on the GPU (a profiler lists them under these names).
KERNEL_NAMES = frozenset({
    "_flash_attention_forward", "_paged_decode_split", "_paged_decode_merge", "_paged_prefill",
})
