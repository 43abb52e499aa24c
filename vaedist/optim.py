"""Per-sub-network optimizers and learning-rate schedules (the encoder and the decoder each get their own).

    optimizer = build_optimizer(cfg.train.encoder, model.encoder.parameters())
    schedule = build_schedule(cfg.train.encoder, optimizer, steps_per_epoch, epochs)
    ... after every optimizer step: schedule.after_step();  at every epoch end: schedule.after_epoch()
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from vaedist.config import OptimConfig


def build_optimizer(cfg: OptimConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    # the seed: RMSprop(lr=1e-3, alpha=0.9, eps=1e-8, weight_decay=0, momentum=0)
    optimizer_class = {"rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                       "sgd": torch.optim.SGD}[cfg.name]
    return optimizer_class(list(params), lr=cfg.lr, **_hyperparameters(cfg))


def _hyperparameters(cfg: OptimConfig) -> dict:
    """The optimizer's settings besides lr, as its param groups hold them (at creation and after a resume)."""
    if cfg.name == "rmsprop":
        return {"alpha": cfg.alpha, "eps": cfg.eps, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum}
    if cfg.name == "sgd":
        return {"momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
    return {"betas": tuple(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay}


class WarmupCosine:
    """LR factor at optimizer step t: linear warm-up from ~0 to 1, then cosine down to min_lr/lr.

    A callable object (not a lambda) so LambdaLR's state_dict round-trips it.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float):
        self.warmup_steps, self.total_steps, self.min_factor = warmup_steps, max(1, total_steps), min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Schedule:
    """An LR scheduler and when it advances: 'epoch' (the seed's ExponentialLR) or 'step' (cosine)."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    interval: str  # "epoch" | "step" | "none"

    def after_step(self) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def after_epoch(self) -> None:
        if self.interval == "epoch":
            self.scheduler.step()

    def lr(self, optimizer: torch.optim.Optimizer) -> float:
        return optimizer.param_groups[0]["lr"]

    # Registered with accelerator.register_for_checkpointing (checkpoints keep one entry per schedule), but
    # nothing to save or restore: a schedule is its config plus a position, and the position is the
    # checkpoint's step or epoch (`Progress`). `apply_config_after_resume` sets both, so that a resumed run
    # follows the config it is resumed with (more epochs, a lower lr, even another scheduler).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_schedule(cfg: OptimConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> Schedule:
    if cfg.scheduler == "exponential":
        return Schedule(torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma), "epoch")
    if cfg.scheduler == "cosine":
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        factor = WarmupCosine(warmup, steps_per_epoch * epochs, cfg.min_lr / cfg.lr if cfg.lr else 0.0)
        return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step")
    return Schedule(None, "none")


def apply_config_after_resume(cfg: OptimConfig, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
                              step: int, epoch: int) -> None:
    """After a checkpoint is loaded: keep its position (`step` optimizer steps done, in epoch `epoch`) and the
    optimizer's running averages, take every hyper-parameter from this run's config.

    The checkpoint holds the learning rate and betas/eps/weight decay it ran with; without this, a run resumed
    with a lower `lr` (the advice after a non-finite loss) or more epochs would silently go on with the old
    values. The learning rate becomes the one this config's schedule gives at the checkpoint's position.
    """
    scheduler = schedule.scheduler
    if scheduler is None:
        lr = cfg.lr
    else:
        position = epoch if schedule.interval == "epoch" else step  # times it has been stepped
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        scheduler.last_epoch, scheduler._step_count = position, position + 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR):
            lr = cfg.lr * cfg.gamma**position
        else:  # LambdaLR with this config's WarmupCosine
            lr = cfg.lr * scheduler.lr_lambdas[0](position)
        scheduler._last_lr = [lr] * len(optimizer.param_groups)  # what get_last_lr() reports until the next step
    for group in optimizer.param_groups:
        group.update(_hyperparameters(cfg), lr=lr, initial_lr=cfg.lr)
