"""The engine over N ranks: rank 0 schedules and samples, the other ranks mirror every forward pass.

    engine = Engine("qwen3-8b-random", "flash_attention_2", dtype="bfloat16", tensor_parallel_size=2)
    engine.generate(prompts, SamplingParams(max_tokens=128))      # the ordinary Engine API, on rank 0
    shutdown(engine)                                              # or let the engine go: a finalizer does it

Rank 0 is the user's process: it owns the scheduler, the block manager, the tokenizer and the sampler, like
a single-GPU engine. Each worker is a spawned process with its shard of the model, its own paged cache of its
own KV heads (the same number of blocks as rank 0's, so rank 0's block tables are valid on every rank), its
own ModelRunner and its own CUDA graphs. Per step:

    rank 0:   inputs = runner.prepare(batch)        # host lists -> device tensors (StepInputs)
              send(inputs)                          # 2 broadcasts: a 16-int header, then one int64 payload
              logits = runner.execute(inputs)       # the forward pass; its all-reduces meet the workers'
    worker:   inputs = receive()                    # the same tensors, on its own device
              runner.execute(inputs)                # same kernels, same collectives; logits dropped

The step travels as tensors, not pickled objects: a header of 16 integers (sizes, the graph key, which parts
exist) and one int64 tensor with every index the step needs concatenated. A decode step that replays a CUDA
graph lands in the worker's own static graph buffers, then the worker replays its own graph (captured at the
same moment as rank 0's, so the NCCL calls inside the graphs pair up).

Start-up runs in lockstep on every rank (the KV-cache sizing pass and the graph captures run collectives),
then the ranks agree on the smallest number of KV blocks any of them fits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import weakref

import torch
import torch.distributed as dist

from ruvoninference.attention.paged import AttentionMetadata, DecodeMetadata, PrefillMetadata
from ruvoninference.config import resolve_device, resolve_dtype
from ruvoninference.engine import Engine
from ruvoninference.engine.kv_cache import bytes_per_block
from ruvoninference.engine.model_runner import ModelRunner, StepInputs
from ruvoninference.errors import RuvonError
from ruvoninference.models import model_config
from ruvoninference.parallel.group import TPGroup, destroy_group, init_group, local_device
from ruvoninference.parallel.launch import Workers, rendezvous, start_workers
from ruvoninference.parallel.shard import check_shardable

OP_STOP, OP_STEP = 0, 1
HEADER = 16
MONITOR_POLL_S = 0.5


# -- the step as tensors ----------------------------------------------------------------------------------

def pack(inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """StepInputs -> (header [16] int64, payload [L] int64), both on the inputs' device."""
    meta, pre, dec = inputs.meta, inputs.meta.prefill, inputs.meta.decode
    rows, key = inputs.logits_rows, inputs.graph_key or (0, 0)
    parts = [inputs.input_ids, inputs.positions, meta.slot_mapping]
    if rows is not None:
        parts.append(rows)
    if pre is not None:
        lens = torch.tensor(pre.query_lens + pre.context_lens).to(inputs.input_ids.device, non_blocking=True)
        parts += [pre.cu_seqlens_q, pre.cu_seqlens_k, pre.block_tables.flatten(), pre.seq_lens, lens]
    if dec is not None:
        parts += [dec.block_tables.flatten(), dec.seq_lens]
    payload = torch.cat([p.long() for p in parts])
    P, Wp = (0, 0) if pre is None else tuple(pre.block_tables.shape)
    D, Wd = (0, 0) if dec is None else tuple(dec.block_tables.shape)
    header = [OP_STEP, inputs.input_ids.numel(), inputs.num_rows, rows is not None, *key, meta.num_prefill_tokens,
              P, Wp, pre.max_seqlen_q if pre else 0, pre.max_seqlen_k if pre else 0, D, Wd,
              dec.max_seqlen_k if dec else 0, payload.numel(), 0]
    return torch.tensor(header, dtype=torch.long).to(payload.device, non_blocking=True), payload


