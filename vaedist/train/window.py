"""The collective bookkeeping of training: metrics summed over a window of steps, and the checks made once
per log row.

Per step nothing leaves the device (no GPU sync per step). At a log row `LogWindow.flush` gathers once from
every rank: the loss sums, the first non-finite step (then every rank raises NonFiniteLoss), the stop
votes (a signal may reach only some ranks; all of them stop together) and how many bad samples the ranks
found (then they exchange them: vaedist.train.bad_samples).

Guards: a step is a blow-up when its KL per latent value exceeds `train.blowup_kl` or a log-variance reached
the clamp's upper bound (vaedist.models.base); the blow-ups, the share of clamped log-variances and the
largest KL of one image go into the log row, so an explosion is on record even when training recovers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import torch
from accelerate import Accelerator

from vaedist.errors import UserError
from vaedist.losses import VAELosses
from vaedist.train.signals import StopRequest

Batch = TypeVar("Batch")


class NonFiniteLoss(UserError):
    every_rank = True  # raised by the collective check in LogWindow.flush, on every rank alike


@dataclass(frozen=True)
class WindowTotals:
    """Sums over every rank since the last log row (the losses are the seed's: sums over each global batch)."""

    loss_encoder: float
    loss_decoder: float
    kl: float
    mse: float
    images: float
    steps: int
    seconds: float  # wall time of the window
    data_wait: float  # of which this rank waited for its batches
    bad_found: int = 0  # samples found bad by any rank since the last row, not yet exchanged
    blowups: int = 0  # steps that blew up, on the process where most did
    kl_max: float = 0.0  # the largest KL of one image, any rank
    logvar_clamped: float = 0.0  # share of the log-variances held at a bound of the clamp

    def row(self, epoch: int, lr_encoder: float, lr_decoder: float, values_per_image: int) -> dict[str, float]:
        """The training row of metrics.jsonl and W&B."""
        steps, images = max(self.steps, 1), max(self.images, 1)
        return {
            "epoch": epoch,
            "train/loss_encoder": self.loss_encoder / steps,  # sums over the global batch, mean over steps
            "train/loss_decoder": self.loss_decoder / steps,
            "train/kl": self.kl / images,  # per image
            "train/mse": self.mse / images / values_per_image / 2,  # per value on [0, 1] images, like val/mse
            "train/lr_encoder": lr_encoder,
            "train/lr_decoder": lr_decoder,
            "train/kl_max": self.kl_max,
            "train/blowups": self.blowups,
            "train/logvar_clamped": self.logvar_clamped,
            "train/images_per_s": self.images / self.seconds,
            "train/data_wait": self.data_wait / self.seconds,
        }


class LogWindow:
    """Sums since the last log row, kept on the device; `flush` syncs once for all ranks."""

    NO_BAD_STEP = float(2**52)
    # loss_encoder, loss_decoder, kl, mse, images, blow-up steps, clamped log-variances, latent values
    SUMS = 8

    def __init__(self, device: torch.device, blowup_kl: float = float("inf")):
        self.device, self.blowup_kl = device, blowup_kl
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(self.SUMS, device=self.device)
        self.kl_max = torch.zeros((), device=self.device)
        self.first_bad_step = torch.full((), self.NO_BAD_STEP, device=self.device)
        self.steps, self.data_wait, self.start = 0, 0.0, time.perf_counter()

    def timed(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """`batches`, counting the time spent waiting for each one (train/data_wait)."""
        batches = iter(batches)
        while True:
            wait_start = time.perf_counter()
            batch = next(batches, None)
            self.data_wait += time.perf_counter() - wait_start
            if batch is None:
                return
            yield batch

    def add(self, losses: VAELosses, images: int, step: int) -> None:
        values = torch.stack([losses.loss_encoder, losses.loss_decoder, losses.kl, losses.mse]).detach()
        finite = torch.isfinite(values).all()
        # clamp with a Python number: no host-to-device copy, so no stream sync per step
        self.first_bad_step = torch.where(finite, self.first_bad_step, self.first_bad_step.clamp(max=float(step)))
        self.sums[:4] += torch.nan_to_num(values)
        self.sums[4] += images
        kl_per_value = losses.kl.detach() / max(losses.latent_values, 1)
        self.sums[5] += ((kl_per_value > self.blowup_kl) | (losses.clamped_high > 0)).float()
        self.sums[6] += losses.clamped
        self.sums[7] += losses.latent_values
        self.kl_max = torch.maximum(self.kl_max, torch.nan_to_num(losses.kl_max, posinf=3.0e38))
        self.steps += 1

    def flush(self, accelerator: Accelerator, stop: StopRequest, last_checkpoint: Path | None,
              bad_found: int = 0) -> WindowTotals:
        """Collective: the window's totals over all ranks, then a fresh window. Raises NonFiniteLoss (on every
        rank) when any rank saw a non-finite loss; records in `stop.agreed` a stop requested on any rank.
        `bad_found`: this rank's bad samples not yet exchanged."""
        n = self.SUMS
        local = torch.cat([self.sums, self.kl_max.view(1), self.first_bad_step.view(1),
                           torch.tensor([float(stop.requested), float(bad_found)], device=self.device)])
        gathered = accelerator.gather(local.view(1, -1)).view(-1, local.numel()).cpu()  # [world, SUMS + 4]
        kl_max, bad_step = gathered[:, n].max().item(), gathered[:, n + 1].min().item()
        stop.agreed = int(gathered[:, n + 2].max().item())
        bad_found = int(gathered[:, n + 3].sum().item())
        if bad_step < self.NO_BAD_STEP:
            where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
            raise NonFiniteLoss(f"non-finite loss at step {int(bad_step)}; stopped ({where}). Try a lower lr, grad_clip or train.precision=no")
        loss_e, loss_d, kl, mse, images, _, clamped, latent_values = gathered[:, :n].sum(0).tolist()
        totals = WindowTotals(loss_e, loss_d, kl, mse, images, self.steps,
                              seconds=max(time.perf_counter() - self.start, 1e-9), data_wait=self.data_wait,
                              bad_found=bad_found, blowups=int(gathered[:, 5].max().item()), kl_max=kl_max,
                              logvar_clamped=clamped / max(latent_values, 1))
        self.reset()
        return totals
