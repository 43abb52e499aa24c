"""Resume: a run restored from its latest checkpoint, then every hyper-parameter taken from this run's config.

The checkpoint gives the weights, both optimizers' states, the scaler, every rank's RNGs and `Progress`
(step, epoch, batch position in the epoch); the config may change anything the checkpoint does not fix
(`vaedist.checkpoint.FIXED_BY_CHECKPOINT`): more epochs, another learning rate or schedule, another batch
size at an epoch's end.
"""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from vaedist.batch import GlobalBatch
from vaedist.checkpoint import Progress, check_mid_epoch_resume, check_resumable
from vaedist.config import Config, to_dict
from vaedist.optim import Schedule, apply_config_after_resume
from vaedist.rundir import RunDir


def resume(accelerator: Accelerator, run_dir: RunDir, cfg: Config, batch: GlobalBatch, progress: Progress,
           optimizers: tuple[torch.optim.Optimizer, ...], schedules: tuple[Schedule, ...]) -> Path | None:
    """Collective. Load `run_dir`'s latest checkpoint into the prepared objects, if there is one; return it."""
    checkpoint = run_dir.latest_checkpoint()
    if checkpoint is None:
        return None
    saved = run_dir.read_config()
    if saved is not None:
        check_resumable(saved, to_dict(cfg), run_dir.path)
    accelerator.load_state(str(checkpoint))
    check_mid_epoch_resume(progress, batch, checkpoint)
    for optim_cfg, optimizer, schedule in zip((cfg.train.encoder, cfg.train.decoder), optimizers, schedules):
        apply_config_after_resume(optim_cfg, optimizer, schedule, step=progress.step, epoch=progress.epoch)
    accelerator.print(f"resuming from {checkpoint} (step {progress.step}, epoch {progress.epoch}, batch {progress.batch_in_epoch})")
    return checkpoint
