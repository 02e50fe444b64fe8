"""Several processes, one training: torch.distributed set up from the environment ``torchrun`` provides.

``torchrun --nproc_per_node N -m headstart train … --method finetune`` starts N copies; each calls
:func:`init_from_env`, trains on its shard of the data through DistributedDataParallel (gloo on CPU, NCCL on GPU),
and only rank 0 writes files. Run without torchrun, everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from headstart._validation import fail

__all__ = ["ProcessGroup", "all_reduce_sum", "barrier", "current", "init_from_env", "resolve_device", "shutdown"]


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_GROUP = ProcessGroup()


def init_from_env(device: str = "cpu") -> ProcessGroup:
    """Join the process group described by torchrun's RANK/WORLD_SIZE variables (once); single process otherwise."""
    global _GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _GROUP
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        import atexit

        atexit.register(shutdown)  # (the command line calls it itself, knowing whether the command ended well)
    _GROUP = ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return _GROUP


def resolve_device(device: str = "auto") -> str:
    """``auto`` → this process's GPU when CUDA is there (``cuda:LOCAL_RANK`` under torchrun), else ``cpu``."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} was asked for, but torch sees no CUDA GPU here; use --device cpu.")
        torch.cuda.set_device(torch.device(device))
    elif device != "cpu":
        fail("device", "resolve_device", "auto, cpu, cuda or cuda:N", device)
    return device


def current() -> ProcessGroup:
    return _GROUP


def barrier() -> None:
    if _GROUP.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum numbers over all processes (each process gets the totals)."""
    if not _GROUP.enabled:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def shutdown(*, orderly: bool = True) -> None:
    """Leave the process group: wait for the other processes (``orderly``: this one ended its work normally), then
    destroy the group, so that no process exits while its communication threads still run — a rank that finished
    first and exited with the group alive could abort (``terminate called without an active exception``, SIGABRT).
    A no-op outside torchrun and when already done."""
    global _GROUP
    if not _GROUP.enabled:
        return
    import contextlib

    import torch.distributed as dist

    if dist.is_initialized():
        if orderly:
            with contextlib.suppress(Exception):  # (a peer already gone: nothing to wait for)
                dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _GROUP = ProcessGroup()