def unpack(header: list[int], payload: torch.Tensor, runner: ModelRunner) -> StepInputs:
    """The inverse of `pack`, on a worker; a graph step's tensors are copied into the runner's graph buffers."""
    _, _, num_rows, has_rows, bucket, width, num_prefill_tokens, P, Wp, max_q, max_kp, D, Wd, max_kd, _, _ = header
    pieces = iter(payload.split(_sizes(header)))
    input_ids, positions, slots = next(pieces), next(pieces), next(pieces)
    rows = next(pieces) if has_rows else None
    pre = dec = None
    if P:
        cu_q, cu_k, bt, seq_lens, lens = (next(pieces) for _ in range(5))
        lens = lens.tolist()
        pre = PrefillMetadata(cu_q.int(), cu_k.int(), max_q, max_kp, bt.view(P, Wp).int(), seq_lens.int(),
                              lens[:P], lens[P:])
    if D:
        dec_bt, dec_lens = next(pieces).view(D, Wd).int(), next(pieces).int()
        dec = DecodeMetadata(dec_bt, dec_lens, max_kd)
    if bucket:  # a CUDA-graph decode: fill this rank's static buffers, point at them
        runner._packed[:3, :bucket].copy_(torch.stack([input_ids, positions, slots]))
        runner._seq_lens[:bucket].copy_(dec.seq_lens)
        runner._block_tables[:bucket, :width].copy_(dec.block_tables)
        return StepInputs(runner._input_ids[:bucket], runner._positions[:bucket], runner._graph_meta(bucket, width),
                          None, (bucket, width), num_rows, [])
    meta = AttentionMetadata(slots, num_prefill_tokens, pre, dec)
    return StepInputs(input_ids, positions, meta, rows, None, num_rows, [])


def _sizes(header: list[int]) -> list[int]:
    _, T, num_rows, has_rows, _, _, _, P, Wp, _, _, D, Wd, _, _, _ = header
    sizes = [T, T, T] + [num_rows] * has_rows
    if P:
        sizes += [P + 1, P + 1, P * Wp, P, 2 * P]
    if D:
        sizes += [D * Wd, D]
    return sizes


def send(inputs: StepInputs | None, tp: TPGroup, device: torch.device) -> None:
    """Rank 0: broadcast one step (None: tell the workers to stop)."""
    if inputs is None:
        header, payload = torch.zeros(HEADER, dtype=torch.long, device=device), None
    else:
        header, payload = pack(inputs)
    dist.broadcast(header, 0, group=tp.group)
    if payload is not None:
        dist.broadcast(payload, 0, group=tp.group)


def receive(runner: ModelRunner, tp: TPGroup) -> StepInputs | None:
    """A worker: the next step's inputs, or None when rank 0 says stop."""
    header = torch.empty(HEADER, dtype=torch.long, device=runner.device)
    dist.broadcast(header, 0, group=tp.group)
    values = header.tolist()
    if values[0] == OP_STOP:
        return None
    payload = torch.empty(values[14], dtype=torch.long, device=runner.device)
    dist.broadcast(payload, 0, group=tp.group)
    return unpack(values, payload, runner)


# -- rank 0's runner and the workers' loop ----------------------------------------------------------------

