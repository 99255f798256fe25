"""The model runner: turn a scheduled batch into tensors on the device, run the model, return logits.

Two halves, so that tensor-parallel workers can run the second without the first:

    prepare(batch) -> StepInputs      host lists -> device tensors (rank 0 only: it owns the sequences)
    execute(inputs) -> logits [N, V]  the forward pass (every rank)

A step lists its prefill chunks first and its decodes after them (see `scheduler`); the attention sends
each part to the kernel made for it. Logits are computed only for the rows that sample: a prefill chunk's
last token when it completes its sequence's tokens, and every decode; and, when a chunk's sequence asked for
prompt log-probabilities, the prompt positions listed in `batch.prompt_rows`, whose rows come first (the
logits are `[prompt rows + sampled rows, V]`; `logits_rows` lists both, so tensor-parallel workers compute
the same rows with nothing more to know).

Steps with a prefill run eagerly: their shapes (how many tokens, how many sequences) change every step.
Decode-only steps have one shape per batch size, so on CUDA each batch-size bucket (1, 2, 4, 8, 16, 32, ...
up to the maximum batch) is captured once as a CUDA graph and replayed: the few hundred small kernel
launches of a forward pass become one launch, which is most of a small model's decode time at small
batches. The graph reads its inputs from static buffers that each step fills with one host-to-device copy;
a batch of 5 runs in the 8-bucket with 3 padding rows that write into the cache's scratch block and whose
outputs are dropped.

The gathering backends (eager, sdpa) read a block table as wide as the longest sequence, so their graphs are
keyed by a power-of-two width too; FlashAttention-2 and our Triton kernels read only the blocks each row
needs, so one width (the model's maximum) serves every step. Every graph a run can replay is captured
before the engine is ready (`capture_all`): a capture is two or three eager forward passes, and one made in
the middle of a served run would hold every stream up for as long. A gathering step that
would copy more than `GATHER_GRAPH_TOKENS` cached tokens runs eagerly instead: that much copying costs far
more than the launches a graph saves, and capturing it would hold that much memory for nothing.

Shapes: T = new tokens in the step, B = sequences, W = block-table width, N = rows sampled, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ruvoninference.attention import AttentionImplementation
from ruvoninference.attention.paged import AttentionMetadata, DecodeMetadata, PagedAttention, PrefillMetadata
from ruvoninference.engine.kv_cache import PagedKVCache
from ruvoninference.engine.scheduler import ScheduledBatch
from ruvoninference.models import ModelBundle

GATHERING = (AttentionImplementation.EAGER, AttentionImplementation.SDPA)
# A gathering backend's decode graph exists for (bucket, width) only while bucket * width * block_size, the
# cached tokens one step copies per layer, stays within this. An estimate, not a tuned value: 2**18 tokens are
# 1 GiB of keys and values per layer for Qwen3-0.6B in bf16, 28 GiB over its layers, about 8 ms at the H200's
# measured 3.7 TB/s copy: already more than the launches a graph saves.
GATHER_GRAPH_TOKENS = 2**18
_NUMPY = {torch.long: np.int64, torch.int32: np.int32}


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


@dataclass
class StepInputs:
    """Everything a forward pass needs, on the device: what rank 0 sends to tensor-parallel workers."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    logits_rows: torch.Tensor | None  # [N] int64: rows whose logits are computed; None: every row
    graph_key: tuple[int, int] | None  # (bucket, width) of the decode graph this step replays, if any
    num_rows: int  # N
    producing: list[int]  # host only: indices into batch.seqs of the sequences that sample, in row order


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
            # input ids, positions, slots and sequence lengths arrive in one copy: rows of one int64 buffer
            self._packed = torch.zeros(4, largest, dtype=torch.long, device=dev)
            self._input_ids, self._positions, self._slots = self._packed[0], self._packed[1], self._packed[2]
            self._seq_lens = torch.ones(largest, dtype=torch.int32, device=dev)
            self._block_tables = torch.full((largest, self.max_blocks), kv_cache.scratch_block, dtype=torch.int32,
                                            device=dev)

    # -- host lists -> device tensors -----------------------------------------------------------------

    def _host(self, values, dtype: torch.dtype) -> torch.Tensor:
        # numpy turns nested lists into an array several times faster than torch.tensor does
        host = torch.from_numpy(np.array(values, dtype=_NUMPY[dtype]))
        return host.pin_memory() if self._pin else host

    def _tensor(self, values, dtype: torch.dtype) -> torch.Tensor:
        return self._host(values, dtype).to(self.device, non_blocking=True)

    def _slot(self, seq, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def _block_table_rows(self, seqs, width: int) -> list[list[int]]:
        pad = self.kv_cache.scratch_block
        return [seq.block_table[:width] + [pad] * (width - min(width, len(seq.block_table))) for seq in seqs]

    # -- prepare: the step's tensors ------------------------------------------------------------------

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        decodes = batch.seqs[batch.num_prefill:]
        key = self._graph_key(decodes) if batch.is_decode_only and self.use_cuda_graphs else None
        if key is not None:
            return self._prepare_graph_decode(decodes, key)
        input_ids, positions, slots, rows, producing = [], [], [], [], []
        prefill = None
        if batch.num_prefill:
            prefill = self._prefill_part(batch, input_ids, positions, slots, rows, producing)
        decode = None
        if decodes:
            ids, pos, dslots, lens = self._decode_inputs(decodes)
            rows += range(len(input_ids), len(input_ids) + len(decodes))
            producing += range(batch.num_prefill, len(batch.seqs))
            input_ids += ids
            positions += pos
            slots += dslots
            width = max(len(seq.block_table) for seq in decodes)
            decode = DecodeMetadata(self._tensor(self._block_table_rows(decodes, width), torch.int32),
                                    self._tensor(lens, torch.int32), max(lens))
        num_prefill_tokens = len(input_ids) - len(decodes)
        meta = AttentionMetadata(self._tensor(slots, torch.long), num_prefill_tokens, prefill, decode)
        all_rows = len(rows) == len(input_ids)
        if batch.prompt_rows:
            rows = self._prompt_rows(batch) + rows
            all_rows = False  # prompt rows first: not the tokens' order
        return StepInputs(self._tensor(input_ids, torch.long), self._tensor(positions, torch.long), meta,
                          None if all_rows else self._tensor(rows, torch.long), None, len(rows), producing)

    def _prefill_part(self, batch, input_ids, positions, slots, rows, producing) -> PrefillMetadata:
        cu_q, cu_k, query_lens, context_lens = [0], [0], [], []
        for i in range(batch.num_prefill):
            seq, n = batch.seqs[i], batch.num_new_tokens[i]
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            tokens = seq.token_ids + seq.spec_token_ids if seq.spec_token_ids else seq.token_ids
            input_ids += tokens[start:end]
            positions += range(start, end)
            slots += [self._slot(seq, p) for p in range(start, end)]
            cu_q.append(cu_q[-1] + n)
            cu_k.append(cu_k[-1] + end)
            query_lens.append(n)
            context_lens.append(end)
            if end == len(tokens):  # the chunk that completes the sequence's tokens produces the next one
                guesses = len(seq.spec_token_ids)  # speculative decoding: every guess's row samples too
                rows += range(cu_q[-1] - 1 - guesses, cu_q[-1])
                producing += [i] * (1 + guesses)
        width = -(-max(context_lens) // self.block_size)
        return PrefillMetadata(
            cu_seqlens_q=self._tensor(cu_q, torch.int32),
            cu_seqlens_k=self._tensor(cu_k, torch.int32),
            max_seqlen_q=max(query_lens),
            max_seqlen_k=max(context_lens),
            block_tables=self._tensor(self._block_table_rows(batch.seqs[:batch.num_prefill], width), torch.int32),
            seq_lens=self._tensor(context_lens, torch.int32),
            query_lens=query_lens,
            context_lens=context_lens,
        )

    @staticmethod
    def _prompt_rows(batch: ScheduledBatch) -> list[int]:
        """The token rows of `batch.prompt_rows`' positions, in that order."""
        offset, start = {}, 0  # id(seq) -> the row of position p is p + offset
        for seq, n in zip(batch.seqs[:batch.num_prefill], batch.num_new_tokens):
            offset[id(seq)] = start - seq.num_computed_tokens
            start += n
        return [p + offset[id(c.seq)] for c in batch.prompt_rows for p in range(c.first, c.first + c.count)]

    def _decode_inputs(self, seqs):
        bs = self.block_size
        ids, pos, slots, lens = [], [], [], []
        for seq in seqs:
            tokens = seq.token_ids
            n = len(tokens)
            ids.append(tokens[-1])
            pos.append(n - 1)
            slots.append(seq.block_table[(n - 1) // bs] * bs + (n - 1) % bs)
            lens.append(n)
        return ids, pos, slots, lens

    def _graph_key(self, seqs) -> tuple[int, int] | None:
        """(bucket, block-table width) of the CUDA graph a decode step of `seqs` replays; None: run eagerly."""
        if len(seqs) > self.buckets[-1]:
            return None
        bucket = next(b for b in self.buckets if b >= len(seqs))
        # Gathering backends copy the whole table's pages: they want a width near the longest sequence, and
        # powers of two keep their graphs few. FlashAttention-2 and our kernel read only each row's own pages,
        # so they run every bucket at the full width, one graph per bucket (our split count then depends on the
        # batch alone; the splits a short sequence does not need return at once).
        if self.implementation not in GATHERING:
            return bucket, self.max_blocks
        width = min(self.max_blocks, _next_power_of_two(max(len(seq.block_table) for seq in seqs)))
        return (bucket, width) if bucket * width * self.block_size <= GATHER_GRAPH_TOKENS else None

    def graph_keys(self) -> list[tuple[int, int]]:
        """Every key `_graph_key` can return, largest first (the order `capture_all` captures them in)."""
        if self.implementation not in GATHERING:
            return [(bucket, self.max_blocks) for bucket in reversed(self.buckets)]
        widths = sorted({min(self.max_blocks, 1 << k) for k in range(self.max_blocks.bit_length() + 1)})
        keys = [(b, w) for b in self.buckets for w in widths if b * w * self.block_size <= GATHER_GRAPH_TOKENS]
        return sorted(keys, key=lambda key: (key[0] * key[1], key), reverse=True)

    def _prepare_graph_decode(self, seqs, key: tuple[int, int]) -> StepInputs:
        n = len(seqs)
        bucket = key[0]
        ids, pos, slots, lens = self._decode_inputs(seqs)
        pad = bucket - n
        # One host->device copy for ids, positions, slots and lengths; padding rows attend to one scratch
        # token and write to scratch.
        packed = self._host([ids + [0] * pad, pos + [0] * pad, slots + [self.kv_cache.scratch_slot] * pad,
                             lens + [1] * pad], torch.long)
        self._packed[:, :bucket].copy_(packed, non_blocking=True)
        self._seq_lens[:bucket].copy_(self._packed[3, :bucket])
        # Only the columns some sequence uses are written: entries beyond a row's length are never read by
        # FlashAttention-2 or our kernel, and the gathering backends mask them (they hold valid block ids or
        # the scratch block). Building the full [bucket, max_blocks] table on the host cost milliseconds a step.
        used = max(len(seq.block_table) for seq in seqs)
        self._block_tables[:n, :used].copy_(self._host(self._block_table_rows(seqs, used), torch.int32),
                                            non_blocking=True)
        if pad:
            self._block_tables[n:bucket, :1].fill_(self.kv_cache.scratch_block)
        return StepInputs(self._input_ids[:bucket], self._positions[:bucket], self._graph_meta(*key), None, key, n,
                          list(range(n)))

    # -- execute: the forward pass --------------------------------------------------------------------

    def _forward(self, input_ids, positions, meta, rows=None) -> torch.Tensor:
        self.attention.meta = meta
        hidden = self.model(input_ids, positions, self.attention)  # [T, hidden]
        if rows is not None:
            hidden = hidden[rows]
        return self.model.compute_logits(hidden)  # [rows, V]

    @torch.inference_mode()
    def execute(self, inputs: StepInputs) -> torch.Tensor | None:
        """Logits [N, V] for the rows in `logits_rows` (prompt-logprob rows, then the rows that sample); None
        when there are none (a chunk that finishes no prompt and scores none)."""
        if inputs.num_rows == 0:
            # The chunk still runs: it fills the cache, it just samples nothing.
            self._forward(inputs.input_ids, inputs.positions, inputs.meta, inputs.input_ids[:0])
            return None
        if inputs.graph_key is None:
            return self._forward(inputs.input_ids, inputs.positions, inputs.meta, inputs.logits_rows)
        graph = self._graphs.get(inputs.graph_key)
        if graph is None:  # a bug, never the user's: capturing now would stall every running request
            raise RuntimeError(f"No CUDA graph was captured for decode key {inputs.graph_key}; the runner's "
                               f"capture_all() must run before the first step.")
        graph.graph.replay()
        return graph.logits[:inputs.num_rows]

    def run(self, batch: ScheduledBatch) -> tuple[torch.Tensor | None, list[int]]:
        """Logits [N, V] for the sequences that produce a token this step, and their indices in the batch."""
        inputs = self.prepare(batch)
        return self.execute(inputs), inputs.producing

    # -- CUDA graphs ----------------------------------------------------------------------------------

    def _graph_meta(self, bucket: int, width: int) -> AttentionMetadata:
        decode = DecodeMetadata(self._block_tables[:bucket, :width], self._seq_lens[:bucket], width * self.block_size)
        return AttentionMetadata(self._slots[:bucket], 0, None, decode)

    def _capture(self, bucket: int, width: int) -> _Graph:
        # The warm-up runs for real and writes k, v at the static slots: point every row at the scratch block,
        # or a capture made while sequences run would overwrite their cache.
        saved = self._packed.clone(), self._seq_lens.clone(), self._block_tables.clone()
        self._packed.zero_()
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
            for _ in range(1 if self._graphs else 2):  # kernels new to this process: warm up twice
                self._forward(ids, pos, meta)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(ids, pos, meta)
        # The buffers go back as they were: a capture has no effect on the steps that follow.
        self._packed.copy_(saved[0]), self._seq_lens.copy_(saved[1]), self._block_tables.copy_(saved[2])
        return _Graph(graph, logits)

    def warm_up(self, progress=None) -> None:
        """Our Triton backend: compile every kernel variant a run can launch before the engine is ready."""
        if self.implementation is AttentionImplementation.TRITON and self.device.type == "cuda":
            from ruvoninference.kernels.paged_attention import warm_up

            k, v = self.kv_cache.k[0], self.kv_cache.v[0]
            heads_q = k.shape[2] * (self.model.config.num_heads // self.model.config.num_kv_heads)
            warm_up(k, v, heads_q, self.buckets[-1], [(b, self.max_blocks) for b in self.buckets], progress)

    def capture_all(self, progress=None) -> None:
        """Capture every decode graph a run can replay (`graph_keys`), largest first so the pool fits.

        Our Triton backend first compiles every prefill and decode kernel variant a run can launch
        (`kernels.paged_attention.warm_up`), so nothing compiles or captures after the engine reports ready.
        """
        self.warm_up(progress)
        keys = self.graph_keys()
        for i, key in enumerate(keys):
            if progress:
                progress("Capturing CUDA graphs for decode", i, len(keys))
            self._graphs[key] = self._capture(*key)
        if progress:
            progress("Captured CUDA graphs for decode", len(keys), len(keys))
