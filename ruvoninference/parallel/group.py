"""The process group: who the other ranks are, and how they were started.

Tensor parallelism runs one process per GPU (or, on a CPU, one per shard, for tests). The processes meet at a
rendezvous and form a `torch.distributed` process group, the object every collective (all-reduce,
all-gather, broadcast) goes through. Two ways to start them:

- the engine spawns them itself (`Engine(..., tensor_parallel_size=N)`, or `spawn(fn, N, ...)` here): the
  user types one command, rank 0 is the calling process, the rendezvous is a free TCP port on 127.0.0.1;
- `torchrun --nproc-per-node N ...` (or across machines, `--nnodes` and a `--rdzv-endpoint`): torchrun
  starts the processes and sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in their environment, and
  `init_method="env://"` reads them. The same model code runs under both.

The backend follows the device: NCCL between CUDA GPUs (NVLink or PCIe, and InfiniBand between machines),
gloo on the CPU. On the shared GPU hosts NCCL's NVLink multicast (NVLS) must stay off: it reserves fabric
resources that can take the host's GPUs out of service for everyone. `set_safe_environment` turns it and
PyTorch's symmetric-memory multicast off, and every process this package starts calls it before NCCL loads.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ruvoninference.errors import RuvonError

# Every process that may touch NCCL sets these before the first communicator is created.
SAFE_ENVIRONMENT = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def set_safe_environment() -> None:
    os.environ.update(SAFE_ENVIRONMENT)


@dataclass(frozen=True)
class TPGroup:
    """This process's place in the tensor-parallel group: its rank, how many ranks, the group to talk through.

    At world size 1 the sharded layers skip their collectives (a sum over one rank is the tensor itself), so
    a size-1 group costs nothing per step; `group` may then be None (no process group was started).
    """

    rank: int
    world_size: int
    group: dist.ProcessGroup | None = None

    @property
    def is_driver(self) -> bool:
        """Rank 0: the process that schedules, samples and talks to the user."""
        return self.rank == 0


SINGLE = TPGroup(0, 1)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Fail in one sentence before any process starts when the rendezvous port is taken."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise RuvonError(
                f"The rendezvous port {port} on {host} is already in use; set MASTER_PORT to a free port, or unset "
                f"it to let the engine pick one."
            ) from None


def init_group(rank: int, world_size: int, device: torch.device, init_method: str) -> TPGroup:
    """Join the rendezvous and return this rank's group (the default process group of `world_size` ranks).

    On CUDA each rank drives the GPU numbered by its local rank (LOCAL_RANK under torchrun, the rank when
    spawned on one machine).
    """
    set_safe_environment()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group(
        backend_for(device),
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        device_id=device if device.type == "cuda" else None,
    )
    return TPGroup(rank, world_size, dist.group.WORLD)


def init_from_torchrun(device: torch.device) -> TPGroup:
    """Join the group torchrun set up (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment)."""
    return init_group(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device, "env://")


def destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, tp: TPGroup) -> torch.device:
    """The device this rank computes on: its own GPU, or the CPU."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", torch.cuda.current_device())