class DriverRunner:
    """Rank 0's ModelRunner with every step broadcast before it runs (what `Engine.step` calls)."""

    def __init__(self, runner: ModelRunner, tp: TPGroup, workers: Workers):
        self.runner, self.tp, self.workers = runner, tp, workers
        self.closed = False

    def run(self, batch):
        inputs = self.runner.prepare(batch)
        send(inputs, self.tp, self.runner.device)
        return self.runner.execute(inputs), inputs.producing

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def close(self) -> None:
        """Tell the workers to stop, leave the group, reap the processes (each step only once)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.workers.dead() is None:
                send(None, self.tp, self.runner.device)
        finally:
            destroy_group()
            self.workers.close()


def worker_loop(runner: ModelRunner, tp: TPGroup) -> None:
    while (inputs := receive(runner, tp)) is not None:
        runner.execute(inputs)


def _watch_workers(workers: Workers, driver_ref) -> None:
    """A worker that dies ends the run in one sentence, never in a collective that waits forever."""
    while True:
        time.sleep(MONITOR_POLL_S)
        driver = driver_ref()
        if driver is None or driver.closed:
            return
        sentence = workers.dead()
        if sentence:
            print(sentence, file=sys.stderr, flush=True)
            workers.close(timeout_s=0)
            os._exit(1)


# -- building the engine on every rank --------------------------------------------------------------------

def lockstep_engine(bundle, tp: TPGroup, **engine_kwargs) -> Engine:
    """An Engine on this rank's shard whose KV cache has as many blocks as the smallest rank's."""
    engine = Engine(bundle, **engine_kwargs)
    if tp.world_size == 1:
        return engine
    blocks = torch.tensor([engine.block_manager.num_blocks], device=bundle.device)
    dist.all_reduce(blocks, op=dist.ReduceOp.MIN, group=tp.group)
    if int(blocks) == engine.block_manager.num_blocks:
        return engine
    per_block = bytes_per_block(bundle.config, engine.block_size, bundle.dtype)
    del engine
    if bundle.device.type == "cuda":
        torch.cuda.empty_cache()
    return Engine(bundle, **{**engine_kwargs, "kv_cache_memory": int(blocks) * per_block})


def _rank_engine(model: str, device: torch.device, dtype: torch.dtype, tp: TPGroup, engine_kwargs: dict) -> Engine:
    from ruvoninference.parallel import load_shard

    bundle = load_shard(model, local_device(device, tp), dtype, tp)
    return lockstep_engine(bundle, tp, **engine_kwargs)


def _worker_main(tp: TPGroup, model: str, device: str, dtype: torch.dtype, engine_kwargs: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches rank 0, which stops the workers in order
    engine = _rank_engine(model, torch.device(device), dtype, tp, engine_kwargs)
    worker_loop(engine.runner, tp)


def check_parallel_size(model: str, tensor_parallel_size: int, device: torch.device) -> None:
    """One sentence for a size the machine or the model cannot run (before any process starts)."""
    if device.type == "cuda" and tensor_parallel_size > torch.cuda.device_count():
        raise RuvonError(
            f"A tensor-parallel size of {tensor_parallel_size} needs {tensor_parallel_size} GPUs but "
            f"{torch.cuda.device_count()} {'is' if torch.cuda.device_count() == 1 else 'are'} visible; use at most "
            f"{torch.cuda.device_count()}, or --device cpu (gloo, for tests)."
        )
    check_shardable(model_config(model), tensor_parallel_size)


def check_tensor_parallel(model: str, tensor_parallel_size: int, device: str | torch.device | None) -> None:
    """Everything that can refuse a size before any process starts or any weight loads: the GPUs visible, the
    model's heads and MLP width, and (above size 1) the rendezvous port. For commands that build the engine
    later (a server loads it in the background) or several times (benchmarks)."""
    if tensor_parallel_size == 1:
        return
    check_parallel_size(model, tensor_parallel_size, resolve_device(device))
    rendezvous()  # MASTER_PORT, when set, must be free


def parallel_size(engine: Engine) -> int:
    """How many processes an engine's model is cut over (1: not tensor-parallel)."""
    return engine.runner.tp.world_size if isinstance(engine.runner, DriverRunner) else 1


def tensor_parallel_engine(model: str, attn: str = "sdpa", device: str | None = None,
                           dtype: str | torch.dtype | None = None, *, tensor_parallel_size: int,
                           port: int | None = None, **engine_kwargs) -> Engine:
    """An Engine whose model is cut over `tensor_parallel_size` processes; the returned engine is rank 0's.

    `Engine(model, ..., tensor_parallel_size=N)` calls this; the arguments are the Engine's.
    """
    started = time.perf_counter()
    engine_kwargs["attn"] = attn
    if engine_kwargs.get("speculative"):
        raise RuvonError("Speculative decoding does not run tensor-parallel yet; drop --speculative or use a "
                         "tensor-parallel size of 1.")
    if not isinstance(model, str):
        raise RuvonError("Tensor parallelism loads the model in every process; give the model's name, not a bundle.")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    check_parallel_size(model, tensor_parallel_size, dev)
    init_method = rendezvous(port)
    quiet = {k: v for k, v in engine_kwargs.items() if k != "progress"}  # callbacks stay with rank 0
    workers = start_workers(_worker_main, tensor_parallel_size, dev, init_method, (model, str(dev), dt, quiet))
    try:
        tp = init_group(0, tensor_parallel_size, dev, init_method)
        engine = _rank_engine(model, dev, dt, tp, engine_kwargs)
    except BaseException:
        destroy_group()
        workers.close(timeout_s=0)
        raise
    driver = DriverRunner(engine.runner, tp, workers)
    engine.runner = driver
    engine.startup_s = time.perf_counter() - started  # the workers' start and every rank's load included
    weakref.finalize(engine, driver.close)  # at garbage collection or interpreter exit: no orphan
    threading.Thread(target=_watch_workers, args=(workers, weakref.ref(driver)), daemon=True).start()
    return engine


def shutdown(engine: Engine) -> None:
    """Stop a tensor-parallel engine's workers now (a finished run; safe to call twice)."""
    if isinstance(engine.runner, DriverRunner):
        engine.runner.close()
