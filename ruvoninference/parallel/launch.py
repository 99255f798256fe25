"""Starting the ranks from one command, and making sure none outlives the run.

`start_workers` spawns ranks 1..N-1 as fresh Python processes (the `spawn` start method: CUDA cannot be
forked) while rank 0 stays in the caller's process, where the user's command, the scheduler and the
tokenizer live. Three rules keep the group from leaving orphans or hanging:

- each worker watches its parent: if rank 0's process disappears (killed, crashed), the worker exits at
  once instead of waiting forever on a collective that rank 0 will never join;
- the workers are daemonic and `Workers.close` joins them, then terminates and finally kills any that do
  not exit; rank 0 calls it on every way out (a finished run, an exception, Ctrl-C);
- `Workers.dead` says in one sentence which worker died and how, so rank 0 can end the run with it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.multiprocessing as mp

from ruvoninference.errors import RuvonError
from ruvoninference.parallel.group import (
    TPGroup,
    check_port_free,
    destroy_group,
    free_port,
    init_group,
    set_safe_environment,
)

PARENT_POLL_S = 0.5


def rendezvous(port: int | None = None) -> str:
    """A TCP rendezvous on this machine: the given port (checked free) or MASTER_PORT, else a free one."""
    port = port or int(os.environ.get("MASTER_PORT", "0")) or free_port()
    check_port_free(port)
    return f"tcp://127.0.0.1:{port}"


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # re-parented: rank 0's process is gone
            os._exit(1)
        time.sleep(PARENT_POLL_S)


def _worker_entry(target: Callable, rank: int, world_size: int, device: str, init_method: str, parent: int,
                  args: tuple) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    tp = init_group(rank, world_size, torch.device(device), init_method)
    try:
        target(tp, *args)
    finally:
        destroy_group()


@dataclass
class Workers:
    processes: list = field(default_factory=list)

    def dead(self) -> str | None:
        """One sentence naming the first worker that has exited with an error, or None."""
        for rank, p in enumerate(self.processes, start=1):
            if p.exitcode not in (None, 0):
                how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
                return (f"Tensor-parallel worker rank {rank} died ({how}); the run cannot continue, see the "
                        f"worker's error above.")
        return None

    def close(self, timeout_s: float = 10.0) -> None:
        """Wait for the workers to finish, then terminate, then kill whatever is left."""
        deadline = time.monotonic() + timeout_s
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.processes:
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join()


def start_workers(target: Callable, world_size: int, device: torch.device, init_method: str,
                  args: tuple = ()) -> Workers:
    """Spawn ranks 1..world_size-1, each running `target(tp, *args)` after joining the group."""
    set_safe_environment()  # inherited by the workers, so NCCL in every process starts with NVLS off
    context = mp.get_context("spawn")
    workers = Workers()
    for rank in range(1, world_size):
        p = context.Process(target=_worker_entry, daemon=True,
                            args=(target, rank, world_size, str(device), init_method, os.getpid(), args))
        p.start()
        workers.processes.append(p)
    return workers


def spawn(fn: Callable, world_size: int, device: torch.device, args: tuple = (), port: int | None = None):
    """Run `fn(tp, *args)` on `world_size` ranks (rank 0 in this process) and return rank 0's result.

    The offline form of what the engine does: every rank runs the same function on its shard.
    """
    init_method = rendezvous(port)
    workers = start_workers(fn, world_size, device, init_method, args)
    try:
        tp: TPGroup = init_group(0, world_size, device, init_method)
        result = fn(tp, *args)
    finally:
        destroy_group()
        workers.close()
    failed = workers.dead()
    if failed:
        raise RuvonError(failed)
    return result
