"""The model runner: turn a scheduled batch into tensors on the device, run the model, return logits.

Prefill steps run eagerly: their shapes (how many tokens, how many sequences) change every step. Decode
steps have one shape per batch size, so on CUDA each batch-size bucket (1, 2, 4, 8, 16, 32, ... up to the
maximum batch) is captured once as a CUDA graph and replayed: the few hundred small kernel launches of a
forward pass become one launch, which is most of a small model's decode time at small batches. The graph
reads its inputs from static buffers that each step fills; a batch of 5 runs in the 8-bucket with 3
padding rows that write into the cache's scratch block and whose outputs are dropped.

The gathering backends (eager, sdpa) read a block table as wide as the longest sequence, and our Triton
decode kernel splits the keys by the table's width, so their graphs are keyed by a power-of-two width too;
FlashAttention-2 reads only the blocks it needs, so one width (the model's maximum) serves every step.

Shapes: T = new tokens in the step, B = sequences, M = block-table width, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ruvoninference.attention import AttentionImplementation
from ruvoninference.attention.paged import AttentionMetadata, PagedAttention
from ruvoninference.engine.kv_cache import PagedKVCache
from ruvoninference.engine.scheduler import ScheduledBatch
from ruvoninference.models import ModelBundle

GATHERING = (AttentionImplementation.EAGER, AttentionImplementation.SDPA)


def batch_buckets(max_batch_size: int) -> list[int]:
    buckets, size = [], 1
    while size < max_batch_size:
        buckets.append(size)
        size *= 2
    return buckets + [max_batch_size]


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # [bucket, V], written by every replay


class ModelRunner:
    def __init__(self, bundle: ModelBundle, implementation: AttentionImplementation, kv_cache: PagedKVCache,
                 max_batch_size: int, max_model_len: int, use_cuda_graphs: bool):
        self.model = bundle.model
        self.device = next(self.model.parameters()).device
        self.implementation = implementation
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.max_blocks = -(-max_model_len // self.block_size)
        self.attention = PagedAttention(implementation, kv_cache.k, kv_cache.v, bundle.config.attn_scale)
        self.use_cuda_graphs = use_cuda_graphs
        self.buckets = batch_buckets(max_batch_size)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = None
        self._pin = self.device.type == "cuda"
        if use_cuda_graphs:
            largest = self.buckets[-1]
            dev = self.device
            self._input_ids = torch.zeros(largest, dtype=torch.long, device=dev)
            self._positions = torch.zeros(largest, dtype=torch.long, device=dev)
            self._slots = torch.zeros(largest, dtype=torch.long, device=dev)
            self._seq_lens = torch.ones(largest, dtype=torch.int32, device=dev)
            self._block_tables = torch.full((largest, self.max_blocks), kv_cache.scratch_block, dtype=torch.int32,
                                            device=dev)

    # -- host lists -> device tensors -----------------------------------------------------------------

    def _host(self, values, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, pin_memory=self._pin)

    def _tensor(self, values, dtype: torch.dtype) -> torch.Tensor:
        return self._host(values, dtype).to(self.device, non_blocking=True)

    def _slot(self, seq, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def _block_table_rows(self, seqs, width: int) -> list[list[int]]:
        pad = self.kv_cache.scratch_block
        return [seq.block_table[:width] + [pad] * (width - min(width, len(seq.block_table))) for seq in seqs]

    # -- prefill --------------------------------------------------------------------------------------

    def _prepare_prefill(self, batch: ScheduledBatch):
        input_ids, positions, slots, cu_q, cu_k, query_lens, context_lens = [], [], [], [0], [0], [], []
        sample_rows, producing = [], []  # the token rows whose logits are sampled, and their sequences
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            slots += [self._slot(seq, p) for p in range(start, end)]
            cu_q.append(cu_q[-1] + n)
            cu_k.append(cu_k[-1] + end)
            query_lens.append(n)
            context_lens.append(end)
            if end == seq.num_tokens:  # the chunk that completes the sequence's tokens produces the next one
                sample_rows.append(cu_q[-1] - 1)
                producing.append(i)
        width = -(-max(context_lens) // self.block_size)
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=self._tensor(slots, torch.long),
            block_tables=self._tensor(self._block_table_rows(batch.seqs, width), torch.int32),
            seq_lens=self._tensor(context_lens, torch.int32),
            max_seqlen_k=max(context_lens),
            cu_seqlens_q=self._tensor(cu_q, torch.int32),
            cu_seqlens_k=self._tensor(cu_k, torch.int32),
            max_seqlen_q=max(query_lens),
            query_lens=query_lens,
            context_lens=context_lens,
        )
        return self._tensor(input_ids, torch.long), self._tensor(positions, torch.long), meta, sample_rows, producing

    # -- decode ---------------------------------------------------------------------------------------

    def _decode_width(self, seqs) -> int:
        """The block-table width a decode step runs with (a CUDA graph's key together with the batch bucket)."""
        longest = max(len(seq.block_table) for seq in seqs)
        if not self.use_cuda_graphs:
            return longest
        # Gathering backends copy the whole table's pages; our split-KV kernel sizes its splits from the
        # table's width. Both want a width near the longest sequence: powers of two keep the graphs few.
        if self.implementation in GATHERING or self.implementation is AttentionImplementation.TRITON:
            return min(self.max_blocks, _next_power_of_two(longest))
        return self.max_blocks

    def _decode_inputs(self, seqs):
        return ([seq.token_ids[-1] for seq in seqs], [seq.num_tokens - 1 for seq in seqs],
                [self._slot(seq, seq.num_tokens - 1) for seq in seqs], [seq.num_tokens for seq in seqs])

    def _run_decode_eager(self, seqs) -> torch.Tensor:
        ids, pos, slots, lens = self._decode_inputs(seqs)
        width = self._decode_width(seqs)
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=self._tensor(slots, torch.long),
            block_tables=self._tensor(self._block_table_rows(seqs, width), torch.int32),
            seq_lens=self._tensor(lens, torch.int32),
            max_seqlen_k=max(lens),
        )
        return self._forward(self._tensor(ids, torch.long), self._tensor(pos, torch.long), meta)

    def _forward(self, input_ids, positions, meta, rows=None) -> torch.Tensor:
        self.attention.meta = meta
        hidden = self.model(input_ids, positions, self.attention)  # [T, hidden]
        if rows is not None:
            hidden = hidden[rows]
        return self.model.compute_logits(hidden)  # [rows, V]

    # -- CUDA graphs ----------------------------------------------------------------------------------

    def _graph_meta(self, bucket: int, width: int) -> AttentionMetadata:
        return AttentionMetadata(
            is_prefill=False,
            slot_mapping=self._slots[:bucket],
            block_tables=self._block_tables[:bucket, :width],
            seq_lens=self._seq_lens[:bucket],
            max_seqlen_k=width * self.block_size,
        )

    def _capture(self, bucket: int, width: int) -> _Graph:
        # The warm-up runs for real and writes k, v at the static slots: point every row at the scratch block,
        # or a capture made while sequences run would overwrite their cache.
        self._input_ids.zero_()
        self._positions.zero_()
        self._slots.fill_(self.kv_cache.scratch_slot)
        self._seq_lens.fill_(1)
        self._block_tables.fill_(self.kv_cache.scratch_block)
        meta = self._graph_meta(bucket, width)
        ids, pos = self._input_ids[:bucket], self._positions[:bucket]
        # Warm up on a side stream (as torch.cuda.graphs asks): kernels compile and pick their
        # algorithms here, so nothing in the capture allocates workspaces or launches autotuning.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(ids, pos, meta)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(ids, pos, meta)
        return _Graph(graph, logits)

    def capture_all(self, progress=None) -> None:
        """Capture every batch bucket up front (the widest block table), largest first so the pool fits."""
        for i, bucket in enumerate(reversed(self.buckets)):
            if progress:
                progress("Capturing CUDA graphs for decode", i, len(self.buckets))
            self._graphs[(bucket, self.max_blocks)] = self._capture(bucket, self.max_blocks)
        if progress:
            progress("Captured CUDA graphs for decode", len(self.buckets), len(self.buckets))

    def _run_decode_graph(self, seqs) -> torch.Tensor:
        n = len(seqs)
        bucket = next(b for b in self.buckets if b >= n)
        width = self._decode_width(seqs)
        key = (bucket, width)
        if key not in self._graphs:  # gathering backends: a width first seen now
            self._graphs[key] = self._capture(bucket, width)
        ids, pos, slots, lens = self._decode_inputs(seqs)
        pad = bucket - n
        scratch = self.kv_cache.scratch_slot
        # One host->device copy per buffer; padding rows attend to one scratch token and write to scratch.
        self._input_ids[:bucket].copy_(self._host(ids + [0] * pad, torch.long), non_blocking=True)
        self._positions[:bucket].copy_(self._host(pos + [0] * pad, torch.long), non_blocking=True)
        self._slots[:bucket].copy_(self._host(slots + [scratch] * pad, torch.long), non_blocking=True)
        self._seq_lens[:bucket].copy_(self._host(lens + [1] * pad, torch.int32), non_blocking=True)
        # Only the columns some sequence uses are written: entries beyond a row's length are never read by
        # FlashAttention-2 or our kernel, and the gathering backends mask them (they hold valid block ids or
        # the scratch block). Building the full [bucket, max_blocks] table on the host cost milliseconds a step.
        used = max(len(seq.block_table) for seq in seqs)
        rows = self._block_table_rows(seqs, used)
        self._block_tables[:n, :used].copy_(self._host(rows, torch.int32), non_blocking=True)
        if pad:
            self._block_tables[n:bucket, :1].fill_(self.kv_cache.scratch_block)
        graph = self._graphs[key]
        graph.graph.replay()
        return graph.logits[:n]

    # -- one step -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[int]]:
        """Logits [N, V] for the sequences that produce a token this step, and their indices in the batch."""
        if batch.is_prefill:
            input_ids, positions, meta, rows, produce = self._prepare_prefill(batch)
            # A chunk that does not finish its prompt still runs: it fills the cache, it just samples nothing.
            logits = self._forward(input_ids, positions, meta, self._tensor(rows, torch.long))
            return (logits if rows else None), produce
        if self.use_cuda_graphs and len(batch.seqs) <= self.buckets[-1]:
            return self._run_decode_graph(batch.seqs), list(range(len(batch.seqs)))
        return self._run_decode_eager(batch.seqs), list(range(len(batch.seqs)))
