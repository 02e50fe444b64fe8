"""How many threads compute well now: the cores this process may use, less those other processes keep busy.

A parallel region of torch (OpenMP) or OpenVINO ends when its slowest thread ends. On a machine where other work
holds a core, a thread placed there waits for its turn at every region, and a run with one thread per core can
become several times slower than the same run with one thread fewer. Sizing the threads to the cores that are free
when the work starts makes a busy machine slow a run in proportion to what it takes, not by that multiple.

Example:
    >>> @restores_torch_threads
    ... def train(epochs):
    ...     for epoch in range(epochs):
    ...         size_torch_threads()   # between epochs: the cores free now
    ...         train_one_epoch()
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["free_cores", "restores_torch_threads", "size_torch_threads", "torch_threads", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; a container's limit shows there)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _idle_and_total(cpus: set[int] | None) -> tuple[float, float] | None:
    """Summed idle and total jiffies of ``cpus`` (all when None) from ``/proc/stat``; None where there is none."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3:4].isdigit()]
    except OSError:
        return None
    idle = total = 0.0
    for fields in lines:
        if cpus is not None and int(fields[0][3:]) not in cpus:
            continue
        values = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        idle += values[3] + values[4]
        total += sum(values)
    return (idle, total) if total else None


def free_cores(sample_s: float = 0.05) -> int:
    """The usable cores not kept busy by other processes, measured over ``sample_s`` seconds while this process
    waits (from ``/proc/stat``; elsewhere the load average); at least 1. Call it between pieces of work, not
    during them: busy threads of this process would count as another's."""
    cores = usable_cores()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    before = _idle_and_total(cpus)
    if before is not None:
        time.sleep(sample_s)
        after = _idle_and_total(cpus)
        if after is not None and after[1] > before[1]:
            idle_fraction = (after[0] - before[0]) / (after[1] - before[1])
            return max(1, min(cores, round(cores * idle_fraction)))
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, round(cores - busy)))


def size_torch_threads() -> int:
    """Set torch's intra-op threads to :func:`free_cores` now and return the count; where ``OMP_NUM_THREADS``
    names a count, that is the user's choice and stays (torchrun sets it too)."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(free_cores())
    return torch.get_num_threads()


def restores_torch_threads(function: Callable) -> Callable:
    """Decorate a function that sizes torch's threads (:func:`size_torch_threads`) so its caller gets them back
    as they were."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        before = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, put back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
