"""The global-batch contract, in one place.

The seed trained on one GPU with batches of B = train.batch_size images and losses SUMMED over the batch.
vaedist makes the same update whatever the number of processes P:

1. each process gets B / P images of every global batch (`per_process`): B must be a multiple of P, and
   at least 2 per process (BatchNorm);
2. DDP AVERAGES the gradients of the processes, so each process multiplies its summed loss by P
   (`global_sum`): the averaged gradient is then the gradient of the loss summed over all B images;
3. the seed's "1/batch" weights are 1/B of the GLOBAL batch (`per_image`), whatever P.

`tests/ddp_worker.py` checks the result against a one-process update over the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vaedist.errors import ConfigError


@dataclass(frozen=True)
class GlobalBatch:
    size: int  # B: images per optimizer step, all processes together (train.batch_size)
    processes: int  # P

    def __post_init__(self):
        if self.size % self.processes:
            raise ConfigError(f"config key 'train.batch_size' ({self.size}) must be divisible by the {self.processes} processes")
        if self.size // self.processes < 2:  # BatchNorm needs two images per process
            raise ConfigError(f"config key 'train.batch_size' ({self.size}) must be at least 2 per process, "
                              f"i.e. at least {2 * self.processes} for the {self.processes} processes")

    @property
    def per_process(self) -> int:
        return self.size // self.processes

    def global_sum(self, loss: torch.Tensor) -> torch.Tensor:
        """This process's loss summed over its B/P images -> the loss to backward under DDP's averaging."""
        return loss * self.processes

    def per_image(self, factor: float = 1.0) -> float:
        """The seed's `factor`/batch weighting: of the global batch."""
        return factor / self.size
