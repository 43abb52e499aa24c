"""How a training process splits its CPU cores between the decoder's threads and torch's.

On a GPU the decoder's CPU threads only parse and feed the hardware decoder, and torch's intra-op threads
are idle while CUDA kernels run: the old defaults (4 decoder threads, torch's own default) stay. On the CPU
both are compute, and torch's default (every core) plus DALI's threads on the same cores oversubscribe them:
measured on a 2-core VM (docs/benchmarks.md), 4 DALI + 2 torch threads train slower than 1 + 1. So by default
each process takes its share of the cores (the affinity mask divided by the processes on this node) and gives
half to the decoder, the rest to torch, each at least one.

    plan = plan_threads(cfg.data.workers, cfg.train.torch_threads, on_cpu=True)   # ThreadPlan(data=1, torch=1)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

GPU_DATA_WORKERS = 4  # the decoder's threads on a GPU (today's default there)


@dataclass(frozen=True)
class ThreadPlan:
    data: int  # DALI CPU threads / DataLoader worker processes
    torch: int | None  # torch.set_num_threads; None = leave torch's default
    cores: int  # this process's share of the node's cores


def process_cores() -> int:
    """This process's share of the cores it may run on: the affinity mask over the processes on this node
    (LOCAL_WORLD_SIZE, set by torchrun / accelerate launch), at least one."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, available // local)


def plan_threads(data_workers: int, torch_threads: int, *, on_cpu: bool, cores: int | None = None) -> ThreadPlan:
    """Resolve data.workers (-1 = auto) and train.torch_threads (0 = auto) for one process."""
    cores = process_cores() if cores is None else cores
    if not on_cpu:
        data = GPU_DATA_WORKERS if data_workers < 0 else data_workers
        return ThreadPlan(data=data, torch=torch_threads or None, cores=cores)
    data = max(1, cores // 2) if data_workers < 0 else data_workers
    torch = torch_threads or max(1, cores - data)
    return ThreadPlan(data=data, torch=torch, cores=cores)
