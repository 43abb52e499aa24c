"""Which samples each rank sees, in which order, with which flips: one seeded plan shared by every backend.

Training (drop-last): a seeded permutation fixed for the run deals the split to the ranks (rank r owns
every W-th sample of it), so a rank's subset never changes — that is what lets the decode-once cache
serve it — and each epoch reshuffles that subset with a generator seeded by (seed, epoch, rank). Every
rank yields `(num_samples // W) // batch_size` full batches, so no rank waits at the end of an epoch; the
few samples over that count are a different random few each epoch.

Evaluation: no shuffle; rank r owns samples r, r+W, r+2W, ... so the ranks together see the whole split
exactly once. Every rank yields the same number of batches, ceil(ceil(N / W) / batch_size); a rank's last
batch may be shorter than the others' (or even empty, shape [0, ...]) — there are no duplicates to trim.
Evaluators sum per-sample quantities locally and reduce once at the end (e.g. `accelerator.reduce`).

Flips are drawn per (seed, epoch, sample), independent of the rank and of the cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaedist.errors import UserError


@dataclass
class SamplePlan:
    num_total: int  # samples in the split
    batch_size: int  # per process
    train: bool
    seed: int
    rank: int = 0
    world: int = 1
    # Evaluation only: the global indices to deal to the ranks, in order (default: the whole split). A resumed
    # `vaedist.encode` passes the samples it has still to write; the probe a bounded subset of the train split.
    subset: np.ndarray | None = None

    def __post_init__(self):
        if self.train:
            if self.subset is not None:
                raise ValueError("a subset is for evaluation plans only")
            fixed = np.random.default_rng([self.seed, 0x5EED]).permutation(self.num_total)
            self.owned = np.sort(fixed[self.rank :: self.world])
            self.num_batches = (self.num_total // self.world) // self.batch_size
            if self.num_batches == 0:
                raise UserError(
                    f"the training split has {self.num_total} samples, fewer than one batch of {self.batch_size} "
                    f"per process on {self.world} process(es); lower train.batch_size"
                )
        else:
            chosen = np.arange(self.num_total) if self.subset is None else np.asarray(self.subset, dtype=np.int64)
            self.owned = chosen[self.rank :: self.world]
            per_rank_max = -(-len(chosen) // self.world)
            self.num_batches = -(-per_rank_max // self.batch_size)

    @property
    def subset_size(self) -> int:
        """Evaluation: samples all ranks see together (the subset's, else the split's)."""
        return self.num_total if self.subset is None else len(self.subset)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        return self.num_batches * self.batch_size if self.train else len(self.owned)

    def order(self, epoch: int) -> np.ndarray:
        """Global sample indices this rank yields in `epoch`, in order: int64 [num_samples]."""
        if not self.train:
            return self.owned
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        return rng.permutation(self.owned)[: self.num_samples]

    def batches(self, epoch: int) -> list[np.ndarray]:
        """`num_batches` arrays of global indices (evaluation: the last may be short or empty)."""
        order = self.order(epoch)
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.num_batches)]

    def flips(self, epoch: int) -> np.ndarray:
        """bool [num_total]: whether each sample is mirrored in `epoch` (same on every rank)."""
        return np.random.default_rng([self.seed, epoch, 0xF119]).random(self.num_total) < 0.5
